"""Sequence packing for the training forwards: rows of prompt + response packed end to end.

A batch of left-padded prompts and right-padded responses (B, P + R) spends a position on every padding
token, and on a CPU a padded position costs as much as a real one. Packed, each row's real tokens lie end to
end with other rows' in rows of the longest one's length (first-fit decreasing), each with its own position
ids from 0; transformers then keeps the sequences apart by a block-diagonal causal mask, which it builds from
the restarting position ids when no attention mask is given (``transformers.masking_utils``). Only the
positions that predict the responses are gathered back, as (B, R + 1) rows, for the LM head or a value head.

A packed row ends in padding where its sequences do not fill it. The same outputs as the padded forward, to float
rounding, and the same gradients. A GPT-2 that ``rlhf_env.accel`` accelerated (or the envs' torch-only one) runs its
last block at the gathered positions only, and everything else on the real tokens only (``rlhf_env.accel.trunk``),
its attention too where the package's C kernel runs it; then rows that share a prompt can lay it once
(``shared_plan``, ``shared_hidden``). Whether a model's trunk keeps packed sequences apart (and whether its logits
are its output embedding of its trunk's last hidden state) is checked once per model on a small input (``packs``): a
model that does not is never packed.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from rlhf_env.accel import trunk

# Pack only where it leaves at most this share of the padded batch's positions: building the packed rows and
# their mask costs a little, and a packed forward computes the same maths on fewer positions.
PACK_BELOW = 0.9


@dataclass
class Packing:
    """Rows (B, T) packed into ``ids`` and ``position_ids`` (N, C), and where to find the outputs again:
    ``index`` (B, R + 1), the packed positions (flattened) that predict each row's last R tokens and the next;
    past a row's response, its last real position (an output that the response mask drops). ``real`` (the
    packed positions of the rows' tokens, row by row: none of the padding that ends a packed row) and
    ``real_index`` (``index`` as positions in ``real``) serve a forward that runs only the real tokens
    (``rlhf_env.accel.trunk``), and ``starts`` (B + 1) is where each row's tokens begin among them (then their
    number).

    ``shared_plan``'s layout has ``groups`` too: its rows share prompts, laid once each, and ``starts`` cut the
    tokens into segments, each group of segments a prompt and the rests of its rows (see
    ``rlhf_env.accel.packed_attention``); one packed row holds them all, with no padding. Only the trunk's C
    attention reads it."""

    ids: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor
    real: torch.Tensor
    real_index: torch.Tensor
    starts: torch.Tensor
    groups: torch.Tensor | None = None

    def gather(self, hidden: torch.Tensor) -> torch.Tensor:
        """The packed forward's outputs (N, C, ...) at ``index``: (B, R + 1, ...)."""
        return hidden.reshape(-1, *hidden.shape[2:])[self.index]


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """Each row's (packed row, offset): the longest first, each into the first packed row with room for it."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    room: list[int] = []
    place = [(0, 0)] * len(lengths)
    for i in order:
        n = next((n for n, free in enumerate(room) if free >= lengths[i]), len(room))
        if n == len(room):
            room.append(capacity)
        place[i] = (n, capacity - room[n])
        room[n] -= lengths[i]
    return place


def _counts(mask: torch.Tensor, R: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Each row's prompt tokens (in the first T - R columns) and all its tokens, (B,) each, where every row's real
    tokens are one run that ends its prompt columns' and goes on into the last R (a left-padded prompt, then a
    right-padded response); None where a row has holes or no prompt token."""
    T = mask.shape[1]
    lengths, prompt = mask.sum(1), mask[:, :T - R].sum(1)
    columns = torch.arange(T, device=mask.device)
    contiguous = (columns >= T - R - prompt[:, None]) & (columns < T - R - prompt[:, None] + lengths[:, None])
    if not bool((prompt > 0).all()) or not torch.equal(mask.bool(), contiguous):
        return None
    return prompt, lengths


