"""Stage 1: supervised fine-tuning (SFT) on labeler demonstrations.

As in InstructGPT (Ouyang et al. 2022, section 3.5): many epochs (the paper: 16; 32 here by default, where
validation was still improving at 16), cosine learning-rate decay,
residual dropout 0.2, and the checkpoint chosen by the quality of its *samples*, not by validation
loss (which overfits after about one epoch). The paper selected by RM score; before an RM exists we
select by the gold grader's score of samples on validation prompts from training customers.

The loss covers response tokens and the final EOS only; prompt tokens are masked out.

    rlhf sft --base base --out runs/sft
"""

from __future__ import annotations

import math

from rlhf_env.configs import SFTConfig
from rlhf_env.evaluation import generate_and_grade, summarize
from rlhf_env.models import load_policy
from rlhf_env.training.run import prepare
from rlhf_env.training.trainer import IGNORE, train_causal_lm
from rlhf_env.world.build import load_split


def demonstration_examples(rows, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) with the prompt masked: the model learns ``" " + response + EOS``."""
    prompts = tokenizer(list(rows["prompt"]))["input_ids"]
    responses = tokenizer([" " + r for r in rows["response"]])["input_ids"]
    return [(p + r + [tokenizer.eos_token_id], [IGNORE] * len(p) + r + [tokenizer.eos_token_id])
            for p, r in zip(prompts, responses)]


def sft(config: SFTConfig) -> dict:
    prepare(config)  # under a launcher: the rank's device; a resumed run's kernels; before anything loads
    model, tokenizer = load_policy(config.base, config.device, resid_pdrop=config.resid_pdrop)
    examples = demonstration_examples(load_split(config.data, "demonstrations", "train"), tokenizer)
    valid = load_split(config.data, "prompts", "valid").select(range(config.n_valid))
    if config.evals and not config.eval_every:
        total = config.epochs * math.ceil(len(examples) / config.batch_size)
        config.eval_every = max(1, round(total / config.evals))

    def evaluate(m) -> dict[str, float]:
        _, grades, lengths = generate_and_grade(m, tokenizer, valid, seed=config.seed)
        return summarize(grades, lengths)

    return train_causal_lm(model, tokenizer, examples, config, evaluate, select="gold", desc="sft")
