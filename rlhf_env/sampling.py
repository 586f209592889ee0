"""Batched sampling from any Hugging Face causal LM, with a KV cache.

Prompts are left-padded and ``position_ids`` come from the attention mask, so a padded row is
generated exactly as it would be alone. Only the sampled token's log-probability is kept (never a
``(B, T, V)`` stack), logits are divided by the temperature both for sampling and for the returned
log-probs, and the loop stops as soon as every row has emitted EOS.

Any HF causal LM goes through its own forward and cache (``HFDecoder``); an accelerated HF GPT-2 (the
shipped models, see ``rlhf_env.accel``) goes through the lean path of ``rlhf_env.accel.decoder`` (the same
logits, faster: ``benchmarks/bench_sampler.py`` measures it against a plain HF ``generate``). For the package's
models on a CPU, each step's tokens are drawn from its logits in one pass of a C kernel (``draw_logits``, where
``rlhf_env.accel.kernels`` chose it), else in PyTorch's ops (``draw_logits_torch``): the same tokens from the same
random numbers, but where one falls within float rounding of a boundary between two.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from rlhf_env.accel import accelerated, c_sampling, native
from rlhf_env.accel.decoder import GPT2Decoder, first_rows
from rlhf_env.accel.gpt2 import KVCache, TorchGPT2
from rlhf_env.models import context_length
from rlhf_env.packing import on_real_tokens, packed_hidden, positions, shared_hidden


@dataclass
class Samples:
    prompt_ids: torch.Tensor  # (B, P) left-padded with the tokenizer's pad id
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, R) EOS included; pad id after it
    response_mask: torch.Tensor  # (B, R) 1 on real response tokens (EOS included)
    logprobs: torch.Tensor  # (B, R) log pi(y_t | x, y_<t) at the sampling temperature; 0 on padding
    eos: torch.Tensor  # (B,) bool: the row emitted EOS within the budget
    texts: list[str]  # decoded responses, without EOS
    pad_id: int  # the tokenizer's pad id, used after EOS

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    def action(self, width: int) -> dict[str, np.ndarray]:
        """The responses as a batch of ``InstructBandit-v0`` actions, padded to ``width`` tokens."""
        B, R = self.response_ids.shape
        if R > width:
            raise ValueError(f"responses of {R} tokens do not fit in actions of {width}")
        ids = np.full((B, width), self.pad_id, np.int64)
        ids[:, :R] = self.response_ids.cpu().numpy()
        logprobs = np.zeros((B, width), np.float32)
        logprobs[:, :R] = self.logprobs.cpu().numpy()
        return {"response_ids": ids, "logprobs": logprobs}


def encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask; raises if a prompt is longer than ``max_prompt_tokens``."""
    enc = tokenizer(prompts, padding=True, return_tensors="pt", padding_side="left")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if max_prompt_tokens is not None and ids.shape[1] > max_prompt_tokens:
        longest = int(mask.sum(1).argmax())
        raise ValueError(f"prompt {longest} has {int(mask[longest].sum())} tokens, more than "
                         f"max_prompt_tokens={max_prompt_tokens}: {prompts[longest]!r}")
    return ids.to(device), mask.to(device)


# Responses per distinct prompt from which one forward over the distinct prompts, then one over the responses
# attending to their cached keys and values, is faster than a forward over every prompt + response: measured on
# the bundled policy, forward and backward, by benchmarks/bench_shared_prompts.py.
SHARE_FROM = 3


def worth_sharing(rows: int, distinct: int, share_from: float | None = None) -> bool:
    """Whether ``rows`` rows of ``distinct`` prompts share them: from ``share_from`` (default ``SHARE_FROM``) rows
    per distinct prompt."""
    return rows >= (SHARE_FROM if share_from is None else share_from) * distinct


def shares(model, rows: int, distinct: int, share_from: float | None = None) -> bool:
    """Whether ``response_log_softmax`` runs ``rows`` rows of ``distinct`` prompts with each prompt once for
    ``model``: where the package's trunk runs it with its C attention (``rlhf_env.packing.on_real_tokens``), from
    any prompt that repeats, since a prompt laid once among the real tokens costs nothing; else through a cache,
    from ``share_from`` (default ``SHARE_FROM``) rows per distinct prompt (``worth_sharing``)."""
    if share_from is None and rows > distinct and on_real_tokens(model, lm_head=True):
        return True
    return worth_sharing(rows, distinct, share_from)


