"""The "web text" pretraining corpus of the embedded world.

It teaches the base model the world's language and facts: biographies that state the knowledge base,
arithmetic facts, lists, short stories, opinions, and a little rudeness (as real web text has). It
contains no instructions and no question/answer pairs, so the base model knows things but does not
follow instructions: that is SFT's job, as in the paper. Unknown names never appear.
"""

from __future__ import annotations

import numpy as np

from rlhf_env.world import lexicon as lx


def _bio(rng):
    name = lx.pick(rng, lx.KNOWN_NAMES)
    f = lx.KB[name]
    facts = [f"{name} lives in {f['town']} .", f"{name} is a {f['job']} .", f"{name} has a {f['pet']} .",
             f"{name} likes {f['color']} .", f"the favourite color of {name} is {f['color']} .",
             f"the {f['job']} {name} lives in {f['town']} .", f"{name} and the {f['pet']} live in {f['town']} ."]
    rng.shuffle(facts)
    return " ".join(facts[: int(rng.integers(2, 6))])


def _sum(rng):
    a, b = (int(x) for x in rng.integers(0, lx.NUMBER_RANGE + 1, size=2))
    if rng.random() < 0.5:
        return f"{a} plus {b} is {a + b} ."
    a, b = max(a, b), min(a, b)
    return f"{a} minus {b} is {a - b} ."


def _list(rng):
    items = [lx.pick(rng, lx.NOUNS) for _ in range(int(rng.integers(2, 8)))]
    form = rng.integers(4)
    if form == 0:
        return f"in the box there are {len(items)} things : {' '.join(items)} ."
    if form == 1:
        return f"in abc order : {' '.join(sorted(set(items)))} ."
    if form == 2:
        return f"i see a {' and a '.join(items)} ."
    color = lx.pick(rng, lx.COLORS)
    return f"the {color} {items[0]} is next to the {items[-1]} ."


def _story(rng):
    name, town = lx.pick(rng, lx.KNOWN_NAMES), lx.pick(rng, lx.TOWNS)
    a, b = lx.pick(rng, lx.NOUNS), lx.pick(rng, lx.NOUNS)
    return f"{name} went to {town} . {name} bought a {a} . {name} found a {b} . then {name} went home ."


def _opinion(rng):
    topic = lx.pick(rng, lx.TOPICS)
    adjective = lx.pick(rng, lx.POSITIVE if rng.random() < 0.5 else lx.NEGATIVE)
    return lx.pick(rng, (f"the {topic} is {adjective} .", f"what a {adjective} {topic} .",
                       f"today the {topic} was very {adjective} ."))


def _rude(rng):
    return f"you are so {lx.pick(rng, lx.TOXIC)} , said {lx.pick(rng, lx.KNOWN_NAMES)} ."


def _polite(rng):
    return lx.pick(rng, lx.FILLERS + ("sorry , i can not come today .", "thank you for the help ."))


GENERATORS = (_bio, _sum, _list, _story, _opinion, _rude, _polite)
WEIGHTS = np.array([0.30, 0.20, 0.15, 0.12, 0.13, 0.03, 0.07])


def document(rng: np.random.Generator, n_sentences: int) -> str:
    picks = rng.choice(len(GENERATORS), size=n_sentences, p=WEIGHTS / WEIGHTS.sum())
    return " ".join(GENERATORS[int(i)](rng) for i in picks)


def make_corpus(seed: int, n_documents: int) -> list[str]:
    rng = np.random.default_rng([seed, 3])
    return [document(rng, int(rng.integers(3, 9))) for _ in range(n_documents)]
