"""Every algorithm on one task: ours (PPO, GRPO, RLOO, REINFORCE, DPO, best-of-n) and SB3's (PPO and A2C on
the bandit; PPO, A2C and MaskablePPO on the token env), each through `rlhf bench`: the same starting policy
(sft), reward, beta, episode budget, seeds and held-out judgement. Every algorithm runs once against the
bundled RM and once against the gold oracle (DPO learns from the comparisons, so it has no reward to swap).

Each run is its own process (`rlhf bench ... --json`), so its peak RSS is its own; a finished run's JSON is
kept under --runs-dir and not rerun (delete it to rerun), so an interrupted benchmark resumes. Prints a table
(mean and min..max over seeds) and writes JSON and a frontier plot: gold and RM score against KL to SFT, with
best-of-n (n = 1..16) as the reference curve.

    python benchmarks/algorithms.py                 # the full table (--jobs 2: two runs at a time, 1 thread each)
    python benchmarks/algorithms.py --quick         # a smoke run for CI: two algorithms, tiny budget
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from results_tables import algorithms_table  # benchmarks/ is on the path when this runs as a script

from rlhf_env.paths import assets_digest, check_built_on, mark_built_on

BEST_OF = (1, 2, 4, 8, 16)
ALGORITHMS = ("ppo", "grpo", "rloo", "reinforce", "dpo", "sb3-ppo", "sb3-a2c", "sb3-ppo-token", "sb3-a2c-token",
              "sb3-maskable-ppo-token", *(f"best-of-{n}" for n in BEST_OF))
OFFLINE = ("dpo",)  # no reward to optimise: one run per seed, listed under the RM
UNTRAINED = tuple(f"best-of-{n}" for n in BEST_OF)  # the frontier: no training, so the first seed only
METRICS = ("win_rate_vs_start", "success", "gold", "rm_score", "kl", "length", "episodes", "learn_seconds",
           "episodes_per_second", "peak_rss_mb")


def run(algo: str, reward: str, seed: int, args) -> dict:
    out = Path(args.runs_dir) / f"{algo.replace(':', '_')}-{reward}-seed{seed}"
    cached = out / "bench.json"
    if cached.exists():
        check_built_on(out, args.build)  # a run of another build of the assets would describe other models
        result = json.loads(cached.read_text())
        if (result["budget"], result.get("eval_episodes", args.eval_episodes)) != (args.episodes, args.eval_episodes):
            raise SystemExit(f"{cached} was run with another budget or evaluation size; pass another --runs-dir")
        return result
    command = [sys.executable, "-m", "rlhf_env.cli", "bench", "--algo", algo, "--reward", reward, "--seed", str(seed),
               "--episodes", str(args.episodes), "--eval_episodes", str(args.eval_episodes), "--out", str(out),
               "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    text = done.stdout  # the JSON object is last (a run may print lines before it)
    result = json.loads(text[0 if text.startswith("{") else text.rfind("\n{") + 1:])
    mark_built_on(out, args.build)  # after the run: `rlhf bench` wants an empty --out (one process, not resumed)
    cached.write_text(json.dumps(result, indent=1))
    print(f"{algo} ({reward}, seed {seed}): win rate {result['win_rate_vs_start']:.3f}, gold {result['gold']:.3f}, "
          f"KL {result['kl']:.2f}, {result['learn_seconds']:.0f} s", flush=True)
    return result


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, min and max over seeds of every metric, per (algorithm, reward)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["algo"], r["reward"]), []).append(r)
    out = []
    for (algo, reward), runs in groups.items():
        entry = {"algo": algo, "reward": reward, "seeds": len(runs)}
        for k in METRICS:
            values = np.array([r[k] for r in runs], dtype=float)
            entry[k] = {"mean": float(np.mean(values)), "min": float(np.min(values)), "max": float(np.max(values))}
        out.append(entry)
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric in zip(axes, ("gold", "rm_score")):
        for reward, marker in (("rm", "o"), ("gold", "s")):
            best = sorted((s for s in summary if s["algo"].startswith("best-of-") and s["reward"] == reward),
                          key=lambda s: s["kl"]["mean"])
            if best:
                ax.plot([s["kl"]["mean"] for s in best], [s[metric]["mean"] for s in best], "--", marker=marker,
                        color="grey", label=f"best-of-n on {reward}")
            for s in summary:
                if s["reward"] == reward and not s["algo"].startswith("best-of-"):
                    ax.scatter(s["kl"]["mean"], s[metric]["mean"], marker=marker)
                    ax.annotate(f"{s['algo']} ({reward})", (s["kl"]["mean"], s[metric]["mean"]), fontsize=7)
        ax.set_xlabel("KL to SFT (nats per response, held-out)")
        ax.set_ylabel(f"{metric} (held-out)")
        ax.legend(fontsize=7)
    fig.suptitle("every algorithm at the same budget against the best-of-n frontier")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--rewards", nargs="+", default=["rm", "gold"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=1280, help="episode budget of every algorithm")
    parser.add_argument("--eval-episodes", type=int, default=500)
    parser.add_argument("--first-seed-only", nargs="*", default=[], metavar="ALGO",
                        help="algorithms run with the first seed only (to fit a time budget)")
    parser.add_argument("--first-seed-only-rewards", nargs="*", default=[], metavar="REWARD",
                        help="rewards whose runs use the first seed only")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: examples/reinforce.py and best-of-2, "
                        "128 episodes, 50 held-out prompts, seed 0, the RM only")
    parser.add_argument("--runs-dir", default="runs/algorithms")
    parser.add_argument("--out", default="benchmarks/results/algorithms.json")
    args = parser.parse_args()
    args.build = assets_digest()  # at the start: the build every run uses
    if args.quick:
        args.runs_dir = args.runs_dir if args.runs_dir != "runs/algorithms" else "runs/algorithms-quick"
        args.algorithms, args.rewards, args.seeds = ["examples.reinforce:Reinforce", "best-of-2"], ["rm"], [0]
        args.episodes, args.eval_episodes = 128, 50

    def wanted(a, r, s):
        one_seed = a in UNTRAINED or a in args.first_seed_only or r in args.first_seed_only_rewards
        return not (a in OFFLINE and r != args.rewards[0]) and not (one_seed and s != args.seeds[0])

    # the first seed of everything first, so that an interrupted benchmark has a whole sweep
    jobs = [(a, r, s) for s in args.seeds for r in args.rewards for a in args.algorithms if wanted(a, r, s)]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run(*job, args), jobs))
    summary = summarize(rows)
    settings = {k: getattr(args, k) for k in ("episodes", "eval_episodes", "seeds", "rewards", "threads", "jobs",
                                              "first_seed_only", "first_seed_only_rewards")}
    print(algorithms_table({"summary": summary, "settings": settings, "rows": rows}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"settings": settings, "assets": args.build, "summary": summary,
                                          "rows": rows}, indent=1))
    plot(summary, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()
