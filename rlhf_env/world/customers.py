"""Simulated API customers and the labeler-written prompts.

Each customer has its own mix of task families (a Dirichlet draw, so most customers focus on a few
families) and its own phrasing style: a favourite template per family and a greeting prefix.

The split is fixed and documented: customers ``0 .. N_CUSTOMERS - N_HELDOUT - 1`` are training
customers; the last ``N_HELDOUT`` customers are held out. Held-out customers' prompts are used only
for evaluation, and any training prompt whose text equals a held-out prompt is dropped
(:func:`rlhf_env.world.build.build_prompts`), so no held-out prompt appears in SFT, RM or RL data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from rlhf_env.world.tasks import FAMILIES

N_CUSTOMERS = 60
N_HELDOUT = 12
HELDOUT_CUSTOMERS = tuple(range(N_CUSTOMERS - N_HELDOUT, N_CUSTOMERS))

PREFIXES = ("", "please ", "hi ! ", "quick task : ", "hello , ", "can you help ? ")
PROMPT_TEMPLATE = "Q: {instruction}\nA:"
"""How an instruction is shown to the model. Responses start with a space and end with EOS."""


@dataclass(frozen=True)
class Customer:
    id: str
    mix: tuple[float, ...]  # probability of each family, in FAMILIES order
    templates: tuple[int, ...]  # favourite template per family
    prefix: str
    loyalty: float  # probability of using the favourite template rather than a random one

    def write_prompt(self, rng: np.random.Generator) -> dict:
        names = list(FAMILIES)
        family = FAMILIES[names[int(rng.choice(len(names), p=self.mix))]]
        k = names.index(family.name)
        template = self.templates[k] if rng.random() < self.loyalty else int(rng.integers(len(family.templates)))
        return make_prompt(family.name, family.sample(rng), template, self.prefix, self.id, "customer")


def make_prompt(family: str, spec: dict, template: int, prefix: str, author: str, source: str) -> dict:
    """One prompt record, the row format of every prompt dataset of the world."""
    instruction = prefix + FAMILIES[family].instruction(spec, template)
    return {
        "prompt": PROMPT_TEMPLATE.format(instruction=instruction),
        "instruction": instruction,
        "family": family,
        "task": json.dumps({"family": family, "spec": spec}, sort_keys=True),
        "customer_id": author,
        "source": source,
    }


def make_customers(seed: int, n: int = N_CUSTOMERS) -> list[Customer]:
    rng = np.random.default_rng([seed, 1])
    n_fam = len(FAMILIES)
    return [
        Customer(
            id=f"customer-{i:02d}",
            mix=tuple(float(p) for p in rng.dirichlet(np.full(n_fam, 0.7))),
            templates=tuple(int(t) for t in rng.integers(0, 3, size=n_fam)),
            prefix=PREFIXES[int(rng.integers(len(PREFIXES)))],
            loyalty=float(rng.uniform(0.5, 0.95)),
        )
        for i in range(n)
    ]


def labeler_prompt(rng: np.random.Generator, labeler_id: int) -> dict:
    """A prompt written by a labeler: uniform over families, plain phrasing (as in the paper's
    "plain" labeler-written prompts)."""
    names = list(FAMILIES)
    family = names[int(rng.integers(len(names)))]
    return make_prompt(family, FAMILIES[family].sample(rng), int(rng.integers(len(FAMILIES[family].templates))), "",
                       f"labeler-{labeler_id:02d}", "labeler")
