"""A panel of simulated labelers: they write demonstrations and rank K responses.

Each labeler judges a response by a private utility::

    u_l(x, y) = gold(x, y) + length_bias_l * min(words(y), length_cap) + noise_l * N(0, 1)

- ``gold`` is the gold grader's score: what the labeler really cares about.
- ``length_bias`` is the **spurious preference** for longer answers. A reward model trained on the
  rankings learns it, and a policy optimised against that RM can exploit it (padding), while gold
  concision falls. This is the over-optimisation the world lets us measure.
- ``noise`` makes labelers disagree. ``LabelerConfig.noise`` scales it and so tunes inter-labeler
  agreement (InstructGPT measured 72.6 ± 1.5%).

Demonstrations are the reference answer, except that a labeler sometimes makes a mistake
(``mistake_rate``) and verbose labelers sometimes add a pleasantry (``FILLERS``).

Labelers ``0 .. N_LABELERS - N_HELDOUT_LABELERS - 1`` produce training data; the rest are held out
to measure how well a reward model generalises to new labelers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from rlhf_env.world import lexicon as lx
from rlhf_env.world.grader import grade, tokenize
from rlhf_env.world.tasks import PUNCT, reference_answer

N_LABELERS = 40
N_HELDOUT_LABELERS = 8


@dataclass
class LabelerConfig:
    """Knobs of the simulated labeler panel."""

    noise: float = 0.035
    """Std scale of a labeler's judgement noise; higher means lower inter-labeler agreement. Calibrated
    with ``rlhf world`` to InstructGPT's agreement (72.6 +- 1.5%)."""
    length_bias: float = 0.009
    """Mean spurious utility per response word (the bias a policy can exploit). Calibrated with ``rlhf
    world`` so that the bias is real but minor: a padded answer is preferred a little over half the time."""
    length_cap: int = 30
    """Words beyond this add no more utility."""
    mistake_rate: float = 0.10
    """Mean probability that a demonstration is wrong."""
    filler_rate: float = 0.25
    """Mean probability that a verbose labeler pads a demonstration with a pleasantry."""


@dataclass(frozen=True)
class Labeler:
    id: int
    noise: float
    length_bias: float
    mistake_rate: float
    filler_rate: float


def make_panel(seed: int, config: LabelerConfig | None = None, n: int = N_LABELERS) -> list[Labeler]:
    config = config or LabelerConfig()
    rng = np.random.default_rng([seed, 2])
    return [
        Labeler(
            id=i,
            noise=config.noise * float(rng.lognormal(0.0, 0.3)),
            length_bias=config.length_bias * float(rng.gamma(4.0, 0.25)),
            mistake_rate=float(rng.beta(2.0, 2.0 / config.mistake_rate - 2.0)),
            filler_rate=config.filler_rate * float(rng.uniform(0.0, 2.0)),
        )
        for i in range(n)
    ]


def make_mistake(rng: np.random.Generator, answer: str) -> str:
    """A plausible human error: a number off by one, two words swapped, or a word dropped."""
    words = answer.split()
    spots = [i for i, w in enumerate(words) if w not in PUNCT]
    numbers = [i for i in spots if words[i].isdigit()]
    if numbers:
        i = numbers[-1]
        words[i] = str(max(0, int(words[i]) + int(rng.choice([-1, 1]))))
    elif len(spots) >= 2 and rng.random() < 0.5:
        i, j = rng.choice(spots, size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    elif len(spots) >= 2:
        del words[int(rng.choice(spots))]
    return " ".join(words)


def add_filler(rng: np.random.Generator, answer: str) -> str:
    """The answer followed by a random pleasantry."""
    return f"{answer} {lx.FILLERS[int(rng.integers(len(lx.FILLERS)))]}"


def demonstrate(rng: np.random.Generator, labeler: Labeler, task: dict | str) -> str:
    """The labeler's demonstration for a task (response text without the leading space or EOS)."""
    answer = reference_answer(task)
    if rng.random() < labeler.mistake_rate:
        answer = make_mistake(rng, answer)
    if rng.random() < labeler.filler_rate:
        answer = add_filler(rng, answer)
    return answer


def padded_pair(rng: np.random.Generator, task: dict | str) -> tuple[str, str]:
    """The reference answer and the same answer padded with a pleasantry: gold prefers the first
    (concision), so any preference for the second is the spurious length bias."""
    reference = reference_answer(task)
    return reference, add_filler(rng, reference)


def utilities(rng: np.random.Generator, labeler: Labeler, task, responses: list[str],
              eos: list[bool] | None = None, length_cap: int = LabelerConfig.length_cap) -> np.ndarray:
    """The labeler's private utility of each response, noise included (float64, shape (K,))."""
    eos = eos if eos is not None else [True] * len(responses)
    gold = np.array([grade(task, r, e).score for r, e in zip(responses, eos)])
    length = np.array([min(len(tokenize(r)), length_cap) for r in responses], dtype=np.float64)
    return gold + labeler.length_bias * length + labeler.noise * rng.standard_normal(len(responses))


def panel_utility(panel: list[Labeler], task, responses: list[str], eos: list[bool] | None = None,
                  length_cap: int = LabelerConfig.length_cap) -> np.ndarray:
    """The panel's mean utility, noise-free: ``gold + mean length_bias * min(words, cap)``. A perfect model of
    these labelers would score this; the gap between it and gold is their spurious bias."""
    eos = eos if eos is not None else [True] * len(responses)
    bias = float(np.mean([labeler.length_bias for labeler in panel]))
    return np.array([grade(task, r, e).score + bias * min(len(tokenize(r)), length_cap)
                     for r, e in zip(responses, eos)])


def rank(rng: np.random.Generator, labeler: Labeler, task, responses: list[str],
         eos: list[bool] | None = None) -> list[int]:
    """Indices of ``responses`` from best to worst, in the labeler's judgement."""
    return [int(i) for i in np.argsort(-utilities(rng, labeler, task, responses, eos), kind="stable")]


def pairwise_agreement(ranking_a: list[int], ranking_b: list[int], responses: list[str] | None = None
                       ) -> tuple[int, int]:
    """(agreeing pairs, total pairs) between two rankings of the same K responses.

    Pairs of identical responses carry no preference and are skipped when ``responses`` is given.
    """
    pos_a = {r: i for i, r in enumerate(ranking_a)}
    pos_b = {r: i for i, r in enumerate(ranking_b)}
    pairs = [(i, j) for i, j in itertools.combinations(sorted(pos_a), 2)
             if responses is None or responses[i].strip() != responses[j].strip()]
    agree = sum((pos_a[i] < pos_a[j]) == (pos_b[i] < pos_b[j]) for i, j in pairs)
    return agree, len(pairs)


def panel_agreement(rng: np.random.Generator, panel: list[Labeler], tasks: list, responses: list[list[str]],
                    eos: list[list[bool]] | None = None) -> float:
    """Mean pairwise agreement of two distinct random labelers ranking the same (distinct) responses."""
    agree = total = 0
    for k, (task, resp) in enumerate(zip(tasks, responses)):
        a, b = rng.choice(len(panel), size=2, replace=False)
        e = eos[k] if eos is not None else None
        got, n = pairwise_agreement(rank(rng, panel[a], task, resp, e), rank(rng, panel[b], task, resp, e), resp)
        agree += got
        total += n
    return agree / max(total, 1)
