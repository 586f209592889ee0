"""Our PPO and RLOO against TRL's at equal work: episodes/s, tokens/s and peak RSS of steady-state steps.

Every system gets the same policy (the bundled ``sft`` and ``sft-large``), the same prompts (the world's
``ppo`` prompt split, tokenized by the policy's own tokenizer), the same reward model, 64 completions per
step of at most 48 new tokens, sampled at temperature 1 from the full distribution, and a KL penalty of 0.05
to a frozen copy of the policy. The reward is the bundled ``rm-scalar`` for both sides: TRL's PPO needs a
sequence classifier as reward model and critic, which the default likelihood ``rm`` is not. Rows:

- ``ours-ppo-head``: ``rlhf ppo --reward rm-scalar --advantage gae --group_size 1`` (a value head on the
  policy's trunk: less work than a separate critic);
- ``ours-ppo-critic``: the same with ``--value_model rm`` (a separate critic initialised from the reward model);
- ``trl-ppo``: TRL's PPOTrainer (``trl.experimental.ppo``, last in TRL 1.9), a separate critic from the same
  reward model; both PPO rows do 4 epochs of minibatches of 16 (16 optimizer steps a step);
- ``ours-rloo``: ``rlhf rloo --reward rm-scalar --group_size 4`` (16 prompts x 4 samples, one pass, one step);
- ``trl-rloo``: TRL's current RLOOTrainer, 4 generations per prompt, one pass and one optimizer step.

Each run is a fresh subprocess that times ``--steps`` steps after ``--warmup`` warm-up steps (load time is not
counted) at ``--threads`` threads; the systems' runs are interleaved, ``--repeats`` rounds of them. Peak RSS is
the subprocess's own (``os.wait4``; ours as it stood at the end of the timed steps, before the measurements below).
Tokens are response tokens up to and including EOS.

Our rows also record each timed step's phases (sample, env, rollout forward, update) and, after the timed steps,
the matmul FLOPs of one update and this machine's fastest float32 matmul at the same threads: ``bounds`` then says
what a step 3x as fast as TRL's would leave for our update, and the matmul rate it would need there even if
nothing else in it took time.

TRL is an optional extra, never a dependency of this package: TRL's PPO and its current RLOO need different
TRL releases, so the script makes one virtual environment per TRL version under ``--cache`` (``python -m
venv``, then ``pip install torch==<ours>`` first, so that the CPU build we run is used, then ``pip install
trl==X`` with whatever that release pins) and runs each TRL system there, as ``vs_trl.py --worker SPEC``.
That worker imports only torch, transformers, datasets and TRL, and reads the model directories and a JSON
file of the prompts; every exchange is JSON. Our rows run the same worker in this interpreter. A TRL version
that cannot be installed or run is recorded, with its error, in the JSON, and the other rows still run.

    python benchmarks/vs_trl.py                    # sft and sft-large, 4 interleaved repeats of 3 steps each
    python benchmarks/vs_trl.py --quick            # sft only, 1 repeat of 1 step: a smoke run
    python benchmarks/vs_trl.py --systems ours-rloo trl-rloo --policies sft
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "rlhf_env" / "assets" / "models"
REWARD = "rm-scalar"
TRL_PPO_VERSION = "1.9.2"  # the last release with a PPOTrainer (trl.experimental.ppo)
TRL_RLOO_VERSION = "1.16.0"
SETTINGS = {"batch_size": 64, "minibatch_size": 16, "ppo_epochs": 4, "group_size": 4, "max_new_tokens": 48,
            "temperature": 1.0, "kl_coef": 0.05, "reward": REWARD, "prompts": "ppo"}

# name: (whose, TRL version or None, what the row runs, what one step does, the row it is set against)
SYSTEMS = {
    "ours-ppo-head": ("ours", None, "`rlhf ppo --advantage gae --group_size 1` (value head on the policy)",
                      "sample, reference, RM, values, 4 epochs x 4 minibatches (policy with a value head)",
                      "trl-ppo"),
    "ours-ppo-critic": ("ours", None, "`rlhf ppo --advantage gae --group_size 1 --value_model rm` (separate critic)",
                        "sample, reference, RM, critic, 4 epochs x 4 minibatches (policy and critic)", "trl-ppo"),
    "trl-ppo": ("trl", TRL_PPO_VERSION, f"TRL {TRL_PPO_VERSION} `trl.experimental.ppo.PPOTrainer` (separate critic)",
                "sample, reference, RM, critic, 4 epochs x 4 minibatches (policy and critic)", None),
    "ours-rloo": ("ours", None, "`rlhf rloo --group_size 4`",
                  "sample, reference, RM, one pass and one optimizer step", "trl-rloo"),
    "trl-rloo": ("trl", TRL_RLOO_VERSION, f"TRL {TRL_RLOO_VERSION} `RLOOTrainer` (4 generations per prompt)",
                 "sample, old log-probs, reference, RM, one pass and one optimizer step", None),
}
PHASES = ("time_sample", "time_env", "time_rollout_forward", "time_update")  # an iteration's metrics (ours)
RESULT_KEYS = ("system", "policy", "step_seconds", "response_tokens", "episodes_per_step", "setup_seconds",
               "versions", "threads")


# -- the worker: one system, one policy, in whichever interpreter has its libraries -------------------------
def worker_spec(system: str, policy: str, steps: int, warmup: int, threads: int, prompts_file: str,
                seed: int = 0) -> dict:
    """What a worker runs: plain JSON, the same for our rows and TRL's."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; known: {', '.join(SYSTEMS)}")
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    return {"system": system, "policy": policy, "policy_dir": str(MODELS / policy), "reward_dir": str(MODELS / REWARD),
            "prompts_file": prompts_file, "steps": steps, "warmup": warmup, "threads": threads, "seed": seed,
            **SETTINGS}


