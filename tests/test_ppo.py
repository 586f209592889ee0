"""The PPO agent's contract with the env: rewards rebuilt from info, and ratio == 1 before an update."""

import pytest
import torch

from agents.ppo import PPOAgent, PPOConfig
from tests.test_bandit_env import n_chars


@pytest.fixture
def agent(tiny_policy_dir, world_dir, tmp_path):
    config = PPOConfig(policy=str(tiny_policy_dir), reward=n_chars, out=str(tmp_path / "ppo"), data=str(world_dir),
                       iterations=2, batch_size=8, minibatch_size=4, ppo_epochs=1, max_new_tokens=8, kl_coef=0.1,
                       eval_every=0, save_every=0)
    agent = PPOAgent(config)
    agent.iteration = 0
    return agent


def test_per_token_rewards_sum_to_the_env_reward(agent):
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    torch.testing.assert_close(batch["token_rewards"].sum(1), batch["env_rewards"], atol=1e-4, rtol=0)


def test_ratio_is_one_before_first_update(agent):
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    batch.pop("next_obs")
    stats = agent.update(batch)
    assert abs(stats["first_minibatch_approx_kl"]) < 1e-6
