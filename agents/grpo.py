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

from dataclasses import dataclass

import torch

from agents.ppo import PPOAgent, PPOConfig
from agents.rl_math import group_normalized_advantages


@dataclass
class GRPOConfig(PPOConfig):
    """Optimise a policy with GRPO against a reward model, with a KL penalty to the SFT policy."""

    out: str = "runs/grpo"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy)."""

    def __post_init__(self):
        super().__post_init__()
        if self.advantage != "rloo" or self.group_size < 2:
            raise ValueError("GRPO has no critic and normalises within groups: keep advantage='rloo' (no value "
                             f"model) and group_size >= 2; got advantage={self.advantage!r}, "
                             f"group_size={self.group_size}")


class GRPOAgent(PPOAgent):
    def advantages(self, env_rewards, token_rewards, values, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Each response's z-score within its prompt's group, at every one of its tokens."""
        return group_normalized_advantages(env_rewards, self.config.group_size)[:, None] * mask, values


def grpo(config: GRPOConfig) -> dict:
    return GRPOAgent(config).train()
