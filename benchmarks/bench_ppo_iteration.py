"""One PPO iteration end to end with the default ``rlhf ppo`` config: episodes/s, the fraction of time
in each phase, and the update phase's FLOP efficiency against this machine's measured fp32 matmul peak.

Phases, as ``PPOAgent.iterate`` times them: ``sample`` (the policy's rollout sampler), ``reference`` (the
env step less its reward call: the frozen reference's forward, checks, decoding texts), ``reward`` (the env's
reward model, timed through the env's public ``reward``), ``values`` (the rollout's own work after the env's step:
values, under bf16 the ratio's old log-probs, and the token target's log q from the step's kept forwards),
``update`` (``ppo_epochs`` x minibatches of forward + backward + AdamW and the KL controller) and ``other``
(advantages and the rest). Matmul FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on the
update's own forward and backward (attention is not counted on a CPU: see ``update_flops``).
Measured in alternating rounds of one run: float32 (the default: each model's linears and GELU on the kernels that
``rlhf_env.accel.kernels`` measured faster on this machine), float32 with the token target running the reference
and the RM's LM again instead of reading the env step's forwards (``float32_unkept``: as before it read them),
float32 with the package's kernels forced
(``RLHF_ENV_KERNELS=onednn``: every linear through oneDNN, the GELU and the sampler's decode attention through the C
kernels where they build), float32 with PyTorch's own linears (MKL; ``rlhf_env.accel.onednn.disabled()``; the GELU
as measured), float32 with stock PyTorch's kernels throughout (``float32_stock``: MKL and aten's GELU,
``RLHF_ENV_KERNELS=stock``), float32 with every prompt recomputed for each of its responses (``float32_unshared``:
no ``rlhf_env.sampling.shared_prompt_forward``, and the sampler prefills every row), and ``bf16=True`` (bfloat16
autocast in the policy's training forward and backward; under it the ``values`` phase also recomputes the ratio's
old log-probs). Each update is set against the fastest matmul this machine does in its precision (a 2048 x 2048
matmul through MKL and through oneDNN; bfloat16: autocast's). Prints a table and writes JSON.

    python benchmarks/bench_ppo_iteration.py [--iterations 3] [--rounds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import subprocess
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from agents import token_target
from agents.ppo import PPOAgent, PPOConfig
from rlhf_env import sampling
from rlhf_env.accel import decoder, kernels, onednn
from rlhf_env.rewards import Reward

VARIANTS = ("float32", "float32_unkept", "float32_unshared", "float32_onednn", "float32_mkl", "float32_stock",
            "bf16")
PHASES = ("sample", "reference", "reward", "values", "update", "other")


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32,
                       through_onednn: bool = False) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    if through_onednn:  # float32 through oneDNN, as rlhf_env.accel.onednn runs every linear
        matmul = functools.partial(onednn.linear, a, b.T.contiguous())
    else:
        matmul = functools.partial(torch.matmul, a, b)
    matmul()
    best = min(_timed(matmul) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def code_version() -> str:
    """The package's git commit (short), "+changes" if its tracked files differ from it; "unknown" outside git."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def update_flops(agent: PPOAgent, batch: dict) -> int:
    """Matmul FLOPs (forward and backward) of one full update on ``batch``. On a CPU, FlopCounterMode
    does not count attention (torch 2.13 registers no formula for its CPU kernel); for these models and
    lengths attention adds under 10%, so the efficiency below is a slight underestimate."""
    with onednn.disabled(), FlopCounterMode(display=False) as counter:  # it counts aten's matmuls only
        agent.update(batch)
    return counter.get_total_flops()


def measure(iterations: int, variant: str) -> tuple[list[dict], int]:
    """Phase times of ``iterations`` iterations (after one warm-up), and the update's matmul FLOPs."""
    with contextlib.ExitStack() as stack:
        if variant == "float32_mkl":
            stack.enter_context(onednn.disabled())
        elif variant == "float32_onednn":
            stack.enter_context(kernels.forced("onednn"))
        elif variant == "float32_stock":
            stack.enter_context(kernels.forced("stock"))
        elif variant == "float32_unkept":  # the token target runs both models again, as before it read the env's
            stack.enter_context(mock.patch.object(token_target, "reuse_forward",
                                                  lambda kept, model, ids, *args, **kwargs:
                                                  (None, torch.zeros(len(ids), dtype=torch.bool))))
        elif variant == "float32_unshared":
            stack.enter_context(mock.patch.object(sampling, "SHARE_FROM", math.inf))
            stack.enter_context(mock.patch.object(sampling, "shares", lambda *args, **kwargs: False))  # the trunk's
            stack.enter_context(mock.patch.object(decoder, "first_rows", lambda ids, mask: torch.arange(len(ids))))
        return _measure(iterations, bf16=variant == "bf16")


class TimedReward(Reward):
    """The env's reward, timed (set through the env's public ``reward``)."""

    def __init__(self, reward: Reward):
        self.reward, self.name, self.seconds = reward, reward.name, 0.0

    def score(self, prompts, responses, eos):
        start = time.perf_counter()
        try:
            return self.reward(prompts, responses, eos)
        finally:
            self.seconds += time.perf_counter() - start


