"""The configs of the agents' commands (``rlhf ppo``, ``grpo``, ``rloo``, ``reinforce``, ``dpo`` and ``bench``):
one dataclass each, whose fields are the command's options and whose field docstrings are their help
(``rlhf_env.cli``). Each agent's module re-exports its config.

Neither torch nor transformers is imported here, so that ``rlhf`` reports a mistake in an option before either
loads: the ``__post_init__`` checks look at values and paths only, never at a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rlhf_env.configs import TrainConfig, check_ranges
from rlhf_env.paths import DATA_DIR, check_out
from rlhf_env.rewards import ORACLES, check_reward, is_url

# agents.bench's built-in algorithms (its BUILT_INS), named here so that BenchConfig checks --algo without them
BUILT_IN_ALGORITHMS = ("ppo", "grpo", "rloo", "reinforce", "dpo", "sb3-ppo", "sb3-a2c", "sb3-ppo-token",
                       "sb3-a2c-token", "sb3-maskable-ppo-token")

# token_target_coef's default weight where the reward allows the token target (benchmarks/ppo_runs.py measures it)
TOKEN_TARGET_COEF = 10.0


@dataclass
class PPOConfig:
    """Optimise a policy with PPO against a reward model, with a KL penalty to the SFT policy."""

    policy: str = "sft"
    """Initial policy: a bundled name or a checkpoint path."""
    reference: str = ""
    """KL reference policy (the env's pi_ref); empty: the initial policy. Must share the policy's tokenizer."""
    reward: str = "rm"
    """Reward: rm, rm-scalar, gold, or a reward-model path (from Python, any load_reward spec)."""
    reward_label: int = 0
    """With a sequence-classifier reward: the output (label) that scores a response."""
    reward_transform: str = "logit"
    """With a sequence-classifier reward: logit, log_softmax or softmax of that label."""
    out: str = "runs/ppo"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy)."""
    seed: int = 0
    """Seed of the policy's sampling, the env's prompt draws and the minibatch order."""
    iterations: int = 300
    """PPO iterations; each samples batch_size episodes."""
    batch_size: int = 256  # twice the 128 of earlier versions, which left most of the time budget unused
    """Episodes per iteration: the vector env's num_envs (batch_size / group_size distinct prompts)."""
    advantage: str = "rloo"
    """rloo: a response's advantage, at each of its tokens, is its env reward (score - beta * KL) minus the
    mean of its group_size - 1 siblings' (a leave-one-out baseline per prompt; no critic). gae: per-token
    rewards, GAE and a value model (value_model), as in InstructGPT and the N+ recipe."""
    group_size: int = 2
    """Responses sampled per prompt in each iteration (the vector env's group_size); rloo needs >= 2."""
    minibatch_size: int = 16
    """Episodes per gradient step (batch_size / minibatch_size steps per epoch)."""
    ppo_epochs: int = 2
    """Passes over each iteration's episodes."""
    lr: float = 1e-4
    """Peak learning rate, decayed linearly to 0."""
    adam_eps: float = 1e-5
    """AdamW's epsilon."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay, on every parameter (PyTorch's default; the N+ recipe uses none). At the
    default lr it shrinks the weights by under 0.3% over a whole run."""
    max_grad_norm: float = 1.0
    """Clip the gradients' global norm to this."""
    kl_coef: float = 0.05
    """beta: initial KL coefficient."""
    target_kl: float = 0.0
    """Target KL per sequence (nats) for the adaptive controller; 0 keeps kl_coef fixed."""
    kl_horizon: int = 10_000
    """Episodes over which the adaptive KL controller moves beta by its full step (with target_kl)."""
    gamma: float = 1.0
    """Discount of the per-token rewards (advantage=gae)."""
    gae_lambda: float = 0.95
    """GAE's lambda (advantage=gae)."""
    clip_coef: float = 0.2
    """PPO's clip range: the ratio is clipped to [1 - clip_coef, 1 + clip_coef]."""
    vf_clip: float = 0.2
    """The value loss clips new values to old values +- vf_clip (advantage=gae)."""
    vf_coef: float = 0.1
    """Weight of the value loss (advantage=gae)."""
    early_stop_kl: float = 0.0
    """Stop an iteration's epochs once approx-KL exceeds this (0: never)."""
    value_model: str = "head"
    """With advantage=gae: head, a zero-initialised head on the policy trunk; rm, a separate critic initialised
    from the RM (which must share the policy's tokenizer). Unused with rloo."""
    token_target_coef: float | None = None
    """Weight of a per-token KL(pi || q) over the whole vocabulary at the sampled responses' positions, q the
    per-token KL-regularised optimum of a reward that sums its LM's token log-probs (the bundled rm):
    pi_ref * p_rm^(c/beta) (agents/token_target.py). 0: off. None (the default): 10 (TOKEN_TARGET_COEF) where
    the reward is such a model sharing the policy's tokenizer and kl_coef > 0, else off; the run says which on
    stderr."""
    ptx_coef: float = 0.0
    """gamma_ptx: weight of the pretraining log-likelihood (PPO-ptx); 0 is plain PPO."""
    ptx_batch_size: int = 8
    """Web-text blocks per minibatch in the PPO-ptx term."""
    normalize_reward: bool | None = None
    """Rescale the reward so that the initial policy's samples on NORMALIZE_EPISODES training prompts score
    N(0, 1) (N+ recipe), before the KL penalty and the missing-EOS penalty; for a reward of another scale
    than the bundled RMs, which are already normalised so. The mean and std are saved with the run. None (the
    default): on for the world's oracles (gold, labelers), whose grades lie in [0, 1], off for anything else;
    pass it for a reward of your own of another scale."""
    missing_eos_penalty: float | None = -1.0
    """Score of a response without EOS (None: the reward model scores it like any other)."""
    temperature: float = 1.0
    """Sampling temperature of the policy; the env's KL uses the same."""
    max_prompt_tokens: int = 64
    """Prompts are left-padded to this many tokens (longer ones are an error)."""
    max_new_tokens: int = 48
    """Longest response, in tokens; a response that reaches it without EOS gets missing_eos_penalty."""
    prompts: str = "ppo"
    """Prompt split of the world (training customers)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (the bundled one by default)."""
    eval_every: int = 25
    """Iterations between held-out evaluations (0: only at the end)."""
    eval_episodes: int = 200
    """Held-out prompts of each evaluation during the run."""
    final_eval_episodes: int = 500
    """Held-out prompts of the final evaluation (rlhf eval's default)."""
    eval_seed: int = 0
    """Seed of the held-out evaluations' prompt choice and sampling. rlhf eval's default is 0, so the final
    table matches `rlhf eval --policy OUT/final --baseline REFERENCE` whatever the training seed."""
    save_every: int = 10
    """Iterations between resumable checkpoints in OUT/checkpoint (0: none)."""
    device: str = "cpu"
    """torch device (cpu, cuda, ...)."""
    bf16: bool = False
    """Mixed precision: the policy's and critic's forward and backward run their matmuls (the LM head's
    included) in bfloat16 under autocast; weights, AdamW, attention, LayerNorm, the value head and the
    log-softmax stay float32. Where bfloat16 is native (AVX-512 BF16 or AMX CPUs, recent GPUs) that is
    faster (benchmarks/bench_ppo_iteration.py measures by how much); elsewhere it warns. The ratio's old
    log-probs then come from the same bfloat16 forward, so the ratio is 1 before the first update up to
    kernel rounding; the env's KL uses the sampler's float32 log-probs. Sampling, the reference and the
    reward model stay float32."""
    json: bool = False
    """Print the final held-out evaluation as one JSON object instead of a table."""

    def __post_init__(self):  # checks that need no model: a mistake is reported before anything loads
        check_ranges(self, positive=("iterations", "batch_size", "minibatch_size", "ppo_epochs", "max_new_tokens",
                                     "max_prompt_tokens", "final_eval_episodes", "ptx_batch_size"),
                     above_zero=("lr", "temperature", "clip_coef"),
                     non_negative=("kl_coef", "target_kl", "ptx_coef", "eval_every", "save_every", "early_stop_kl"))
        if self.token_target_coef is not None:
            check_ranges(self, non_negative=("token_target_coef",))
        if self.normalize_reward is None:  # decided here, so that the run's fingerprint records the decision
            self.normalize_reward = isinstance(self.reward, str) and self.reward in ORACLES
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must be <= batch_size ({self.batch_size})")
        if self.token_target_coef and self.kl_coef == 0:
            raise ValueError("token_target_coef needs kl_coef > 0: with beta = 0 the token target is the reward "
                             "model's argmax")
        if self.advantage not in ("rloo", "gae"):
            raise ValueError(f"advantage must be 'rloo' or 'gae', got {self.advantage!r}")
        if self.value_model not in ("head", "rm"):
            raise ValueError(f"value_model must be 'head' or 'rm', got {self.value_model!r}")
        self.check_groups()
        check_reward(self.reward)
        if is_url(self.reward) and (self.reward_label, self.reward_transform) != (0, "logit"):
            raise ValueError("a served reward's label and transform are chosen where it is served: rlhf serve-reward "
                             "--reward_label ... --reward_transform ...")
        check_out(self.out)

    def check_groups(self) -> None:
        """group_size must suit the advantages: leave-one-out needs siblings (another agent may say otherwise)."""
        k = self.group_size
        if k < 1 or self.batch_size % k or (self.advantage == "rloo" and k < 2):
            raise ValueError(f"group_size must divide batch_size ({self.batch_size}) and be >= 2 with "
                             f"advantage='rloo'; got {k}")


@dataclass
class GRPOConfig(PPOConfig):
    """Optimise a policy with GRPO against a reward model, with a KL penalty to the SFT policy."""

    out: str = "runs/grpo"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy)."""
    iterations: int = 100
    """PPO iterations; each samples batch_size episodes."""
    batch_size: int = 128
    """Episodes per iteration (batch_size / group_size distinct prompts)."""
    group_size: int = 8
    """Responses sampled per prompt in each iteration (the group that normalises the rewards)."""
    lr: float = 3e-5
    """Peak learning rate, decayed linearly to 0."""
    ppo_epochs: int = 4
    """Passes over each iteration's episodes."""
    token_target_coef: float | None = 0.0
    """Weight of PPO's token target (agents/token_target.py); 0: off, GRPO as published."""

    def __post_init__(self):
        super().__post_init__()
        if self.advantage != "rloo" or self.group_size < 2:
            raise ValueError("GRPO has no critic and normalises within groups: keep advantage='rloo' (no value "
                             f"model) and group_size >= 2; got advantage={self.advantage!r}, "
                             f"group_size={self.group_size}")