def response_log_softmax(model, ids: torch.Tensor, mask: torch.Tensor, R: int, temperature: float = 1.0,
                         share_prompts: bool = True, pack: bool = True, **kwargs):
    """``log pi(. | x, y_<t)`` (B, R, V) at the R positions that predict the last R tokens of ``ids``
    (B, P + R), at ``temperature``; only those positions go through the LM head. Returns it and the
    model's output (its ``logits``, and its ``hidden_states`` for ``output_hidden_states=True`` in ``kwargs``:
    the last layer's at the R + 1 last positions at least).

    Where the rows share prompts and ``share_prompts`` (``shares``: from any repeated prompt through the package's
    trunk, else from ``SHARE_FROM`` rows per distinct prompt, as a group of responses to one prompt has), each
    distinct prompt goes through the model once, and the responses attend to it (``shared_prompt_forward``). Else,
    with ``pack``, the rows run packed end to end where that saves positions (``rlhf_env.packing``). Either way the
    same logits, to float rounding, and the same gradients."""
    out = shared_prompt_forward(model, ids, mask, R, **kwargs) if share_prompts else None
    if out is None and pack:
        out = packed_forward(model, ids, mask, R, **kwargs)
    if out is None:
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=R + 1, **kwargs)
    return torch.log_softmax(out.logits[:, :-1].float() / temperature, -1), out


def cache_argument(model) -> str | None:
    """The name under which ``model``'s forward takes a KV cache (transformers renamed ``past_key_values`` to
    ``cache`` during 5.x), or None for a model without one."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


# A forward's fixed cost, in the positions one thread computes meanwhile: rows of rests are split into chunks of
# similar length (``length_chunks``) only where that saves more positions than the extra forwards cost (measured on
# the bundled policies at 1 and 2 threads by benchmarks/bench_padding.py).
CHUNK_COST = 48


def length_chunks(lengths: torch.Tensor, most: int = 3) -> list[torch.Tensor]:
    """The rows (B,) of right-padded rests of these ``lengths``, in chunks of similar length: sorted, cut into up to
    ``most`` chunks of equal counts, as many as save the most positions (each chunk runs to its own longest) net
    of ``CHUNK_COST`` per extra forward and thread (more threads compute a position faster, not a forward's fixed
    part). One chunk (all rows, in order) where chunking does not pay."""
    order = torch.argsort(lengths, stable=True)
    cost_per_chunk = CHUNK_COST * torch.get_num_threads()
    best, chunks = int(lengths.max()) * len(lengths), [torch.arange(len(lengths), device=lengths.device)]
    for k in range(2, min(most, len(lengths)) + 1):
        parts = order.tensor_split(k)
        cost = sum(int(lengths[part].max()) * len(part) for part in parts) + (k - 1) * cost_per_chunk
        if cost < best:
            best, chunks = cost, list(parts)
    return chunks


def prompt_then_rest(model, cache_arg: str, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, rows: torch.Tensor,
                     rest_ids: torch.Tensor, rest_mask: torch.Tensor, prompt_kwargs: dict | None = None, **kwargs):
    """Each distinct prompt (U, P), left-padded, through ``model`` once with a cache; then the rest of every row
    (B, T), right-padded, attending to the cached keys and values of its prompt ``rows[b]``. Returns both
    outputs. ``kwargs`` go to both forwards, ``prompt_kwargs`` to the prompts' only.

    Where the rests' lengths differ enough (``length_chunks``), they run in chunks of rows of similar length, each
    cut to its longest; the rest's output then holds ``logits``, ``last_hidden_state`` and the last of
    ``hidden_states`` (those the model gives), in the rows' order, zero at the padding past a chunk's end."""
    head = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask), use_cache=True,
                 **(prompt_kwargs or {}), **kwargs)
    cache = getattr(head, cache_arg)
    chunks = length_chunks(rest_mask.sum(1))
    prompts = _prompt_states(cache) if len(chunks) > 1 else None
    if prompts is None:  # one chunk, or a cache whose rows it cannot swap
        cache.batch_select_indices(rows)  # each row's own copy of its prompt's keys and values
        return head, _rest(model, cache_arg, cache, prompt_mask[rows], rest_ids, rest_mask, kwargs)
    tails = []
    for chunk in chunks:
        _take_rows(cache, prompts, rows[chunk])  # the chunk's rows' copies of their prompts' keys and values
        width = max(int(rest_mask[chunk].sum(1).max()), 1)
        tails.append(_rest(model, cache_arg, cache, prompt_mask[rows[chunk]], rest_ids[chunk, :width],
                           rest_mask[chunk, :width], kwargs))
    inverse = torch.argsort(torch.cat(chunks))
    T = rest_ids.shape[1]

    def rejoined(parts):  # each chunk's (rows, width, ...) padded to T, in the rows' order
        return torch.cat([F.pad(x, (0, 0, 0, T - x.shape[1])) for x in parts])[inverse]

    out = {}
    for name in ("logits", "last_hidden_state"):
        if getattr(tails[0], name, None) is not None:
            out[name] = rejoined([getattr(tail, name) for tail in tails])
    if getattr(tails[0], "hidden_states", None) is not None:
        out["hidden_states"] = (rejoined([tail.hidden_states[-1] for tail in tails]),)
    return head, SimpleNamespace(**out)


def _prompt_states(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Each layer's keys and values in ``cache``, where a chunk of rows can take its own of them (the torch-only
    GPT-2's cache, and HF's dynamic one); else None."""
    if isinstance(cache, KVCache):
        return list(cache.layers)
    layers = getattr(cache, "layers", None)
    if not layers or "transformers" not in sys.modules:  # (the envs' own models never import transformers)
        return None
    from transformers.cache_utils import DynamicLayer

    return [(layer.keys, layer.values) for layer in layers] if all(type(x) is DynamicLayer for x in layers) else None


