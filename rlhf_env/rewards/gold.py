"""The gold grader as an oracle reward, for experiments (no real RLHF system has one)."""

from __future__ import annotations

import numpy as np

from rlhf_env.rewards.base import Reward
from rlhf_env.world.grader import grade


class GoldReward(Reward):
    """Scores responses with the world's gold grader.

    The grader needs each prompt's ground truth, so prompts are looked up in the world's prompt
    datasets (all splits, by default the bundled ones); ``tasks`` can add or replace entries.
    """

    name = "gold"

    def __init__(self, data: str | None = None, tasks: dict[str, str] | None = None):
        from rlhf_env.models import DATA_DIR
        from rlhf_env.world.build import SPLITS, load_split

        self.tasks: dict[str, str] = {}
        for split in SPLITS:
            rows = load_split(data or DATA_DIR, "prompts", split)
            self.tasks.update(zip(rows["prompt"], rows["task"]))
        self.tasks.update(tasks or {})

    def score(self, prompts, responses, eos):
        missing = [p for p in prompts if p not in self.tasks]
        if missing:
            raise KeyError(f"the gold grader knows no task for prompt {missing[0]!r} (and {len(missing) - 1} more)")
        return np.array([grade(self.tasks[p], r, e).score for p, r, e in zip(prompts, responses, eos)])
