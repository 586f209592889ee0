"""How far can a policy decoded greedily get against greedy SFT? Task success by family, for each policy.

Decoded greedily, two policies mostly give the same answer, or answers that gold scores alike, so the win rate
against greedy SFT is about 0.5 + half the gain in task success (the note under the PPO table in
``docs/results.md`` checks this on every run). A win rate of 0.55 then asks for a greedy success 0.1 above greedy
SFT's. This script measures where the greedy failures are, family by family, for SFT, the larger SFT (whose LM
is the bundled RM's) and any trained policy given, and the **frontier**: a policy as good as the best of them on
every family, with the win rate that rule gives it; and, by family, how often the bundled RM tells a correct
answer from an incorrect one. Where a family fails under every policy while the RM checks its answers, the signal
is there and RL at this budget has not turned it into greedy answers; where the RM cannot check it, RL against
that RM has little to pull the greedy answer towards.

    python benchmarks/greedy_frontier.py sft-large ppo=runs/ppo-bench/default-seed0

Each argument is a bundled policy name or NAME=PATH of a finished run (its ``final/`` policy is judged). Prints
a table and writes ``benchmarks/results/greedy_frontier.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import transformers
from results_tables import greedy_frontier_table  # benchmarks/ is on the path when this runs as a script

from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.models import DATA_DIR
from rlhf_env.paths import assets_digest, check_built_on
from rlhf_env.rewards import load_reward
from rlhf_env.rewards.metrics import correctness_accuracy, score_comparisons
from rlhf_env.world.build import load_split
from rlhf_env.world.grader import grade


def frontier(families: dict[str, dict[str, float]], counts: dict[str, int], sft: dict[str, float]) -> dict:
    """The best greedy success on each family over ``families`` (policy -> family -> success) and greedy SFT's
    (``sft``), its task success over all prompts (``counts``: prompts per family) and the win rate against
    greedy SFT that 0.5 + half the gain gives it."""
    best = {f: max([sft[f]] + [by_family[f] for by_family in families.values()]) for f in counts}
    total = sum(counts.values())
    success = sum(best[f] * n for f, n in counts.items()) / total
    sft_success = sum(sft[f] * n for f, n in counts.items()) / total
    return {"success": best, "task_success": success, "sft_task_success": sft_success,
            "expected_win_rate": 0.5 + (success - sft_success) / 2}


def rm_checks(reward: str = "rm") -> dict[str, float]:
    """By family: how often ``reward`` scores the correct response of a held-out customers' comparison above an
    incorrect one (``rlhf eval-rm``'s correct over incorrect, every length relation together, ties half)."""
    rows = load_split(DATA_DIR, "comparisons", "heldout_customers").to_list()
    scores = score_comparisons(load_reward(reward), rows)
    by_family: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_family.setdefault(json.loads(row["task"])["family"], []).append(i)
    out = {}
    for family, ix in sorted(by_family.items()):
        grades = [[grade(rows[i]["task"], r, e) for r, e in zip(rows[i]["responses"], rows[i]["eos"])] for i in ix]
        checks = correctness_accuracy([rows[i] for i in ix], [scores[i] for i in ix], grades).values()
        pairs = sum(n for _, n in checks)
        out[family] = sum(accuracy * n for accuracy, n in checks) / pairs if pairs else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policies", nargs="+", help="bundled names, or NAME=RUN_DIR of finished runs")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/greedy_frontier.json")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    build = assets_digest()
    policies = {}
    for spec in args.policies:
        name, _, run_dir = spec.partition("=")
        if run_dir:
            check_built_on(run_dir, build)  # a run of another build was trained against other models
            policies[name] = str(Path(run_dir) / "final")
        else:
            policies[name] = name
    rows = []
    for name, policy in policies.items():
        r = evaluate(EvalConfig(policy=policy, baseline="sft", temperature=0.0, episodes=args.episodes,
                                seed=args.seed))
        rows.append({"policy": name, "path": policy if policy != name else None, "win_rate": r["win_rate"],
                     "task_success": r["success_a"], "sft_task_success": r["success_b"],
                     "win_rate_ceiling": r["win_rate_ceiling"],
                     "success": {f: v["success_a"] for f, v in r["families"].items()},
                     "sft_success": {f: v["success_b"] for f, v in r["families"].items()},
                     "n": {f: v["n"] for f, v in r["families"].items()}})
    counts, sft = rows[0]["n"], rows[0]["sft_success"]
    best = frontier({r["policy"]: r["success"] for r in rows}, counts, sft)
    result = {"assets": build, "settings": {"episodes": args.episodes, "seed": args.seed, "policies": args.policies},
              "rows": rows, "frontier": best, "rm_checks": rm_checks()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(greedy_frontier_table(result))


if __name__ == "__main__":
    main()
