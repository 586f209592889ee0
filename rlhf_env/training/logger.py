"""Metrics to TensorBoard and CSV, one CSV per kind of row (``train.csv``, ``eval.csv``)."""

from __future__ import annotations

import csv
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class RunLogger:
    def __init__(self, directory: str | Path, resume_step: int = 0):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Rows logged after the step we (re)start from belong to a run that crashed or is redone.
        for path in self.directory.glob("*.csv"):
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            kept = [r for r in rows if int(r["step"]) <= resume_step]
            self._write(path, kept, rows[0].keys() if rows else ["step"], mode="w")
        self.tb = SummaryWriter(str(self.directory / "tb"))

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        for key, value in metrics.items():
            self.tb.add_scalar(f"{kind}/{key}", value, step)
        path = self.directory / f"{kind}.csv"
        row = {"step": step, **metrics}
        fields = list(row)
        if path.exists():
            with open(path, newline="") as f:
                fields = next(csv.reader(f), fields)
        self._write(path, [row], fields, mode="a" if path.exists() else "w")

    @staticmethod
    def _write(path: Path, rows, fields, mode: str) -> None:
        with open(path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
            if mode == "w":
                writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        self.tb.close()
