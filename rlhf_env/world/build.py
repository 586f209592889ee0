"""Generate the embedded world's datasets deterministically from a seed, and save/load them.

Datasets (all Hugging Face ``datasets``; any dataset with the same columns can replace them):

- ``prompts``: a ``DatasetDict`` with splits ``sft``, ``valid``, ``rm``, ``ppo`` (training customers
  and labeler-written prompts) and ``heldout`` (held-out customers only). Columns: ``prompt`` (model
  input text), ``instruction``, ``family``, ``task`` (JSON ground truth for the gold grader),
  ``customer_id``, ``source`` (``customer`` or ``labeler``).
- ``demonstrations``: splits ``train`` (from ``sft`` prompts) and ``valid``: the prompt columns plus
  ``response`` and ``labeler_id``.
- ``pretrain``: one column, ``text``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset

from rlhf_env.world.corpus import make_corpus
from rlhf_env.world.customers import HELDOUT_CUSTOMERS, labeler_prompt, make_customers
from rlhf_env.world.labelers import N_HELDOUT_LABELERS, N_LABELERS, LabelerConfig, demonstrate, make_panel
from rlhf_env.world.storage import SPLITS, split_path


@dataclass
class WorldConfig:
    """Sizes and seed of the generated world."""

    seed: int = 0
    """Seed of every random draw (customers, prompts, labelers, corpus)."""
    n_sft: int = 6000
    """Prompts (with demonstrations) for supervised fine-tuning."""
    n_valid: int = 300
    """Validation prompts from training customers, used to select the SFT checkpoint by gold score."""
    n_rm: int = 4000
    """Prompts for reward-model comparisons."""
    n_ppo: int = 8000
    """Prompts for RL."""
    n_heldout: int = 1000
    """Prompts from held-out customers, for evaluation only."""
    labeler_prompt_fraction: float = 0.1
    """Fraction of training prompts written by labelers rather than customers."""
    n_documents: int = 14000
    """Documents in the web-text pretraining corpus."""
    labelers: LabelerConfig = field(default_factory=LabelerConfig)


def build_prompts(config: WorldConfig) -> DatasetDict:
    rng = np.random.default_rng([config.seed, 4])
    customers = make_customers(config.seed)
    train_customers = [c for i, c in enumerate(customers) if i not in HELDOUT_CUSTOMERS]
    heldout_customers = [customers[i] for i in HELDOUT_CUSTOMERS]
    n_train_labelers = N_LABELERS - N_HELDOUT_LABELERS

    heldout = [heldout_customers[int(rng.integers(len(heldout_customers)))].write_prompt(rng)
               for _ in range(config.n_heldout)]
    # Held-out prompts never appear in training data; validation prompts never appear in SFT data.
    banned = {row["prompt"] for row in heldout}
    splits = {"heldout": heldout}
    for split in ("valid", "sft", "rm", "ppo"):
        rows = []
        while len(rows) < getattr(config, f"n_{split}"):
            if rng.random() < config.labeler_prompt_fraction:
                row = labeler_prompt(rng, int(rng.integers(n_train_labelers)))
            else:
                row = train_customers[int(rng.integers(len(train_customers)))].write_prompt(rng)
            if row["prompt"] not in banned:
                rows.append(row)
        splits[split] = rows
        if split == "valid":
            banned |= {row["prompt"] for row in rows}
    return DatasetDict({s: Dataset.from_list(splits[s]) for s in SPLITS})


def build_demonstrations(config: WorldConfig, prompts: DatasetDict) -> DatasetDict:
    rng = np.random.default_rng([config.seed, 5])
    panel = make_panel(config.seed, config.labelers)[: N_LABELERS - N_HELDOUT_LABELERS]

    def write(split: str) -> Dataset:
        rows = []
        for row in prompts[split]:
            labeler = panel[int(rng.integers(len(panel)))]
            rows.append({**row, "response": demonstrate(rng, labeler, row["task"]), "labeler_id": labeler.id})
        return Dataset.from_list(rows)

    return DatasetDict({"train": write("sft"), "valid": write("valid")})


def build_world(config: WorldConfig) -> dict[str, DatasetDict | Dataset]:
    prompts = build_prompts(config)
    return {
        "prompts": prompts,
        "demonstrations": build_demonstrations(config, prompts),
        "pretrain": Dataset.from_dict({"text": make_corpus(config.seed, config.n_documents)}),
    }


def save_world(world: dict, directory: str | Path) -> None:
    """Write each dataset as parquet files, ``DIR/NAME/SPLIT.parquet``."""
    for name, data in world.items():
        splits = data if isinstance(data, DatasetDict) else {"train": data}
        for split, ds in splits.items():
            path = Path(directory) / name / f"{split}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_parquet(str(path))


def load_split(directory: str | Path, name: str, split: str) -> Dataset:
    """Load one split of one world dataset through ``datasets.load_dataset``."""
    path = split_path(directory, name, split)
    return load_dataset("parquet", data_files={split: str(path)}, split=split)
