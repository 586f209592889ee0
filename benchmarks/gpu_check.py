"""The GPU check of issue 16, for a machine with one CUDA device (``benchmarks/gpu_check.sh`` runs it after the
``cuda`` tests): the sampler's throughput, one PPO iteration in float32 and bf16, and one default PPO run on
``sft-large``, all on the GPU. Prints a table and writes JSON.

- **sampler**: tokens/s of HF ``generate`` and of our sampler (through the model's own forward and cache, the
  path it takes on CUDA; and the lean GPT-2 decoder, to measure whether it would pay there), on both bundled
  policy sizes, at two batch sizes, ``--new-tokens`` tokens per row (EOS does not stop a row);
- **iteration**: episodes/s of ``PPOAgent.iterate`` with the default config, float32 and ``bf16=True``;
- **run**: ``rlhf ppo --policy sft-large --device cuda`` with the defaults otherwise, its wall time and held-out
  result (the same command as on a CPU).

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from agents.ppo import PPOAgent, PPOConfig
from rlhf_env.models import DATA_DIR, load_policy
from rlhf_env.sampling import encode_prompts, sample_from_ids
from rlhf_env.world.build import load_split


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` (after one warm-up), with the device synchronised."""
    fn()
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def generate(model, tokenizer, ids, mask, new_tokens: int):
    return model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)


def ours(model, tokenizer, ids, mask, new_tokens: int, generator, fast: bool):
    return sample_from_ids(model, tokenizer, ids, mask, new_tokens, 1.0, generator, fast=fast, stop_at_eos=False)


def sampler_rows(policies: list[str], batch_sizes: list[int], new_tokens: int, repeats: int) -> list[dict]:
    prompts = list(load_split(DATA_DIR, "prompts", "heldout")["prompt"])
    rows = []
    for name in policies:
        model, tokenizer = load_policy(name, "cuda")
        for batch in batch_sizes:
            ids, mask = (t.cuda() for t in encode_prompts(tokenizer, prompts[:batch]))
            generator = torch.Generator(device="cuda").manual_seed(0)
            args = (model, tokenizer, ids, mask, new_tokens)
            methods = {"hf_generate": partial(generate, *args),
                       "hf_cache_loop": partial(ours, *args, generator, False),
                       "lean_gpt2": partial(ours, *args, generator, True)}
            row = {"policy": name, "batch_size": batch}
            for label, fn in methods.items():
                try:  # never run on a GPU before: one path's failure must not hide the others' figures
                    with torch.no_grad():
                        row[f"{label}_tokens_per_s"] = batch * new_tokens / timed(fn, repeats)
                except Exception as e:  # noqa: BLE001
                    row[f"{label}_tokens_per_s"], row[f"{label}_error"] = float("nan"), f"{type(e).__name__}: {e}"
            rows.append(row)
    return rows


def iteration_rows(iterations: int) -> list[dict]:
    rows = []
    for bf16 in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            agent = PPOAgent(PPOConfig(out=tmp, device="cuda", bf16=bf16, eval_every=0, save_every=0))
            obs = agent.env.reset(seed=0)[0]
            _, obs = agent.iterate(obs)  # warm-up
            seconds = []
            for _ in range(iterations):
                torch.cuda.synchronize()
                metrics, obs = agent.iterate(obs)
                seconds.append(metrics["time_iteration"])
            rows.append({"bf16": bf16, "iteration_s": float(np.median(seconds)),
                         "episodes_per_s": agent.config.batch_size / float(np.median(seconds)),
                         **{k: metrics[k] for k in ("time_sample", "time_env", "time_update")}})
    return rows


def default_run(out: Path) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rlhf_env.cli", "ppo", "--policy", "sft-large", "--device", "cuda",
                    "--out", str(out)], check=True)
    result = json.loads((out / "result.json").read_text())
    return {"wall_s": time.perf_counter() - start, **{k: v for k, v in result.items() if not isinstance(v, dict)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--skip-run", action="store_true", help="no default PPO run on sft-large")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device")

    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "sampler": sampler_rows(["sft", "sft-large"], [64, 512], args.new_tokens, args.repeats),
              "iteration": iteration_rows(args.iterations)}
    print(f"{result['device']}, torch {result['torch']}; sampler tokens/s, {args.new_tokens} tokens per row")
    print(f"{'policy':<11}{'batch':>6}{'generate':>11}{'HF loop':>11}{'lean':>11}")
    for r in result["sampler"]:
        print(f"{r['policy']:<11}{r['batch_size']:>6}{r['hf_generate_tokens_per_s']:>11.0f}"
              f"{r['hf_cache_loop_tokens_per_s']:>11.0f}{r['lean_gpt2_tokens_per_s']:>11.0f}")
    for r in result["iteration"]:
        print(f"PPO iteration ({'bf16' if r['bf16'] else 'float32'}): {r['episodes_per_s']:.1f} episodes/s")
    if not args.skip_run:
        with tempfile.TemporaryDirectory() as tmp:
            result["run"] = default_run(Path(tmp) / "ppo-large")
        print(f"rlhf ppo --policy sft-large --device cuda: {result['run']['wall_s']:.0f} s, held-out win rate vs "
              f"sft-large {result['run']['win_rate_vs_reference']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
