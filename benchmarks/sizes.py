"""Why sft-large hardly beats sft: the large model's SFT learning rate.

The shipped ``sft-large`` is fine-tuned at ``rlhf build-assets --large_sft_lr`` (the manifest records it; the
build before it used SFT's default, the small model's rate). For each ``--lrs`` value, this fine-tunes the shipped
``base-large`` as ``rlhf sft --base base-large --lr LR`` does (every other setting the shipped one's), into
``--work/sft-large-lrLR`` (a finished run is not trained again; an interrupted one resumes), ships its best
checkpoint as ``rlhf build-assets`` does (float16, no dropout), and judges it with ``rlhf eval`` on ``--episodes``
held-out customers' prompts (gold grader, ties half) against the shipped ``sft`` and ``sft-large``. The likelihood
RM is the large SFT model's log-likelihood, so each variant's RM is fitted too (``rlhf rm --policy``) and measured
by ``rlhf eval-rm``, and the default ``rlhf ppo`` is run on it (``--reward``) for each of ``--ppo_seeds`` and
judged as ``benchmarks/ppo_runs.py`` judges a run (its runs go under ``--work`` with that script's names:
``default-seedN`` is the default run on the shipped ``rm``). The shipped ``sft-large`` is the first row.

Prints a table and writes benchmarks/results/sizes.json. Each learning rate costs one SFT run of the large model,
and each seed one ``rlhf ppo`` run.

    python benchmarks/sizes.py [--lrs 1e-3]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import datasets
import numpy as np
import transformers
from ppo_runs import run as ppo_run  # benchmarks/ is on the path when this runs as a script
from results_tables import sizes_table

from rlhf_env.configs import RMConfig, SFTConfig
from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.paths import ASSETS, assets_digest, finished_on
from rlhf_env.rewards.metrics import RMEvalConfig, evaluate_reward
from rlhf_env.stages.build_assets import ship
from rlhf_env.stages.reward_model import train_reward_model
from rlhf_env.stages.sft import sft


def variant(lr: float, work: Path, digest: str) -> tuple[Path, dict]:
    """The large SFT model fine-tuned at ``lr``, shipped under ``work``, and its run's best validation gold."""
    run = work / f"sft-large-lr{lr:g}"
    if not finished_on(run, digest, "final"):  # a finished run made on another build of the assets is refused
        sft(SFTConfig(base="base-large", lr=lr, out=str(run)))
    model = run / "model"
    if not model.exists():
        ship(run / "best", model)
    with open(run / "eval.csv", newline="") as f:
        best = max(csv.DictReader(f), key=lambda row: float(row["gold"]))
    return model, {"best_valid_gold": float(best["gold"]), "best_step": int(best["step"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3], help="the large SFT's learning rates")
    parser.add_argument("--work", default="runs/sizes")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--ppo_seeds", type=int, nargs="*", default=[0, 1, 2], help="the PPO runs' seeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/sizes.json")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    work, started, digest = Path(args.work), time.perf_counter(), assets_digest()

    def judge(policy: str, baseline: str) -> dict:
        result = evaluate(EvalConfig(policy=policy, baseline=baseline, episodes=args.episodes, seed=args.seed))
        return {"win_rate": result["win_rate"], "success": result["success_a"], "gold": result["gold_a"],
                "families": {f: r["win_rate"] for f, r in result["families"].items()}}

    def ppo(name: str, overrides: dict) -> dict:
        runs = [ppo_run(name, seed, work, overrides, digest) for seed in args.ppo_seeds]
        keys = ("win_rate_vs_sft", "win_rate_vs_sft_large", "greedy_win_rate_vs_greedy_sft", "gold", "success", "kl")
        return {"runs": runs, **{k: float(np.mean([r[k] for r in runs])) for k in keys}} if runs else {}

    manifest = json.loads((ASSETS / "manifest.json").read_text())
    shipped_lr = manifest["config"].get("large_sft_lr") or SFTConfig.lr  # None: rlhf sft's default
    rows = [{"name": "sft-large (shipped)", "lr": shipped_lr, **manifest["metrics"]["sft:large"],
             "vs_sft": judge("sft-large", "sft"),
             "rm": evaluate_reward(RMEvalConfig(rm="rm", seed=args.seed)), "ppo": ppo("default", {})}]
    for lr in args.lrs:
        model, run = variant(lr, work, digest)
        fitted = work / f"rm-lr{lr:g}"
        if not finished_on(fitted, digest, "final"):
            train_reward_model(RMConfig(policy=str(model), out=str(fitted), seed=args.seed))
        rows.append({"name": f"sft-large, lr {lr:g}", "lr": lr, **run, "vs_sft": judge(str(model), "sft"),
                     "vs_sft_large": judge(str(model), "sft-large"),
                     "rm": evaluate_reward(RMEvalConfig(rm=str(fitted / "final"), seed=args.seed)),
                     "ppo": ppo(f"rm-lr{lr:g}", {"reward": str(fitted / "final")})})

    print(f"The large SFT model against sft, on {args.episodes} held-out customers' prompts; its likelihood RM:\n")
    print(sizes_table({"rows": rows, "ppo_seeds": args.ppo_seeds}))
    Path(args.out).write_text(json.dumps({"episodes": args.episodes, "seed": args.seed, "assets": digest,
                                          "ppo_seeds": args.ppo_seeds,
                                          "rows": rows, "wall_s": round(time.perf_counter() - started, 1)},
                                         indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
