"""Hugging Face sequence classifiers as rewards, the bundled learned reward models among them.

The classifier reads text, so its tokenizer need not be the policy's: responses are retokenised
through their text (TRL required a shared tokenizer, a top user complaint: TRL #1674, #3595).
Text is right-padded and truncated on the left, so the score is read at the last real token (for a
tokenizer whose PAD is its EOS, an appended EOS counts as padding: don't set ``append_eos`` there).

The bundled ``rm-scalar`` (InstructGPT's design) is an ordinary ``GPT2ForSequenceClassification`` checkpoint
whose ``config.json`` also stores its normalisation (``reward_gain``, ``reward_bias``) and
``reward_append_eos`` (it was trained on ``prompt + response + EOS`` and reads the score at EOS).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoTokenizer

from rlhf_env.models import BUNDLED_REWARDS, context_length, load_classifier, resolve
from rlhf_env.rewards.base import Reward

TRANSFORMS = ("logit", "sigmoid", "softmax", "log_softmax")


def prepare_tokenizer(tokenizer, model=None):
    """Right padding, left truncation, and a pad token (EOS if the tokenizer has none)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    return tokenizer


def classifier_logits(model, tokenizer, texts: list[str], max_length: int | None = None) -> torch.Tensor:
    """Logits (B, num_labels) of a sequence classifier on texts, read at each text's last token."""
    device = next(model.parameters()).device
    max_length = max_length or context_length(model, default=512)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return model(**enc.to(device)).logits.float()


class SequenceClassifierReward(Reward):
    """Any ``AutoModelForSequenceClassification``, by bundled name, local path or hub id.

    Args:
        label: which output of the classifier is the reward.
        transform: ``logit`` (raw), ``sigmoid``, ``softmax`` or ``log_softmax`` of that output.
        append_eos: add the tokenizer's EOS after the response (default: what the checkpoint's
            config says, ``reward_append_eos``, else False).
        normalize: apply the checkpoint's ``reward_gain`` and ``reward_bias`` if it has them (to the
            raw logit only).
    """

    def __init__(self, name_or_path: str = "rm", device: str | torch.device = "cpu", label: int = 0,
                 transform: str = "logit", batch_size: int = 64, max_length: int | None = None,
                 append_eos: bool | None = None, normalize: bool = True):
        if transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {transform!r}; choose one of {TRANSFORMS}")
        path = resolve(name_or_path, BUNDLED_REWARDS)
        try:
            self.model = load_classifier(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"could not load {name_or_path!r} as a sequence classifier: {e}") from None
        self.model.to(device).eval()
        self.tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path), self.model)
        n_labels = self.model.config.num_labels
        if not 0 <= label < n_labels:
            raise ValueError(f"label {label} out of range: {name_or_path!r} has {n_labels} output(s)")
        config = self.model.config
        self.label, self.transform, self.batch_size, self.max_length = label, transform, batch_size, max_length
        self.append_eos = getattr(config, "reward_append_eos", False) if append_eos is None else append_eos
        # The stored normalisation is for the raw logit; other transforms are used as they are.
        normalize = normalize and transform == "logit"
        self.gain = getattr(config, "reward_gain", 1.0) if normalize else 1.0
        self.bias = getattr(config, "reward_bias", 0.0) if normalize else 0.0
        self.name = str(name_or_path)

    @torch.no_grad()
    def score(self, prompts, responses, eos):
        end = self.tokenizer.eos_token if self.append_eos else ""
        texts = [p + r + (end if e else "") for p, r, e in zip(prompts, responses, eos)]
        out = []
        for start in range(0, len(texts), self.batch_size):
            logits = classifier_logits(self.model, self.tokenizer, texts[start:start + self.batch_size],
                                       self.max_length)
            if self.transform == "softmax":
                logits = logits.softmax(-1)
            elif self.transform == "log_softmax":
                logits = logits.log_softmax(-1)
            values = logits[:, self.label]
            out.append(values.sigmoid() if self.transform == "sigmoid" else values)
        return torch.cat(out).cpu().numpy().astype(np.float64) * self.gain + self.bias
