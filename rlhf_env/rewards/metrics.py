"""How good is a reward? Accuracy against labelers, agreement among labelers, correlation with gold,
the spurious length preference it inherited, and whether it can tell a correct response from an
incorrect one when length does not give the answer away.

    rlhf eval-rm --rm rm --json

Works for any reward that ``load_reward`` accepts, so a user's own RM is measured on the same data.
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf_env.configs import RMEvalConfig
from rlhf_env.rewards import Reward, load_reward
from rlhf_env.rewards.likelihood import LikelihoodReward
from rlhf_env.sampling import sample_n
from rlhf_env.world.build import load_split
from rlhf_env.world.grader import Grade, grade, tokenize
from rlhf_env.world.labelers import padded_pair, pairwise_agreement


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


def completions(rows: list[dict]) -> tuple[list[str], list[str], list[bool]]:
    """(prompts, responses, eos flags) of every completion of comparison rows, in row order."""
    return ([row["prompt"] for row in rows for _ in row["responses"]], [r for row in rows for r in row["responses"]],
            [e for row in rows for e in row["eos"]])


def by_row(flat: np.ndarray, rows: list[dict]) -> list[np.ndarray]:
    """Scores of ``completions(rows)``, flat, cut back into one array per row."""
    bounds = np.cumsum([0] + [len(row["responses"]) for row in rows])
    return [flat[a:b] for a, b in zip(bounds, bounds[1:])]


def score_comparisons(reward: Reward, rows: list[dict]) -> list[np.ndarray]:
    """The reward's score of every response of every row (one batched call)."""
    return by_row(reward(*completions(rows)), rows)


