"""The README's PPO results: the default `rlhf ppo` (with the token target, ``agents/token_target.py``) over
several seeds; the previous, black-box default (no token target, 8 responses per prompt, 100 iterations: the
recipe of algorithms.json's PPO); the beta = 0 over-optimisation run and the same against the paper's scalar-head
RM (rm-scalar); GAE with a value head, one response per prompt; the gold-oracle run over several seeds (gold's
grades normalised, as `rlhf ppo` does by default) and once on gold's raw [0, 1] grades; and GRPO
(group-normalised advantages, its own recipe). Each is judged by `rlhf eval --baseline sft`; the default runs also
against the larger SFT model (`--baseline sft-large`, InstructGPT's headline comparison); plus SFT decoded
greedily, judged the same way. Each run's policy is also decoded greedily and judged against SFT decoded
greedily (`rlhf eval --baseline sft --temperature 0`). More variants (`--variants`): bf16, the labelers'
noise-free utility as an oracle, a 400-iteration gold oracle, and the token target's first measurement (stop 28:
weight 3 at the black-box optimiser settings, 100 and 300 iterations, with the black-box default at 2 responses per
prompt as its control: ``--variants group2 token-target token-target-300 --out
benchmarks/results/ppo_token_target.json``). Runs go one at a time at 2 threads (ppo_token_target.json and the
current ppo.json); a run is bit-for-bit reproducible at the same thread count.

A run whose OUT/result.json exists is not trained again (delete it to retrain), unless its checkpoint says it
was trained with other settings (older defaults, say): then the script stops. Its evaluations are kept in
OUT/judged.json. Prints a table and writes JSON (and the runs' curves to a PNG).

    python benchmarks/ppo_runs.py [--seeds 0 1 2] [--runs-dir runs/ppo-bench]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# benchmarks/ is on the path when this runs as a script
from bench_ppo_iteration import code_version, matmul_peak_gflops

from agents.bench import BLACK_BOX_PPO
from agents.grpo import GRPOAgent, GRPOConfig
from agents.ppo import PPOAgent, PPOConfig, run_fingerprint
from rlhf_env.accel import kernels
from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.paths import assets_digest, finished_on

# the default before the token target (stop 28): black-box PPO, the bench's (benchmarks/results/algorithms.json)
BLACK_BOX = {**BLACK_BOX_PPO, "iterations": 100}
# its optimiser and batch, under the token-target variants (measured when the default batch was the black box's)
OLD = {k: BLACK_BOX[k] for k in ("lr", "ppo_epochs", "iterations", "batch_size")}
VARIANTS = {"default": {}, "beta0": {"kl_coef": 0.0}, "beta0-600": {"kl_coef": 0.0, "iterations": 600},
            "rm-scalar-beta0": {"reward": "rm-scalar", "kl_coef": 0.0}, "gae": {"advantage": "gae", "group_size": 1},
            "gold-oracle": {"reward": "gold"}, "bf16": {"bf16": True}, "labeler-oracle": {"reward": "labelers"},
            "gold-oracle-400": {"reward": "gold", "iterations": 400},
            "gold-oracle-raw": {"reward": "gold", "normalize_reward": False},  # gold's [0, 1] grades, as before
            "grpo": {"algorithm": "grpo"},
            "black-box": BLACK_BOX,
            "group2": {**BLACK_BOX, "group_size": 2},  # the token target's control: its group size alone
            "token-target": {**OLD, "token_target_coef": 3.0, "group_size": 2},
            "token-target-300": {**OLD, "token_target_coef": 3.0, "group_size": 2, "iterations": 300}}
DEFAULT_VARIANTS = ("default", "black-box", "beta0", "rm-scalar-beta0", "gae", "gold-oracle", "gold-oracle-raw",
                    "grpo")
ALGORITHMS = {"ppo": (PPOAgent, PPOConfig), "grpo": (GRPOAgent, GRPOConfig)}  # "algorithm" in a variant
# every --seeds; the other variants: the first
MULTI_SEED = ("default", "black-box", "gold-oracle", "bf16", "token-target", "token-target-300")


def run(name: str, seed: int, runs_dir: Path, overrides: dict, build: str) -> dict:
    out = runs_dir / f"{name}-seed{seed}"  # plot names follow this pattern
    settings = dict(overrides)
    agent, config_cls = ALGORITHMS[settings.pop("algorithm", "ppo")]
    config = config_cls(seed=seed, out=str(out), **settings)
    if not finished_on(out, build, "result.json"):  # a finished run of another build would describe other models
        agent(config).train()
    check_trained_as(out, config)
    cached = out / "judged.json"  # this script's evaluations of a finished run, kept with it
    if cached.exists() and cached.stat().st_mtime >= (out / "result.json").stat().st_mtime:
        return json.loads(cached.read_text())
    row = judge(name, seed, out, overrides)
    cached.write_text(json.dumps(row, indent=1))
    return row


def check_trained_as(out: Path, config) -> None:
    """Refuse a finished run in OUT that its checkpoint says was trained with other settings than ``config``'s
    (e.g. under the defaults of an older version): its rows would describe another recipe."""
    state = out / "checkpoint" / "state.json"
    saved = json.loads(state.read_text())["state"].get("run", {}) if state.exists() else {}
    wanted = run_fingerprint(config)
    differs = sorted(k for k in wanted if k in saved and saved[k] != wanted[k])
    if differs:
        raise RuntimeError(f"{out} was trained with other settings ({', '.join(differs)}) than this script's; delete "
                           "it to retrain")


def judge(name: str, seed: int, out: Path, overrides: dict) -> dict:
    trained = json.loads((out / "result.json").read_text())
    judged = evaluate(EvalConfig(policy=str(out / "final"), baseline="sft", split="heldout"))
    # Both decoded greedily: did RL improve the policy's most likely answer, not only sharpen SFT?
    greedy = evaluate(EvalConfig(policy=str(out / "final"), baseline="sft", split="heldout", temperature=0.0))
    larger = evaluate(EvalConfig(policy=str(out / "final"), baseline="sft-large", split="heldout"))
    return {"run": name, "seed": seed, "minutes": trained["minutes"], "win_rate_vs_sft": judged["win_rate"],
            "win_rate_vs_sft_large": larger["win_rate"], "gold_sft_large": larger["gold_b"],
            "success_sft_large": larger["success_b"],
            "win_rate_ceiling": judged["win_rate_ceiling"],
            "gold": judged["gold_a"], "gold_sft": judged["gold_b"], "success": judged["success_a"],
            "success_sft": judged["success_b"], "length": judged["length_a"], "length_sft": judged["length_b"],
            "rm_score": trained["rm_score"], "rm_score_sft": trained["ref_rm_score"], "kl": trained["kl"],
            "eos_frac": trained["eos_frac"], "greedy_win_rate_vs_greedy_sft": greedy["win_rate"],
            "greedy_win_rate_ceiling": greedy["win_rate_ceiling"], "greedy_gold": greedy["gold_a"],
            "greedy_success": greedy["success_a"], "greedy_length": greedy["length_a"],
            "overrides": {k: getattr(v, "__name__", v) for k, v in overrides.items()}}


def greedy_sft() -> dict:
    """SFT decoded greedily, judged like every run against SFT sampled at temperature 1 (the same
    samples): what a policy gets with no RL at all, by only sharpening SFT."""
    judged = evaluate(EvalConfig(policy="sft", baseline="sft", split="heldout", temperature=0.0,
                                 baseline_temperature=1.0))
    return {"win_rate_vs_sft": judged["win_rate"], "gold": judged["gold_a"], "success": judged["success_a"],
            "length": judged["length_a"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                        help="default and bf16 run every seed; the others run the first seed only")
    parser.add_argument("--runs-dir", default="runs/ppo-bench")
    parser.add_argument("--out", default="benchmarks/results/ppo.json")
    args = parser.parse_args()

    runs_dir, build = Path(args.runs_dir), assets_digest()
    # what the minutes hold for: a run's time follows the machine's speed, and 2-core hosts differ
    host = {"machine": kernels.machine(), "matmul_peak_gflops": matmul_peak_gflops(), "code": code_version()}
    rows = [run(name, seed, runs_dir, VARIANTS[name], build) for name in args.variants
            for seed in (args.seeds if name in MULTI_SEED else args.seeds[:1])]
    keys = ("win_rate_vs_sft", "win_rate_vs_sft_large", "gold", "success", "length", "rm_score", "kl", "minutes",
            "greedy_win_rate_vs_greedy_sft", "greedy_gold", "greedy_success")
    summaries = {}
    for name in MULTI_SEED:
        runs = [r for r in rows if r["run"] == name]
        if runs:
            summaries[name] = {k: {stat: float(fn([r[k] for r in runs])) for stat, fn in
                                   (("mean", np.mean), ("std", lambda x: np.std(x, ddof=1) if len(x) > 1 else 0.0),
                                    ("min", np.min), ("max", np.max))} for k in keys}
    columns = ("win_rate_vs_sft", "win_rate_vs_sft_large", "gold", "success", "rm_score", "kl", "length", "minutes")
    print(f"{'run':<12}{'seed':>5}" + "".join(f"{c:>22}" for c in columns))
    for r in rows:
        print(f"{r['run']:<12}{r['seed']:>5}" + "".join(f"{r[c]:>22.3f}" for c in columns))
    if rows:
        r = rows[0]
        print(f"{'sft':<12}{'':>5}{0.5:>22.3f}{'':>22}{r['gold_sft']:>22.3f}{r['success_sft']:>22.3f}"
              f"{r['rm_score_sft']:>22.3f}{0.0:>22.3f}{r['length_sft']:>22.3f}")
        print(f"sft-large (sampled): gold {r['gold_sft_large']:.3f}, success {r['success_sft_large']:.3f}")
        print(f"ceiling (the world's reference answers vs the same SFT samples): win rate {r['win_rate_ceiling']:.3f}")
    greedy = greedy_sft()
    print("sft, greedy (no RL): " + ", ".join(f"{k} {v:.3f}" for k, v in greedy.items()))
    print("\ndecoded greedily, against SFT decoded greedily:")
    columns = ("greedy_win_rate_vs_greedy_sft", "greedy_gold", "greedy_success", "greedy_length")
    print(f"{'run':<12}{'seed':>5}" + "".join(f"{c:>31}" for c in columns))
    for r in rows:
        print(f"{r['run']:<12}{r['seed']:>5}" + "".join(f"{r[c]:>31.3f}" for c in columns))
    if rows:
        print(f"ceiling: win rate {rows[0]['greedy_win_rate_ceiling']:.3f}")
    for name, summary in summaries.items():
        print(f"{name} over {sum(r['run'] == name for r in rows)} seeds: " + ", ".join(
            f"{k} {v['mean']:.3f} ± {v['std']:.3f}" for k, v in summary.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    print(f"on {host['machine']} (float32 matmul {host['matmul_peak_gflops']:.0f} GFLOP/s)")
    Path(args.out).write_text(json.dumps({"assets": build, "variants": args.variants, "seeds": args.seeds, **host,
                                          "rows": rows,
                                          **{f"{n}_summary": v for n, v in summaries.items()},
                                          "greedy_sft": greedy}, indent=1))
    try:
        import subprocess
        import sys

        names = [f"{r['run']}-seed{r['seed']}" for r in rows if r["run"] != "bf16"]  # float32
        subprocess.run([sys.executable, str(Path(__file__).with_name("plot_ppo.py")),
                        *[f"{n}={runs_dir / n}" for n in names], "--out", str(Path(args.out).with_suffix(".png"))],
                       check=True)
    except (ImportError, subprocess.CalledProcessError) as e:
        print(f"no plot: {e}")


if __name__ == "__main__":
    main()
