"""REINFORCE with a baseline (Williams 1992): the simplest policy gradient, one response per prompt.

A response's advantage, at every one of its tokens, is its env reward (``score - beta * KL``) minus the
mean reward of **the rest of the batch** (a leave-one-out baseline over the batch, so it is unbiased). Each
prompt is seen once (``group_size`` 1), so the baseline cannot remove how easy a prompt is: next to RLOO,
which uses the same estimator with a baseline per prompt, this measures what sibling samples buy.

By default the whole batch makes one on-policy gradient step, where the clipped surrogate's gradient is
exactly REINFORCE's (see ``agents/rloo.py``). Everything else is the PPO agent's (``agents/ppo.py``).

    rlhf reinforce --out runs/reinforce --seed 0
"""

from __future__ import annotations

from agents.configs import REINFORCEConfig
from agents.rloo import RLOOAgent


class REINFORCEAgent(RLOOAgent):
    def baseline_group(self, batch_size: int) -> int:
        """The whole batch shares the baseline."""
        return batch_size


def reinforce(config: REINFORCEConfig) -> dict:
    return REINFORCEAgent(config).train()