@dataclass
class RLOOConfig(PPOConfig):
    """Optimise a policy with RLOO (REINFORCE, leave-one-out baseline) against a reward model, with a KL
    penalty to the SFT policy."""

    out: str = "runs/rloo"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy)."""
    iterations: int = 100
    """Iterations; each samples batch_size episodes."""
    batch_size: int = 128
    """Episodes per iteration (batch_size / group_size distinct prompts)."""
    group_size: int = 8
    """Responses sampled per prompt in each iteration (the leave-one-out baseline's group)."""
    token_target_coef: float | None = 0.0
    """Weight of PPO's token target (agents/token_target.py); 0: off, as published."""
    minibatch_size: int = 0
    """Episodes per gradient step; 0: the whole batch (one on-policy step per iteration)."""
    ppo_epochs: int = 1
    """Passes over each iteration's episodes (1: on-policy REINFORCE)."""
    lr: float = 3e-4
    """Peak learning rate, decayed linearly to 0."""

    def __post_init__(self):
        if self.minibatch_size == 0:
            self.minibatch_size = self.batch_size
        super().__post_init__()
        if self.advantage != "rloo":
            name = type(self).__name__.removesuffix("Config")  # RLOO, REINFORCE
            raise ValueError(f"{name} has no critic: keep advantage='rloo', got {self.advantage!r}")


@dataclass
class REINFORCEConfig(RLOOConfig):
    """Optimise a policy with REINFORCE (batch baseline, one response per prompt) against a reward model, with
    a KL penalty to the SFT policy."""

    out: str = "runs/reinforce"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy)."""
    group_size: int = 1
    """Responses per prompt in each iteration (1: every episode a different prompt)."""

    def check_groups(self) -> None:  # the baseline is the batch's, so any group size that divides it
        if self.group_size < 1 or self.batch_size % self.group_size or self.batch_size < 2:
            raise ValueError(f"group_size must divide batch_size ({self.batch_size}), which must be >= 2 for a "
                             f"leave-one-out baseline; got group_size={self.group_size}")


@dataclass
class DPOConfig(TrainConfig):
    """Fine-tune a policy on the world's ranked comparisons with DPO (no reward model, no sampling)."""

    policy: str = "sft"
    """Initial policy: a bundled name or a checkpoint path."""
    reference: str = ""
    """Reference policy pi_ref of the implicit reward beta * log(pi / pi_ref); empty: the initial policy. Must
    share the policy's tokenizer. Its log-probs are computed once, before training."""
    beta: float = 2.0
    """DPO's beta: the scale of the implicit reward, i.e. the strength of the KL regularisation to the
    reference (small: the policy may move far from it). Higher than the usual 0.1: on the shipped comparisons a
    loosely held policy learns the labelers' length bias (longer answers, lower gold)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (reads comparisons/train.parquet and comparisons/test.parquet)."""
    out: str = "runs/dpo"
    """Output directory: logs, checkpoint/, final/ (an `rlhf eval`-able policy) and result.json."""
    epochs: float = 2.0
    batch_size: int = 16
    """Prompts per optimizer step; each brings all K of its responses and all C(K,2) pairs."""
    lr: float = 1e-4
    warmup_ratio: float = 0.05
    log_every: int = 10
    save_every: int = 100
    evals: int = 4
    """Number of evaluations on the test comparisons, evenly spaced (sets eval_every unless given; 0: only at
    the end)."""
    max_prompt_tokens: int = 64
    """Longest prompt, in tokens, as in the env; a completion with a longer prompt is left out."""
    max_new_tokens: int = 48
    """Longest response, in tokens, EOS included, as in the env; a longer response is left out."""
    forward_batch_size: int = 256
    """Completions per forward pass of the reference and of the evaluations (changes speed, not results)."""

    def __post_init__(self):  # the trainer's checks, then DPO's own: before anything loads
        super().__post_init__()
        check_ranges(self, positive=("max_prompt_tokens", "max_new_tokens", "forward_batch_size"), above_zero=("beta",),
                     non_negative=("evals",))


