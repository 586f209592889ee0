"""Regenerate every shipped asset deterministically from one seed.

    rlhf build-assets                          # every step, into rlhf_env/assets/
    rlhf build-assets --steps comparisons,rm   # only some steps (earlier outputs are read from disk)
    rlhf build-assets --out /tmp/assets        # anywhere else

Steps, in order:

1. ``world``: the world's datasets (prompts, demonstrations, pretraining corpus);
2. ``tokenizer``: byte-level BPE trained on the corpus and demonstrations;
3. ``base``: for each size, a GPT-2 pretrained on the corpus;
4. ``sft``: for each size, SFT from that base, the checkpoint chosen by gold score;
5. ``comparisons``: K = 4..9 samples of the small SFT policy per ``rm`` prompt, ranked by labelers
   (plus samples on held-out customers' prompts, for the RM's gold correlation);
6. ``rm``: the bundled reward models, both fitted to the comparisons: ``rm`` (the frozen large SFT LM's
   log-likelihood of the response, weighted, ``rlhf_env.rewards.likelihood``) and ``rm-scalar`` (InstructGPT's
   scalar-head RM, from the small SFT policy).

Models are stored as float16 safetensors. ``manifest.json`` records the config, the seconds each
step took and the selection / evaluation metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from datasets import DatasetDict

from rlhf_env.configs import STEPS, BuildConfig
from rlhf_env.models import load_policy, save_policy
from rlhf_env.rewards.likelihood import CONFIG_FILE as REWARD_CONFIG
from rlhf_env.stages.comparisons import build_comparisons
from rlhf_env.stages.pretrain import PretrainConfig, pretrain
from rlhf_env.stages.reward_model import RMConfig, train_reward_model
from rlhf_env.stages.sft import SFTConfig, sft
from rlhf_env.tokenizer import train_tokenizer
from rlhf_env.world.build import WorldConfig, build_world, load_split, save_world


def build_assets(config: BuildConfig) -> dict:
    out, work = Path(config.out), Path(config.work)
    steps = config.steps.split(",")
    parts = {"base": config.sizes.split(","), "sft": config.sizes.split(","), "rm": ["likelihood", "scalar"]}
    known = {*STEPS, *(f"{step}:{part}" for step, names in parts.items() for part in names)}
    unknown = sorted(set(steps) - known)  # "rm:likelihood": one part of a step
    if unknown:
        raise ValueError(f"unknown build steps {unknown}; choose from {sorted(known)}")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest.setdefault("seconds", {})
    manifest.setdefault("metrics", {})
    manifest["config"] = {k: v for k, v in asdict(config).items() if k not in ("out", "work", "device")}
    world_config = WorldConfig(seed=config.seed)
    for name in ("n_sft", "n_valid", "n_rm", "n_ppo", "n_heldout", "n_documents"):
        setattr(world_config, name, max(8, round(getattr(world_config, name) * config.scale)))
    manifest["world"] = asdict(world_config)
    data, tokenizer_dir, models = out / "data", out / "tokenizer", out / "models"
    sizes = [("" if size == "small" else f"-{size}", size) for size in config.sizes.split(",")]

    def epochs(size: str, stage: str) -> float:  # the large model's own, where given
        own = getattr(config, f"large_{stage}_epochs") if size == "large" else None
        return getattr(config, f"{stage}_epochs") if own is None else own

    def timed(name, fn, *args):
        if name not in steps and name.split(":")[0] not in steps:
            return
        start = time.perf_counter()
        result = fn(*args)
        manifest["seconds"][name] = round(time.perf_counter() - start, 1)
        manifest.get("notes", {}).pop(name, None)  # a note on how the step's output was made is now untrue
        if result:
            manifest["metrics"][name] = result
        manifest_path.parent.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=1))  # after every step: nothing lost on a crash

    def world():
        shutil.rmtree(data, ignore_errors=True)
        save_world(build_world(world_config), data)

    def tokenizer():
        corpus = list(load_split(data, "pretrain", "train")["text"])
        demos = load_split(data, "demonstrations", "train")
        train_tokenizer(corpus + [p + " " + r for p, r in zip(demos["prompt"], demos["response"])]
                        ).save_pretrained(tokenizer_dir)

    def base(suffix, size):
        pretrain(PretrainConfig(size=size, data=str(data), tokenizer=str(tokenizer_dir),
                                out=str(work / f"base{suffix}"), epochs=epochs(size, "pretrain"), seed=config.seed,
                                device=config.device))
        ship(work / f"base{suffix}" / "final", models / f"base{suffix}")

    def sft_step(suffix, size):
        lr = {"lr": config.large_sft_lr} if size == "large" and config.large_sft_lr is not None else {}
        state = sft(SFTConfig(base=str(models / f"base{suffix}"), data=str(data), out=str(work / f"sft{suffix}"),
                              epochs=epochs(size, "sft"), seed=config.seed, device=config.device,
                              n_valid=min(300, world_config.n_valid), **lr))
        ship(work / f"sft{suffix}" / "best", models / f"sft{suffix}")
        return {"best_valid_gold": state["best"], "best_step": state["best_step"]}

    def comparisons():
        model, tok = load_policy(str(models / "sft"), config.device)
        heldout = load_split(data, "prompts", "heldout")
        ranked = build_comparisons(model, tok, load_split(data, "prompts", "rm"),
                                   heldout.select(range(min(300, len(heldout)))), config.seed)
        save_world({"comparisons": DatasetDict(ranked)}, data)

    def rm(name, kind, policy):
        state = train_reward_model(RMConfig(policy=str(models / policy), kind=kind, data=str(data), seed=config.seed,
                                            out=str(work / name), epochs=config.rm_epochs, device=config.device))
        ship(work / name / "final", models / name, policy=kind == "likelihood")
        return state["normalization"]

    timed("world", world)
    timed("tokenizer", tokenizer)
    for suffix, size in sizes:
        timed(f"base:{size}", base, suffix, size)
        timed(f"sft:{size}", sft_step, suffix, size)
    timed("comparisons", comparisons)
    large = "sft-large" if "large" in config.sizes.split(",") else "sft"
    timed("rm:likelihood", rm, "rm", "likelihood", large)
    timed("rm:scalar", rm, "rm-scalar", "scalar", "sft")
    manifest["seconds"]["total"] = round(sum(v for k, v in manifest["seconds"].items() if k != "total"), 1)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def ship(checkpoint: Path, destination: Path, policy: bool = True) -> None:
    """Copy a trained checkpoint into the assets as float16 safetensors with dropout set to 0 (``policy``:
    anything ``load_policy`` reads, the likelihood RM's directory too; else a sequence classifier)."""
    if policy:
        model, tokenizer = load_policy(str(checkpoint))
    else:
        from rlhf_env.rewards.classifier import SequenceClassifierReward

        reward = SequenceClassifierReward(str(checkpoint), normalize=False)
        model, tokenizer = reward.model, reward.tokenizer
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, key, 0.0)
    shutil.rmtree(destination, ignore_errors=True)
    save_policy(model, tokenizer, destination, half=True)
    if (checkpoint / REWARD_CONFIG).exists():  # the likelihood RM: its weights and normalisation
        shutil.copy(checkpoint / REWARD_CONFIG, destination / REWARD_CONFIG)
