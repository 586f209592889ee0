"""The CUDA path, for a machine with a GPU (``benchmarks/gpu_check.sh`` runs these). On a CPU-only machine
they are collected and reported as skipped, never silently absent: ``pytest -m cuda -rs`` lists them."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import rlhf_env  # noqa: F401
from agents.ppo import PPOAgent
from rlhf_env.models import load_policy
from rlhf_env.sampling import encode_prompts, lean_decoder_applies, sample_from_ids
from rlhf_env.world.build import load_split
from tests.test_bandit_env import n_chars
from tests.test_ppo import header_index, tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_greedy_samples_on_cuda_are_the_cpu_samples():
    """The bundled policy decodes the same greedy answers on the GPU as on the CPU (float32, no TF32)."""
    prompts = list(load_split(rlhf_env.models.DATA_DIR, "prompts", "heldout")["prompt"][:32])
    texts = {}
    for device in ("cpu", "cuda"):
        model, tokenizer = load_policy("sft", device)
        ids, mask = encode_prompts(tokenizer, prompts)
        texts[device] = sample_from_ids(model, tokenizer, ids, mask, 24, 0.0).texts
    assert sum(a == b for a, b in zip(texts["cpu"], texts["cuda"])) >= 31  # a near-tie may round either way


def test_the_sampler_uses_the_models_own_forward_on_cuda_unless_measured_faster():
    model, _ = load_policy("sft", "cuda")
    assert not lean_decoder_applies(model)


def test_bandit_env_on_cuda_gives_the_cpu_rewards(tiny_policy_dir, world_dir):
    kwargs = dict(reference=str(tiny_policy_dir), reward=n_chars, data=str(world_dir), max_new_tokens=8,
                  kl_coef=0.1)
    rewards = {}
    for device in ("cpu", "cuda"):
        env = gym.make("InstructBandit-v0", device=device, **kwargs)
        env.reset(seed=0)
        shape = env.action_space["response_ids"].shape
        rng = np.random.default_rng(0)  # the same action on both devices
        action = {"response_ids": rng.integers(5, 50, size=shape), "logprobs": np.full(shape, -2.0, np.float32)}
        rewards[device] = env.step(action)[1]
    assert rewards["cpu"] == pytest.approx(rewards["cuda"], abs=1e-4)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_ppo_iteration_on_cuda_learns(tiny_policy_dir, world_dir, tmp_path, bf16):
    """tests/test_ppo.py's brevity learning test, on the GPU."""
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", device="cuda", bf16=bf16, lr=1e-2))
    assert next(agent.policy.parameters()).is_cuda
    agent.train()
    train = tmp_path / "ppo" / "train.csv"
    scores = [float(line.split(",")[header_index(train, "score")]) for line in train.read_text().split()[1:]]
    assert scores[0] < -0.9 and max(scores[-5:]) > -0.4
