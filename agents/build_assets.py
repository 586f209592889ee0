"""Regenerate every shipped asset deterministically from one seed.

    rlhf build-assets                 # writes rlhf_env/assets/ (about 25 minutes on 2 CPU cores)
    rlhf build-assets --out /tmp/a    # anywhere else

Steps: the world's datasets, the BPE tokenizer, then for each size a base model pretrained on the
web-text corpus and an SFT model fine-tuned from it. Models are stored as float16 safetensors.
``manifest.json`` records the config, the time each step took and the SFT selection metrics.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.pretrain import PretrainConfig, pretrain
from agents.sft import SFTConfig, sft
from rlhf_env.models import ASSETS, load_policy, save_policy
from rlhf_env.tokenizer import train_tokenizer
from rlhf_env.world.build import WorldConfig, build_world, save_world


@dataclass
class BuildConfig:
    """Regenerate the tokenizer, datasets and base/SFT models."""

    out: str = str(ASSETS)
    """Asset directory (the package's own by default)."""
    seed: int = 0
    sizes: str = "small,large"
    """Comma-separated model sizes to build."""
    pretrain_epochs: float = 2.0
    sft_epochs: float = 16.0
    work: str = "runs/build-assets"
    """Scratch directory for training logs and checkpoints (resumable)."""
    scale: float = 1.0
    """Scale every dataset size by this factor (tiny builds for tests)."""
    device: str = "cpu"


def build_assets(config: BuildConfig) -> dict:
    out, work = Path(config.out), Path(config.work)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    world_config = WorldConfig(seed=config.seed)
    for name in ("n_sft", "n_valid", "n_rm", "n_ppo", "n_heldout", "n_documents"):
        setattr(world_config, name, max(8, round(getattr(world_config, name) * config.scale)))
    world = build_world(world_config)
    shutil.rmtree(out / "data", ignore_errors=True)
    save_world(world, out / "data")
    timings["world"] = time.perf_counter() - t0

    t = time.perf_counter()
    demos = world["demonstrations"]["train"]
    tokenizer = train_tokenizer(list(world["pretrain"]["text"]) +
                                [p + " " + r for p, r in zip(demos["prompt"], demos["response"])])
    tokenizer.save_pretrained(out / "tokenizer")
    timings["tokenizer"] = time.perf_counter() - t

    selection = {}
    for size in config.sizes.split(","):
        suffix = "" if size == "small" else f"-{size}"
        t = time.perf_counter()
        pretrain(PretrainConfig(size=size, data=str(out / "data"), tokenizer=str(out / "tokenizer"),
                                out=str(work / f"base{suffix}"), epochs=config.pretrain_epochs,
                                seed=config.seed, device=config.device))
        _ship(work / f"base{suffix}" / "final", out / "models" / f"base{suffix}")
        timings[f"pretrain{suffix or '-small'}"] = time.perf_counter() - t

        t = time.perf_counter()
        state = sft(SFTConfig(base=str(out / "models" / f"base{suffix}"), data=str(out / "data"),
                              out=str(work / f"sft{suffix}"), epochs=config.sft_epochs, seed=config.seed,
                              device=config.device, n_valid=min(300, world_config.n_valid)))
        _ship(work / f"sft{suffix}" / "best", out / "models" / f"sft{suffix}")
        selection[f"sft{suffix}"] = {"best_valid_gold": state["best"], "best_step": state["best_step"]}
        timings[f"sft{suffix or '-small'}"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - t0
    manifest = {"config": asdict(config), "world": asdict(world_config), "seconds": timings,
                "sft_selection": selection}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _ship(checkpoint: Path, destination: Path) -> None:
    """Copy a trained checkpoint into the assets as float16 safetensors with dropout set to 0."""
    model, tokenizer = load_policy(str(checkpoint))
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
        setattr(model.config, key, 0.0)
    shutil.rmtree(destination, ignore_errors=True)
    save_policy(model, tokenizer, destination, half=True)
