"""Reward-model over-optimisation, Gao et al. (2022) style: gold score and RM score against sqrt(KL) from
the SFT policy, for best-of-n sampling and for PPO checkpoints.

- **Best of n** (n = 1, 2, 4, ..., 64): the RM picks the best of n SFT samples per held-out prompt. Its KL
  from SFT is the analytic ``log n - (n - 1) / n`` (Stiennon et al. 2020).
- **Sharpened SFT** (temperature 1, 0.85, 0.7, 0.5, 0.3 and greedy): SFT sampled colder, with no reward at
  all. Its KL from SFT is measured, ``E[log pi_T(y) - log pi_1(y)]`` per response (greedy: ``-log pi_1(y)``).
  This is the frontier of doing nothing but sharpening SFT towards its own mode, which a policy can learn
  without learning anything about the task; an RL policy that sits on it has learned only that.
- **PPO**: the held-out evaluations that ``rlhf ppo`` logs along a run (``OUT/eval.csv``: gold, RM score
  and KL to the reference every ``eval_every`` iterations), for each run given, e.g. the default run and the
  beta = 0 run of ``benchmarks/ppo_runs.py``. A run trained against another reward than ``--reward`` (its
  checkpoint says which), such as the paper's scalar-head RM at beta = 0, logged its own reward's score: it is
  kept apart (``ppo_other_reward`` in the JSON, a panel of its own in the plot), gold and its own RM's score.

While the proxy (RM) score rises with KL, gold should rise with it at first; where gold turns down while
the RM keeps rising, the policy is over-optimising the RM. Prints a table, writes JSON and a PNG.

Each point also has its gold win rate against SFT's samples (ties half), as ``rlhf eval`` judges it.

    python benchmarks/over_optimisation.py default=runs/ppo-bench/default-seed0 beta0=runs/ppo-bench/beta0-seed0 \
        rm-scalar-beta0=runs/ppo-bench/rm-scalar-beta0-seed0
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import torch

from rlhf_env.evaluation import eval_prompts, sample_and_grade, sample_and_measure, win_rate
from rlhf_env.models import DATA_DIR, load_policy
from rlhf_env.paths import assets_digest, check_built_on
from rlhf_env.rewards import load_reward
from rlhf_env.rewards.metrics import score_samples
from rlhf_env.sampling import response_logprobs

TEMPERATURES = (1.0, 0.85, 0.7, 0.5, 0.3, 0.0)


def best_of_n(reward, model, tokenizer, rows, baseline, n_max: int, seed: int) -> list[dict]:
    """Gold, RM score and win rate against ``baseline``'s grades of the RM's pick among the first n of n_max
    samples per prompt, n = 1, 2, 4, ..."""
    scores, grades = score_samples(reward, model, tokenizer, rows, n_max, seed)
    gold = np.array([[g.score for g in row] for row in grades])
    points, n = [], 1
    while n <= n_max:
        best = scores[:, :n].argmax(1)
        picked = (np.arange(len(rows)), best)
        kl = math.log(n) - (n - 1) / n
        points.append({"n": n, "kl": kl, "sqrt_kl": math.sqrt(kl), "gold": float(gold[picked].mean()),
                       "rm_score": float(scores[picked].mean()),
                       "win_rate": win_rate([row[j] for row, j in zip(grades, best)], baseline)})
        n *= 2
    return points


@torch.no_grad()
def sharpened(reward, model, tokenizer, rows, baseline, seed: int) -> list[dict]:
    """SFT sampled at each of ``TEMPERATURES``: gold, RM score, win rate against ``baseline``'s grades, and the
    measured KL from SFT at temperature 1, nats per response."""
    points = []
    for temperature in TEMPERATURES:
        kls, grades, scores = [], [], []
        for batch, s, batch_grades in sample_and_grade(model, tokenizer, rows, seed + 1, temperature):
            ids = torch.cat([s.prompt_ids, s.response_ids], 1)
            mask = torch.cat([s.prompt_mask, s.response_mask], 1)
            R = s.response_ids.shape[1]
            log_p1, _, out = response_logprobs(model, ids, mask, R)  # one forward for both temperatures
            log_pt = 0.0  # greedy: the response is certain
            if temperature:
                log_pt = torch.log_softmax(out.logits[:, :-1].float() / temperature, -1).gather(
                    2, s.response_ids[:, :, None]).squeeze(2)
            kls += ((log_pt - log_p1) * s.response_mask).sum(1).tolist()
            scores += reward(list(batch["prompt"]), s.texts, s.eos.numpy()).tolist()
            grades += batch_grades
        kl = max(float(np.mean(kls)), 0.0)
        points.append({"temperature": temperature, "kl": kl, "sqrt_kl": math.sqrt(kl),
                       "gold": float(np.mean([g.score for g in grades])), "rm_score": float(np.mean(scores)),
                       "win_rate": win_rate(grades, baseline)})
    return points


def ppo_points(run: Path) -> list[dict]:
    """The reference's point (KL 0) and every held-out evaluation logged along a PPO run."""
    with (run / "eval.csv").open() as f:
        rows = list(csv.DictReader(f))
    first = rows[0]
    points = [{"iteration": 0, "kl": 0.0, "sqrt_kl": 0.0, "gold": float(first["ref_gold"]),
               "rm_score": float(first["ref_rm_score"]), "win_rate": 0.5}]
    for r in rows:
        kl = max(float(r["kl"]), 0.0)
        points.append({"iteration": int(r["step"]), "kl": kl, "sqrt_kl": math.sqrt(kl), "gold": float(r["gold"]),
                       "rm_score": float(r["rm_score"]), "win_rate": float(r["win_rate_vs_reference"])})
    return points


