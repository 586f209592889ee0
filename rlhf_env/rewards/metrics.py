"""How good is a reward? Accuracy against labelers, agreement among labelers, correlation with gold,
and the spurious length preference it inherited.

    rlhf eval-rm --rm rm --json

Works for any reward that ``load_reward`` accepts, so a user's own RM is measured on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlhf_env.models import DATA_DIR
from rlhf_env.rewards import Reward, load_reward
from rlhf_env.world.build import load_split
from rlhf_env.world.grader import grade
from rlhf_env.world.labelers import padded_pair, pairwise_agreement


@dataclass
class RMEvalConfig:
    """Measure a reward against the world's held-out comparisons and the gold grader."""

    rm: str = "rm"
    """Reward: rm, rm-large, gold, or a sequence-classifier path / hub id."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (reads comparisons/*.parquet)."""
    device: str = "cpu"
    seed: int = 0
    json: bool = False
    """Print one JSON object instead of a table."""


def spearman(a, b) -> float:
    """Spearman rank correlation (average ranks for ties)."""

    def ranks(x):
        x = np.asarray(x, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # average the ranks of ties
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def score_comparisons(reward: Reward, rows: list[dict]) -> list[np.ndarray]:
    """The reward's score of every response of every row (one batched call)."""
    prompts = [row["prompt"] for row in rows for _ in row["responses"]]
    flat = reward(prompts, [r for row in rows for r in row["responses"]], [e for row in rows for e in row["eos"]])
    bounds = np.cumsum([0] + [len(row["responses"]) for row in rows])
    return [flat[a:b] for a, b in zip(bounds, bounds[1:])]


def ranking_accuracy(rows: list[dict], scores: list[np.ndarray]) -> tuple[float, int]:
    """Fraction of labeler-ranked pairs of distinct responses that the scores order the same way."""
    agree = total = 0
    for row, s in zip(rows, scores):
        by_score = [int(i) for i in np.argsort(-s, kind="stable")]
        got, n = pairwise_agreement(row["ranking"], by_score, row["responses"])
        agree, total = agree + got, total + n
    return agree / max(total, 1), total


def prefer_padded(reward: Reward, rows: list[dict], seed: int = 0) -> float:
    """How often the reward scores "reference + pleasantry" above the bare reference answer."""
    rng = np.random.default_rng(seed)
    pairs = [padded_pair(rng, row["task"]) for row in rows]
    prompts = [r["prompt"] for r in rows]
    refs, padded = [" " + ref for ref, _ in pairs], [" " + pad for _, pad in pairs]  # responses start with a space
    return float(np.mean(reward(prompts, padded) > reward(prompts, refs)))


def evaluate_reward(config: RMEvalConfig) -> dict:
    reward = load_reward(config.rm, device=config.device, data=config.data)
    test = load_split(config.data, "comparisons", "test").to_list()
    test_heldout = load_split(config.data, "comparisons", "test_heldout_labelers").to_list()
    customers = load_split(config.data, "comparisons", "heldout_customers").to_list()

    accuracy, n_pairs = ranking_accuracy(test, score_comparisons(reward, test))
    accuracy_heldout, _ = ranking_accuracy(test_heldout, score_comparisons(reward, test_heldout))
    agree = sum(pairwise_agreement(a["ranking"], b["ranking"], a["responses"])[0] for a, b in zip(test, test_heldout))
    scores = np.concatenate(score_comparisons(reward, customers))
    gold = np.array([grade(row["task"], r, e).score for row in customers for r, e in zip(row["responses"], row["eos"])])
    return {
        "rm": config.rm,
        "accuracy": accuracy,
        "accuracy_heldout_labelers": accuracy_heldout,
        "labeler_agreement": agree / max(n_pairs, 1),
        "gold_spearman": spearman(scores, gold),
        "gold_pearson": float(np.corrcoef(scores, gold)[0, 1]),
        "prefer_padded": prefer_padded(reward, customers, config.seed),
        "n": len(test),
        "n_pairs": n_pairs,
        "n_gold": len(gold),
    }
