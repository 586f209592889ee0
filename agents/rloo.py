"""RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): REINFORCE with a leave-one-out baseline.

The env shows each prompt to ``group_size`` sub-envs. A response's advantage, at every one of its tokens, is
its env reward (``score - beta * KL``) minus the mean of its siblings' rewards: an unbiased baseline per
prompt, with no critic and no rescaling. By default the whole batch makes **one on-policy gradient step**
(``minibatch_size`` 0 = the batch, one epoch). At ratio 1 nothing is clipped and the clipped surrogate's
gradient is REINFORCE's, ``-A * grad log pi(y)`` summed over each response's tokens, divided by the number of
response tokens in the batch (the loss is a mean over tokens, as PPO's), so the step size does not grow with
the batch's lengths. With smaller minibatches the later steps of an iteration are slightly off-policy and the
clip guards them, as in PPO.

What differs from the default ``rlhf ppo`` (which uses the same baseline): one pass instead of four, one
step instead of 32, and the advantages are not divided by their std. Everything else is the PPO agent's
(``agents/ppo.py``): the env, the sampler, evaluation, checkpoints and resume.

    rlhf rloo --out runs/rloo --seed 0
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents import distributed
from agents.ppo import PPOAgent, PPOConfig
from agents.rl_math import leave_one_out_advantages


@dataclass
class RLOOConfig(PPOConfig):
    """Optimise a policy with RLOO (REINFORCE, leave-one-out baseline) against a reward model, with a KL
    penalty to the SFT policy."""

    out: str = "runs/rloo"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy)."""
    minibatch_size: int = 0
    """Episodes per gradient step; 0: the whole batch (one on-policy step per iteration)."""
    ppo_epochs: int = 1
    """Passes over each iteration's episodes (1: on-policy REINFORCE)."""
    lr: float = 3e-4
    """Peak learning rate, decayed linearly to 0."""

    def __post_init__(self):
        if self.minibatch_size == 0:
            self.minibatch_size = self.batch_size
        super().__post_init__()
        if self.advantage != "rloo":
            name = type(self).__name__.removesuffix("Config")  # RLOO, REINFORCE
            raise ValueError(f"{name} has no critic: keep advantage='rloo', got {self.advantage!r}")


class RLOOAgent(PPOAgent):
    def baseline_group(self, batch_size: int) -> int:
        """How many consecutive responses of the (global) batch share a leave-one-out baseline: a prompt's group."""
        return self.config.group_size

    def advantages(self, env_rewards, token_rewards, values, mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Each response's lead over the mean of the others in its baseline group, at every one of its tokens.
        The leads are computed over the global batch (every rank's rewards), so a group may span the ranks."""
        rewards = distributed.gather(env_rewards)
        lead = leave_one_out_advantages(rewards, self.baseline_group(len(rewards)))
        return distributed.local(lead)[:, None] * mask, values


def rloo(config: RLOOConfig) -> dict:
    return RLOOAgent(config).train()
