"""InstructToken-v0 env steps per second, with the reference on the lean GPT-2 decoder (the default)
and on HF's own forward and cache. Random tokens; episodes end on EOS or at 48 tokens, and the reward
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
from rlhf_env.sampling import HFDecoder


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
    lean = gym.make("InstructToken-v0")
    hf = gym.make("InstructToken-v0")
    hf.unwrapped._decoder = HFDecoder(hf.unwrapped.scorer.model)
    steps_per_second(lean, 50)  # warm-up
    result = {"steps": args.steps, "lean_steps_per_s": steps_per_second(lean, args.steps),
              "hf_steps_per_s": steps_per_second(hf, args.steps)}
    result["speedup"] = result["lean_steps_per_s"] / result["hf_steps_per_s"]
    print(f"{'reference decoder':<22}{'steps/s':>10}")
    print(f"{'lean GPT-2 (default)':<22}{result['lean_steps_per_s']:>10.0f}")
    print(f"{'HF forward + cache':<22}{result['hf_steps_per_s']:>10.0f}")
    print(f"speed-up {result['speedup']:.1f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
