"""Native batched vector env vs Gymnasium's SyncVectorEnv on InstructBandit-v0.

Both score the same 64 prompts and SFT-sampled responses; the native env does one reference forward
and one reward call per step, SyncVectorEnv does 64 of each. Prints a table, writes JSON.

    python benchmarks/bench_vector_env.py [--num-envs 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import rlhf_env  # noqa: F401  (registers the envs)
from rlhf_env.models import load_policy
from rlhf_env.sampling import sample


def actions_for(prompts, R, seed=0):
    model, tokenizer = load_policy("sft")
    return sample(model, tokenizer, prompts, R, 1.0, torch.Generator().manual_seed(seed)).action(R)


class FixedPrompt(gym.Wrapper):
    """Every reset shows prompt ``index``: SyncVectorEnv's sub-envs then score the native env's prompts."""

    def __init__(self, env: gym.Env, index: int):
        super().__init__(env)
        self.index = index

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed, options={"prompt_index": self.index})


def time_steps(vec, actions, repeats, options=None):
    times, rewards = [], None
    for _ in range(repeats):
        vec.reset(seed=0, options=options)
        start = time.perf_counter()
        rewards = vec.step(actions)[1]
        times.append(time.perf_counter() - start)
    return float(np.median(times)), rewards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/vector_env.json")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    native = gym.make_vec("InstructBandit-v0", num_envs=args.num_envs)
    _, info = native.reset(seed=0)
    index = info["prompt_index"]
    prompts = [native.unwrapped.scorer.prompts[i] for i in index]
    actions = actions_for(prompts, native.unwrapped.scorer.max_new_tokens)
    # SyncVectorEnv over single envs fixed to the same prompts (its same-step autoreset keeps them there).
    sync = gym.vector.SyncVectorEnv([lambda i=int(i): FixedPrompt(gym.make("InstructBandit-v0"), i) for i in index],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    native_s, native_r = time_steps(native, actions, args.repeats, options={"prompt_index": index})
    sync_s, sync_r = time_steps(sync, actions, args.repeats)
    result = {"num_envs": args.num_envs, "native_step_s": native_s, "sync_step_s": sync_s,
              "native_episodes_per_s": args.num_envs / native_s, "sync_episodes_per_s": args.num_envs / sync_s,
              "speedup": sync_s / native_s, "max_abs_reward_diff": float(np.abs(native_r - sync_r).max()),
              "torch_threads": torch.get_num_threads()}
    print(f"{'vector env':<22}{'step (s)':>10}{'episodes/s':>12}")
    print(f"{'native (batched)':<22}{native_s:>10.3f}{result['native_episodes_per_s']:>12.1f}")
    print(f"{'SyncVectorEnv':<22}{sync_s:>10.3f}{result['sync_episodes_per_s']:>12.1f}")
    print(f"speed-up {result['speedup']:.1f}x over {args.num_envs} envs; max |reward diff| "
          f"{result['max_abs_reward_diff']:.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
