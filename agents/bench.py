"""One harness for any RL algorithm on the RLHF task: the same env, starting policy, reward, beta, episode
budget, seeds and judging for ours, SB3's and yours.

An algorithm is a class with this shape (``examples/reinforce.py`` is a complete one in 30 lines)::

    class MyAlgorithm:
        def __init__(self, make_env, policy, tokenizer, seed: int): ...
        def learn(self, episodes: int) -> None: ...

- ``make_env(num_envs, group_size=1)`` returns ``InstructBandit-v0``'s native vector env with the bench's
  prompts, reference (the starting policy), reward, beta and length limit; every episode stepped through it
  counts towards the episodes reported;
- ``policy`` and ``tokenizer`` are the starting policy (a copy of its own, as ``load_policy`` returns it: eval
  mode, so dropout is off) and its tokenizer;
- after ``learn``, the harness judges ``algorithm.policy`` (an HF causal LM, sampled at temperature 1) or,
  if the algorithm is callable, ``algorithm(prompts) -> responses`` (or ``(responses, eos)``).

Judging is ``rlhf eval``'s on held-out customers, against the starting policy's samples: gold win rate (and
its ceiling), task success, gold score, the bundled RM's score, KL to the starting policy (for an HF model;
a callable may say its own ``kl``), length. Learning's wall time, episodes/s and the process's peak RSS come
with it.

    rlhf bench --algo ppo --episodes 2560 --seed 0
    rlhf bench --algo examples.reinforce:Reinforce
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import resource
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

import rlhf_env  # noqa: F401  (registers the envs)
from agents.configs import BenchConfig
from rlhf_env.evaluation import (
    call_policy,
    eval_prompts,
    grade_responses,
    sample_and_measure,
    summarize,
    win_rate,
    win_rate_ceiling,
)
from rlhf_env.models import load_policy
from rlhf_env.rewards import load_reward


class EpisodeCounter(gym.vector.VectorWrapper):
    """Counts the episodes stepped through a vector env (one per sub-env per step of the one-step bandit)."""

    def __init__(self, env, tally: list[int]):
        super().__init__(env)
        self.tally = tally

    def step(self, actions):
        self.tally[0] += self.num_envs
        return self.env.step(actions)


class EnvFactory:
    """``make_env(num_envs, group_size=1)`` for an algorithm: the bench's env, its episodes counted."""

    def __init__(self, config: BenchConfig):
        self.config, self.tally = config, [0]

    @property
    def settings(self) -> dict:
        """The env's settings that define the task, the same for every algorithm (its other settings, e.g.
        ``device``, are the algorithm's)."""
        from agents.ppo import PPOConfig  # the task's other settings are our agents' defaults

        c = self.config
        return dict(prompts=PPOConfig.prompts, reference=c.policy, reward=c.reward, kl_coef=c.kl_coef,
                    max_new_tokens=c.max_new_tokens, max_prompt_tokens=PPOConfig.max_prompt_tokens,
                    missing_eos_penalty=PPOConfig.missing_eos_penalty, temperature=PPOConfig.temperature, data=c.data)

    def __call__(self, num_envs: int, group_size: int = 1, **overrides):
        clash = sorted(set(overrides) & set(self.settings))
        if clash:
            raise ValueError(f"the bench fixes {', '.join(clash)} for every algorithm")
        env = gym.make_vec("InstructBandit-v0", num_envs=num_envs, group_size=group_size, **self.settings,
                           **overrides)
        return EpisodeCounter(env, self.tally)

    @property
    def episodes(self) -> int:
        return self.tally[0]