def plan(ids: torch.Tensor, mask: torch.Tensor, R: int, real_only: bool = False) -> Packing | None:
    """The packing of prompt + response rows ``ids`` (B, T) with ``mask`` (left-padded prompts, right-padded
    responses) whose last R columns are the responses; None where it would not save enough positions
    (``PACK_BELOW``: of the packed rows' positions, or with ``real_only``, for a forward that runs the real tokens
    only, of those), or a row has no prompt token to predict its first or real tokens that are not contiguous."""
    B, T = ids.shape
    counts = _counts(mask, R)
    if counts is None:
        return None
    prompt, lengths = counts
    capacity = int(lengths.max())
    place = first_fit_decreasing(lengths.tolist(), capacity)
    rows = 1 + max(n for n, _ in place)
    if (int(lengths.sum()) if real_only else rows * capacity) > PACK_BELOW * B * T:
        return None
    dev = ids.device
    start = torch.tensor([n * capacity + offset for n, offset in place], device=dev)  # flat packed starts
    source = torch.arange(B, device=dev) * T + T - R - prompt  # flat first real token of each row
    within = torch.arange(int(lengths.sum()), device=dev) - (lengths.cumsum(0) - lengths).repeat_interleave(lengths)
    to, of = start.repeat_interleave(lengths) + within, source.repeat_interleave(lengths) + within  # every token
    packed_ids = torch.full((rows * capacity,), int(ids.reshape(-1)[source[0]]), dtype=ids.dtype, device=dev)
    packed_ids[to] = ids.reshape(-1)[of]  # the padding repeats a real token (transformers warns of a PAD there)
    position_ids = torch.zeros(rows * capacity, dtype=torch.long, device=dev)  # padding: sequences of one token
    position_ids[to] = within
    steps = torch.arange(R + 1, device=dev)
    within_row = torch.minimum(prompt[:, None] - 1 + steps, lengths[:, None] - 1)
    ends = lengths.cumsum(0)
    return Packing(packed_ids.view(rows, capacity), position_ids.view(rows, capacity), start[:, None] + within_row,
                   to, (ends - lengths)[:, None] + within_row, torch.cat([ends.new_zeros(1), ends]))


