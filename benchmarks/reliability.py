"""Reliability figures for long runs, each from real `rlhf ppo` processes on the bundled models:

- **soak**: one run of at least 20,000 episodes; the resident memory logged at every iteration (train.csv's
  `rss_mb`) and its slope after warm-up (the first 10% of iterations);
- **kill -9**: runs killed with SIGKILL at random points, half of them while a checkpoint is being written
  (the moment `OUT/checkpoint.tmp` appears), then rerun with the same command; each must finish with weights
  identical to an uninterrupted run's;
- **a corrupted checkpoint**, **a reward that raises or returns NaN mid-run**, and **two runs into one
  --out**: what the user sees, and whether the last good checkpoint survives.

Every run uses one thread (`OMP_NUM_THREADS=1`), so that a resumed run is bit-for-bit comparable. Prints a
table and writes JSON.

    python benchmarks/reliability.py [--soak-episodes 20480] [--kills 10]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = ["--iterations", "8", "--batch_size", "32", "--group_size", "4", "--minibatch_size", "8", "--save_every", "1",
         "--eval_every", "0", "--final_eval_episodes", "20"]


def rlhf(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhf_env.cli", *args], env=ENV, capture_output=True, text=True)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlhf_env.cli", *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def weights(out: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(out / "final" / "model.safetensors"))


def soak(root: Path, episodes: int) -> dict:
    out = root / "soak"
    iterations = -(-episodes // 128)
    started = time.perf_counter()
    done = rlhf("ppo", "--out", str(out), "--iterations", str(iterations), "--eval_every", "0", "--save_every", "20",
                "--final_eval_episodes", "50", "--json")
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    rows = list(csv.DictReader(open(out / "train.csv")))
    rss = np.array([float(r["rss_mb"]) for r in rows])
    warm = max(1, len(rss) // 10)
    slope = np.polyfit(np.arange(warm, len(rss)), rss[warm:], 1)[0]
    return {"episodes": iterations * 128, "iterations": iterations, "minutes": (time.perf_counter() - started) / 60,
            "rss_mb_first": float(rss[0]), "rss_mb_after_warmup": float(rss[warm]), "rss_mb_last": float(rss[-1]),
            "rss_mb_max_after_warmup": float(rss[warm:].max()), "rss_mb_min_after_warmup": float(rss[warm:].min()),
            "rss_slope_mb_per_1000_iterations": float(slope * 1000), "peak_rss_mb": float(rss.max())}


def kill_and_resume(root: Path, kills: int, seed: int = 0) -> dict:
    reference = root / "uninterrupted"
    started = time.perf_counter()
    if rlhf("ppo", "--out", str(reference), *SMALL).returncode:
        raise RuntimeError("the uninterrupted run failed")
    duration = time.perf_counter() - started
    want = weights(reference)
    rng = np.random.default_rng(seed)
    runs = []
    for k in range(kills):
        out = root / f"killed-{k}"
        during_write = k % 2 == 1
        process = start("ppo", "--out", str(out), *SMALL)
        began = time.perf_counter()
        if during_write:  # the first checkpoint write after a random iteration
            after = rng.uniform(0.2, 0.8) * duration
            while process.poll() is None and not (time.perf_counter() - began > after
                                                   and (out / "checkpoint.tmp").exists()):
                time.sleep(0.002)
        else:
            time.sleep(rng.uniform(0.1, 0.95) * duration)
        killed_at = time.perf_counter() - began
        finished_first = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait()
        in_write = (out / "checkpoint.tmp").exists()  # the kill left a half-written checkpoint behind
        rerun = None if finished_first else rlhf("ppo", "--out", str(out), *SMALL)
        got = weights(out) if finished_first or rerun.returncode == 0 else {}
        identical = bool(got) and all(np.array_equal(got[name], want[name]) for name in want)
        output = [] if rerun is None else rerun.stderr.splitlines() + rerun.stdout.splitlines()
        resumed = next((line for line in output if "resum" in line.lower()), "")
        runs.append({"kill": k, "aimed_at_checkpoint_write": during_write, "killed_during_checkpoint_write": in_write,
                     "killed_after_s": killed_at, "finished_before_kill": finished_first,
                     "rerun_exit_code": None if rerun is None else rerun.returncode,
                     "resume_message": resumed.strip(), "identical_to_uninterrupted": identical})
    killed = [r for r in runs if not r["finished_before_kill"]]  # a run that ended first proves nothing
    return {"uninterrupted_s": duration, "runs": runs, "kills": len(killed),
            "during_checkpoint_write": sum(r["killed_during_checkpoint_write"] for r in killed),
            "identical": sum(r["identical_to_uninterrupted"] for r in killed)}


def corrupted_checkpoint(root: Path) -> dict:
    out = root / "corrupted"
    if rlhf("ppo", "--out", str(out), *SMALL[:1], "3", *SMALL[2:]).returncode:  # 3 iterations, a checkpoint each
        raise RuntimeError("the run to corrupt failed")
    (out / "checkpoint" / "model.safetensors").write_bytes(b"not a safetensors file")
    extended = rlhf("ppo", "--out", str(out), *SMALL[:1], "4", *SMALL[2:])
    warning = next((line for line in extended.stderr.splitlines() if "unreadable" in line), "")
    return {"exit_code": extended.returncode, "message": warning.strip()}


def bad_reward(root: Path, kind: str) -> dict:
    """A reward that raises (or returns NaN) at its fourth call, in a run that saves after every iteration."""
    from agents.ppo import PPOAgent, PPOConfig
    from rlhf_env.training.checkpoint import find_checkpoint

    calls = []

    def reward(prompts, responses):
        calls.append(1)
        if len(calls) == 4:
            if kind == "raises":
                raise ConnectionError("the reward server went away")
            return [float("nan")] * len(responses)
        return [-len(r) / 20 for r in responses]

    out = root / f"reward-{kind}"
    config = PPOConfig(reward=reward, out=str(out), iterations=6, batch_size=16, group_size=4, minibatch_size=8,
                       save_every=1, eval_every=0, final_eval_episodes=8)
    try:
        PPOAgent(config).train()
        message = "no error"
    except Exception as e:  # noqa: BLE001  (what a user would see, whatever it is)
        message = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    checkpoint = find_checkpoint(out / "checkpoint")
    state = json.loads((checkpoint / "state.json").read_text()) if checkpoint else {}
    return {"message": message, "last_checkpoint_iteration": state.get("state", {}).get("iteration")}


def two_runs(root: Path) -> dict:
    out = root / "two"
    first = start("ppo", "--out", str(out), *SMALL)
    while first.poll() is None and not (out / "run.lock").exists():
        time.sleep(0.01)
    second = rlhf("ppo", "--out", str(out), *SMALL)
    first.wait()
    return {"second_exit_code": second.returncode, "message": second.stderr.strip().splitlines()[-1],
            "first_exit_code": first.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-episodes", type=int, default=20_480)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--soak-only", action="store_true", help="run the soak alone and add it to --out's JSON")
    parser.add_argument("--runs-dir", default="runs/reliability")
    parser.add_argument("--out", default="benchmarks/results/reliability.json")
    args = parser.parse_args()
    root = Path(args.runs_dir)
    if args.soak_only:
        if (root / "soak").exists():
            raise SystemExit(f"{root / 'soak'} exists: the soak needs a fresh run; delete it")
        result = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        result["soak"] = soak(root, args.soak_episodes)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(f"soak: {result['soak']}\nwrote {args.out}")
        return
    if root.exists():
        raise SystemExit(f"{root} exists: every figure here needs fresh runs; delete it or pass --runs-dir")
    result = {"kill_and_resume": kill_and_resume(root, args.kills), "corrupted_checkpoint": corrupted_checkpoint(root),
              "reward_raises": bad_reward(root, "raises"), "reward_nan": bad_reward(root, "nan"),
              "two_runs_one_out": two_runs(root)}
    k = result["kill_and_resume"]
    print(f"kill -9: {k['identical']} of {k['kills']} reruns identical to the uninterrupted run")
    for name in ("corrupted_checkpoint", "reward_raises", "reward_nan", "two_runs_one_out"):
        print(f"{name}: {result[name]}")
    if args.soak_episodes:
        result["soak"] = soak(root, args.soak_episodes)
        s = result["soak"]
        print(f"soak: {s['episodes']} episodes in {s['minutes']:.1f} min; RSS {s['rss_mb_first']:.0f} MB at the "
              f"first iteration, {s['rss_mb_after_warmup']:.0f} after warm-up, {s['rss_mb_last']:.0f} at the end; "
              f"slope {s['rss_slope_mb_per_1000_iterations']:+.1f} MB per 1000 iterations")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
