"""The world's tokenizer: byte-level BPE trained with ``tokenizers``, saved as a ``transformers`` fast
tokenizer with distinct PAD and EOS tokens.

Digits are split one per token (so numbers are spelled digit by digit, which makes arithmetic
learnable for a tiny model), and byte-level encoding makes every string round-trip exactly.
Padding is on the left, as generation from a batch of prompts needs.

``JSONTokenizer`` reads a saved one with ``tokenizers`` alone, for the envs' frozen bundled models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, EOS = "<|pad|>", "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 768) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=EOS, padding_side="left",
    )


class JSONTokenizer:
    """A saved tokenizer (``tokenizer.json`` and ``tokenizer_config.json``) through ``tokenizers`` alone, with
    the part of transformers' tokenizer API that the envs and the likelihood RM use: ``tok(text)`` and
    ``tok(texts)`` give unpadded ``{"input_ids": ...}``; ``decode``, ``get_vocab``, ``len``, and the EOS and
    PAD tokens and ids. The tests check it against ``AutoTokenizer`` on the bundled tokenizer."""

    def __init__(self, directory: str | Path):
        self.backend = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        self.backend.no_padding()
        self.backend.no_truncation()
        config = json.loads((Path(directory) / "tokenizer_config.json").read_text())
        self.eos_token = config["eos_token"]
        self.pad_token = config.get("pad_token") or self.eos_token
        self.eos_token_id, self.pad_token_id = (self.backend.token_to_id(t) for t in (self.eos_token, self.pad_token))

    def __call__(self, text: str | list[str]) -> dict:
        if isinstance(text, str):
            return {"input_ids": self.backend.encode(text).ids}
        return {"input_ids": [e.ids for e in self.backend.encode_batch(list(text))]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)
