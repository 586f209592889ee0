"""Measurements of the labelers: their bias towards padding and how often they put a correct answer first.
``rlhf world`` (``rlhf_env.stages.comparisons.world_stats``) reports them with the splits and the labelers'
agreement on SFT samples."""

from __future__ import annotations

import itertools

import numpy as np

from rlhf_env.world.grader import grade
from rlhf_env.world.labelers import padded_pair, rank


def padded_preference(rng, panel, tasks) -> float:
    """How often a labeler ranks "reference + pleasantry" above the bare reference answer.

    Gold always prefers the bare answer (it is more concise), so any rate above 0.5 is the labelers'
    spurious length preference.
    """
    wins = []
    for task in tasks:
        ref, padded = padded_pair(rng, task)
        labeler = panel[int(rng.integers(len(panel)))]
        wins.append(rank(rng, labeler, task, [ref, padded])[0] == 1)
    return float(np.mean(wins))


def correct_first(rows) -> tuple[float, int]:
    """How often a ranking puts a correct response (gold's task success) above an incorrect one, over every
    such pair of each row (``task``, ``responses``, ``eos``, ``ranking``); and the number of pairs. The
    labelers' real judgement is gold, so this should be near 1: noise and length bias must not overturn
    correctness."""
    right = total = 0
    for row in rows:
        success = [grade(row["task"], r, e).success for r, e in zip(row["responses"], row["eos"])]
        position = {r: i for i, r in enumerate(row["ranking"])}
        for i, j in itertools.permutations(range(len(success)), 2):
            if success[i] and not success[j]:
                right, total = right + (position[i] < position[j]), total + 1
    return right / max(total, 1), total
