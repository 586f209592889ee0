"""Quickstart: InstructBandit-v0 with a random agent, the SFT policy through the native vector env, and a
custom reward."""

import gymnasium as gym
import torch

import rlhf_env
from rlhf_env.models import load_policy
from rlhf_env.sampling import sample_from_ids

gym.register_envs(rlhf_env)  # InstructBandit-v0 and InstructToken-v0 (importing rlhf_env registers them too)

# A random agent. It has no log-probs, so it passes 0 (a deterministic policy's exact log-prob).
env = gym.make("InstructBandit-v0", kl_coef=0.05)
obs, info = env.reset(seed=0)
env.action_space.seed(0)
action = env.action_space.sample()
action["logprobs"][:] = 0.0
obs, reward, terminated, truncated, info = env.step(action)
print(f"random: reward {reward:.2f} = score {info['score']:.2f} - 0.05 * KL {info['kl']:.1f}")

# The SFT policy through the native vector env: one batched reference forward and RM call per step.
vec = gym.make_vec("InstructBandit-v0", num_envs=16)
obs, vec_info = vec.reset(seed=0)
policy, tokenizer = load_policy("sft")
samples = sample_from_ids(policy, tokenizer, torch.from_numpy(obs["input_ids"]),
                          torch.from_numpy(obs["attention_mask"]), max_new_tokens=48)
obs, rewards, terminated, truncated, step_info = vec.step(samples.action(48))
print("SFT: mean reward", rewards.mean(), "KL", step_info["final_info"]["kl"].mean())  # KL ~ 0: it *is* the reference

# Swap the reward: any callable, path, hub id or Reward (see below). Here brevity, on SFT's first response.
short = gym.make("InstructBandit-v0", reward=lambda prompts, responses: [-len(r.split()) for r in responses])
short.reset(options={"prompt_index": int(vec_info["prompt_index"][0])})  # the same prompt as that response
_, reward, _, _, info = short.step({k: v[0] for k, v in samples.action(48).items()})
print(f"custom reward: {info['score']:.0f} for {info['response']!r}")
