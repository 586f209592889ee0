"""One PPO iteration end to end with the default ``rlhf ppo`` config: episodes/s, the fraction of time
in each phase, and the update phase's FLOP efficiency against this machine's measured fp32 matmul peak.

Phases: ``sample`` (the policy's rollout sampler), ``reference`` (the env's frozen-reference forward),
``reward`` (the env's reward model), ``values`` (the value forward on the rollout), ``update``
(``ppo_epochs`` x minibatches of forward + backward + AdamW) and ``other`` (the rest of the env step,
decoding texts, GAE, whitening). Matmul FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``
on the update's own forward and backward (attention is not counted on a CPU: see ``update_flops``).
Prints a table and writes JSON.

    python benchmarks/bench_ppo_iteration.py [--iterations 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import agents.ppo as ppo_module
from agents.ppo import PPOAgent, PPOConfig

PHASES = ("sample", "reference", "reward", "values", "update", "other")


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timing(times: dict, name: str, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            times[name] += time.perf_counter() - start
    return wrapped


def update_flops(agent: PPOAgent, batch: dict) -> int:
    """Matmul FLOPs (forward and backward) of one full update on ``batch``. On a CPU, FlopCounterMode
    does not count attention (torch 2.13 registers no formula for its CPU kernel); for these models and
    lengths attention adds under 10%, so the efficiency below is a slight underestimate."""
    with FlopCounterMode(display=False) as counter:
        agent.update(batch)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3, help="measured iterations (after one warm-up)")
    parser.add_argument("--out", default="benchmarks/results/ppo_iteration.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(out=tmp, eval_every=0, save_every=0)
        agent = PPOAgent(config)
        core = agent.env.unwrapped.core
        times: dict[str, float] = defaultdict(float)
        ppo_module.sample_from_ids = timing(times, "sample", ppo_module.sample_from_ids)
        core.reference_logprobs = timing(times, "reference", core.reference_logprobs)
        core.reward = timing(times, "reward", core.reward)
        agent.update = timing(times, "update", agent.update)
        forward = agent.forward
        agent.forward = lambda *a, need_policy=True: (timing(times, "values", forward) if not need_policy
                                                      else forward)(*a, need_policy=need_policy)
        obs = agent.env.reset(seed=0)[0]
        rows = []
        for i in range(args.iterations + 1):
            agent.iteration = i
            times.clear()
            start = time.perf_counter()
            batch = agent.rollout(obs)
            obs = batch.pop("next_obs")
            agent.update(batch)
            total = time.perf_counter() - start
            if i:  # the first iteration warms up allocators and caches
                rows.append({"total_s": total, **{p: times[p] for p in PHASES if p != "other"},
                             "other": total - sum(times.values()), "response_tokens": float(batch["length"].sum())})
        flops = update_flops(agent, batch)  # the same batch as the last timed update

    peak = matmul_peak_gflops()
    median = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    achieved = flops / rows[-1]["update"] / 1e9
    result = {"batch_size": config.batch_size, "minibatch_size": config.minibatch_size,
              "ppo_epochs": config.ppo_epochs, "iterations": args.iterations, "threads": torch.get_num_threads(),
              "iteration_s": median["total_s"], "episodes_per_s": config.batch_size / median["total_s"],
              "phase_s": {p: median[p] for p in PHASES},
              "phase_fraction": {p: median[p] / median["total_s"] for p in PHASES},
              "update_gflop": flops / 1e9, "update_gflops": achieved, "matmul_peak_gflops": peak,
              "update_flop_efficiency": achieved / peak,
              "mean_response_tokens": median["response_tokens"] / config.batch_size}
    print(f"one PPO iteration, {config.batch_size} episodes, {config.ppo_epochs} epochs x minibatch "
          f"{config.minibatch_size}, {torch.get_num_threads()} threads (median of {args.iterations})")
    print(f"{'phase':<12}{'seconds':>9}{'fraction':>10}")
    for p in PHASES:
        print(f"{p:<12}{median[p]:>9.3f}{median[p] / median['total_s']:>10.1%}")
    print(f"{'total':<12}{median['total_s']:>9.3f}{'':>10}  -> {result['episodes_per_s']:.1f} episodes/s")
    print(f"update: {flops / 1e9:.1f} GFLOP in {rows[-1]['update']:.2f} s = {achieved:.1f} GFLOP/s; fp32 matmul peak "
          f"{peak:.1f} GFLOP/s; efficiency {result['update_flop_efficiency']:.1%}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