def _measure(iterations: int, bf16: bool) -> tuple[list[dict], int]:
    with tempfile.TemporaryDirectory() as tmp:
        agent = PPOAgent(PPOConfig(out=tmp, eval_every=0, save_every=0, bf16=bf16))
        env = agent.env.unwrapped
        env.reward = timed = TimedReward(env.reward)
        obs = agent.env.reset(seed=0)[0]
        rows = []
        for i in range(iterations + 1):
            timed.seconds = 0.0
            metrics, obs = agent.iterate(obs)  # it times its own phases (time_*)
            if i:  # the first iteration warms up allocators and caches
                phases = {"sample": metrics["time_sample"], "reference": metrics["time_env"] - timed.seconds,
                          "reward": timed.seconds, "values": metrics["time_rollout_forward"],
                          "update": metrics["time_update"]}
                rows.append({"total_s": metrics["time_iteration"], **phases,
                             "other": metrics["time_iteration"] - sum(phases.values()),
                             "response_tokens": metrics["length"] * agent.config.batch_size})
        batch = agent.rollout(obs)
        flops = update_flops(agent, batch)  # a batch like the timed ones
        rows[-1]["update_gflops"] = flops / rows[-1]["update"] / 1e9
    return rows, flops


def summarize(rows: list[dict], flops: int, batch_size: int) -> dict:
    median = {k: float(np.median([r[k] for r in rows if k in r])) for k in rows[-1]}
    return {"iteration_s": median["total_s"], "episodes_per_s": batch_size / median["total_s"],
            "phase_s": {p: median[p] for p in PHASES},
            "phase_fraction": {p: median[p] / median["total_s"] for p in PHASES},
            "update_gflop": flops / 1e9, "update_gflops": median["update_gflops"],
            "mean_response_tokens": median["response_tokens"] / batch_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="measured iterations per round (after a warm-up)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds, alternating float32 and bf16")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="which to measure (bf16 is slow on a CPU without native bfloat16 matmuls)")
    parser.add_argument("--out", default="benchmarks/results/ppo_iteration.json")
    args = parser.parse_args()

    config = PPOConfig()
    variants = ["float32"] + [v for v in args.variants if v != "float32"]  # the default comes first
    rows, flops = {name: [] for name in variants}, {}
    for _ in range(args.rounds):  # alternated, so that a slower spell of a shared machine hits all of them
        for name in variants:
            more, flops[name] = measure(args.iterations, name)
            rows[name] += more
    runs = {name: summarize(rows[name], flops[name], config.batch_size) for name in variants}
    fp32_peak = max(matmul_peak_gflops(), matmul_peak_gflops(through_onednn=onednn.available(torch.ones(1))))
    peaks = {name: fp32_peak for name in variants if name.startswith("float32")}
    if "bf16" in variants:
        peaks["bf16"] = matmul_peak_gflops(dtype=torch.bfloat16)
    for name, run in runs.items():
        run["matmul_peak_gflops"] = peaks[name]
        run["update_flop_efficiency"] = run["update_gflops"] / peaks[name]
    fp32 = runs["float32"]
    result = {"code": code_version(), "batch_size": config.batch_size, "minibatch_size": config.minibatch_size,
              "ppo_epochs": config.ppo_epochs, "iterations": args.iterations, "rounds": args.rounds,
              "threads": torch.get_num_threads(), "matmul_peak_gflops_float32_mkl": matmul_peak_gflops(),
              "kernels": [choice.describe() for choice in kernels.chosen()],
              **fp32, **{name: runs[name] for name in variants[1:]},
              **{f"speedup_vs_{name}": runs[name]["iteration_s"] / fp32["iteration_s"] for name in variants[1:]},
              **{f"update_speedup_vs_{name}": runs[name]["phase_s"]["update"] / fp32["phase_s"]["update"]
                 for name in variants[1:]}}
    print(f"one PPO iteration, {config.batch_size} episodes, {config.ppo_epochs} epochs x minibatch "
          f"{config.minibatch_size}, {torch.get_num_threads()} threads (median of {args.rounds} x {args.iterations}); "
          "default float32 (the measured kernel choice) against the variants: " + ", ".join(variants[1:]))
    print("default kernels: " + "; ".join(result["kernels"]))
    print(f"{'phase':<12}" + "".join(f"{name + ' s':>16}{'share':>8}" for name in variants))
    for p in PHASES:
        print(f"{p:<12}" + "".join(f"{runs[n]['phase_s'][p]:>16.3f}{runs[n]['phase_fraction'][p]:>8.1%}"
                                   for n in variants))
    print(f"{'total':<12}" + "".join(f"{runs[n]['iteration_s']:>16.3f}{'':>8}" for n in variants))
    print("episodes/s: " + ", ".join(f"{n} {runs[n]['episodes_per_s']:.1f}" for n in variants))
    for name in variants[1:]:
        print(f"float32 (default) is {result['speedup_vs_' + name]:.2f}x faster per iteration than {name} "
              f"(update {result['update_speedup_vs_' + name]:.2f}x)")
    for name, run in runs.items():
        print(f"update ({name}): {run['update_gflop']:.1f} GFLOP at {run['update_gflops']:.1f} GFLOP/s; matmul "
              f"peak {run['matmul_peak_gflops']:.1f} GFLOP/s; efficiency {run['update_flop_efficiency']:.1%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
