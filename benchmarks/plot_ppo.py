"""Plot PPO runs from their CSV logs: training score and KL, held-out gold score, RM score and win rate.

Each RUN is an ``rlhf ppo --out`` directory (``train.csv``, ``eval.csv``); ``LABEL=DIR`` names it.

    python benchmarks/plot_ppo.py runs/ppo beta0=runs/ppo-beta0 --out ppo.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_csv(path: Path) -> dict[str, list[float]]:
    if not path.exists():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows] for k in rows[0]} if rows else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, optionally LABEL=DIR")
    parser.add_argument("--out", default="ppo.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("train", "score", "training score (RM)"), ("train", "kl", "KL to reference (nats/sequence)"),
              ("eval", "rm_score", "held-out RM score"), ("eval", "gold", "held-out gold score"),
              ("eval", "win_rate_vs_reference", "held-out gold win rate vs reference"),
              ("eval", "length", "held-out response length (tokens)")]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    reference_drawn = set()
    for spec in args.runs:
        label, _, directory = spec.rpartition("=")
        directory = Path(directory)
        logs = {"train": read_csv(directory / "train.csv"), "eval": read_csv(directory / "eval.csv")}
        if not logs["train"]:
            raise SystemExit(f"{directory} has no train.csv: is it an `rlhf ppo --out` directory?")
        for ax, (kind, column, title) in zip(axes.flat, panels):
            log = logs[kind]
            if column in log:
                ax.plot(log["step"], log[column], marker="o" if kind == "eval" else None, label=label or directory.name)
            reference = 0.5 if column == "win_rate_vs_reference" else (log.get(f"ref_{column}") or [None])[0]
            if kind == "eval" and reference is not None and column not in reference_drawn:  # once per panel
                ax.axhline(reference, color="gray", linestyle="--", linewidth=1, label="reference (SFT)")
                reference_drawn.add(column)
            ax.set_title(title)
            ax.set_xlabel("PPO iteration")
    axes.flat[0].legend()
    axes.flat[3].legend()  # the held-out panels' reference line
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
