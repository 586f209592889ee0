"""Stage 0: pretrain a small GPT-2 base model on the world's web-text corpus.

The corpus states the knowledge base and general text but no instructions, so the base model knows
facts and the language but does not follow instructions (that is SFT's job).
Documents are joined with EOS and packed into blocks of the model's context length.

    rlhf pretrain --size small --out runs/base
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf_env.models import CONTEXT, DATA_DIR, TOKENIZER_DIR, load_tokenizer, new_model
from rlhf_env.training.trainer import TrainConfig, train_causal_lm
from rlhf_env.world.build import load_split


@dataclass
class PretrainConfig(TrainConfig):
    """Pretrain a base model from scratch on the web-text corpus."""

    size: str = "small"
    """Model size: small (~1M parameters) or large (~4M)."""
    data: str = str(DATA_DIR)
    """Directory of the world's datasets (reads pretrain/train.parquet)."""
    tokenizer: str = str(TOKENIZER_DIR)
    """Tokenizer directory (empty: the bundled one)."""
    out: str = "runs/base"
    epochs: float = 2.0
    batch_size: int = 32
    lr: float = 2e-3


def pack(texts: list[str], tokenizer, block: int = CONTEXT) -> list[tuple[list[int], list[int]]]:
    """Concatenate documents separated by EOS and cut into blocks of ``block`` tokens."""
    stream: list[int] = []
    for ids in tokenizer(list(texts))["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    return [(stream[i:i + block], stream[i:i + block]) for i in range(0, len(stream) - block + 1, block)]


def pretrain(config: PretrainConfig) -> dict:
    tokenizer = load_tokenizer(config.tokenizer)
    torch.manual_seed(config.seed)  # the initial weights are part of what the seed fixes
    model = new_model(config.size, tokenizer)
    blocks = pack(load_split(config.data, "pretrain", "train")["text"], tokenizer)
    return train_causal_lm(model, tokenizer, blocks, config, desc=f"pretrain {config.size}")
