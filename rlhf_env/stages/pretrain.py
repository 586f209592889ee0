"""Stage 0: pretrain a small GPT-2 base model on the world's web-text corpus.

The corpus states the knowledge base and general text but no instructions, so the base model knows
facts and the language but does not follow instructions (that is SFT's job).
Documents are joined with EOS and packed into blocks of the model's context length.

    rlhf pretrain --size small --out runs/base
"""

from __future__ import annotations

import torch

from rlhf_env.configs import PretrainConfig
from rlhf_env.models import CONTEXT, load_tokenizer, new_model
from rlhf_env.training.run import prepare
from rlhf_env.training.trainer import train_causal_lm
from rlhf_env.world.build import load_split


def pack(texts: list[str], tokenizer, block: int = CONTEXT) -> list[tuple[list[int], list[int]]]:
    """Concatenate documents separated by EOS and cut into blocks of ``block`` tokens."""
    stream: list[int] = []
    for ids in tokenizer(list(texts))["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    return [(stream[i:i + block], stream[i:i + block]) for i in range(0, len(stream) - block + 1, block)]


def pretrain(config: PretrainConfig) -> dict:
    prepare(config)  # under a launcher: the rank's device; a resumed run's kernels; before anything loads
    tokenizer = load_tokenizer(config.tokenizer)
    torch.manual_seed(config.seed)  # the initial weights are part of what the seed fixes
    model = new_model(config.size, tokenizer)
    blocks = pack(load_split(config.data, "pretrain", "train")["text"], tokenizer)
    return train_causal_lm(model, tokenizer, blocks, config, desc=f"pretrain {config.size}")