def _take_rows(cache, states: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor) -> None:
    """Set ``cache`` to these ``rows`` of the keys and values ``states`` (``_prompt_states``)."""
    if isinstance(cache, KVCache):
        cache.layers = [(keys[rows], values[rows]) for keys, values in states]
        return
    for layer, (keys, values) in zip(cache.layers, states):
        layer.keys, layer.values = keys[rows], values[rows]


def _rest(model, cache_arg, cache, prompt_mask, rest_ids, rest_mask, kwargs):
    mask = torch.cat([prompt_mask, rest_mask], 1)
    return model(input_ids=rest_ids, attention_mask=mask, position_ids=positions(mask)[:, -rest_ids.shape[1]:],
                 use_cache=True, **{cache_arg: cache}, **kwargs)


def shared_prompt_forward(model, ids: torch.Tensor, mask: torch.Tensor, R: int, output_hidden_states: bool = False,
                          share_from: float | None = None):
    """``response_log_softmax``'s forward with each distinct prompt of ``ids[:, :-R]`` computed once; None where
    it does not pay (``shares``) or cannot be done (no prompt columns; a model that the package's trunk does not run
    and that takes no cache). Returns the logits (B, R + 1, V) at the
    positions that predict the last R tokens and the next, and with ``output_hidden_states`` the last layer's
    hidden states there (as the last of ``hidden_states``). A GPT-2 whose packed trunk runs the package's C attention
    here takes the prompts once each and every response after its own, on the real tokens only
    (``rlhf_env.packing.shared_hidden``), from any prompt that repeats (``shares``); any other model runs each prompt
    with a cache, then the responses."""
    P = ids.shape[1] - R
    if P == 0:
        return None
    first, rows = torch.unique(first_rows(ids[:, :P], mask[:, :P]), return_inverse=True)  # (U,), (B,)
    if not shares(model, len(ids), len(first), share_from):
        return None
    hidden = shared_hidden(model, ids, mask, R, lm_head=True, prompts=(first, rows))  # the real tokens only
    if hidden is not None:
        return SimpleNamespace(logits=model.get_output_embeddings()(hidden), hidden_states=(hidden,))
    cache_arg = cache_argument(model)
    if cache_arg is None or not worth_sharing(len(ids), len(first), share_from):  # (a cache pays from SHARE_FROM)
        return None
    prompt_mask = mask[first, :P]
    start = first_real_column(prompt_mask)  # the distinct prompts' common left padding goes
    prompt_ids, prompt_mask = ids[first, start:P], prompt_mask[:, start:]
    hidden = {"output_hidden_states": True} if output_hidden_states else {}
    head, tail = prompt_then_rest(model, cache_arg, prompt_ids, prompt_mask, rows, ids[:, P:], mask[:, P:],
                                  {"logits_to_keep": 1}, **hidden)
    logits = torch.cat([head.logits[rows], tail.logits], 1)
    if not output_hidden_states:
        return SimpleNamespace(logits=logits)
    last = torch.cat([head.hidden_states[-1][rows, -1:], tail.hidden_states[-1]], 1)
    return SimpleNamespace(logits=logits, hidden_states=(last,))


