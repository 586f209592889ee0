"""Where the world's datasets are stored: one parquet file per split, ``DIRECTORY/NAME/SPLIT.parquet``.

No ``datasets`` import here (it takes most of a second): the envs read their prompts with pyarrow alone.
"""

from __future__ import annotations

from pathlib import Path

SPLITS = ("sft", "valid", "rm", "ppo", "heldout")  # the prompt splits


def split_path(directory: str | Path, name: str, split: str) -> Path:
    """The parquet file of one split of one world dataset; a clear error if there is none."""
    path = Path(directory) / name / f"{split}.parquet"
    if not path.parent.is_dir():
        raise FileNotFoundError(f"no dataset {name!r} in {directory} (expected {path.parent}/SPLIT.parquet)")
    if not path.exists():
        known = sorted(p.stem for p in (Path(directory) / name).glob("*.parquet"))
        raise ValueError(f"unknown split {split!r} of dataset {name!r}; known splits: {known}")
    return path


def read_split(directory: str | Path, name: str, split: str):
    """One split as a ``pyarrow.Table``."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(split_path(directory, name, split)).read()
