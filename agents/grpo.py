"""GRPO (Shao et al. 2024, DeepSeekMath): PPO's clipped ratio with no critic, where a response's advantage is
its reward's z-score among the ``group_size`` responses to its prompt (``rl_math.group_normalized_advantages``).

Everything else is the PPO agent's (``agents/ppo.py``): the env and its per-prompt groups, the sampler, the
minibatch epochs, the clipped loss, evaluation, checkpoints and resume. Only the advantages differ, which
makes the two directly comparable. One deliberate difference from DeepSeekMath: the KL penalty to the
reference is paid in the env's reward (``score - beta * KL``, as for PPO), so the group normalisation sees it
with the score, instead of a separate KL term in the loss.

    rlhf grpo --out runs/grpo --seed 0
"""

from __future__ import annotations

import torch

from agents.configs import GRPOConfig
from agents.ppo import PPOAgent
from agents.rl_math import group_normalized_advantages


class GRPOAgent(PPOAgent):
    def advantages(self, env_rewards, token_rewards, values, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Each response's z-score within its prompt's group, at every one of its tokens."""
        return group_normalized_advantages(env_rewards, self.config.group_size)[:, None] * mask, values


def grpo(config: GRPOConfig) -> dict:
    return GRPOAgent(config).train()
