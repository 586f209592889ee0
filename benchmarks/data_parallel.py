"""Data-parallel PPO on this machine: episodes/s on 1 and 2 processes, a 2-process default run judged against
the 1-process seeds, and a projection to 8 ranks.

1. **Speed.** ``rlhf ppo`` with the defaults for ``--iterations`` iterations (no evaluation, no checkpoints), in
   four set-ups run one after another: 1 process x 1 thread, 1 process x 2 threads (plain ``rlhf ppo`` on this
   2-core machine), 2 processes x 1 thread (``accelerate launch --multi_gpu --num_processes 2``, accelerate's
   torchrun launcher, which also runs on CPUs) and the same sharded (``accelerate launch --config_file
   examples/accelerate/fsdp.yaml``: FSDP2, ``rlhf_env/training/sharding.py``). Episodes/s from ``train.csv``'s
   ``time_iteration`` (median, first iteration dropped), each phase's seconds, and the wall time of the command.
2. **Quality** (``--full``): the default run (seed 0) on 2 processes, judged on the held-out
   prompts as every run is, against ``benchmarks/results/ppo.json``'s 1-process default seeds.
3. **Projection to N ranks** from the 1-process x 1-thread phase times: sampling, the env step and the rollout
   forward divide by N; each optimizer step waits for the rank with the largest share of its global minibatch
   (simulated with the agent's own minibatch order), and adds one gradient all-reduce, whose time is measured
   between 2 local gloo processes and modelled for N as a ring (2(N - 1)/N x bytes / bandwidth). The
   assumptions are written with the numbers.

    python benchmarks/data_parallel.py [--iterations 8] [--full]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from real_size import measure_all_reduce  # benchmarks/: a script's own folder is on sys.path

from agents.ppo import PPOConfig
from rlhf_env.models import load_policy
from rlhf_env.paths import assets_digest

RESULTS = Path("benchmarks/results")
PHASES = ("time_sample", "time_env", "time_rollout_forward", "time_update")
SETUPS = {"1 process x 1 thread": (1, 1, False), "1 process x 2 threads": (1, 2, False),
          "2 processes x 1 thread": (2, 1, False), "2 processes x 1 thread, FSDP": (2, 1, True)}
FSDP_CONFIG = Path("examples/accelerate/fsdp.yaml")
ASSUMPTIONS = [
    "An upper bound: each rank runs at the measured 1-process x 1-thread speed, on its own core or device, and "
    "holds its own reference and reward model; sampling, the env step, the rollout forward and each update step's "
    "compute divide by N. At the bundled policy's size a step's cost is mostly fixed per-call overhead that does "
    "not divide (compare the measured 2-process row), so this holds only for models large enough to be "
    "compute-bound (benchmarks/real_size.py projects GPT-2 small's shape).",
    "The update keeps the global minibatch (the default 16 episodes): every rank takes its episodes of each global "
    "minibatch, so a step lasts as long as the largest share (simulated with the agent's minibatch order); at 8 "
    "ranks a minibatch of 16 leaves most ranks with 1 to 3 episodes, and a larger --minibatch_size would balance "
    "better.",
    "One all-reduce of the policy's float32 gradient per optimizer step, not overlapped with compute, modelled as a "
    "ring with the bandwidth of the 2-process gloo all-reduce measured here (both processes share this machine's "
    "2 cores); latency per hop ignored. Held-out evaluations (rank 0 alone) are left out.",
]


def rlhf_ppo(out: Path, processes: int, threads: int, args: list[str], sharded: bool = False) -> float:
    """Run ``rlhf ppo`` on ``processes`` processes of ``threads`` threads (``sharded``: with accelerate's FSDP
    config); returns the wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    rlhf = shutil.which("rlhf") or sys.exit("the rlhf command is not on PATH: pip install -e .")
    accelerate = [shutil.which("accelerate") or sys.exit("accelerate is not on PATH"), "launch"]
    how = ["--config_file", str(FSDP_CONFIG)] if sharded else [
        "--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launcher = [] if processes == 1 else [*accelerate, *how, "--num_processes", str(processes),
                                          "--main_process_port", "29517"]
    started = time.perf_counter()
    subprocess.run([*launcher, rlhf, "ppo", "--out", str(out), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def speed(iterations: int, tmp: Path) -> dict:
    args = ["--iterations", str(iterations), "--eval_every", "0", "--save_every", "0",
            "--final_eval_episodes", "50"]
    rows = {}
    for label, (processes, threads, sharded) in SETUPS.items():
        out = tmp / label.replace(" ", "").replace(",", "-")
        wall = rlhf_ppo(out, processes, threads, args, sharded)
        with (out / "train.csv").open() as f:
            log = list(csv.DictReader(f))[1:]  # the first iteration warms up
        iteration_s = statistics.median(float(r["time_iteration"]) for r in log)
        rows[label] = {"processes": processes, "threads": threads, "sharded": sharded, "iteration_s": iteration_s,
                       "episodes_per_s": PPOConfig.batch_size / iteration_s, "wall_s": wall,
                       **{p: statistics.median(float(r[p]) for r in log) for p in PHASES}}
        print(f"{label:<24}{rows[label]['episodes_per_s']:>8.1f} episodes/s  (wall {wall:.0f} s)", flush=True)
    base = rows["1 process x 1 thread"]["episodes_per_s"]
    for row in rows.values():
        row["speedup_vs_1x1"] = row["episodes_per_s"] / base
        row["efficiency"] = row["speedup_vs_1x1"] / (row["processes"] * row["threads"])
    return rows


def largest_share(ranks: int, config: PPOConfig, draws: int = 200) -> float:
    """The mean, over optimizer steps, of the largest number of a global minibatch's episodes that one rank holds,
    over the even share (minibatch_size / ranks): how much longer a step takes than a balanced one."""
    B, mb = config.batch_size, config.minibatch_size
    per_rank = B // ranks
    ratios = []
    for seed in range(draws):
        order = np.random.default_rng([0, seed]).permutation(B)
        for start in range(0, B, mb):
            held = np.bincount(order[start:start + mb] // per_rank, minlength=ranks)
            ratios.append(held.max() / (mb / ranks))
    return float(np.mean(ratios))


def projection(one: dict, numel: int, all_reduce_2: float) -> list[dict]:
    config = PPOConfig()
    steps = config.ppo_epochs * config.batch_size // config.minibatch_size  # optimizer steps per iteration
    parallel = one["time_sample"] + one["time_env"] + one["time_rollout_forward"]
    other = one["iteration_s"] - parallel - one["time_update"]
    bandwidth = 2 * (2 - 1) / 2 * numel * 4 / all_reduce_2  # bytes/s, from the ring model at N = 2
    rows = []
    for n in (1, 2, 8):
        ring = 0.0 if n == 1 else 2 * (n - 1) / n * numel * 4 / bandwidth
        imbalance = largest_share(n, config)
        iteration = parallel / n + one["time_update"] / n * imbalance + other + steps * ring
        rows.append({"ranks": n, "all_reduce_s": ring, "largest_share_over_even": imbalance, "iteration_s": iteration,
                     "episodes_per_s": config.batch_size / iteration,
                     "seconds_per_1000_episodes": 1000 / config.batch_size * iteration})
    for row in rows:
        row["speedup"] = rows[0]["iteration_s"] / row["iteration_s"]
    return rows


def quality(tmp: Path) -> dict:
    out = tmp / "full"
    wall = rlhf_ppo(out, 2, 1, ["--seed", "0"])
    result = json.loads((out / "result.json").read_text())
    seeds = json.loads((RESULTS / "ppo.json").read_text())
    one = [r["win_rate_vs_sft"] for r in seeds["rows"] if r["run"] == "default"]
    return {"wall_s": wall, "win_rate_vs_sft": result["win_rate_vs_reference"], "gold": result["gold"],
            "kl": result["kl"], "one_process_seeds": one,
            "within_0.01_of_the_seeds": min(one) - 0.01 <= result["win_rate_vs_reference"] <= max(one) + 0.01}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=8, help="iterations per speed run (the first warms up)")
    parser.add_argument("--full", action="store_true", help="also the 100-iteration default run on 2 processes")
    parser.add_argument("--out", default=str(RESULTS / "data_parallel.json"))
    args = parser.parse_args()

    numel = sum(p.numel() for p in load_policy(PPOConfig.policy)[0].parameters())
    with tempfile.TemporaryDirectory() as tmp:
        rows = speed(args.iterations, Path(tmp))
        all_reduce_2 = statistics.median(measure_all_reduce(numel, repeats=20))
        result = {"iterations": args.iterations, "batch_size": PPOConfig.batch_size, "parameters": numel,
                  "setups": rows, "all_reduce_2_processes_s": all_reduce_2,
                  "projection": projection(rows["1 process x 1 thread"], numel, all_reduce_2),
                  "assumptions": ASSUMPTIONS}
        if args.full:
            result["full_run"] = quality(Path(tmp))
    print(f"\ngradient all-reduce ({numel / 1e6:.1f}M float32) between 2 local processes: {all_reduce_2 * 1e3:.2f} ms")
    print(f"{'ranks':>5}{'episodes/s':>12}{'s per 1000 episodes':>21}{'speedup':>9}{'largest share':>15}")
    for r in result["projection"]:
        print(f"{r['ranks']:>5}{r['episodes_per_s']:>12.1f}{r['seconds_per_1000_episodes']:>21.0f}"
              f"{r['speedup']:>8.2f}x{r['largest_share_over_even']:>14.2f}x")
    print("assumptions:\n- " + "\n- ".join(ASSUMPTIONS))
    if "full_run" in result:
        f = result["full_run"]
        print(f"\n2 processes, default run: win rate vs SFT {f['win_rate_vs_sft']:.3f} (1 process, seeds: "
              f"{', '.join(f'{w:.3f}' for w in f['one_process_seeds'])}), {f['wall_s'] / 60:.1f} min")
    if "full_run" in result:  # win rates: a quality result, of one build of the assets
        result["assets"] = assets_digest()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
