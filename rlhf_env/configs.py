"""The configs of rlhf_env's commands (``rlhf pretrain``, ``sft``, ``rm``, ``eval``, ``eval-rm``, ``world``,
``serve-reward`` and ``build-assets``): one dataclass each, whose fields are the command's options and whose
field docstrings are their help (``rlhf_env.cli``). Each stage's module re-exports its config.

Neither torch nor transformers is imported here, so that ``rlhf`` reports a mistake in an option before either
loads: the ``__post_init__`` checks look at values and paths only, never at a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_env.paths import ASSETS, DATA_DIR, TOKENIZER_DIR, check_out
from rlhf_env.rewards import check_reward
from rlhf_env.world.labelers import LabelerConfig
from rlhf_env.world.storage import split_path

STEPS = ("world", "tokenizer", "base", "sft", "comparisons", "rm")  # rlhf build-assets' steps, in order


def check_ranges(config, positive: tuple[str, ...] = (), above_zero: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = (), unit: tuple[str, ...] = ()) -> None:
    """Raise a one-line ValueError for the first field of ``config`` out of its range: a positive integer, > 0,
    >= 0, or in [0, 1]."""
    checks = ((positive, lambda v: isinstance(v, int) and v >= 1, "a positive integer"),
              (above_zero, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
              (unit, lambda v: 0 <= v <= 1, "in [0, 1]"))
    for names, ok, what in checks:
        for name in names:
            if not ok(getattr(config, name)):
                raise ValueError(f"{name} must be {what}, got {getattr(config, name)!r}")


@dataclass
class TrainConfig:
    """Optimisation settings shared by the LM training stages."""

    out: str = "runs/lm"
    """Output directory: logs, checkpoint/, best/ and final/."""
    epochs: float = 1.0
    """Passes over the data (fractions allowed)."""
    batch_size: int = 32
    """Examples per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate, reached after warm-up, then cosine-decayed to lr_min_ratio * lr."""
    lr_min_ratio: float = 0.1
    """The learning rate decays (cosine) to this fraction of --lr."""
    warmup_ratio: float = 0.03
    """Fraction of the steps spent warming the learning rate up from 0."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay (not applied to biases and LayerNorm weights)."""
    grad_clip: float = 1.0
    """Clip the gradients' global norm to this."""
    seed: int = 0
    """Seed of the initialisation, the data order and every sampling step: the same seed gives the same files."""
    log_every: int = 20
    """Steps between rows of train.csv and TensorBoard."""
    eval_every: int = 0
    """Steps between evaluations (0: only at the end)."""
    save_every: int = 200
    """Steps between resumable checkpoints."""
    resume: bool = True
    """Resume from OUT/checkpoint if it exists."""
    device: str = "cpu"
    """torch device (cpu, cuda, cuda:1, ...)."""

    def __post_init__(self):  # checks that need no model: a mistake is reported before anything loads
        check_ranges(self, positive=("batch_size", "log_every"), above_zero=("lr", "epochs", "grad_clip"),
                     non_negative=("eval_every", "save_every", "weight_decay"), unit=("warmup_ratio", "lr_min_ratio"))
        check_out(self.out)


@dataclass
class PretrainConfig(TrainConfig):
    """Pretrain a base model from scratch on the web-text corpus."""

    size: str = "small"
    """Model size: small (~1M parameters) or large (~4M)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (reads pretrain/train.parquet)."""
    tokenizer: str = str(TOKENIZER_DIR)
    """Tokenizer directory or hub id (the bundled one by default)."""
    out: str = "runs/base"
    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 2e-3


@dataclass
class SFTConfig(TrainConfig):
    """Fine-tune a base model on demonstrations, selecting the checkpoint by gold score."""

    base: str = "base"
    """Starting policy: a bundled name or a checkpoint path."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (the bundled one by default)."""
    out: str = "runs/sft"
    epochs: float = 32.0
    batch_size: int = 32
    lr: float = 1e-3
    resid_pdrop: float = 0.2
    """Residual dropout during SFT (the paper's 0.2)."""
    evals: int = 8
    """Number of gold evaluations on validation prompts, evenly spaced (sets eval_every unless given; 0: only at
    the end)."""
    n_valid: int = 300
    """Validation prompts sampled and graded per evaluation."""

    def __post_init__(self):  # the trainer's checks, then SFT's own: before anything loads
        super().__post_init__()
        check_ranges(self, positive=("n_valid",), non_negative=("evals",))