def row_agreements(rows: list[dict], scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per row: how many of its labeler-ranked pairs of distinct responses the scores order the same way, and how
    many such pairs it has."""
    counts = [pairwise_agreement(row["ranking"], [int(i) for i in np.argsort(-s, kind="stable")], row["responses"])
              for row, s in zip(rows, scores)]
    return np.array([c[0] for c in counts], dtype=np.float64), np.array([c[1] for c in counts], dtype=np.float64)


def labeler_accuracies(reward: Reward, rows: list[dict]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per row, how many of its labeler-ranked pairs the reward orders their way (``row_agreements``): as the
    reward (``"reward"``), and, for a likelihood RM, as it was fitted, with its length term (``"with_length_term"``,
    from the same forward); and each row's pairs."""
    if isinstance(reward, LikelihoodReward):
        plain, fitted = reward.score_with_length_term(*completions(rows))
        scored = {"reward": plain, "with_length_term": fitted}
    else:
        scored = {"reward": reward(*completions(rows))}
    counts = {name: row_agreements(rows, by_row(flat, rows)) for name, flat in scored.items()}
    return {name: agree for name, (agree, _) in counts.items()}, counts["reward"][1]


def ranking_accuracy(rows: list[dict], scores: list[np.ndarray]) -> tuple[float, int]:
    """Fraction of labeler-ranked pairs of distinct responses that the scores order the same way."""
    agree, pairs = row_agreements(rows, scores)
    return float(agree.sum() / max(pairs.sum(), 1)), int(pairs.sum())


def gap_interval(labelers: np.ndarray, reward: np.ndarray, pairs: np.ndarray, seed: int = 0, draws: int = 2000
                 ) -> tuple[float, float]:
    """95% interval of (labeler agreement - reward accuracy) over the comparisons: rows drawn with replacement
    (a row's pairs share its responses, so rows, not pairs, are the independent draws). Per row: the pairs the
    other labeler ordered the same way, those the reward did, and the row's pairs."""
    rows = np.random.default_rng(seed).integers(0, len(pairs), (draws, len(pairs)))
    gaps = (labelers[rows].sum(1) - reward[rows].sum(1)) / np.maximum(pairs[rows].sum(1), 1)
    return float(np.percentile(gaps, 2.5)), float(np.percentile(gaps, 97.5))


def prefer_padded(reward: Reward, rows: list[dict], seed: int = 0) -> float:
    """How often the reward scores "reference + pleasantry" above the bare reference answer."""
    rng = np.random.default_rng(seed)
    pairs = [padded_pair(rng, row["task"]) for row in rows]
    prompts = [r["prompt"] for r in rows]
    refs, padded = [" " + ref for ref, _ in pairs], [" " + pad for _, pad in pairs]  # responses start with a space
    return float(np.mean(reward(prompts, padded) > reward(prompts, refs)))


def correctness_accuracy(rows: list[dict], scores: list[np.ndarray], grades: list[list[Grade]]
                         ) -> dict[str, tuple[float, int]]:
    """How often the reward scores the correct response of a pair above the incorrect one (gold's task
    success), by whether the correct one is longer, as long, or shorter (in the grader's words).

    A tie counts half. A reward that has only learned "longer is better" scores 1, 0.5 and 0 on these;
    one that checks the answer scores near 1 on all three. Returns ``{relation: (accuracy, pairs)}``.
    """
    counts = {"longer": [0, 0], "same_length": [0, 0], "shorter": [0, 0]}
    for row, s, g in zip(rows, scores, grades):
        lengths = [len(tokenize(r)) for r in row["responses"]]
        for i in range(len(g)):
            for j in range(len(g)):
                if g[i].success and not g[j].success:  # i correct, j not
                    relation = ("longer" if lengths[i] > lengths[j] else "shorter" if lengths[i] < lengths[j]
                                else "same_length")
                    counts[relation][0] += 0.5 if np.isclose(s[i], s[j]) else float(s[i] > s[j])
                    counts[relation][1] += 1
    return {k: (right / max(n, 1), n) for k, (right, n) in counts.items()}


def spearman_within_prompt(scores: list[np.ndarray], grades: list[list[Grade]]) -> float:
    """Mean over prompts of the Spearman correlation between the reward and gold among that prompt's
    responses: does the reward tell a better answer from a worse one to the *same* prompt? (A pooled
    correlation also rewards knowing which prompts are easy, which is of no use to a policy.) Prompts whose
    responses gold scores all alike are skipped; a reward that scores them all alike counts 0."""
    rhos = [spearman(s, [g.score for g in row]) for s, row in zip(scores, grades)
            if np.ptp([g.score for g in row]) > 1e-9]
    return float(np.mean(rhos)) if rhos else 0.0


def draw_samples(model, tokenizer, rows, n: int, seed: int = 0
                 ) -> tuple[list[str], list[str], list[bool], list[list[Grade]]]:
    """n samples of ``model`` (temperature 1) per row's prompt, flat and row by row: (prompts, texts, eos
    flags), each P * n long, and their gold grades (P lists of n)."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    prompts, texts, eos = sample_n(model, tokenizer, list(rows["prompt"]), n, generator, batch_size=32 * n)
    grades = [grade(t, x, e) for t, x, e in zip([t for t in rows["task"] for _ in range(n)], texts, eos)]
    return prompts, texts, eos, [grades[i:i + n] for i in range(0, len(grades), n)]


def score_samples(reward: Reward, model, tokenizer, rows, n: int, seed: int = 0
                  ) -> tuple[np.ndarray, list[list[Grade]]]:
    """``draw_samples``' samples: the reward's scores (P, n) and their gold grades (P lists of n)."""
    prompts, texts, eos, grades = draw_samples(model, tokenizer, rows, n, seed)
    return reward(prompts, texts, eos).reshape(len(grades), n), grades


def best_of_n(reward: Reward, policy: str, rows, ns: list[int], seed: int = 0, device: str = "cpu") -> dict:
    """Let the reward pick the best of n samples of ``policy`` on each row's prompt, and judge the pick by
    gold against one sample of the same policy (``rlhf eval``'s, seed ``seed``): the win rate that reward
    buys with no training. ``gold_best_of_n`` is the same with gold itself picking (the frontier), and
    ``sampled_gold`` the mean gold of a single sample."""
    from rlhf_env.evaluation import generate_and_grade, win_rate
    from rlhf_env.models import load_policy

    model, tokenizer = load_policy(policy, device)
    _, baseline, _ = generate_and_grade(model, tokenizer, rows, seed)
    scores, grades = score_samples(reward, model, tokenizer, rows, max(ns), seed + 1)
    gold = np.array([[g.score for g in row] for row in grades])
    out = {"sampled_gold": float(gold[:, 0].mean())}
    for n in ns:
        for name, by in ((f"best_of_{n}", scores), (f"gold_best_of_{n}", gold)):
            picked = [row[j] for row, j in zip(grades, by[:, :n].argmax(1))]
            out[f"{name}_win_rate"] = win_rate(picked, baseline)
            if name.startswith("best"):
                out[f"{name}_gold"] = float(np.mean([g.score for g in picked]))
    return out


def evaluate_reward(config: RMEvalConfig) -> dict:
    reward = load_reward(config.rm, device=config.device, data=config.data)
    test = load_split(config.data, "comparisons", "test").to_list()
    test_heldout = load_split(config.data, "comparisons", "test_heldout_labelers").to_list()
    customers = load_split(config.data, "comparisons", "heldout_customers").to_list()

    right, pairs = labeler_accuracies(reward, test)
    right_heldout, pairs_heldout = labeler_accuracies(reward, test_heldout)
    labelers = np.array([pairwise_agreement(a["ranking"], b["ranking"], a["responses"])[0]
                         for a, b in zip(test, test_heldout)], dtype=np.float64)  # the other labeler, same pairs
    with_length = {}
    if "with_length_term" in right:  # a likelihood RM, fitted with a length term that its reward drops
        with_length = {"accuracy_with_length_term": float(right["with_length_term"].sum() / pairs.sum()),
                       "accuracy_heldout_labelers_with_length_term":
                           float(right_heldout["with_length_term"].sum() / pairs_heldout.sum()),
                       "agreement_gap_interval_with_length_term": gap_interval(labelers, right["with_length_term"],
                                                                               pairs, config.seed)}
    customer_scores = score_comparisons(reward, customers)
    grades = [[grade(row["task"], r, e) for r, e in zip(row["responses"], row["eos"])] for row in customers]
    scores, gold = np.concatenate(customer_scores), np.array([g.score for row in grades for g in row])
    correct = correctness_accuracy(customers, customer_scores, grades)
    ns = [int(n) for n in config.best_of_n.split(",") if n.strip()]
    picked = {}
    if ns:
        from rlhf_env.evaluation import eval_prompts

        rows = eval_prompts(config.data, "heldout", config.episodes, config.seed)
        picked = best_of_n(reward, config.policy, rows, ns, config.seed, config.device)
    return {
        "rm": config.rm,
        "accuracy": float(right["reward"].sum() / pairs.sum()),
        "accuracy_heldout_labelers": float(right_heldout["reward"].sum() / pairs_heldout.sum()),
        "agreement_gap_interval": gap_interval(labelers, right["reward"], pairs, config.seed),
        **with_length,
        "labeler_agreement": float(labelers.sum() / pairs.sum()),
        "gold_spearman": spearman(scores, gold),
        "gold_pearson": float(np.corrcoef(scores, gold)[0, 1]),
        "spearman_within_prompt": spearman_within_prompt(customer_scores, grades),
        "prefer_padded": prefer_padded(reward, customers, config.seed),
        **{f"correct_over_incorrect_{k}": acc for k, (acc, _) in correct.items()},
        **{f"n_correct_pairs_{k}": n for k, (_, n) in correct.items()},
        "n": len(test),
        "n_pairs": int(pairs.sum()),
        "n_gold": len(gold),
        **picked,
    }