# -- built-in algorithms, behind the same interface -------------------------------------------------
class AgentRun:
    """One of our PPO-family agents (agents/ppo.py and its subclasses) for ``episodes // batch_size``
    iterations, on an env built with the bench's settings."""

    def __init__(self, make_env, policy, tokenizer, seed, module: str, agent: str, config: str, **settings):
        mod = importlib.import_module(module)
        self.agent_cls, self.config_cls, self.settings = getattr(mod, agent), getattr(mod, config), settings
        self.make_env, self.seed = make_env, seed

    def learn(self, episodes: int) -> None:
        c = self.make_env.config
        batch = self.settings.get("batch_size", self.config_cls.batch_size)
        if episodes < batch:
            raise ValueError(f"a budget of {episodes} episodes is less than one iteration of {batch}; raise --episodes "
                             "or lower batch_size in --algo_kwargs")
        # The reward as every algorithm here gets it: not normalised (rlhf ppo's default for gold and labelers)
        config = self.config_cls(policy=c.policy, seed=self.seed, iterations=episodes // batch,
                                 out=str(Path(c.out) / "run"), eval_every=0, final_eval_episodes=1,
                                 **{"normalize_reward": False, **self.make_env.settings,
                                    **self.settings})  # the task's settings, then the agent's
        agent = self.agent_cls(config)
        agent.train()
        self.policy = agent.actor
        self.make_env.tally[0] += config.iterations * config.batch_size


class BestOfNRun:
    """Best-of-n against the bench's reward, no training: the frontier reference (KL at most log n - (n-1)/n)."""

    def __init__(self, make_env, policy, tokenizer, seed, n: int, **kwargs):
        from agents.best_of_n import BestOfN

        c = make_env.config
        self.best = BestOfN((policy.eval(), tokenizer), c.reward, n=n, seed=seed, max_new_tokens=c.max_new_tokens,
                            data=c.data, **kwargs)
        self.kl = math.log(n) - (n - 1) / n  # the bound (Beirami et al. 2024)

    def learn(self, episodes: int) -> None:
        pass

    def __call__(self, prompts):
        return self.best(prompts)


class DPORun:
    """DPO on the shipped comparisons (``agents/dpo.py``): offline, it steps no env episode."""

    def __init__(self, make_env, policy, tokenizer, seed, **settings):
        self.config, self.seed, self.settings = make_env.config, seed, settings  # --algo_kwargs: DPOConfig fields

    def learn(self, episodes: int) -> None:
        from agents.dpo import DPOConfig, dpo

        c = self.config
        out = Path(c.out) / "dpo"
        dpo(DPOConfig(policy=c.policy, seed=self.seed, data=c.data, out=str(out), **self.settings))
        self.policy = load_policy(str(out / "final"))[0]