@dataclass
class RMConfig(TrainConfig):
    """Train a reward model on the world's ranked comparisons. The default kind, likelihood, fits two weights in
    full-batch steps (--fit_steps, --fit_lr); the optimisation options before --policy apply to --kind scalar,
    and to the likelihood RM's LM with --lm_epochs (which takes --lm_lr for --lr)."""

    policy: str = "sft-large"
    """SFT checkpoint the RM starts from (bundled name or path)."""
    kind: str = "likelihood"
    """likelihood: the frozen SFT LM's log-likelihood of the response, with a fitted weight
    (rlhf_env.rewards.likelihood; the bundled rm, from sft-large); scalar: the paper's RM, the unembedding
    replaced by a scalar head and the whole model trained (the bundled rm-scalar, --policy sft)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (reads comparisons/train.parquet)."""
    out: str = "runs/rm"
    epochs: float = 3.0
    """kind=scalar: passes over the comparisons (fractions allowed)."""
    batch_size: int = 8
    """kind=scalar: prompts per batch; each brings all K of its completions and all C(K,2) pairs."""
    lr: float = 3e-4
    """kind=scalar: peak learning rate, reached after warm-up, then cosine-decayed to lr_min_ratio * lr."""
    warmup_ratio: float = 0.05
    """kind=scalar: fraction of the steps spent warming the learning rate up from 0."""
    log_every: int = 10
    fit_steps: int = 2000
    """kind=likelihood: full-batch Adam steps on the two weights."""
    fit_lr: float = 1e-2
    """kind=likelihood: Adam's step size for those weights."""
    lm_epochs: float = 0.0
    """kind=likelihood: passes over the comparisons that also train the LM through the ranking loss, at the weights
    of a first fit, which is then redone (0: the LM stays frozen, as in the bundled rm)."""
    lm_lr: float = 3e-5
    """kind=likelihood, --lm_epochs > 0: the LM's peak learning rate (warm-up and decay as --lr's)."""
    lm_pairs: str = "same_length"
    """kind=likelihood, --lm_epochs > 0: the pairs that train the LM: same_length (only pairs of responses of equal
    length in tokens, whose labels hold none of the labelers' length preference; their loss is a mean over those
    pairs), or all (the paper's loss; the LM then learns that preference too: benchmarks/rm_forms.py)."""

    def __post_init__(self):  # the trainer's checks, then the RM's own: before anything loads
        super().__post_init__()
        for name, value, choices in (("kind", self.kind, ("likelihood", "scalar")),
                                     ("lm_pairs", self.lm_pairs, ("all", "same_length"))):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        check_ranges(self, positive=("fit_steps",), above_zero=("fit_lr", "lm_lr"), non_negative=("lm_epochs",))
        if self.lm_epochs and self.kind != "likelihood":
            raise ValueError("--lm_epochs trains the likelihood RM's LM: it needs --kind likelihood (--epochs trains "
                             "the scalar RM)")


@dataclass
class EvalConfig:
    """Compare two policies by the gold grader."""

    policy: str = "sft"
    """Policy A: a bundled name (base, sft, base-large, sft-large) or a checkpoint path / hub id. From Python,
    also any HF causal LM in memory as a (model, tokenizer) pair, or a callable prompts -> responses (see
    ``respond``)."""
    baseline: str = "base"
    """Policy B, same forms as --policy."""
    split: str = "heldout"
    """Prompt split: heldout (held-out customers), valid, sft, rm or ppo."""
    episodes: int = 500
    """Number of prompts (one response per policy each)."""
    seed: int = 0
    """Seed of the prompt choice and of both policies' sampling (the same seed, the same samples)."""
    temperature: float = 1.0
    """Sampling temperature of policy A (0 for greedy)."""
    baseline_temperature: float | None = None
    """Sampling temperature of policy B (None: the same as --temperature). E.g. --temperature 0
    --baseline_temperature 1 judges a policy's greedy answers against another's samples."""
    max_new_tokens: int = 48
    """Longest response, in tokens."""
    batch_size: int = 125
    """Prompts sampled together (changes speed, not results)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (the bundled one by default)."""
    device: str = "cpu"
    """torch device (cpu, cuda, ...)."""
    json: bool = False
    """Print one JSON object instead of a table."""

    def __post_init__(self):  # checks that need no model: a mistake is reported before anything loads
        split_path(self.data, "prompts", self.split)


