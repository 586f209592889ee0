"""PPO at GPT-2 small's size on a CPU: memory and time per iteration, and a projection to 1, 2 and 8 ranks.

Builds GPT-2 small's shape with random weights (``rlhf_env.real_size``: the policy, which is also the
reference, and a reward model of the same shape) and runs PPO iterations with ``PPOConfig``'s defaults (group
size, response length, epochs, minibatch) but a smaller ``--batch_size``, which keeps an iteration affordable
on one CPU thread: per-episode figures scale from it (with the minibatch fixed, the optimizer steps per episode
are the default's). It measures each phase of an iteration
after a warm-up, the peak resident memory, the time of one AdamW step, and the time of a gloo all-reduce of the
policy's float32 gradient between 2 local processes. From these it projects the time per 1,000 episodes on
1, 2 and 8 ranks; the assumptions are printed and written with the numbers.

    python benchmarks/real_size.py [--batch_size 32] [--iterations 1] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from agents.ppo import PPOAgent, PPOConfig
from rlhf_env.models import TOKENIZER_DIR, load_tokenizer
from rlhf_env.real_size import build_real_size, parameter_counts
from rlhf_env.training.run import resident_mb

ARCH = "gpt2-small"
PHASES = ("time_sample", "time_env", "time_rollout_forward", "time_update", "time_iteration")
RANKS = (1, 2, 8)
ETHERNET_10G = 1.25e9  # bytes/s: a 10 Gb/s link at line rate, for the projection between machines
ASSUMPTIONS = [
    "Each rank runs at the single-rank speed measured here (one CPU thread) and holds its own policy, reference "
    "and reward model; a rank samples, scores and trains on 1/N of the global batch, so all of an iteration's "
    "compute but the AdamW step divides by N. The global minibatch stays the same, so the optimizer steps per "
    "1,000 episodes do not change with N, and every rank runs each AdamW step in full.",
    "One all-reduce of the policy's float32 gradient per optimizer step (training.distributed.all_reduce_grads sums "
    "one flat buffer), not overlapped with compute: pessimistic, since DDP-style bucketing would overlap it with "
    "the backward. The small all-reduces of statistics, the gradient's copy into the flat buffer and rank 0's "
    "held-out evaluations are left out.",
    "A ring all-reduce of B bytes over N ranks takes 2(N-1)/N x B / bandwidth; latency per hop is ignored (small "
    "next to B / bandwidth at this size). 'loopback' takes the bandwidth from the measured 2-process gloo "
    "all-reduce on this machine: no network in between, but both processes share its 2 cores (with whatever else "
    "runs there). '10GbE' assumes a 10 Gb/s link at line rate between machines (1.25 GB/s). GPUs linked by "
    "NVLink reduce through NCCL at tens to hundreds of GB/s, so for 8 GPUs both are pessimistic.",
    "The figures are for random weights: responses rarely end early, so almost all reach max_new_tokens, the most "
    "a trained policy's would cost.",
]


def measure_ppo(directory: Path, batch_size: int, warmup: int, iterations: int) -> dict:
    """Phase times per iteration (the median over ``iterations`` after ``warmup``), the AdamW step, memory."""
    paths = build_real_size(ARCH, directory / "models")
    config = PPOConfig(policy=str(paths["policy"]), reference=str(paths["policy"]), reward=str(paths["reward"]),
                       out=str(directory / "ppo"), batch_size=batch_size, iterations=warmup + iterations,
                       eval_every=0, save_every=0)
    agent = PPOAgent(config)
    obs = agent.env.reset(seed=0)[0]
    rows = []
    for i in range(warmup + iterations):
        metrics, obs = agent.iterate(obs)
        print(f"iteration {i + 1} ({'warm-up' if i < warmup else 'measured'}): {metrics['time_iteration']:.1f} s, "
              f"mean length {metrics['length']:.1f}", flush=True)
        rows.append(metrics)
    rows = rows[warmup:]
    for p in agent.training.params:  # one more AdamW step, on zero gradients, timed alone
        p.grad = torch.zeros_like(p)
    adamw_s = []
    for _ in range(3):
        started = time.perf_counter()
        agent.optimizer.step()
        adamw_s.append(time.perf_counter() - started)
    return {"config": {k: getattr(config, k) for k in ("batch_size", "group_size", "minibatch_size", "ppo_epochs",
                                                         "max_new_tokens", "max_prompt_tokens")},
            "phase_s": {p.removeprefix("time_"): statistics.median(r[p] for r in rows) for p in PHASES},
            "mean_response_tokens": statistics.mean(r["length"] for r in rows),
            "adamw_step_s": statistics.median(adamw_s),
            "rss_end_mb": resident_mb(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux


def _all_reduce_worker(rank: int, world: int, port: int, numel: int, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    flat = torch.ones(numel)
    seconds = []
    for _ in range(repeats + 1):  # the first one warms up the connections
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(flat)
        seconds.append(time.perf_counter() - started)
    if rank == 0:
        Path(out).write_text(json.dumps(seconds[1:]))
    dist.destroy_process_group()


def measure_all_reduce(numel: int, world: int = 2, repeats: int = 5) -> list[float]:
    """Seconds of each gloo all-reduce of ``numel`` float32 between ``world`` local processes (rank 0's)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "seconds.json")
        mp.spawn(_all_reduce_worker, args=(world, port, numel, repeats, out), nprocs=world)
        return json.loads(Path(out).read_text())


def project(ppo: dict, all_reduce_2_s: float, gradient_bytes: int) -> list[dict]:
    """Seconds per 1,000 episodes on each of ``RANKS``, for the measured loopback and an assumed 10 Gb/s link."""
    c = ppo["config"]
    steps = 1000 / c["minibatch_size"] * c["ppo_epochs"]  # optimizer steps per 1,000 episodes, whatever N
    compute = ppo["phase_s"]["iteration"] / c["batch_size"] * 1000
    divisible = compute - steps * ppo["adamw_step_s"]
    links = {"loopback": gradient_bytes / all_reduce_2_s, "10GbE": ETHERNET_10G}  # ring: 2(N-1)/N = 1 at N = 2
    rows = []
    for link, bandwidth in links.items():
        for n in RANKS:
            all_reduce = 2 * (n - 1) / n * gradient_bytes / bandwidth
            total = divisible / n + steps * (ppo["adamw_step_s"] + all_reduce)
            rows.append({"ranks": n, "link": link, "bandwidth_gb_s": bandwidth / 1e9, "all_reduce_s": all_reduce,
                         "compute_s": divisible / n + steps * ppo["adamw_step_s"],
                         "communication_s": steps * all_reduce, "seconds_per_1000_episodes": total,
                         "speedup": compute / total})
    return rows


def report(result: dict) -> None:
    r, c = result, result["config"]
    print(f"\n{r['arch']} shape, random weights: {r['parameters']:,} parameters with the bundled 768-token "
          f"vocabulary ({r['parameters_with_gpt2_vocab']:,} with GPT-2's); {r['threads']} thread(s)")
    print(f"one PPO iteration: {c['batch_size']} episodes (groups of {c['group_size']}, {c['ppo_epochs']} epochs x "
          f"minibatch {c['minibatch_size']}, up to {c['max_new_tokens']} new tokens, mean "
          f"{r['mean_response_tokens']:.1f})")
    if r["scaled_from_batch"]:
        print(f"the default batch is {PPOConfig.batch_size} episodes: the figures per episode scale from this batch")
    print(f"{'phase':<18}{'s/iteration':>12}{'s/episode':>12}")
    for phase, seconds in r["phase_s"].items():
        print(f"{phase:<18}{seconds:>12.2f}{r['seconds_per_episode'][phase]:>12.3f}")
    print(f"AdamW step {r['adamw_step_s']:.2f} s; peak RSS {r['peak_rss_mb']:,.0f} MiB")
    print(f"gloo all-reduce of {r['gradient_bytes'] / 2**20:,.0f} MiB between 2 local processes: median "
          f"{r['all_reduce_2_processes_median_s']:.2f} s of {len(r['all_reduce_2_processes_s'])}")
    print(f"\n{'ranks':>5}  {'link':<9}{'GB/s':>6}{'compute s':>11}{'all-reduce s':>14}{'s/1000 episodes':>17}"
          f"{'speedup':>9}")
    for row in r["projection"]:
        print(f"{row['ranks']:>5}  {row['link']:<9}{row['bandwidth_gb_s']:>6.2f}{row['compute_s']:>11.0f}"
              f"{row['communication_s']:>14.0f}{row['seconds_per_1000_episodes']:>17.0f}{row['speedup']:>9.2f}")
    print("\nassumptions:\n" + "\n".join(f"- {a}" for a in r["assumptions"]))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=32,
                        help="episodes per iteration (the default recipe's 128 takes minutes an iteration here)")
    parser.add_argument("--warmup", type=int, default=1, help="iterations run before measuring")
    parser.add_argument("--iterations", type=int, default=1, help="measured iterations (their median)")
    parser.add_argument("--all_reduce_repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/real_size.json")
    args = parser.parse_args()

    started = time.perf_counter()
    counts = parameter_counts(ARCH, load_tokenizer(TOKENIZER_DIR))
    with tempfile.TemporaryDirectory(prefix="real-size-") as tmp:
        ppo = measure_ppo(Path(tmp), args.batch_size, args.warmup, args.iterations)
    gradient_bytes = 4 * counts["parameters"]  # the policy's float32 gradient (no critic with the rloo default)
    all_reduce = measure_all_reduce(counts["parameters"], repeats=args.all_reduce_repeats)
    projection = project(ppo, statistics.median(all_reduce), gradient_bytes)
    per_episode = {p: s / args.batch_size for p, s in ppo["phase_s"].items()}
    result = {"arch": ARCH, **counts, "threads": torch.get_num_threads(), "warmup": args.warmup,
              "iterations": args.iterations, **ppo, "seconds_per_episode": per_episode,
              "scaled_from_batch": args.batch_size != PPOConfig.batch_size,
              "state_mb": {"weights_policy_reference_reward": 3 * gradient_bytes / 2**20,
                           "gradient_and_adamw": 3 * gradient_bytes / 2**20},
              "gradient_bytes": gradient_bytes, "all_reduce_2_processes_s": all_reduce,
              "all_reduce_2_processes_median_s": statistics.median(all_reduce), "projection": projection,
              "assumptions": ASSUMPTIONS, "wall_s": time.perf_counter() - started}

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    report(result)
    print(f"\nwrote {args.out} ({result['wall_s'] / 60:.1f} minutes)")


if __name__ == "__main__":
    main()