def shared_plan(ids: torch.Tensor, mask: torch.Tensor, R: int,
                prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> Packing | None:
    """The layout of prompt + response rows ``ids`` (B, T) (left-padded prompts, right-padded responses, the last R
    columns), each distinct prompt once, then the responses of the rows that share it: a ``Packing`` with
    ``groups``; None where a row has no prompt token or real tokens that are not contiguous. ``prompts``: the
    distinct prompts' first rows (U,) and each row's prompt among them (B,), where the caller has them already
    (else found here)."""
    from rlhf_env.accel.decoder import first_rows

    B, T = ids.shape
    P = T - R
    counts = _counts(mask, R)
    if counts is None:
        return None
    prompt, rest = counts[0], counts[1] - counts[0]
    first, group = prompts or torch.unique(first_rows(ids[:, :P], mask[:, :P]), return_inverse=True)  # (U,), (B,)
    members: list[list[int]] = [[] for _ in first]
    for b, u in enumerate(group.tolist()):
        members[u].append(b)
    lengths, sources, groups = [], [], [0]  # each segment's length and first flat position in ids
    for u, f in enumerate(first.tolist()):
        lengths.append(int(prompt[f]))
        sources.append(f * T + P - lengths[-1])
        for b in members[u]:
            lengths.append(int(rest[b]))
            sources.append(b * T + P)
        groups.append(len(lengths))
    dev = ids.device
    lengths, sources = torch.tensor(lengths, device=dev), torch.tensor(sources, device=dev)
    ends = lengths.cumsum(0)
    starts = torch.cat([ends.new_zeros(1), ends])
    within = torch.arange(int(ends[-1]), device=dev) - starts[:-1].repeat_interleave(lengths)
    flat = (sources.repeat_interleave(lengths) + within)
    is_rest = torch.ones(len(lengths), dtype=torch.bool, device=dev)
    is_rest[torch.tensor(groups[:-1], device=dev)] = False
    segment_prompt = prompt[first].repeat_interleave(torch.tensor(groups, device=dev).diff())  # each segment's
    position = within + (segment_prompt * is_rest).repeat_interleave(lengths)  # a rest continues its prompt
    # Each row's prompt segment and rest segment, and the positions that predict its R tokens and the next
    # (past its response, its last real one), as in ``plan``.
    rest_segment = torch.empty(B, dtype=torch.long, device=dev)
    rest_segment[torch.tensor([b for m in members for b in m], device=dev)] = is_rest.nonzero().view(-1)
    prompt_segment = torch.tensor(groups[:-1], device=dev)[group]
    at = torch.minimum(prompt[:, None] - 1 + torch.arange(R + 1, device=dev), (prompt + rest - 1)[:, None])
    index = torch.where(at < prompt[:, None], starts[prompt_segment][:, None] + at,
                        starts[rest_segment][:, None] + at - prompt[:, None])
    N = int(ends[-1])
    return Packing(ids.reshape(-1)[flat][None], position[None], index, torch.arange(N, device=dev), index, starts,
                   torch.tensor(groups, device=dev))


def shared_hidden(model, ids: torch.Tensor, mask: torch.Tensor, R: int, lm_head: bool = False,
                  prompts: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor | None:
    """``packed_hidden``'s hidden states from ``shared_plan``'s layout (``prompts``: as there): each distinct prompt
    through ``model`` once, on the real tokens only; None where the trunk's C attention does not run this model
    here, or the layout does not apply."""
    if not on_real_tokens(model, lm_head):
        return None
    layout = shared_plan(ids, mask, R, prompts)
    return None if layout is None else trunk.hidden_at(model, layout)


def on_real_tokens(model, lm_head: bool = False) -> bool:
    """Whether ``model`` runs through the package's packed trunk with its C attention here (``shared_hidden``): a
    GPT-2 that ``rlhf_env.accel.trunk`` applies to, with float32 weights and no autocast, the kernel chosen on this
    machine, and (with ``lm_head``) logits that are its output embedding of the trunk's last hidden state."""
    if not trunk.applies(model):
        return False
    return trunk.c_attention(model, next(model.parameters()).dtype) and packs(model, lm_head)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: 0 at each row's first real token."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packs(model, lm_head: bool = False) -> bool:
    """Whether ``model.base_model`` keeps packed sequences apart (and, with ``lm_head``, whether ``model``'s
    logits are its output embedding of that trunk's last hidden state): two short sequences, packed into one
    row, against each on its own. Checked once per model and kind, in eval mode, in float32 and without
    gradients."""
    key = (lm_head,)
    known = _CHECKED.setdefault(model, {})
    if key not in known:
        known[key] = _check(model, lm_head)
    return known[key]


def _check(model, lm_head: bool) -> bool:
    trunk = getattr(model, "base_model", None)
    head = model.get_output_embeddings() if lm_head and hasattr(model, "get_output_embeddings") else None
    if trunk is None or trunk is model or (lm_head and head is None):
        return False
    vocab = int(getattr(model.config, "vocab_size", 2))
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randint(vocab, (1, n), generator=generator).to(device) for n in (5, 3))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):  # float32: a bfloat16 run checks the same
            alone = [trunk(input_ids=x, use_cache=False).last_hidden_state for x in (a, b)]
            packed = trunk(input_ids=torch.cat([a, b], 1), position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]],
                           device=device), use_cache=False).last_hidden_state
            same = torch.allclose(packed, torch.cat(alone, 1), atol=1e-4, rtol=1e-4)
            if same and lm_head:
                same = torch.allclose(head(alone[0]), model(input_ids=a, use_cache=False).logits, atol=1e-4, rtol=1e-4)
    except (TypeError, ValueError, AttributeError, RuntimeError, NotImplementedError):
        same = False
    finally:
        model.train(was_training)
    return bool(same)


def packed_hidden(model, ids: torch.Tensor, mask: torch.Tensor, R: int, lm_head: bool = False) -> torch.Tensor | None:
    """The last hidden states (B, R + 1, H) of ``model.base_model`` at the positions that predict the last R
    tokens of ``ids`` (B, T) and the next, from a packed forward; None where packing does not pay or the model
    does not allow it (``lm_head``: the caller applies the model's output embedding to them, see ``packs``)."""
    on_real = trunk.applies(model)
    packing = plan(ids, mask, R, real_only=on_real) if packs(model, lm_head) else None
    if packing is None:
        return None
    if on_real:  # a GPT-2 on the real tokens, its last block at the kept positions: the same, for less
        return trunk.hidden_at(model, packing)
    out = model.base_model(input_ids=packing.ids, position_ids=packing.position_ids, use_cache=False)
    return packing.gather(out.last_hidden_state)


def response_hidden(model, ids: torch.Tensor, mask: torch.Tensor, R: int, pack: bool = True) -> torch.Tensor:
    """``packed_hidden`` with ``pack`` where it applies, else the same from the padded rows."""
    hidden = packed_hidden(model, ids, mask, R) if pack else None
    if hidden is None:
        out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
        hidden = out.last_hidden_state[:, -R - 1:]
    return hidden
