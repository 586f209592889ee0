"""Is it the labels or the model? The shipped RM recipe, trained on the same comparisons re-ranked by
the gold grader (no noise, no length bias), then measured by ``rlhf eval-rm`` next to the shipped RM,
and next to an untrained signal: SFT's own mean token log-probability of the response.

If a reward model trained on perfect rankings still cannot tell a correct answer from an incorrect one
of the same length, better labelers will not fix the RM: the model (or the amount of data) must change.
If SFT's likelihood can, the information is in the SFT weights the RM starts from.

Prints a table and writes JSON. About 4 minutes on 2 cores.

    python benchmarks/rm_gold_labels.py [--runs-dir runs/rm-gold-labels]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from rm_likelihood import LikelihoodRM, Reward  # benchmarks/, next to this script

from rlhf_env.models import DATA_DIR
from rlhf_env.rewards.metrics import RMEvalConfig, evaluate_reward
from rlhf_env.stages.reward_model import RMConfig, train_reward_model
from rlhf_env.world.build import load_split
from rlhf_env.world.grader import grade

KEYS = ("accuracy", "gold_spearman", "prefer_padded", "correct_over_incorrect_longer",
        "correct_over_incorrect_same_length", "correct_over_incorrect_shorter")


def gold_ranked_world(directory: Path) -> Path:
    """A copy of the bundled world whose training comparisons are ranked by gold score (best first)."""
    shutil.copytree(DATA_DIR, directory, dirs_exist_ok=True)
    train = load_split(DATA_DIR, "comparisons", "train")

    def rerank(row):
        gold = [grade(row["task"], r, e).score for r, e in zip(row["responses"], row["eos"])]
        return {"ranking": [int(i) for i in np.argsort(-np.array(gold), kind="stable")]}

    train.map(rerank).to_parquet(str(directory / "comparisons" / "train.parquet"))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/rm-gold-labels")
    parser.add_argument("--out", default="benchmarks/results/rm_gold_labels.json")
    args = parser.parse_args()

    runs = Path(args.runs_dir)
    model = runs / "rm" / "final"
    if not model.exists():
        world = gold_ranked_world(runs / "data")
        train_reward_model(RMConfig(data=str(world), out=str(runs / "rm")))
    # Both are measured on the bundled world's held-out comparisons, ranked by real labelers.
    rows = [{**evaluate_reward(RMEvalConfig(rm="rm")), "rm": "rm (shipped: labelers' rankings)"},
            {**evaluate_reward(RMEvalConfig(rm=str(model))), "rm": "same recipe, gold rankings"},
            # The untrained LikelihoodRM (zero head, weight 1 on the mean) is SFT's mean token log-prob.
            {**evaluate_reward(RMEvalConfig(rm=Reward(LikelihoodRM()))), "rm": "SFT mean token log-prob"}]
    print(f"{'reward':<34}" + "".join(f"{k.replace('correct_over_incorrect_', 'c>i ')[:18]:>20}" for k in KEYS))
    for r in rows:
        print(f"{r['rm']:<34}" + "".join(f"{r[k]:>20.3f}" for k in KEYS))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