def read_worker_result(path: str | Path, spec: dict) -> dict:
    """A worker's result file, checked against its spec: a timed step for each of ``spec['steps']``."""
    result = json.loads(Path(path).read_text())
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"worker result {path} lacks {', '.join(missing)}")
    if (result["system"], result["policy"]) != (spec["system"], spec["policy"]):
        raise ValueError(f"worker result {path} is for {result['system']}/{result['policy']}, not "
                         f"{spec['system']}/{spec['policy']}")
    for key in ("step_seconds", "response_tokens"):
        if len(result[key]) != spec["steps"]:
            raise ValueError(f"worker result {path} has {len(result[key])} {key}, expected {spec['steps']}")
    return result


def worker(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    started = time.perf_counter()
    run = _run_ours if spec["system"].startswith("ours") else {"trl-ppo": _run_trl_ppo,
                                                               "trl-rloo": _run_trl_rloo}[spec["system"]]
    seconds, tokens, setup, versions, *extra = run(spec, started)  # ours: also phase times and FLOPs
    from importlib.metadata import version

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                **{name: version(name) for name in ("transformers", "accelerate", "datasets")}, **versions}
    result = {"system": spec["system"], "policy": spec["policy"], "step_seconds": seconds[spec["warmup"]:],
              "warmup_seconds": seconds[:spec["warmup"]], "response_tokens": tokens[spec["warmup"]:],
              "episodes_per_step": spec["batch_size"], "setup_seconds": setup, "versions": versions,
              "threads": torch.get_num_threads(), **(extra[0] if extra else {})}
    Path(out_path).write_text(json.dumps(result))


