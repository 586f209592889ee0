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

from dataclasses import dataclass

from agents.rloo import RLOOAgent, RLOOConfig


@dataclass
class REINFORCEConfig(RLOOConfig):
    """Optimise a policy with REINFORCE (batch baseline, one response per prompt) against a reward model, with
    a KL penalty to the SFT policy."""

    out: str = "runs/reinforce"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy)."""
    group_size: int = 1
    """Responses per prompt in each iteration (1: every episode a different prompt)."""

    def check_groups(self) -> None:  # the baseline is the batch's, so any group size that divides it
        if self.group_size < 1 or self.batch_size % self.group_size or self.batch_size < 2:
            raise ValueError(f"group_size must divide batch_size ({self.batch_size}), which must be >= 2 for a "
                             f"leave-one-out baseline; got group_size={self.group_size}")


class REINFORCEAgent(RLOOAgent):
    def baseline_group(self, batch_size: int) -> int:
        """The whole batch shares the baseline."""
        return batch_size


def reinforce(config: REINFORCEConfig) -> dict:
    return REINFORCEAgent(config).train()
