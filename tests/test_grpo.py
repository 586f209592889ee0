"""GRPO: PPO's agent with group-normalised advantages. It learns a within-prompt signal behind prompt offsets."""

import pytest
import torch

from agents.grpo import GRPOAgent, GRPOConfig
from tests.test_ppo import BrevityBehindPromptOffsets, tiny_config


def grpo_config(tiny_policy_dir, world_dir, out, **overrides):
    return GRPOConfig(**{**vars(tiny_config(tiny_policy_dir, world_dir, out)), **overrides})


def test_grpo_advantages_are_each_rewards_z_score_in_its_group(tiny_policy_dir, world_dir, tmp_path):
    agent = GRPOAgent(grpo_config(tiny_policy_dir, world_dir, tmp_path / "grpo", batch_size=8, kl_coef=0.1))
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    rewards, mask = batch["env_rewards"].reshape(-1, 4), batch["response_mask"]
    z = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)).reshape(-1)
    assert rewards.std(1).min() > 1e-3
    torch.testing.assert_close(batch["advantages"], z[:, None] * mask, atol=1e-5, rtol=0)


def test_grpo_refuses_a_critic_or_groups_of_one(tiny_policy_dir, world_dir, tmp_path):
    with pytest.raises(ValueError, match="GRPO has no critic"):
        grpo_config(tiny_policy_dir, world_dir, tmp_path / "g", advantage="gae", group_size=1)


@pytest.mark.slow
def test_grpo_learns_a_within_prompt_signal_behind_prompt_offsets(tiny_policy_dir, world_dir, tmp_path):
    """The offsets (up to +-8 per prompt) dwarf brevity's spread; group normalisation removes them. A learner
    that does not update stays at the start."""
    reward = BrevityBehindPromptOffsets()
    GRPOAgent(grpo_config(tiny_policy_dir, world_dir, tmp_path / "grpo", reward=reward, iterations=20, lr=1e-2,
                          final_eval_episodes=1)).train()
    start, end = reward.brevity[0], sum(reward.brevity[17:20]) / 3
    assert end > start + 0.5