def _run_ours(spec: dict, started: float):
    """``rlhf ppo`` / ``rlhf rloo`` with the spec's settings: their agents' ``iterate``, as the command runs it."""
    from agents.ppo import PPOAgent, PPOConfig
    from agents.rloo import RLOOAgent, RLOOConfig

    steps = spec["warmup"] + spec["steps"]
    common = dict(policy=spec["policy"], reward=spec["reward"], batch_size=spec["batch_size"],
                  max_new_tokens=spec["max_new_tokens"], temperature=spec["temperature"], kl_coef=spec["kl_coef"],
                  prompts=spec["prompts"], iterations=steps, seed=spec["seed"], eval_every=0, save_every=0)
    with tempfile.TemporaryDirectory() as out:
        if spec["system"] == "ours-rloo":
            agent = RLOOAgent(RLOOConfig(**common, out=out, group_size=spec["group_size"]))
        else:
            agent = PPOAgent(PPOConfig(**common, out=out, advantage="gae", group_size=1,
                                       minibatch_size=spec["minibatch_size"], ppo_epochs=spec["ppo_epochs"],
                                       value_model="rm" if spec["system"] == "ours-ppo-critic" else "head"))
        obs = agent.env.reset(seed=spec["seed"])[0]
        setup = time.perf_counter() - started
        seconds, tokens, phases = [], [], []
        for _ in range(steps):
            start = time.perf_counter()
            metrics, obs = agent.iterate(obs)
            seconds.append(time.perf_counter() - start)
            tokens.append(metrics["length"] * spec["batch_size"])
            phases.append({k.removeprefix("time_"): metrics[k] for k in PHASES if k in metrics})
        # After the timed steps (and the peak RSS they reached, which the measurements below must not raise): the
        # matmul FLOPs of one more update (of a fresh rollout), and this machine's fastest float32 matmul at the
        # worker's threads, for ``bounds``
        from bench_ppo_iteration import code_version, matmul_peak_gflops, update_flops

        extra = {"phase_seconds": phases[spec["warmup"]:],
                 "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
                 "update_gflop": update_flops(agent, agent.rollout(obs)) / 1e9,
                 "matmul_peak_gflops": matmul_peak_gflops()}
    return seconds, tokens, setup, {"rlhf_env": code_version()}, extra


def _step_timer():
    """A TrainerCallback that marks the start of training and the end of every optimizer step (TRL's steps)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.marks, self.mean_lengths = [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:  # RLOOTrainer's own count, EOS included
                self.mean_lengths.append(logs["completions/mean_length"])

        def seconds(self) -> list[float]:
            return [b - a for a, b in zip(self.marks, self.marks[1:])]

    return StepTimer()


def _prompts(spec: dict) -> list[str]:
    return json.loads(Path(spec["prompts_file"]).read_text())


def _run_trl_ppo(spec: dict, started: float):
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as module

    torch.manual_seed(spec["seed"])
    steps, B = spec["warmup"] + spec["steps"], spec["batch_size"]
    tokenizer = AutoTokenizer.from_pretrained(spec["policy_dir"])  # left padding, as the bundled config says
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward_dir"], num_labels=1, dtype=torch.float32)
    critic = AutoModelForSequenceClassification.from_pretrained(spec["reward_dir"], num_labels=1, dtype=torch.float32)
    prompts = _prompts(spec)
    dataset = Dataset.from_dict({"input_ids": tokenizer(prompts)["input_ids"]})
    timer = _step_timer()
    lengths = []
    generate = module.batch_generation

    def counted(model, queries, *args, **kwargs):  # the responses' lengths to their first EOS (inclusive)
        query_responses, logits = generate(model, queries, *args, **kwargs)
        is_eos = query_responses[:, queries.shape[1]:] == tokenizer.eos_token_id
        full = torch.full((len(is_eos),), is_eos.shape[1])
        lengths.append(torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, full).sum().item())
        return query_responses, logits

    module.batch_generation = counted
    with tempfile.TemporaryDirectory() as out:
        # per_device_train_batch_size (64) x gradient_accumulation_steps (1) is the batch; num_mini_batches 4 makes
        # minibatches of 16, each one optimizer step (with gradient_accumulation_steps > 1, accelerate would skip
        # the optimizer's step on all but every n-th minibatch)
        config = PPOConfig(output_dir=out, per_device_train_batch_size=B, gradient_accumulation_steps=1,
                           num_mini_batches=B // spec["minibatch_size"], num_ppo_epochs=spec["ppo_epochs"],
                           local_rollout_forward_batch_size=B, total_episodes=B * steps,
                           response_length=spec["max_new_tokens"], temperature=spec["temperature"], stop_token="eos",
                           missing_eos_penalty=1.0, kl_coef=spec["kl_coef"], learning_rate=3e-5, vf_coef=0.1,
                           num_sample_generations=0, bf16=False, gradient_checkpointing=False, use_cpu=True,
                           report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=spec["seed"])
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=reference,
                             reward_model=reward, value_model=critic, train_dataset=dataset,
                             eval_dataset=dataset.select(range(B)), callbacks=[timer])
        setup = time.perf_counter() - started
        trainer.train()
    seconds = timer.seconds()
    if len(seconds) != steps or len(lengths) != steps:
        raise RuntimeError(f"TRL PPO ran {len(seconds)} steps ({len(lengths)} generations), expected {steps}")
    return seconds, lengths, setup, {"trl": trl.__version__}


def _run_trl_rloo(spec: dict, started: float):
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    torch.manual_seed(spec["seed"])
    steps, B = spec["warmup"] + spec["steps"], spec["batch_size"]
    tokenizer = AutoTokenizer.from_pretrained(spec["policy_dir"])
    policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    timer = _step_timer()
    with tempfile.TemporaryDirectory() as out:
        # one generation of 64 completions (16 prompts x 4) per optimizer step, one pass: on-policy RLOO
        config = RLOOConfig(output_dir=out, per_device_train_batch_size=B, gradient_accumulation_steps=1,
                            num_generations=spec["group_size"], num_iterations=1, max_steps=steps,
                            max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"], top_k=0,
                            top_p=1.0, beta=spec["kl_coef"], learning_rate=3e-4, disable_dropout=True, bf16=False,
                            gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                            logging_steps=1, disable_tqdm=True, seed=spec["seed"])
        trainer = RLOOTrainer(model=policy, reward_funcs=spec["reward_dir"], args=config, processing_class=tokenizer,
                              train_dataset=Dataset.from_dict({"prompt": _prompts(spec)}), callbacks=[timer])
        setup = time.perf_counter() - started
        trainer.train()
    seconds = timer.seconds()
    if len(seconds) != steps or len(timer.mean_lengths) != steps:
        raise RuntimeError(f"TRL RLOO ran {len(seconds)} steps ({len(timer.mean_lengths)} logged), expected {steps}")
    return seconds, [m * B for m in timer.mean_lengths], setup, {"trl": trl.__version__}


# -- the driver: venvs, interleaved subprocesses, the summary -----------------------------------------------
def ensure_venv(version: str, cache: Path) -> Path:
    """The python of a venv with ``trl==version`` (and our torch), made on first use; raises with pip's error."""
    import torch  # our version, so that the TRL side runs the same build

    venv = cache / version
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import trl, torch; print(trl.__version__, torch.__version__)"]
    wanted = [version, torch.__version__]  # a trl install that moved torch would compare other builds
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.split() == wanted:
        return python
    print(f"making {venv} (torch {torch.__version__}, trl {version}) ...", flush=True)
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    for command in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                    [str(python), "-m", "pip", "install", "-q", torch_pin],
                    [str(python), "-m", "pip", "install", "-q", f"trl=={version}"]):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    got = subprocess.run(probe, capture_output=True, text=True).stdout.split()
    if got != wanted:
        raise RuntimeError(f"{venv} has trl, torch {got}, not {wanted}: trl=={version} moved torch; install our "
                           f"torch build there by hand")
    return python