def packed_forward(model, ids: torch.Tensor, mask: torch.Tensor, R: int, output_hidden_states: bool = False,
                   **kwargs):
    """``response_log_softmax``'s forward over packed rows (``rlhf_env.packing``); None where packing does not
    pay, the model does not allow it, or ``kwargs`` ask for other outputs. Returns the logits (B, R + 1, V) at the
    positions that predict the last R tokens and the next, and the last layer's hidden states there (with or
    without ``output_hidden_states``: they are computed anyway)."""
    hidden = None if kwargs else packed_hidden(model, ids, mask, R, lm_head=True)
    if hidden is None:
        return None
    return SimpleNamespace(logits=model.get_output_embeddings()(hidden), hidden_states=(hidden,))


def response_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, R: int, temperature: float = 1.0, **kwargs):
    """``(logprobs (B, R), log_softmax (B, R, V), output)``: the log-probs of the last R tokens of ``ids``
    from ``response_log_softmax`` (which takes ``kwargs``), gathered."""
    logp_all, out = response_log_softmax(model, ids, mask, R, temperature, **kwargs)
    return logp_all.gather(2, ids[:, -R:, None]).squeeze(2), logp_all, out


@dataclass
class KeptForward:
    """One forward's ``response_log_softmax`` (B, R, V) of ``ids`` (B, T) under ``mask``, at ``temperature``, by
    ``model``: kept by the env's reference and by a likelihood RM (where asked, ``keep_forwards``) so that a later
    reader of the same tokens with the same model need not run it again (``reuse_forward``)."""

    model: torch.nn.Module
    ids: torch.Tensor
    mask: torch.Tensor
    log_softmax: torch.Tensor
    temperature: float = 1.0


