"""How long to pretrain and fine-tune each size: SFT variants built aside, judged on held-out customers.

Each variant copies the shipped assets into ``--work/NAME/assets`` and reruns some of ``rlhf build-assets``'s
steps there with other lengths (the shipped ones are untouched). A variant whose build finished before with the
same settings (``NAME/done.json``) is not built again; an interrupted build resumes, and a rerun only judges.
Then, with ``rlhf eval`` on 500 held-out customers' prompts (gold grader, ties half):

- every variant's SFT model against the shipped ``sft``;
- each large variant against the small SFT of the same SFT length (the size gap at equal training);
- for each large variant, the likelihood RM fitted on it (``rm:likelihood``), measured by ``rlhf eval-rm``.

Prints a table and writes benchmarks/results/training_lengths.json. The builds take hours on two cores; their
times are not compared here (an interrupted and resumed build's manifest records only its last process's).

    python benchmarks/training_lengths.py [--work runs/training-lengths]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import datasets
import transformers
from results_tables import pairs_table, reward_table  # benchmarks/ is on the path when this runs as a script

from rlhf_env.configs import BuildConfig
from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.paths import ASSETS, assets_digest
from rlhf_env.rewards.metrics import RMEvalConfig, evaluate_reward
from rlhf_env.stages.build_assets import build_assets

# name: (build-assets settings, the size it makes, the small variant of the same SFT length)
VARIANTS = {
    "sft-32": (dict(steps="sft:small", sizes="small", sft_epochs=32), "small", None),
    "sft-large-32": (dict(steps="sft:large", sizes="large", sft_epochs=32), "large", "sft-32"),
    "sft-large-pretrain-6-32": (dict(steps="base:large,sft:large", sizes="large", pretrain_epochs=6, sft_epochs=32),
                                "large", "sft-32"),
}
SHIPPED = json.loads((ASSETS / "manifest.json").read_text())["config"]  # the shipped build's settings


def build(name: str, work: Path) -> Path:
    """The variant's asset directory, built there unless an earlier run finished it with the same settings
    (``done.json``)."""
    settings, _, _ = VARIANTS[name]
    out, done = work / name / "assets", work / name / "done.json"
    if done.exists() and json.loads(done.read_text()) == settings:
        return out
    if not out.exists():
        shutil.copytree(ASSETS, out)
    build_assets(BuildConfig(out=str(out), work=str(work / name / "work"), **settings))  # resumes its steps
    done.write_text(json.dumps(settings))
    return out


def model(name: str, work: Path, size: str) -> str:
    return str(work / name / "assets" / "models" / ("sft" if size == "small" else "sft-large"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/training-lengths")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/training_lengths.json")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    work = Path(args.work)
    started = time.perf_counter()

    builds = {}
    for name, (settings, size, _) in VARIANTS.items():
        out = build(name, work)
        manifest = json.loads((out / "manifest.json").read_text())
        step = f"sft:{size}"
        builds[name] = {"settings": settings, "size": size,
                        "sft_valid_gold": manifest["metrics"][step]["best_valid_gold"],
                        "sft_best_step": manifest["metrics"][step]["best_step"]}

    def judge(a: str, b: str, a_name: str, b_name: str) -> dict:
        return {**evaluate(EvalConfig(policy=a, baseline=b, episodes=args.episodes, seed=args.seed)),
                "policy": a_name, "baseline": b_name}

    shipped = f"shipped, {SHIPPED['sft_epochs']:g} SFT epochs"
    rows = [judge("sft-large", "sft", f"sft-large ({shipped})", f"sft ({shipped})")]
    for name, (_, size, small) in VARIANTS.items():
        rows.append(judge(model(name, work, size), "sft", name, f"sft ({shipped})"))
        if small:
            rows.append(judge(model(name, work, size), model(small, work, "small"), name, small))

    rms = [{**evaluate_reward(RMEvalConfig(rm="rm", seed=args.seed)), "rm": f"rm on sft-large ({shipped})"}]
    for name, (_, size, _) in VARIANTS.items():
        if size != "large":
            continue
        out, fitted = work / name / "assets", work / name / "rm.done"  # the copied shipped rm until then
        if not fitted.exists():
            build_assets(BuildConfig(out=str(out), work=str(work / name / "work"), steps="rm:likelihood",
                                     sizes="large"))
            fitted.touch()
        rms.append({**evaluate_reward(RMEvalConfig(rm=str(out / "models" / "rm"), seed=args.seed)),
                    "rm": f"rm on {name}"})

    print(f"SFT lengths, on {args.episodes} held-out customers' prompts (gold win rate of A against B, ties half):\n")
    print(pairs_table(rows))
    print()
    print(reward_table({"reward_models": rms}))
    Path(args.out).write_text(json.dumps({"episodes": args.episodes, "seed": args.seed, "assets": assets_digest(),
                                          "builds": builds,
                                          "evals": rows, "reward_models": rms,
                                          "wall_s": round(time.perf_counter() - started, 1)}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