def worker_env(threads: int, ours: bool) -> dict[str, str]:
    """A worker subprocess's environment: its threads, offline, quiet; our package importable only on our side."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
            "PYTHONPATH": str(ROOT) if ours else ""}


def launch(python: str | Path, spec: dict, tmp: Path, threads: int) -> dict:
    """One worker subprocess; its result with the subprocess's peak RSS (MiB)."""
    name = f"{spec['system']}-{spec['policy']}-{time.monotonic_ns()}"
    spec_path, out_path, log_path = tmp / f"{name}.spec.json", tmp / f"{name}.json", tmp / f"{name}.log"
    spec_path.write_text(json.dumps(spec))
    env = worker_env(threads, ours=spec["system"].startswith("ours"))
    with open(log_path, "w") as log:
        process = subprocess.Popen([str(python), str(Path(__file__).resolve()), "--worker", str(spec_path),
                                    "--worker-out", str(out_path)], cwd=ROOT if spec["system"].startswith("ours")
                                   else tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{spec['system']} on {spec['policy']} exited {process.returncode}: "
                           f"{log_path.read_text().strip()[-3000:]}")
    result = read_worker_result(out_path, spec)
    result.setdefault("peak_rss_mib", usage.ru_maxrss / 1024)  # the process's (Linux: KiB), unless it said its own
    return result


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs: list[dict]) -> dict:
    """Episodes/s and tokens/s per timed step over every run of one system and policy (median, min, max); peak
    RSS over its runs."""
    episodes = [r["episodes_per_step"] / s for r in runs for s in r["step_seconds"]]
    tokens = [t / s for r in runs for s, t in zip(r["step_seconds"], r["response_tokens"])]
    return {"episodes_per_s": _stats(episodes), "tokens_per_s": _stats(tokens),
            "step_s": _stats([s for r in runs for s in r["step_seconds"]]),
            "mean_response_tokens": statistics.mean(t / r["episodes_per_step"] for r in runs
                                                    for t in r["response_tokens"]),
            "peak_rss_mib": _stats([r["peak_rss_mib"] for r in runs]),
            "setup_s": _stats([r["setup_seconds"] for r in runs]), "runs": len(runs)}


