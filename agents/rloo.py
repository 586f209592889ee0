"""RLOO (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): REINFORCE with a leave-one-out baseline.

The env shows each prompt to ``group_size`` sub-envs. A response's advantage, at every one of its tokens, is
its env reward (``score - beta * KL``) minus the mean of its siblings' rewards: an unbiased baseline per
prompt, with no critic and no rescaling. By default the whole batch makes **one on-policy gradient step**
(``minibatch_size`` 0 = the batch, one epoch). At ratio 1 nothing is clipped and the clipped surrogate's
gradient is REINFORCE's, ``-A * grad log pi(y)`` summed over each response's tokens, divided by the number of
response tokens in the batch (the loss is a mean over tokens, as PPO's), so the step size does not grow with
the batch's lengths. With smaller minibatches the later steps of an iteration are slightly off-policy and the
clip guards them, as in PPO.

What differs from the default ``rlhf ppo`` (which uses the same baseline, over 2 responses per prompt
instead of 8): one pass instead of two, one step instead of 16, the advantages are not divided by their std,
and no token target unless asked for. Everything else is the PPO agent's
(``agents/ppo.py``): the env, the sampler, evaluation, checkpoints and resume.

    rlhf rloo --out runs/rloo --seed 0
"""

from __future__ import annotations

import torch

from agents.configs import RLOOConfig
from agents.ppo import PPOAgent
from agents.rl_math import leave_one_out_advantages
from rlhf_env.training import distributed


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