class SB3Run:
    """SB3's own PPO, A2C or MaskablePPO with this package's LM policies (``agents/sb3.py``): on the bandit, an
    action is a whole response; on the token env (``level="token"``), one token. ``ent_coef`` is the bench's
    beta, the policy's half of the KL. Learning stops once the envs have finished the budget's episodes (a
    rollout cut short is not trained on). ``--algo_kwargs`` go to the SB3 constructor (and ``num_envs``)."""

    DEFAULTS = {  # small, gentle updates: SB3's own defaults (10 epochs) move a pretrained LM far in one rollout.
        # PPO's advantages are not normalised: dividing them by their std would scale the policy-gradient term and
        # not the entropy term, so ent_coef = beta would no longer be the KL's other half (A2C does not normalise)
        "sb3-ppo": dict(num_envs=64, n_steps=1, batch_size=16, n_epochs=4, learning_rate=1e-5,
                        normalize_advantage=False),
        "sb3-a2c": dict(num_envs=64, n_steps=1, learning_rate=1e-5, use_rms_prop=False),
        "sb3-ppo-token": dict(num_envs=8, n_steps=64, batch_size=128, n_epochs=2, learning_rate=1e-5, gamma=1.0,
                              normalize_advantage=False),
        "sb3-a2c-token": dict(num_envs=8, n_steps=16, learning_rate=1e-5, gamma=1.0, use_rms_prop=False),
        "sb3-maskable-ppo-token": dict(num_envs=8, n_steps=64, batch_size=128, n_epochs=2, learning_rate=1e-5,
                                       gamma=1.0, normalize_advantage=False),
    }

    def __init__(self, make_env, policy, tokenizer, seed, name: str, **kwargs):
        self.make_env, self.seed, self.name = make_env, seed, name
        self.settings = {**self.DEFAULTS[name], **kwargs}

    def learn(self, episodes: int) -> None:
        from sb3_contrib import MaskablePPO
        from stable_baselines3 import A2C, PPO
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.logger import Logger

        from agents import sb3

        c, settings = self.make_env.config, dict(self.settings)
        env_kwargs = self.make_env.settings
        token = self.name.endswith("-token")
        num_envs = settings.pop("num_envs")
        venv = (sb3.make_sb3_token_env if token else sb3.make_sb3_bandit)(num_envs, **env_kwargs)
        venv.seed(self.seed)
        algorithm, policy = {"sb3-ppo": (PPO, sb3.LMSequencePolicy), "sb3-a2c": (A2C, sb3.LMSequencePolicy),
                             "sb3-ppo-token": (PPO, sb3.LMActorCriticPolicy),
                             "sb3-a2c-token": (A2C, sb3.LMActorCriticPolicy),
                             "sb3-maskable-ppo-token": (MaskablePPO, sb3.MaskableLMActorCriticPolicy)}[self.name]
        model = algorithm(policy, venv, ent_coef=c.kl_coef, seed=self.seed, policy_kwargs={"lm": c.policy},
                          **settings)
        if not settings.get("verbose") and settings.get("tensorboard_log") is None:
            model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's own would make an empty /tmp/SB3-* folder

        class Budget(BaseCallback):
            """Counts finished episodes. The rollout that reaches the budget is trained on, and the first step of
            the next stops learning, uncounted: every counted episode is trained on, and the count passes the
            budget by less than one rollout (not at all on the bandit, if num_envs * n_steps divides it)."""

            def __init__(self):
                super().__init__()
                self.finished, self.done = 0, False

            def _on_step(self) -> bool:
                if self.done:
                    return False
                self.finished += int(self.locals["dones"].sum())
                return True

            def _on_rollout_end(self) -> None:
                self.done = self.finished >= episodes

        budget = Budget()
        model.learn(total_timesteps=10**12, callback=budget)
        self.make_env.tally[0] += budget.finished
        self.policy = model.policy.lm


def _agent(module, agent, config, **defaults):
    """A built-in agent; --algo_kwargs are its config's fields (e.g. '{"lr": 1e-4, "batch_size": 64}'), over
    ``defaults`` and then the config's own."""
    return lambda make_env, policy, tokenizer, seed, **settings: AgentRun(make_env, policy, tokenizer, seed, module,
                                                                          agent, config, **{**defaults, **settings})


# The bench's PPO sees the env's reward only, as every other algorithm here does: `rlhf ppo`'s token target reads
# the reward model's LM, so it is opt-in (--algo_kwargs '{"token_target_coef": 10}'), and without it the bench
# keeps the black-box recipe that benchmarks/results/algorithms.json measured.
BLACK_BOX_PPO = {"token_target_coef": 0.0, "batch_size": 128, "group_size": 8, "lr": 3e-5, "ppo_epochs": 4}

BUILT_INS = {
    "ppo": _agent("agents.ppo", "PPOAgent", "PPOConfig", **BLACK_BOX_PPO),
    "grpo": _agent("agents.grpo", "GRPOAgent", "GRPOConfig"),
    "rloo": _agent("agents.rloo", "RLOOAgent", "RLOOConfig"),
    "reinforce": _agent("agents.reinforce", "REINFORCEAgent", "REINFORCEConfig"),
    "dpo": DPORun,
    **{name: functools.partial(SB3Run, name=name) for name in SB3Run.DEFAULTS},
}