def ratios(summary: dict) -> dict:
    """Ours over TRL's median episodes/s and tokens/s, per policy, for each of our rows against its TRL row."""
    out = {}
    for policy, rows in summary.items():
        for name, (_, _, _, _, against) in SYSTEMS.items():
            if against and name in rows and against in rows:
                out.setdefault(policy, {})[f"{name}/{against}"] = {
                    k: rows[name][k]["median"] / rows[against][k]["median"] for k in ("episodes_per_s", "tokens_per_s")}
    return out


def bounds(summary: dict, raw: list[dict], factor: float = 3.0) -> dict:
    """For each of our rows against a TRL row, per policy: what a step ``factor`` times as fast as TRL's leaves for
    our update, and the matmul rate the update would need to fit there even if nothing in it but its matmuls
    took time, against this machine's fastest float32 matmul (medians over the runs' timed steps; the peak is the
    fastest that any run measured)."""
    out = {}
    for policy, rows in summary.items():
        for name, (whose, _, _, _, against) in SYSTEMS.items():
            ours = [r for r in raw if (r["system"], r["policy"]) == (name, policy)
                    and {"phase_seconds", "update_gflop", "matmul_peak_gflops"} <= r.keys()]
            if whose != "ours" or against not in rows or not ours:
                continue
            phases = [p for r in ours for p in r["phase_seconds"]]
            update = statistics.median(p["update"] for p in phases)
            rest = statistics.median(s - p["update"] for r in ours for s, p in zip(r["step_seconds"],
                                                                                    r["phase_seconds"]))
            target = rows[against]["step_s"]["median"] / factor
            gflop = statistics.median(r["update_gflop"] for r in ours)
            peak = max(r["matmul_peak_gflops"] for r in ours)  # a peak: the fastest any run measured
            room = target - rest  # the update's seconds in a step of ``target``
            needed = gflop / room if room > 0 else None
            out.setdefault(policy, {})[name] = {
                "factor": factor, "against": against, "target_step_s": target, "step_s": rows[name]["step_s"]["median"],
                "update_s": update, "rest_s": rest, "update_gflop": gflop, "update_gflops": gflop / update,
                "matmul_peak_gflops": peak, "update_s_needed": room, "gflops_needed": needed,
                "needed_share_of_peak": None if needed is None else needed / peak,
                "phases_s": {k: statistics.median(p[k] for p in phases) for k in phases[0]}}
    return out


def bound_line(policy: str, name: str, b: dict) -> str:
    """One of ``bounds`` in words."""
    head = (f"{policy}: {name} at {b['factor']:.0f}x {b['against']} needs a step of {b['target_step_s']:.2f} s; "
            f"ours takes {b['step_s']:.2f} s (update {b['update_s']:.2f} s, its matmuls at "
            f"{b['update_gflops']:.0f} GFLOP/s; the rest {b['rest_s']:.2f} s)")
    if b["gflops_needed"] is None:
        return head + ": the rest alone takes longer than that step"
    return (head + f": the update would have to run its {b['update_gflop']:.1f} GFLOP in {b['update_s_needed']:.2f} s, "
            f"{b['gflops_needed']:.0f} GFLOP/s, {b['needed_share_of_peak']:.0%} of this machine's fastest float32 "
            f"matmul ({b['matmul_peak_gflops']:.0f} GFLOP/s), with nothing else in it taking time")


