"""The gold grader, and the labelers' noise-free judgement, as oracle rewards for experiments (no real RLHF
system has either)."""

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
        return np.array([grade(task, r, e).score for task, r, e in zip(self.lookup(prompts), responses, eos)])

    def lookup(self, prompts) -> list[str]:
        missing = [p for p in prompts if p not in self.tasks]
        if missing:
            raise KeyError(f"the {self.name} oracle knows no task for prompt {missing[0]!r} "
                           f"(and {len(missing) - 1} more)")
        return [self.tasks[p] for p in prompts]


class LabelerReward(GoldReward):
    """The labeler panel's mean utility, noise-free (``rlhf_env.world.labelers.panel_utility``): what a perfect
    reward model of these labelers would score, spurious length bias included."""

    name = "labelers"

    def __init__(self, data: str | None = None, tasks: dict[str, str] | None = None, seed: int = 0):
        from rlhf_env.world.labelers import make_panel

        super().__init__(data, tasks)
        self.panel = make_panel(seed)

    def score(self, prompts, responses, eos):
        from rlhf_env.world.labelers import panel_utility

        return np.concatenate([panel_utility(self.panel, task, [r], [e])
                               for task, r, e in zip(self.lookup(prompts), responses, eos)])