def reuse_forward(kept: list[KeptForward], model, ids: torch.Tensor, mask: torch.Tensor, R: int,
                  temperature: float = 1.0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(log_softmax (B, R, V) or None, found (B,) bool)``: ``response_log_softmax(model, ids, mask, R,
    temperature)`` read from forwards that ``model`` already ran over the same rows, where it did. A row is found
    where a kept row of ``model`` at ``temperature`` holds the same real tokens (in any layout of padding: the
    same tokens at the same positions give the same distributions, to float rounding) and its kept positions
    cover this row's real tokens among the last R; its other positions (padding) are 0. None if none is found."""
    kept = [k for k in kept if k.model is model and k.temperature == temperature]
    for k in kept:  # the very same batch: the kept tensor itself
        if k.ids.shape == ids.shape and k.log_softmax.shape[1] == R and torch.equal(k.ids, ids) \
                and torch.equal(k.mask, mask):
            return k.log_softmax, torch.ones(len(ids), dtype=torch.bool, device=ids.device)
    found = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    if not kept:
        return None, found
    rows = {}  # real tokens -> (kept forward, row)
    for k in kept:
        for j, (row_ids, row_mask) in enumerate(zip(k.ids.cpu(), k.mask.cpu().bool())):
            rows.setdefault(row_ids[row_mask].numpy().tobytes(), (k, j))
    out = None
    for b, (row_ids, row_mask) in enumerate(zip(ids.cpu(), mask.cpu().bool())):
        k, j = rows.get(row_ids[row_mask].numpy().tobytes(), (None, None))
        if k is None:
            continue
        wanted, columns = _window(mask[b], R)  # the real tokens' indices among the last R columns, and those columns
        have, kept_columns = _window(k.mask[j], k.log_softmax.shape[1])
        at = torch.searchsorted(have, wanted).clamp(max=max(len(have) - 1, 0))
        if len(wanted) and (len(have) == 0 or not torch.equal(have[at], wanted) or int(wanted[0]) == 0):
            continue  # not all kept, or the first token (predicted by no real position)
        if out is None:
            out = torch.zeros(len(ids), R, k.log_softmax.shape[2], dtype=k.log_softmax.dtype, device=ids.device)
        out[b, columns] = k.log_softmax[j, kept_columns[at]].to(ids.device)
        found[b] = True
    return out, found


def _window(mask: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For one row's mask (T,): the indices, among its real tokens, of those in the last R columns, and their
    columns in that window (both ascending)."""
    mask = (mask != 0).long()  # any dtype of mask: the indices compare across the two rows
    columns = torch.nonzero(mask[-R:]).squeeze(1)
    return (torch.cumsum(mask, 0) - 1)[-R:][columns], columns


def response_mask(response_ids: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each response ends, the one rule of the sampler, the envs and the agents: a response runs up
    to and including its first EOS; a PAD before any EOS ends it, and is not part of it; with neither, it
    runs to the end. Returns ``(mask (B, R) long, eos (B,) bool)``, eos: the response ended with EOS."""
    is_eos = response_ids == eos_id
    stop = is_eos | (response_ids == pad_id)
    before_stop = (stop.long().cumsum(1) - stop.long()) == 0  # no stop token strictly before
    mask = before_stop & ~(stop & ~is_eos)
    eos = is_eos.gather(1, stop.long().argmax(1, keepdim=True)).squeeze(1) & stop.any(1)
    return mask.long(), eos


def first_real_column(mask: torch.Tensor) -> int:
    """The first column of a left-padded mask (B, T) that is not padding in every row."""
    return int(mask.any(0).int().argmax())


def trim_padding(ids: torch.Tensor, mask: torch.Tensor, response_mask: torch.Tensor):
    """Cut the columns of prompt + response ids (B, P + R) that are padding in every row: left of the
    longest prompt and right of the longest response. Returns ``(ids, mask, r)``, r the responses'
    new width. On a CPU the forward is compute-bound, so padding costs as much as real tokens."""
    P = ids.shape[1] - response_mask.shape[1]
    first = first_real_column(mask[:, :P])
    r = max(int(response_mask.sum(1).max()), 1)
    return ids[:, first:P + r], mask[:, first:P + r], r


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], max_new_tokens: int = 32, temperature: float | torch.Tensor = 1.0,
           generator: torch.Generator | None = None, max_prompt_tokens: int | None = None) -> Samples:
    """Sample one response per prompt. ``temperature`` is a float (0 for greedy) or one per prompt (B,)."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, max_prompt_tokens, device)
    return sample_from_ids(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens, temperature, generator)


@torch.no_grad()
def sample_n(model, tokenizer, prompts: list[str], n: int, generator: torch.Generator | None = None,
             max_new_tokens: int = 48, temperature: float = 1.0, batch_size: int = 64
             ) -> tuple[list[str], list[str], list[bool]]:
    """n samples per prompt, a prompt's n side by side, ``batch_size`` rows per sampler call: the repeated
    prompts, the responses and their EOS flags, each ``len(prompts) * n`` long."""
    repeated = [p for p in prompts for _ in range(n)]
    texts, eos = [], []
    for start in range(0, len(repeated), batch_size):
        out = sample(model, tokenizer, repeated[start:start + batch_size], max_new_tokens, temperature, generator)
        texts += out.texts
        eos += out.eos.tolist()
    return repeated, texts, eos


def draw(logp: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from log-probabilities (B, V), by inverse-CDF sampling: one uniform number per
    row, where ``torch.multinomial`` draws one exponential per vocabulary entry (16x slower here)."""
    cdf = logp.exp().double().cumsum(-1)  # float64: a float32 running sum would lose the rarest tokens
    if not torch.isfinite(cdf[:, -1]).all():
        raise ValueError("cannot sample from non-finite log-probabilities (a NaN in the model, or temperature 0 "
                         "in a per-row temperature)")
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