def print_table(result: dict) -> None:
    print(f"\nat {result['settings']['threads']} thread(s); {result['settings']['steps']} timed steps after "
          f"{result['settings']['warmup']} warm-up, {result['settings']['repeats']} interleaved repeats")
    print(f"{'system':<16}{'policy':<11}{'episodes/s (min..max)':>26}{'tokens/s':>10}{'RSS MiB':>9}  versions")
    for policy, rows in result["summary"].items():
        for name, s in rows.items():
            e, v = s["episodes_per_s"], result["versions"].get(name, {})
            print(f"{name:<16}{policy:<11}{e['median']:>8.1f} ({e['min']:.1f}..{e['max']:.1f}){'':>6}"
                  f"{s['tokens_per_s']['median']:>10.0f}{s['peak_rss_mib']['median']:>9.0f}  "
                  + " ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "trl", "rlhf_env") if k in v))
    for policy, pairs in result["ratios"].items():
        for pair, r in pairs.items():
            print(f"{policy}: {pair}: {r['episodes_per_s']:.2f}x episodes/s, {r['tokens_per_s']:.2f}x tokens/s")
    for policy, rows in result.get("bounds", {}).items():
        for name, b in rows.items():
            print(bound_line(policy, name, b))
    for name, error in result["errors"].items():
        print(f"{name}: FAILED: {error[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", nargs="+", default=["sft", "sft-large"])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run, after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each run")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved rounds of every system")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every system (OMP/MKL too)")
    parser.add_argument("--quick", action="store_true", help="sft only, one repeat of one timed step")
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "rlhf_env" / "vs_trl"),
                        help="where the TRL venvs are made and reused, one per TRL version")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vs_trl.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one system from this spec file
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.worker_out)
    if args.quick:
        args.policies, args.steps, args.repeats = ["sft"], 1, 1
    started = time.time()
    from rlhf_env.paths import DATA_DIR
    from rlhf_env.world.storage import read_split

    pythons, errors = {}, {}
    for name in args.systems:
        whose, version = SYSTEMS[name][:2]
        try:
            pythons[name] = sys.executable if whose == "ours" else ensure_venv(version, Path(args.cache))
        except Exception as e:  # noqa: BLE001  (recorded and reported; the other rows still run)
            errors[name] = f"{type(e).__name__}: {e}"
    runs: dict[tuple[str, str], list[dict]] = {}
    versions = {}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        prompts_file = Path(tmp) / "prompts.json"
        prompts_file.write_text(json.dumps(read_split(DATA_DIR, "prompts", "ppo")["prompt"].to_pylist()))
        for repeat in range(args.repeats):
            for policy in args.policies:
                for name in args.systems:  # interleaved: a slower spell of a shared machine hits every system
                    if name in errors:
                        continue
                    spec = worker_spec(name, policy, args.steps, args.warmup, args.threads, str(prompts_file),
                                       seed=repeat)
                    print(f"repeat {repeat + 1}/{args.repeats}: {name} on {policy} ...", flush=True)
                    try:
                        result = launch(pythons[name], spec, Path(tmp), args.threads)
                    except Exception as e:  # noqa: BLE001
                        errors[name] = f"{type(e).__name__}: {e}"
                        print(f"  failed: {errors[name][-500:]}", flush=True)
                        continue
                    runs.setdefault((policy, name), []).append(result)
                    versions[name] = result["versions"]
                    print(f"  {statistics.median(result['step_seconds']):.2f} s a step", flush=True)
                load.append(os.getloadavg()[0])
    summary: dict[str, dict] = {}
    for (policy, name), rs in runs.items():
        summary.setdefault(policy, {})[name] = summarize(rs)  # a system that failed later keeps its runs
    result = {
        "settings": {**SETTINGS, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                     "threads": args.threads, "policies": args.policies, "quick": args.quick,
                     "trl_ppo_version": TRL_PPO_VERSION, "trl_rloo_version": TRL_RLOO_VERSION},
        "systems": {name: {"runs": what, "one_step": step, "against": against, "trl_version": version}
                    for name, (_, version, what, step, against) in SYSTEMS.items() if name in args.systems},
        "versions": versions, "summary": summary, "ratios": ratios(summary),
        "bounds": bounds(summary, [r for rs in runs.values() for r in rs]), "errors": errors,
        "raw": [{k: v for k, v in r.items() if k != "versions"} for rs in runs.values() for r in rs],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_1min": load},
        "wall_s": time.time() - started}
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
