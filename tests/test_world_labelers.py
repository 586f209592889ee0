"""The labeler panel: tunable agreement and a measurable spurious length preference."""

import json

import numpy as np

from rlhf_env.world import lexicon as lx
from rlhf_env.world.labelers import LabelerConfig, make_mistake, make_panel, pairwise_agreement, panel_agreement
from rlhf_env.world.stats import correct_first, padded_preference
from rlhf_env.world.tasks import FAMILIES


def candidate_pool(world, n=150, seed=0):
    """Per prompt: the reference, a mistaken answer, a padded answer and a truncated one."""
    rng = np.random.default_rng(seed)
    tasks = world["prompts"]["rm"]["task"][:n]
    pool = []
    for task in tasks:
        spec = json.loads(task)
        ref = FAMILIES[spec["family"]].reference(spec["spec"])
        pool.append([ref, make_mistake(rng, ref), ref + " " + lx.FILLERS[0], " ".join(ref.split()[:2])])
    return tasks, pool


def test_pairwise_agreement_counts_pairs():
    assert pairwise_agreement([0, 1, 2], [0, 1, 2]) == (3, 3)
    assert pairwise_agreement([0, 1, 2], [2, 1, 0]) == (0, 3)
    assert pairwise_agreement([0, 1, 2, 3], [1, 0, 2, 3]) == (5, 6)


def test_noise_tunes_inter_labeler_agreement(world):
    tasks, pool = candidate_pool(world)
    rates = []
    for noise in (0.01, 0.12, 1.0):
        panel = make_panel(0, LabelerConfig(noise=noise))
        rates.append(panel_agreement(np.random.default_rng(0), panel, tasks, pool))
    assert rates[0] > rates[1] > rates[2]
    assert rates[0] > 0.9 and rates[2] < 0.65


def test_labelers_prefer_padded_answers_only_through_their_length_bias(world):
    tasks = world["prompts"]["rm"]["task"][:300]
    biased = make_panel(0, LabelerConfig())
    unbiased = make_panel(0, LabelerConfig(length_bias=0.0))
    assert padded_preference(np.random.default_rng(0), biased, tasks) > 0.55
    assert padded_preference(np.random.default_rng(0), unbiased, tasks) < 0.5


def test_mistakes_change_the_answer():
    rng = np.random.default_rng(0)
    for answer in ("12 plus 7 is 19 .", "apple fig pear .", "zorbo lives in mirtown ."):
        assert make_mistake(rng, answer) != answer


def test_the_shipped_labelers_are_calibrated_like_instructgpts():
    """On the shipped comparisons: held-out labelers agree with training labelers about as often as
    InstructGPT's did (72.6 +- 1.5%); they prefer a padded answer a little over half the time (a spurious bias,
    real but minor); and they put a correct response above an incorrect one almost always."""
    from rlhf_env.models import DATA_DIR
    from rlhf_env.world.build import load_split

    test = load_split(DATA_DIR, "comparisons", "test").to_list()
    heldout = load_split(DATA_DIR, "comparisons", "test_heldout_labelers").to_list()
    agree = [pairwise_agreement(a["ranking"], b["ranking"], a["responses"]) for a, b in zip(test, heldout)]
    assert 0.70 <= sum(a for a, _ in agree) / sum(n for _, n in agree) <= 0.76

    tasks = load_split(DATA_DIR, "prompts", "rm")["task"][:1000]
    assert 0.55 <= padded_preference(np.random.default_rng(0), make_panel(0), tasks) <= 0.62

    rate, pairs = correct_first(test)
    assert pairs > 1000 and rate >= 0.95