def algorithm_class(name: str):
    """A built-in by name, ``best-of-N``, or ``module:Class`` (imported from the current directory too)."""
    if name in BUILT_INS:
        return BUILT_INS[name]
    if name.startswith("best-of-"):
        n = name.removeprefix("best-of-")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"best-of-N needs a positive integer N, got {name!r}")
        n = int(n)
        return functools.partial(BestOfNRun, n=n)
    if ":" not in name:
        raise ValueError(f"unknown algorithm {name!r}: a built-in ({', '.join(BUILT_INS)}, best-of-N) or module:Class")
    module, _, cls = name.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # module:Class from the working directory, as `python -m` would find it
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load algorithm {name!r}: {e}") from e


# -- the judgement -----------------------------------------------------------------------------------
def judge(algorithm, config: BenchConfig, reference, tokenizer) -> dict:
    """``rlhf eval``'s held-out judgement of the learned policy against the starting policy's samples, with the
    bundled RM's score and the KL to the starting policy."""
    rows = eval_prompts(config.data, "heldout", config.eval_episodes, config.eval_seed)
    rm = load_reward("rm", data=config.data)
    args = (tokenizer, rows, config.eval_seed, 1.0, config.max_new_tokens, rm)
    base = sample_and_measure(reference, *args)
    measured = isinstance(getattr(algorithm, "policy", None), torch.nn.Module)
    if measured:
        algorithm.policy.eval()
        ours = sample_and_measure(algorithm.policy, *args, reference=reference)
    else:  # a callable prompts -> responses; its KL is what it says (best-of-n: the bound), or unknown
        texts, eos = call_policy(algorithm, list(rows["prompt"]))
        grades, lengths = grade_responses(rows, texts, eos)
        ours = {**summarize(grades, lengths), "grades": grades,
                "rm_score": float(np.mean(rm(list(rows["prompt"]), texts, np.array(eos)))),
                "kl": float(getattr(algorithm, "kl", float("nan")))}  # best-of-n: the bound, not a measurement
    return {"win_rate_vs_start": win_rate(ours["grades"], base["grades"]),
            "win_rate_ceiling": win_rate_ceiling(rows["task"], base["grades"]),
            "success": ours["success"], "gold": ours["gold"], "rm_score": ours["rm_score"], "kl": ours["kl"],
            "kl_measured": measured,
            "length": ours["length"], "start_length": base["length"], "start_success": base["success"],
            "start_gold": base["gold"], "start_rm_score": base["rm_score"]}


def bench(config: BenchConfig) -> dict:
    """Build the algorithm on the starting policy, let it learn within the budget, and judge it."""
    cls = algorithm_class(config.algo)
    out = Path(config.out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty (a previous bench run?); pass a new directory")
    torch.manual_seed(config.seed)
    make_env = EnvFactory(config)
    policy, tokenizer = load_policy(config.policy)
    reference = load_policy(config.policy)[0].eval()
    started = time.perf_counter()  # building the algorithm counts: built-ins load their models in learn()
    algorithm = cls(make_env, policy, tokenizer, config.seed, **json.loads(config.algo_kwargs or "{}"))
    algorithm.learn(config.episodes)
    seconds = time.perf_counter() - started
    if not callable(algorithm) and not isinstance(getattr(algorithm, "policy", None), torch.nn.Module):
        raise TypeError(f"{config.algo}: after learn(), an algorithm must have .policy (an HF causal LM) or be "
                        "callable as prompts -> responses")
    reward = "comparisons" if isinstance(algorithm, DPORun) else config.reward  # DPO learns from no reward
    result = {"algo": config.algo, "policy": config.policy, "reward": reward, "kl_coef": config.kl_coef,
              "seed": config.seed,
              "episodes": make_env.episodes, "budget": config.episodes, "eval_episodes": config.eval_episodes,
              "learn_seconds": seconds,
              "episodes_per_second": make_env.episodes / seconds if make_env.episodes else float("nan"),
              **judge(algorithm, config, reference, tokenizer),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return result