@dataclass
class BenchConfig:
    """Train one RL algorithm on the RLHF task with a fixed budget and judge it like every other."""

    algo: str = "ppo"
    """A built-in (ppo, grpo, rloo, reinforce, best-of-N such as best-of-4, dpo, sb3-ppo, sb3-a2c,
    sb3-ppo-token, sb3-a2c-token, sb3-maskable-ppo-token) or your class as module:Class."""
    algo_kwargs: str = ""
    """JSON object of keyword arguments for the algorithm's constructor, e.g. '{"lr": 1e-4}'."""
    policy: str = "sft"
    """Starting policy, also the KL reference and the baseline the judge compares against."""
    reward: str = "rm"
    """The reward the algorithm optimises: rm, gold (an oracle), or a reward-model path."""
    kl_coef: float = 0.05
    """beta: the env's KL penalty to the starting policy."""
    episodes: int = 2560
    """Episode budget: responses the algorithm may sample and have scored by the env."""
    seed: int = 0
    """Seed of the algorithm (the judge's prompts and samples use eval_seed)."""
    max_new_tokens: int = 48
    """Longest response, in tokens."""
    eval_episodes: int = 500
    """Held-out prompts of the judgement."""
    eval_seed: int = 0
    """Seed of the judge's prompt choice and sampling (rlhf eval's default)."""
    out: str = "runs/bench"
    """Directory for the algorithm's files (built-ins write their runs under it)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (the bundled one by default)."""
    json: bool = False
    """Print the result as one JSON object instead of a table."""

    def __post_init__(self):
        check_ranges(self, positive=("episodes", "eval_episodes", "max_new_tokens"), non_negative=("kl_coef",))
        try:
            kwargs = json.loads(self.algo_kwargs or "{}")
        except json.JSONDecodeError as e:
            raise ValueError(f"algo_kwargs is not JSON: {e}") from e
        if not isinstance(kwargs, dict):
            raise ValueError(f"algo_kwargs must be a JSON object, got {self.algo_kwargs!r}")
        if ":" not in self.algo and self.algo not in BUILT_IN_ALGORITHMS and not self.algo.startswith("best-of-"):
            raise ValueError(f"unknown algorithm {self.algo!r}: a built-in ({', '.join(BUILT_IN_ALGORITHMS)}, "
                             "best-of-N) or module:Class")
        check_reward(self.reward)
        check_out(self.out)
