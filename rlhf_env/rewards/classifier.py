"""Hugging Face sequence classifiers as rewards, the bundled learned reward models among them.

The classifier reads text, so its tokenizer need not be the policy's: responses are retokenised
through their text (TRL required a shared tokenizer, a top user complaint: TRL #1674, #3595).
Text is right-padded and truncated on the left, so the score is read at the last real token (for a
tokenizer whose PAD is its EOS, an appended EOS counts as padding: don't set ``append_eos`` there).

The bundled ``rm-scalar`` (InstructGPT's design) is an ordinary ``GPT2ForSequenceClassification`` checkpoint
whose ``config.json`` also stores its normalisation (``reward_gain``, ``reward_bias``) and
``reward_append_eos`` (it was trained on ``prompt + response + EOS`` and reads the score at EOS).

Where a batch holds a group of responses to each prompt (the env's ``group_size``, from
``rlhf_env.sampling.SHARE_FROM`` responses per prompt), a causal classifier runs each distinct prompt once and the
responses attend to its cached keys and values (``shared_prompt_logits``), or, for a GPT-2 whose packed trunk runs
the package's C attention here, to its tokens laid once among the real tokens (``last_hidden_shared``): the same
scores, to float rounding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from transformers import AutoTokenizer

from rlhf_env.accel import trunk as packed_trunk
from rlhf_env.models import BUNDLED_REWARDS, context_length, load_classifier, resolve
from rlhf_env.packing import on_real_tokens, shared_plan
from rlhf_env.rewards.base import Reward
from rlhf_env.sampling import cache_argument, prompt_then_rest, worth_sharing

TRANSFORMS = ("logit", "sigmoid", "softmax", "log_softmax")


def prepare_tokenizer(tokenizer, model=None):
    """Right padding, left truncation, and a pad token (EOS if the tokenizer has none)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left"
    return tokenizer


def classifier_logits(model, tokenizer, texts: list[str], max_length: int | None = None,
                      prompts: list[str] | None = None) -> torch.Tensor:
    """Logits (B, num_labels) of a sequence classifier on texts, read at each text's last token.

    ``prompts`` (each text's prompt, a prefix of it): where texts share them (a group of responses to one
    prompt) and a causal classifier with a cache can, each distinct prompt runs once (``shared_prompt_logits``)."""
    device = next(model.parameters()).device
    max_length = max_length or context_length(model, default=512)
    shared = shared_prompt_logits(model, tokenizer, texts, prompts, max_length) if prompts is not None else None
    if shared is not None:
        return shared
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return model(**enc.to(device)).logits.float()


def shared_prompt_logits(model, tokenizer, texts: list[str], prompts: list[str], max_length: int
                         ) -> torch.Tensor | None:
    """``classifier_logits`` with each distinct prompt through the classifier's trunk once, and the rest of each
    text attending to its cached keys and values, or, where the package's trunk runs the model with its C attention
    (``rlhf_env.packing.on_real_tokens``), to its tokens laid once among the real tokens (whether or not prompts
    repeat: no padding); the head (``score``) reads the last token. The same logits, to float rounding. None where
    it does not pay (``worth_sharing``) or cannot give the same logits: a classifier without a trunk with a cache or
    a ``score`` head, a tokenizer whose PAD is not the model's, a text that does not tokenize as its (non-empty)
    prompt's tokens then at least one more, a text over ``max_length`` (it would be truncated), or a PAD token among
    a text's own (HF's pooling would skip it)."""
    distinct = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    trunk, head, pad_id = model.base_model, getattr(model, "score", None), tokenizer.pad_token_id
    on_real = on_real_tokens(model)  # (which pays whether or not prompts repeat)
    if ((not on_real and not worth_sharing(len(texts), len(distinct))) or trunk is model
            or not isinstance(head, torch.nn.Linear) or pad_id is None
            or model.config.pad_token_id != pad_id):  # HF's pooling reads the config's
        return None
    cache_arg = cache_argument(trunk)
    if cache_arg is None and not on_real:
        return None
    heads = tokenizer(list(distinct))["input_ids"]
    rows = [distinct[p] for p in prompts]
    tails = []
    for ids, row in zip(tokenizer(texts)["input_ids"], rows):
        prompt = heads[row]
        if len(ids) > max_length or not 0 < len(prompt) < len(ids) or ids[:len(prompt)] != prompt or pad_id in ids:
            return None
        tails.append(ids[len(prompt):])
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = _padded(heads, pad_id, left=True, device=device)
    tail_ids, tail_mask = _padded(tails, pad_id, left=False, device=device)
    index = torch.tensor(rows, device=device)
    last = None
    if on_real:
        first = torch.tensor([rows.index(u) for u in range(len(distinct))], device=device)  # each prompt's first text
        last = last_hidden_shared(model, torch.cat([prompt_ids[index], tail_ids], 1),
                                  torch.cat([prompt_mask[index], tail_mask], 1), tail_ids.shape[1], (first, index))
    if last is not None:
        return head(last).float()
    if cache_arg is None or not worth_sharing(len(texts), len(distinct)):
        return None
    rest = prompt_then_rest(trunk, cache_arg, prompt_ids, prompt_mask, index, tail_ids, tail_mask)[1]
    hidden = rest.last_hidden_state  # (B, T, E)
    last = hidden[torch.arange(len(texts), device=device), tail_mask.sum(1) - 1]
    return head(last).float()


def last_hidden_shared(model, ids: torch.Tensor, mask: torch.Tensor, R: int,
                       prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """The trunk's last hidden state (B, E) at each row's last token of left-padded prompts and right-padded rests
    (the last R columns) ``ids`` (B, T), each distinct prompt run once, on the real tokens only, through the
    package's trunk and its C attention (``rlhf_env.packing.shared_plan``, which takes ``prompts``); None where
    that does not run ``model`` here (``rlhf_env.packing.on_real_tokens``) or the layout does not apply."""
    if not on_real_tokens(model):
        return None
    layout = shared_plan(ids, mask, R, prompts)
    if layout is None:
        return None
    last = layout.index[:, -1:]  # past each rest: its last real token
    return packed_trunk.hidden_at(model, dataclasses.replace(layout, index=last, real_index=last))[:, 0]


def _padded(rows: list[list[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists as a padded (B, T) batch and its mask."""
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, row in enumerate(rows):
        columns = slice(T - len(row), T) if left else slice(0, len(row))
        ids[i, columns], mask[i, columns] = torch.tensor(row), 1
    return ids.to(device), mask.to(device)


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
                                       self.max_length, list(prompts[start:start + self.batch_size]))
            if self.transform == "softmax":
                logits = logits.softmax(-1)
            elif self.transform == "log_softmax":
                logits = logits.log_softmax(-1)
            values = logits[:, self.label]
            out.append(values.sigmoid() if self.transform == "sigmoid" else values)
        return torch.cat(out).cpu().numpy().astype(np.float64) * self.gain + self.bias