@dataclass
class RMEvalConfig:
    """Measure a reward against the world's held-out comparisons and the gold grader."""

    rm: str = "rm"
    """Reward: rm, rm-scalar, gold, or a reward-model path / hub id (from Python, any load_reward spec)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (reads comparisons/*.parquet)."""
    policy: str = "sft"
    """Policy whose held-out samples the reward picks from (best of n) and is judged against."""
    best_of_n: str = "4,16"
    """Comma-separated n of the best-of-n win rates (empty: skip them)."""
    episodes: int = 500
    """Held-out customers' prompts of the best-of-n measurement (rlhf eval's default)."""
    device: str = "cpu"
    """torch device (cpu, cuda, ...)."""
    seed: int = 0
    """Seed of the sampling for the best-of-n and padding measurements."""
    json: bool = False
    """Print one JSON object instead of a table."""

    def __post_init__(self):  # checks that need no model: a mistake is reported before anything loads
        check_reward(self.rm)


@dataclass
class ServeRewardConfig:
    """Serve one reward model to every env, async worker and data-parallel rank (``rlhf_env.rewards.server``)."""

    reward: str = "rm"
    """Reward: rm, rm-scalar, gold, labelers, or a reward-model path / hub id."""
    host: str = "127.0.0.1"
    """Address to bind. There is no authentication: anyone who can reach the port can use it."""
    port: int = 8765
    """Port to bind (0: a free one; the URL is printed)."""
    device: str = "cpu"
    """torch device of the reward model (cpu, cuda, ...)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (gold and labelers look up each prompt's task there)."""
    max_batch: int = 4096
    """Most responses in one request; a client splits larger batches."""
    reward_label: int = 0
    """With a sequence-classifier reward: the output (label) that scores a response."""
    reward_transform: str = "logit"
    """With a sequence-classifier reward: logit, log_softmax or softmax of that label."""

    def __post_init__(self):  # checks that need no model: a mistake is reported before anything loads
        check_reward(self.reward)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        check_ranges(self, positive=("max_batch",))


@dataclass
class WorldStatsConfig:
    """Describe the world and measure its labeler panel."""

    data: str = ""
    """Directory of the world's datasets (empty: the bundled one)."""
    policy: str = "sft"
    """Policy whose samples the labelers rank to measure agreement (bundled name or path)."""
    n_prompts: int = 300
    """Prompts (from the rm split) used for the agreement and bias measurements."""
    seed: int = 0
    """Seed of the prompt choice, the samples and the labelers' draws."""
    noise: float = LabelerConfig.noise
    """Labeler noise scale (tunes agreement)."""
    length_bias: float = LabelerConfig.length_bias
    """Mean spurious utility per word."""
    json: bool = False
    """Print one JSON object instead of a table."""


@dataclass
class BuildConfig:
    """Regenerate the shipped datasets, tokenizer and models."""

    out: str = str(ASSETS)
    """Asset directory (the package's own by default)."""
    seed: int = 0
    """Seed of everything: the world, the tokenizer, initialisations and data orders."""
    steps: str = ",".join(STEPS)
    """Comma-separated steps to run (world, tokenizer, base, sft, comparisons, rm), or parts of one
    (base:large, sft:small, rm:likelihood, rm:scalar)."""
    sizes: str = "small,large"
    """Comma-separated model sizes to build."""
    pretrain_epochs: float = 2.0
    """Passes over the web-text corpus when pretraining each base model."""
    large_pretrain_epochs: float | None = 6.0
    """Passes for the large base model: a larger model needs more tokens (None, from Python: --pretrain_epochs)."""
    sft_epochs: float = 32.0
    """At most this many passes over the demonstrations (the checkpoint with the best gold score is kept)."""
    large_sft_epochs: float | None = None
    """At most this many passes for the large SFT model (None: --sft_epochs)."""
    large_sft_lr: float | None = 3e-4
    """The large SFT model's peak learning rate (None, from Python: rlhf sft's default, the small model's;
    benchmarks/sizes.py measured both)."""
    rm_epochs: float = 3.0
    """Passes over the comparisons when training the scalar-head RM (rm-scalar; rm's two weights are fitted in
    full-batch steps)."""
    work: str = "runs/build-assets"
    """Scratch directory for training logs and checkpoints (resumable)."""
    scale: float = 1.0
    """Scale every dataset size by this factor (tiny builds for tests)."""
    device: str = "cpu"
    """torch device (cpu, cuda, ...)."""

    def __post_init__(self):  # before any step runs
        given = tuple(name for name in ("large_pretrain_epochs", "large_sft_epochs", "large_sft_lr")
                      if getattr(self, name) is not None)
        check_ranges(self, above_zero=("pretrain_epochs", "sft_epochs", "rm_epochs", "scale", *given))