def draw_logits_torch(logits: torch.Tensor, temperature: torch.Tensor | None, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` (B, V) at ``temperature`` (a scalar tensor, (B, 1), or None for 1: no
    division) through ``draw``, and each token's log-probability: ``(token (B,), logp (B,))``."""
    logp = torch.log_softmax(logits if temperature is None else logits / temperature, dim=-1)
    token = draw(logp, generator)
    return token, logp.gather(1, token[:, None]).squeeze(1)


_ONE = torch.ones(1)


def draw_logits(logits: torch.Tensor, temperature: torch.Tensor | None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``draw_logits_torch`` in one pass of the package's C kernel over each row (``sample_rows`` in
    ``rlhf_env/accel/cpu.c``), on float32 CPU logits: the same uniform numbers from ``generator``, so the same tokens
    but where a number falls within float rounding of a boundary between two, and their log-probabilities to float
    rounding. ``native.library()`` must not be None."""
    B, V = logits.shape
    temperature = _ONE if temperature is None else temperature.to(torch.float32).reshape(-1)
    if logits.dtype != torch.float32 or logits.device.type != "cpu" or len(temperature) not in (1, B):
        raise ValueError(f"draw_logits: logits {tuple(logits.shape)} {logits.dtype} on {logits.device}, "
                         f"{len(temperature)} temperatures: float32 CPU logits and one temperature, or one per row")
    logits, temperature = logits.contiguous(), temperature.contiguous()
    u = torch.rand(B, 1, generator=generator, dtype=torch.float64)  # draw's numbers
    token, logp = torch.empty(B, dtype=torch.long), torch.empty(B)
    status = native.library().sample_rows(logits.data_ptr(), temperature.data_ptr(), int(len(temperature) > 1),
                                          u.data_ptr(), B, V, token.data_ptr(), logp.data_ptr(),
                                          native.threads(B * V))
    if status & 2:
        raise MemoryError("draw_logits: the kernel could not allocate its buffer")
    if status:
        raise ValueError("cannot sample from non-finite log-probabilities (a NaN in the model, or temperature 0 "
                         "in a per-row temperature)")
    return token, logp


def draws_in_c(model) -> bool:
    """Whether the sampler draws a model's tokens through ``draw_logits``: for this package's models (accelerated, or
    the torch-only GPT-2) on a CPU, where ``rlhf_env.accel.kernels`` chose the C kernel."""
    return ((type(model) is TorchGPT2 or accelerated(model)) and next(model.parameters()).device.type == "cpu"
            and native.library() is not None and c_sampling(model.config))


class HFDecoder:
    """Incremental decoding through any HF causal LM's own forward and cache (the generic path)."""

    def __init__(self, model):
        self.model, self.cache, self.mask = model, None, None
        self.cache_arg = cache_argument(model) or "past_key_values"  # (a forward that takes **kwargs)

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, share_prompts: bool = False
                ) -> torch.Tensor:
        """The prompts' next-token logits; every row runs its prompt (``share_prompts`` is not implemented here)."""
        self.cache, self.mask = None, mask
        return self._forward(ids, pos)

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        return self._forward(token[:, None], pos[:, None])

    def _forward(self, ids, pos):
        out = self.model(input_ids=ids, attention_mask=self.mask, position_ids=pos, use_cache=True,
                         **{self.cache_arg: self.cache})
        self.cache = getattr(out, self.cache_arg)
        return out.logits[:, -1]


def lean_decoder_applies(model) -> bool:
    """The default decoder choice: the lean GPT-2 path for an accelerated HF GPT-2 on a CPU (where it was measured
    faster) and for the torch-only GPT-2 (which has no other), else the model's own: on CUDA an HF model decodes
    through its own forward and cache until a measurement there (``benchmarks/gpu_check.py``) says otherwise."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    return (type(model) is TorchGPT2 or (accelerated(model) and on_cpu)) and GPT2Decoder.supports(model)


COMPACT_AT = 0.5  # the lean decoder drops its ended rows once at most this share of its rows still runs


@torch.no_grad()
def sample_from_ids(model, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int = 32,
                    temperature: float | torch.Tensor = 1.0, generator: torch.Generator | None = None,
                    fast: bool | None = None, stop_at_eos: bool = True, share_prompts: bool = True) -> Samples:
    """Like ``sample``, from left-padded prompt ids (B, P) and their attention mask.

    ``fast`` picks the lean GPT-2 path of ``rlhf_env.accel.decoder`` (default: for an HF GPT-2 that
    ``rlhf_env.accel`` accelerated), which prefills each distinct prompt once if ``share_prompts``;
    ``stop_at_eos=False`` always generates ``max_new_tokens`` (for benchmarks; the masks still end each
    response at its first EOS or PAD, but tokens after it are sampled and keep their log-probs). The lean decoder
    stops running rows that have ended (``COMPACT_AT``); the draws, one per row and step, are the same.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    temperature = torch.as_tensor(temperature, dtype=torch.float32, device=device)
    greedy = temperature.ndim == 0 and float(temperature) == 0.0
    sample_tokens = draw_logits if draws_in_c(model) else draw_logits_torch
    if temperature.ndim:
        temperature = temperature[:, None]  # (B, 1): one temperature per row
    scale = None if temperature.ndim == 0 and float(temperature) == 1.0 else temperature  # x / 1 is x: no division
    B, P = prompt_ids.shape
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    context = context_length(model)
    max_new_tokens = min(max_new_tokens, context - P)
    if max_new_tokens < 1:
        raise ValueError(f"prompts of {P} tokens leave no room in a context of {context}")

    if fast is None:
        fast = lean_decoder_applies(model)
    elif fast and not GPT2Decoder.supports(model):
        raise ValueError(f"the fast decoder supports HF GPT-2 only, not {type(model).__name__}; use fast=None")
    # Columns that are padding in every row would cost every step's attention: the decoder runs without them
    # (positions come from the mask, so nothing else changes); the samples keep the prompts as given.
    first = first_real_column(prompt_mask)
    run_ids, run_mask = prompt_ids[:, first:], prompt_mask[:, first:]
    decoder = GPT2Decoder(model, B, P - first + max_new_tokens) if fast else HFDecoder(model)
    prompt_pos = positions(run_mask)
    logits = decoder.prefill(run_ids, run_mask, prompt_pos, share_prompts=share_prompts)
    pos = prompt_pos[:, -1]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    live = torch.arange(B, device=device)  # the rows the decoder runs: the lean one drops ended rows
    compact = fast and stop_at_eos
    tokens, logps = [], []
    for step in range(max_new_tokens):
        logits = logits.float()  # (B, V)
        if greedy:
            token = logits.argmax(-1)
            token_logp = torch.log_softmax(logits, dim=-1).gather(1, token[:, None]).squeeze(1)
        else:
            token, token_logp = sample_tokens(logits, scale, generator)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        tokens.append(token)
        logps.append(torch.where(done, torch.zeros_like(token_logp), token_logp))
        if stop_at_eos:  # a sampled PAD also ends a response (``response_mask``)
            done = done | (token == eos_id) | (token == pad_id)
            if bool(done.all()):
                break
        if step + 1 < max_new_tokens:
            pos = pos + 1
            if compact and B - int(done.sum()) <= COMPACT_AT * len(live):  # drop the ended rows (dropped: ended)
                running = ~done[live]
                decoder.keep(running.nonzero().squeeze(1))
                live = live[running]
            if len(live) == B:
                logits = decoder.step(token, pos)
            else:  # an ended row's logits are never read: its token is PAD (the random stream is the same)
                running_logits = decoder.step(token[live], pos[live])
                logits = running_logits.new_zeros(B, running_logits.shape[1])
                logits[live] = running_logits

    response_ids = torch.stack(tokens, 1)  # (B, R)
    mask, eos = response_mask(response_ids, eos_id, pad_id)
    texts = [tokenizer.decode(row[m.bool() & (row != eos_id)], skip_special_tokens=True)
             for row, m in zip(response_ids, mask)]
    return Samples(prompt_ids, prompt_mask, response_ids, mask, torch.stack(logps, 1), eos, texts, pad_id)
