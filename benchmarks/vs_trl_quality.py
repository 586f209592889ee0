"""Time to quality against TRL: training wall time until the held-out gold win rate against SFT reaches a target.

Both sides run one recipe on the same task: the bundled ``sft`` policy, the world's ``ppo`` prompts, the
bundled ``rm`` as reward, a KL penalty of 0.05 to the SFT policy in the sequence's reward, 2 samples per
prompt with a leave-one-out baseline, 256 episodes per generation, 2 passes of clipped-ratio (0.2) steps on
minibatches of 16, AdamW at 1e-4 decaying linearly over 300 generations, temperature 1, at most 48 new tokens,
and a response without EOS scored -1. That recipe is our ``rlhf ppo`` default, which the script checks.
TRL's ``RLOOTrainer`` runs it with the settings in ``trl_config``, by default with the three changes of
``--trl-recipe black-box`` (8 samples per prompt, 4 passes, 3e-5: our default before the token target, where
TRL did better; on ours, ``--trl-recipe same``, its win rate fell below SFT's). ``--ours-recipe black-box`` runs
both sides on the bench's black-box PPO recipe (those three, 128 episodes a generation, no token target): one
recipe on both sides, so that only speed differs. TRL scores through ``rlhf serve-reward``
(``rlhf_env.rewards.server``, JSON over HTTP, served from this process), so both sides pay the same reward model;
its reward function applies the EOS rule. Ours also has its default token target (``agents/token_target.py``),
which reads the reward model's LM: our best agent on this task, and one that TRL, which sees the reward only as
scores, does not have.

Every ``--eval-every`` generations each policy is judged as ``rlhf eval`` judges (``rlhf_env.evaluation.
HeldOutJudge``: ``--eval-episodes`` held-out customers' prompts, eval seed 0, against SFT's samples, gold grades,
ties half): ours inside its worker, TRL's from the weights a callback saved, afterwards in this interpreter.
Training time counts the steps only: loading, judging and saving are left out on both sides. Each side runs in
a fresh subprocess at ``--threads`` threads, ours in this interpreter and TRL's in the venv that
``benchmarks/vs_trl.py`` makes.

Both runs stop after ``--stop-after`` generations (the learning-rate schedule still spans ``--generations``), so
the judgements go where the curves rise. The targets are a win rate of 0.6, two lower levels, and the best win
rate that both sides reach; a side's time to a target is that of its first judgement at or above it.
Prints a table and writes JSON.

    python benchmarks/vs_trl_quality.py [--stop-after 40] [--eval-every 4] [--eval-episodes 500]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # vs_trl, beside this script

from vs_trl import MODELS, ROOT, TRL_RLOO_VERSION, ensure_venv, worker_env  # noqa: E402

TARGET = 0.6
# TRL's side: the recipe itself ("same"), or the black-box recipe that rlhf ppo's default was before the token
# target (8 per prompt, 4 passes at 3e-5), on which TRL's RLOO did better: at the default's 2 per prompt and 1e-4
# its held-out win rate fell below SFT's (vs_trl_quality_same_recipe.json)
TRL_RECIPES = {"same": {}, "black-box": {"group_size": 8, "ppo_epochs": 4, "lr": 3e-5}}
# Our side: rlhf ppo's default, or the bench's black-box PPO (no token target, 128 episodes a generation): then TRL
# runs that recipe too (BLACK_BOX), and only the two sides' speed differs. Written out, not imported: TRL's worker
# runs this script in a venv without our package (tests/test_benchmarks.py checks it against the bench's)
BLACK_BOX = {"batch_size": 128, "group_size": 8, "lr": 3e-5, "ppo_epochs": 4}
OURS_RECIPES = {"default": {}, "black-box": {"token_target_coef": 0.0, **BLACK_BOX}}
LEVELS = (0.55, 0.58)  # lower targets, compared as well: the curves flatten just under TARGET
RECIPE = {"batch_size": 256, "group_size": 2, "minibatch_size": 16, "ppo_epochs": 2, "lr": 1e-4, "kl_coef": 0.05,
          "clip_coef": 0.2, "temperature": 1.0, "max_new_tokens": 48, "missing_eos_penalty": -1.0,
          "adam_eps": 1e-5, "weight_decay": 0.01, "max_grad_norm": 1.0, "advantage": "rloo", "reward": "rm",
          "policy": "sft", "prompts": "ppo"}


# -- the workers ----------------------------------------------------------------------------------------------
def worker(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    result = _train_ours(spec) if spec["side"] == "ours" else _train_trl(spec)
    Path(out_path).write_text(json.dumps(result))


def _train_ours(spec: dict) -> dict:
    """``rlhf ppo``'s default run (with ``spec["ours_overrides"]``), its iterations timed, judged every
    ``eval_every`` generations."""
    from agents.ppo import PPOAgent, PPOConfig

    overrides = spec["ours_overrides"]
    with tempfile.TemporaryDirectory() as out:
        agent = PPOAgent(PPOConfig(out=out, iterations=spec["generations"], seed=spec["seed"], eval_every=0,
                                   save_every=0, **overrides))
        recipe = {**RECIPE, **{k: v for k, v in overrides.items() if k in RECIPE}}
        differs = {k: (getattr(agent.config, k), v) for k, v in recipe.items() if getattr(agent.config, k) != v}
        if differs:
            raise RuntimeError(f"rlhf ppo's defaults are no longer the compared recipe: {differs}")
        obs = agent.resume()  # a fresh run: the env's first observations
        trained, curve = 0.0, []
        while agent.iteration < spec["stop_after"]:
            start = time.perf_counter()
            _, obs = agent.iterate(obs)
            trained += time.perf_counter() - start
            if agent.iteration % spec["eval_every"] == 0 or agent.iteration == spec["stop_after"]:
                judged = agent.evaluate(spec["eval_episodes"])
                curve.append({"generation": agent.iteration, "train_s": trained,
                              "win_rate": judged["win_rate_vs_reference"], "kl": judged["kl"]})
    return {"side": "ours", "curve": curve, "token_target_coef": agent.token_target_coef}


def trl_config(spec: dict, out: str):
    """TRL's RLOOConfig for the recipe with ``spec["trl_overrides"]``: a generation of 256 (128 prompts x 2 in
    ours) spans 16 steps of 16, reused for ``ppo_epochs`` passes (``num_iterations``), as in ours."""
    from trl import RLOOConfig

    recipe = {**RECIPE, **spec["trl_overrides"]}

    steps_per_generation = recipe["batch_size"] // recipe["minibatch_size"]
    return RLOOConfig(
        output_dir=out, per_device_train_batch_size=recipe["minibatch_size"], gradient_accumulation_steps=1,
        steps_per_generation=steps_per_generation, num_generations=recipe["group_size"],
        num_iterations=recipe["ppo_epochs"],
        max_steps=spec["generations"] * steps_per_generation * recipe["ppo_epochs"],
        max_completion_length=recipe["max_new_tokens"], temperature=recipe["temperature"], top_k=0, top_p=1.0,
        beta=recipe["kl_coef"], epsilon=recipe["clip_coef"], learning_rate=recipe["lr"],
        lr_scheduler_type="linear",
        adam_epsilon=recipe["adam_eps"], weight_decay=recipe["weight_decay"], max_grad_norm=recipe["max_grad_norm"],
        normalize_advantages=True, disable_dropout=True, bf16=False, gradient_checkpointing=False, use_cpu=True,
        report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True, seed=spec["seed"])


def _train_trl(spec: dict) -> dict:
    """TRL's RLOOTrainer on the recipe; a callback saves the weights every ``eval_every`` generations (not timed)."""
    import urllib.request

    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import RLOOTrainer

    torch.manual_seed(spec["seed"])
    recipe = {**RECIPE, **spec["trl_overrides"]}
    tokenizer = AutoTokenizer.from_pretrained(spec["policy_dir"])
    policy = AutoModelForCausalLM.from_pretrained(spec["policy_dir"], dtype=torch.float32)
    eos_id = tokenizer.eos_token_id

    def reward(prompts, completions, completion_ids, **kwargs):
        """``rlhf serve-reward``'s score for a response that ended with EOS, else the recipe's penalty. The wire
        of ``rlhf_env.rewards.server.RemoteReward``, written out: this venv has TRL's packages, not ours."""
        eos = [eos_id in ids for ids in completion_ids]
        body = json.dumps({"prompts": prompts, "responses": completions, "eos": eos}).encode()
        request = urllib.request.Request(spec["reward_url"] + "/score", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            scores = json.loads(reply.read())["scores"]
        return [s if e else recipe["missing_eos_penalty"] for s, e in zip(scores, eos)]

    steps_per_generation = recipe["batch_size"] // recipe["minibatch_size"] * recipe["ppo_epochs"]

    class Snapshots(TrainerCallback):
        def __init__(self):
            self.started, self.untimed, self.saved = 0.0, 0.0, []

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            generation, rest = divmod(state.global_step, steps_per_generation)
            if rest or not (generation % spec["eval_every"] == 0 or generation == spec["stop_after"]):
                return
            control.should_training_stop = generation >= spec["stop_after"]
            trained = time.perf_counter() - self.started - self.untimed
            start = time.perf_counter()
            path = Path(spec["out"]) / f"generation-{generation}"
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            self.untimed += time.perf_counter() - start
            self.saved.append({"generation": generation, "train_s": trained, "path": str(path)})

    snapshots = Snapshots()
    prompts = json.loads(Path(spec["prompts_file"]).read_text())
    trainer = RLOOTrainer(model=policy, reward_funcs=reward, args=trl_config(spec, spec["out"] + "/trainer"),
                          processing_class=tokenizer, train_dataset=Dataset.from_dict({"prompt": prompts}),
                          callbacks=[snapshots])
    trainer.train()
    return {"side": "trl", "snapshots": snapshots.saved, "trl": trl.__version__}


# -- the driver -----------------------------------------------------------------------------------------------
def launch(python: str | Path, spec: dict, tmp: Path) -> dict:
    spec_path, out_path, log_path = (tmp / f"{spec['side']}.{name}" for name in ("spec.json", "json", "log"))
    spec_path.write_text(json.dumps(spec))
    env = worker_env(spec["threads"], ours=spec["side"] == "ours")
    with open(log_path, "w") as log:
        done = subprocess.run([str(python), str(Path(__file__).resolve()), "--worker", str(spec_path),
                               "--worker-out", str(out_path)], cwd=ROOT if spec["side"] == "ours" else tmp, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{spec['side']} exited {done.returncode}: {log_path.read_text().strip()[-3000:]}")
    return json.loads(out_path.read_text())


def judge_snapshots(snapshots: list[dict], episodes: int) -> list[dict]:
    """TRL's saved policies judged as ours are in training (``PPOAgent.evaluate``)."""
    from agents.configs import PPOConfig
    from rlhf_env.evaluation import HeldOutJudge
    from rlhf_env.models import load_policy, load_reference, load_tokenizer
    from rlhf_env.rewards import load_reward

    c = PPOConfig()  # the judge settings of rlhf ppo's own evaluations
    reference, _ = load_reference(c.policy)
    tokenizer = load_tokenizer(c.policy)
    judge = HeldOutJudge(reference, tokenizer, c.data, c.eval_seed, c.temperature, c.max_new_tokens)
    reward = load_reward(c.reward)
    curve = []
    for snap in snapshots:
        policy, _ = load_policy(snap["path"], accel=True)
        judged = judge(policy, episodes, reward)
        curve.append({"generation": snap["generation"], "train_s": snap["train_s"],
                      "win_rate": judged["win_rate_vs_reference"], "kl": judged["kl"]})
    return curve


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first judgement at or above ``target``; None if none is."""
    return next((point["train_s"] for point in curve if point["win_rate"] >= target), None)


def summarize(curves: dict[str, list[dict]]) -> dict:
    best = {side: max(p["win_rate"] for p in curve) for side, curve in curves.items()}
    targets = sorted({*LEVELS, TARGET, min(best.values())})
    rows = []
    for target in targets:
        times = {side: time_to(curve, target) for side, curve in curves.items()}
        ratio = times["trl"] / times["ours"] if None not in times.values() else None
        rows.append({"target": target, "train_s": times, "trl_over_ours": ratio})
    per_generation = {side: curve[-1]["train_s"] / curve[-1]["generation"] for side, curve in curves.items()}
    return {"best_win_rate": best, "targets": rows, "seconds_per_generation": per_generation,
            "seconds_per_generation_trl_over_ours": per_generation["trl"] / per_generation["ours"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=300, help="generations of 256 episodes (rlhf ppo's "
                                                                      "iterations)")
    parser.add_argument("--stop-after", type=int, default=40, help="stop both runs after this many generations "
                        "(the learning-rate schedule still spans --generations): the curves flatten early")
    parser.add_argument("--eval-every", type=int, default=4, help="judge every this many generations")
    parser.add_argument("--eval-episodes", type=int, default=500, help="held-out prompts per judgement")
    parser.add_argument("--trl-recipe", default="black-box", choices=list(TRL_RECIPES),
                        help="TRL's recipe: ours (same) or the black-box one it does better on")
    parser.add_argument("--ours-recipe", default="default", choices=list(OURS_RECIPES),
                        help="our recipe: rlhf ppo's default, or the bench's black-box PPO (TRL then runs it "
                        "too)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sides", nargs="+", default=["ours", "trl"], choices=["ours", "trl"])
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "rlhf_env" / "vs_trl"),
                        help="where the TRL venv lives (made on first use, as benchmarks/vs_trl.py makes it)")
    parser.add_argument("--out", default="benchmarks/results/vs_trl_quality.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.worker_out)

    from rlhf_env.paths import DATA_DIR, assets_digest
    from rlhf_env.rewards import load_reward
    from rlhf_env.rewards.server import RewardServer
    from rlhf_env.world.build import load_split

    if args.ours_recipe == "black-box" and args.trl_recipe != "black-box":
        parser.error("--ours-recipe black-box runs both sides on the bench's black-box recipe: drop --trl-recipe")
    trl_overrides = BLACK_BOX if args.ours_recipe == "black-box" else TRL_RECIPES[args.trl_recipe]
    if not 1 <= args.stop_after <= args.generations:
        parser.error(f"--stop-after must be in 1..--generations ({args.generations}), got {args.stop_after}")
    common = {"generations": args.generations, "stop_after": args.stop_after, "eval_every": args.eval_every,
              "eval_episodes": args.eval_episodes, "threads": args.threads, "seed": args.seed}
    curves, versions, ours = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "ours" in args.sides:
            ours = launch(sys.executable, {"side": "ours", **common, "ours_overrides": OURS_RECIPES[args.ours_recipe]},
                          tmp)
            curves["ours"] = ours["curve"]
        if "trl" in args.sides:
            python = ensure_venv(TRL_RLOO_VERSION, Path(args.cache))
            prompts_file = tmp / "prompts.json"
            prompts_file.write_text(json.dumps(list(load_split(DATA_DIR, "prompts", RECIPE["prompts"])["prompt"])))
            server = RewardServer(load_reward(RECIPE["reward"]), RECIPE["reward"])
            try:
                spec = {"side": "trl", **common, "trl_overrides": trl_overrides,
                        "policy_dir": str(MODELS / RECIPE["policy"]),
                        "prompts_file": str(prompts_file), "reward_url": server.url, "out": str(tmp / "trl")}
                trl_run = launch(python, spec, tmp)
            finally:
                server.close()
            versions["trl"] = trl_run["trl"]
            curves["trl"] = judge_snapshots(trl_run["snapshots"], args.eval_episodes)
    result = {"settings": {**RECIPE, **common, "target": TARGET, "trl_version": TRL_RLOO_VERSION,
                           "ours_token_target_coef": ours.get("token_target_coef"),
                           "trl_overrides": trl_overrides,
                           "ours_overrides": OURS_RECIPES[args.ours_recipe]},
              "assets": assets_digest(), "curves": curves, "versions": versions}
    if set(curves) == {"ours", "trl"}:
        result["summary"] = summarize(curves)
    print(f"held-out gold win rate vs SFT ({args.eval_episodes} prompts) against training seconds:")
    for side, curve in curves.items():
        print(f"{side:>5}: " + ", ".join(f"{p['train_s']:.0f}s {p['win_rate']:.3f}" for p in curve))
    if "summary" in result:
        per = result["summary"]["seconds_per_generation"]
        print(f"training seconds per generation: ours {per['ours']:.2f}, trl {per['trl']:.2f} (TRL takes "
              f"{result['summary']['seconds_per_generation_trl_over_ours']:.2f}x ours)")
    for row in result.get("summary", {}).get("targets", []):
        times = ", ".join(f"{side} {'never' if s is None else f'{s:.0f} s'}" for side, s in row["train_s"].items())
        ratio = "" if row["trl_over_ours"] is None else f"; TRL takes {row['trl_over_ours']:.2f}x ours"
        print(f"to win rate {row['target']:.3f}: {times}{ratio}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
