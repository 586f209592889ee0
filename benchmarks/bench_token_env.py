"""InstructToken-v0 env steps per second, accelerated (the default for the bundled models: the reference
on the lean GPT-2 decoder with oneDNN linears, ``rlhf_env.accel``) and on stock PyTorch (HF's own forward
and cache, as with ``RLHF_ENV_ACCEL=0``). Random tokens; episodes end on EOS or at 48 tokens, and the reward
model scores each one. Prints a table and writes JSON.

    python benchmarks/bench_token_env.py [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

import rlhf_env  # noqa: F401  (registers the envs)
from rlhf_env.accel.switch import switched_off


def steps_per_second(env, steps: int) -> float:
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(2, env.action_space.n)))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/token_env.json")
    args = parser.parse_args()
    accelerated = gym.make("InstructToken-v0")
    with switched_off():
        stock = gym.make("InstructToken-v0")
    steps_per_second(accelerated, 50)  # warm-up
    result = {"steps": args.steps, "accelerated_steps_per_s": steps_per_second(accelerated, args.steps),
              "stock_steps_per_s": steps_per_second(stock, args.steps)}
    result["speedup"] = result["accelerated_steps_per_s"] / result["stock_steps_per_s"]
    print(f"{'models':<34}{'steps/s':>10}")
    print(f"{'accelerated (default)':<34}{result['accelerated_steps_per_s']:>10.0f}")
    print(f"{'stock PyTorch (RLHF_ENV_ACCEL=0)':<34}{result['stock_steps_per_s']:>10.0f}")
    print(f"speed-up {result['speedup']:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
