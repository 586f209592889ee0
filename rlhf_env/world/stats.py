"""Measurements of the embedded world itself: split sizes, family mix, labeler agreement and bias.

    rlhf world --json
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np

from rlhf_env.world.build import SPLITS, WorldConfig, load_split
from rlhf_env.world.customers import HELDOUT_CUSTOMERS, N_CUSTOMERS
from rlhf_env.world.grader import grade
from rlhf_env.world.labelers import LabelerConfig, make_panel, padded_pair, panel_agreement, rank


@dataclass
class WorldStatsConfig:
    """Describe the world and measure its labeler panel."""

    data: str = ""
    """Directory of the world's datasets (empty: the bundled one)."""
    policy: str = "sft"
    """Policy whose samples the labelers rank to measure agreement (bundled name or path)."""
    n_prompts: int = 300
    """Prompts (from the rm split) used for the agreement and bias measurements."""
    seed: int = 0
    noise: float = LabelerConfig.noise
    """Labeler noise scale (tunes agreement)."""
    length_bias: float = LabelerConfig.length_bias
    """Mean spurious utility per word."""
    json: bool = False


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


def world_stats(config: WorldStatsConfig) -> dict:
    from rlhf_env.models import DATA_DIR, load_policy
    from rlhf_env.world.comparisons import sample_candidates

    data = config.data or str(DATA_DIR)
    splits = {s: load_split(data, "prompts", s) for s in SPLITS}
    rows = splits["rm"].shuffle(seed=config.seed).select(range(min(config.n_prompts, len(splits["rm"]))))
    panel = make_panel(WorldConfig().seed, LabelerConfig(noise=config.noise, length_bias=config.length_bias))
    rng = np.random.default_rng(config.seed)
    model, tokenizer = load_policy(config.policy)
    candidates = sample_candidates(model, tokenizer, list(rows["prompt"]), config.seed)
    tasks, pool, eos = list(rows["task"]), [c[0] for c in candidates], [c[1] for c in candidates]
    return {
        "customers": N_CUSTOMERS,
        "heldout_customers": [f"customer-{i:02d}" for i in HELDOUT_CUSTOMERS],
        "splits": {s: len(d) for s, d in splits.items()},
        "labeler_written_fraction": {s: float(np.mean(np.array(d["source"]) == "labeler")) for s, d in splits.items()},
        "families": dict(sorted(Counter(splits["heldout"]["family"]).items())),
        "labelers": len(panel),
        "labeler_agreement": panel_agreement(rng, panel, tasks, pool, eos),
        "agreement_pool": f"{config.policy} samples, K=4..9 distinct per prompt, {len(tasks)} prompts",
        "prefer_padded": padded_preference(rng, panel, tasks),
        "correct_first": correct_first([
            {"task": t, "responses": r, "eos": e, "ranking": rank(rng, panel[int(rng.integers(len(panel)))], t, r, e)}
            for t, r, e in zip(tasks, pool, eos)])[0],
    }