def trained_against(run: Path) -> str | None:
    """The reward a finished PPO run was trained against, as its checkpoint records it (None if it does not)."""
    state = run / "checkpoint" / "state.json"
    if not state.exists():
        return None
    return json.loads(state.read_text())["state"].get("run", {}).get("reward")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = result.get("ppo_other_reward", {})
    fig, axes = plt.subplots(1, 2 + bool(others), figsize=(11 + 5 * bool(others), 4))
    series = {"best of n": result["best_of_n"], "sharpened SFT": result["sharpened"],
              **{f"PPO {k}": v for k, v in result["ppo"].items()}}
    for ax, key, title in zip(axes, ("gold", "rm_score"), ("gold score (the truth)", "RM score (the proxy)")):
        for label, points in series.items():
            ax.plot([p["sqrt_kl"] for p in points], [p[key] for p in points], marker="o", label=label)
        ax.set_xlabel("sqrt(KL from SFT), nats^0.5")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    if others:  # its RM's scores are on that RM's scale: a right-hand axis of their own
        ax, own = axes[2], axes[2].twinx()
        for label, run in others.items():
            x = [p["sqrt_kl"] for p in run["points"]]
            ax.plot(x, [p["gold"] for p in run["points"]], marker="o", label=f"PPO {label}: gold")
            own.plot(x, [p["rm_score"] for p in run["points"]], marker="s", linestyle="--", color="tab:red",
                     label=f"PPO {label}: its RM ({run['reward']})")
        ax.set_xlabel("sqrt(KL from SFT), nats^0.5")
        ax.set_ylabel("gold score")
        own.set_ylabel("its own RM's score")
        ax.set_title("trained against another RM")
        ax.grid(alpha=0.3)
        lines = ax.get_legend_handles_labels(), own.get_legend_handles_labels()
        ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], fontsize=8)
    fig.suptitle(f"over-optimisation on held-out customers' prompts (reward: {result['reward']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="PPO run directories, as LABEL=DIR")
    parser.add_argument("--reward", default="rm")
    parser.add_argument("--policy", default="sft")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--n-max", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/over_optimisation.json")
    args = parser.parse_args()

    runs, build = dict(r.split("=", 1) for r in args.runs), assets_digest()
    for run_dir in runs.values():
        check_built_on(run_dir, build)  # their held-out evaluations were made against this build's SFT and RM
    rows = eval_prompts(str(DATA_DIR), "heldout", args.episodes, args.seed)
    model, tokenizer = load_policy(args.policy)
    reward = load_reward(args.reward)
    baseline = sample_and_measure(model, tokenizer, rows, args.seed, 1.0, 48)["grades"]  # rlhf eval's SFT samples
    result = {"reward": args.reward, "policy": args.policy, "episodes": args.episodes, "assets": build, "runs": runs,
              "best_of_n": best_of_n(reward, model, tokenizer, rows, baseline, args.n_max, args.seed),
              "sharpened": sharpened(reward, model, tokenizer, rows, baseline, args.seed),
              "ppo": {}, "ppo_other_reward": {}}
    for label, d in runs.items():
        if not (Path(d) / "eval.csv").exists():
            print(f"{label}: {d} has no eval.csv, skipped")
            continue
        against = trained_against(Path(d)) or args.reward
        if against == args.reward:
            result["ppo"][label] = ppo_points(Path(d))
        else:
            result["ppo_other_reward"][label] = {"reward": against, "points": ppo_points(Path(d))}
    print(f"{'series':<26}{'n / T / iter':>13}{'KL':>8}{'gold':>8}{'RM':>8}{'win rate':>10}")
    series = [("best of n", "n", result["best_of_n"]), ("sharpened SFT", "temperature", result["sharpened"])]
    series += [(f"PPO {label}", "iteration", points) for label, points in result["ppo"].items()]
    series += [(f"PPO {label} (RM: {run['reward']})", "iteration", run["points"])
               for label, run in result["ppo_other_reward"].items()]
    for name, key, points in series:
        for p in points:
            print(f"{name:<26}{p[key]:>13}{p['kl']:>8.3f}{p['gold']:>8.3f}{p['rm_score']:>8.3f}{p['win_rate']:>10.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
