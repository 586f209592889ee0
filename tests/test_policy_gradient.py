"""RLOO and REINFORCE: the PPO agent's loop with one on-policy step per batch and unscaled leave-one-out
advantages, per prompt (RLOO) or over the batch (REINFORCE)."""

import pytest
import torch

from agents.reinforce import REINFORCEAgent, REINFORCEConfig
from agents.rloo import RLOOAgent, RLOOConfig
from tests.test_ppo import BrevityBehindPromptOffsets, brevity, header_index, tiny_config


def config(cls, tiny_policy_dir, world_dir, out, **overrides):
    settings = {**vars(tiny_config(tiny_policy_dir, world_dir, out)), "minibatch_size": 0, "ppo_epochs": 1}
    if cls is REINFORCEConfig:
        settings["group_size"] = 1
    return cls(**{**settings, **overrides})


def test_rloo_advantages_are_unscaled_leads_over_the_siblings(tiny_policy_dir, world_dir, tmp_path):
    agent = RLOOAgent(config(RLOOConfig, tiny_policy_dir, world_dir, tmp_path / "rloo", batch_size=8, kl_coef=0.1))
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    rewards, mask = batch["env_rewards"].reshape(2, 4), batch["response_mask"]
    lead = (rewards - (rewards.sum(1, keepdim=True) - rewards) / 3).reshape(-1)
    assert lead.std() < 0.5  # so a std-scaled advantage (PPO's) would differ from the lead
    torch.testing.assert_close(batch["advantages"], lead[:, None] * mask, atol=1e-6, rtol=0)


def test_reinforce_baseline_is_the_rest_of_the_batch(tiny_policy_dir, world_dir, tmp_path):
    agent = REINFORCEAgent(config(REINFORCEConfig, tiny_policy_dir, world_dir, tmp_path / "re", batch_size=8))
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    rewards, mask = batch["env_rewards"], batch["response_mask"]
    prompts = batch["ids"][:, :agent.config.max_prompt_tokens]
    assert len(torch.unique(prompts, dim=0)) > 4  # one response per prompt: mostly different prompts
    lead = rewards - (rewards.sum() - rewards) / 7
    torch.testing.assert_close(batch["advantages"], lead[:, None] * mask, atol=1e-6, rtol=0)


def test_one_step_per_batch_is_on_policy_so_nothing_is_clipped(tiny_policy_dir, world_dir, tmp_path):
    agent = RLOOAgent(config(RLOOConfig, tiny_policy_dir, world_dir, tmp_path / "rloo", batch_size=8, lr=0.1))
    assert agent.config.minibatch_size == 8  # 0 means the whole batch
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    stats = agent.update(batch)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5) and stats["clip_frac"] == 0.0
    again = agent.update(batch)  # a second pass over the same batch (what a second epoch would be) is off-policy
    assert abs(again["ratio_mean"] - 1.0) > 1e-3


def test_bad_settings_are_clear_errors(tiny_policy_dir, world_dir, tmp_path):
    with pytest.raises(ValueError, match="RLOO has no critic"):
        config(RLOOConfig, tiny_policy_dir, world_dir, tmp_path / "r", advantage="gae")
    with pytest.raises(ValueError, match="REINFORCE has no critic"):
        config(REINFORCEConfig, tiny_policy_dir, world_dir, tmp_path / "r", advantage="gae")
    with pytest.raises(ValueError, match="must be >= 2 for a leave-one-out baseline"):
        config(REINFORCEConfig, tiny_policy_dir, world_dir, tmp_path / "r", batch_size=1)
    with pytest.raises(ValueError, match="group_size must divide batch_size"):
        config(REINFORCEConfig, tiny_policy_dir, world_dir, tmp_path / "r", group_size=5)


def scores(out):
    rows = (out / "train.csv").read_text().split()[1:]
    return [float(line.split(",")[header_index(out / "train.csv", "score")]) for line in rows]


@pytest.mark.slow
def test_reinforce_learns_a_trivially_learnable_reward(tiny_policy_dir, world_dir, tmp_path):
    """Shorter is better: the random tiny policy scores about -1.2; an agent that never updates stays there."""
    REINFORCEAgent(config(REINFORCEConfig, tiny_policy_dir, world_dir, tmp_path / "re", reward=brevity,
                          iterations=60, lr=2e-2)).train()
    history = scores(tmp_path / "re")
    assert history[0] < -0.9 and max(history[-5:]) > -0.4


@pytest.mark.slow
def test_rloo_learns_a_within_prompt_signal_that_reinforce_loses_in_prompt_offsets(tiny_policy_dir, world_dir,
                                                                                    tmp_path):
    """The same estimator, step and budget; RLOO's per-prompt baseline removes the offsets exactly, while
    REINFORCE's batch baseline leaves them in every advantage."""
    learned = {}
    for cls, agent in ((RLOOConfig, RLOOAgent), (REINFORCEConfig, REINFORCEAgent)):
        reward = BrevityBehindPromptOffsets()
        agent(config(cls, tiny_policy_dir, world_dir, tmp_path / cls.__name__, reward=reward, iterations=60,
                     lr=2e-2, final_eval_episodes=1)).train()
        learned[cls.__name__] = reward.brevity[:60]
    start = learned["RLOOConfig"][0]
    rloo, reinforce = (sum(v[-5:]) / 5 for v in learned.values())
    assert rloo > start + 0.5 and rloo > reinforce + 0.3
