"""Causal attention within sequences laid end to end, forward and backward, through a small C kernel (``cpu.c``).

The packed training forwards (``rlhf_env.accel.trunk``) run a GPT-2's blocks on the real tokens of a batch,
sequence after sequence: T tokens in S sequences, ``starts`` (S + 1) their offsets. A token attends to its own
sequence's tokens up to itself. Where several responses to one prompt share it (``groups``), the prompt's tokens are
there once, and each response attends to them and to its own. PyTorch's ``scaled_dot_product_attention`` needs
them scattered into packed rows under a block-diagonal mask, and for this package's short sequences and narrow
heads its time goes on the calls of many tiny matrix products, not on arithmetic. The kernel reads the projections
where the QKV layer wrote them, computes each (group of sequences, head) in one task, and its backward recomputes
the probabilities from the saved log-sum-exp (as flash attention does), so that it keeps only the output and (T, H)
floats.

- **Build.** ``rlhf_env.accel.native`` compiles ``cpu.c`` once per machine; without a C compiler the trunk keeps
  ``scaled_dot_product_attention``.
- **Choice.** ``rlhf_env.accel.kernels`` times both ways on a model's own shapes, once per machine, and takes this
  one only where it is faster (``Choice.packed_attention``).
- **Where.** float32 CPU tensors, heads whose size is a multiple of 16; ``applies`` says so. The same output and
  gradients as ``scaled_dot_product_attention`` to float32 rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from rlhf_env.accel import native


def applies(x: torch.Tensor, head_dim: int) -> bool:
    """Whether the kernel can run on projections like ``x`` with heads of ``head_dim``: float32 CPU tensors, a head
    size that is a multiple of 16 (the kernel's vectors), and the library built here."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and head_dim % 16 == 0
            and native.library() is not None)


def _check(status: int) -> None:
    if status:
        raise MemoryError("rlhf_env.accel.packed_attention: a thread could not allocate its scores")


@dataclass(frozen=True)
class Segments:
    """Checked offsets for the kernel: ``starts`` (S + 1) of the segments among the ``tokens``, ``groups`` (G + 1)
    of the groups among the segments, both int64 and contiguous (``segments`` makes one)."""

    starts: torch.Tensor
    groups: torch.Tensor
    tokens: int


def segments(starts: torch.Tensor, groups: torch.Tensor | None = None) -> Segments:
    """``starts`` (S + 1 offsets, from 0 to the tokens, none decreasing) and ``groups`` (G + 1 offsets into the
    segments, from 0 to S, each group of one or more; default: each segment a group of its own), checked once (a
    ValueError says what is wrong) for any number of ``attend`` calls on them."""
    starts = starts.to(torch.int64).contiguous()
    groups = torch.arange(len(starts)) if groups is None else groups.to(torch.int64).contiguous()
    if starts.dim() != 1 or len(starts) < 1 or int(starts[0]) != 0 or bool((starts.diff() < 0).any()):
        raise ValueError(f"starts must run from 0 to the tokens, none decreasing, got {starts.tolist()}")
    if groups.dim() != 1 or len(groups) < 1 or int(groups[0]) != 0 or int(groups[-1]) != len(starts) - 1 \
            or bool((groups.diff() < 1).any()):
        raise ValueError(f"groups must run from 0 to the {len(starts) - 1} segments, each of one or more, got "
                         f"{groups.tolist()}")
    return Segments(starts, groups, int(starts[-1]))


def forward(qkv: torch.Tensor, starts: torch.Tensor | Segments, heads: int, scale: float,
            groups: torch.Tensor | None = None, queries: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (T, E), lse (T, H)) of the projections ``qkv`` (T, 3 E) (queries, keys, values, each heads x head size)
    of the segments at ``starts`` (S + 1 int64 offsets, from 0 to T), without autograd. ``groups`` (G + 1 offsets
    into the segments, from 0 to S; default: each segment a group of its own) says which segments share a prompt:
    a group's first segment is the prompt, which each later one (a response to it) attends to in full. ``starts``
    may be ``Segments`` instead, checked before (then ``groups`` is theirs). ``queries`` (T,) bool, where given,
    marks the tokens whose outputs are wanted: the others' are 0."""
    layout = starts if isinstance(starts, Segments) else segments(starts, groups)
    qkv = qkv.contiguous()
    T, E = qkv.shape[0], qkv.shape[1] // 3
    if not applies(qkv, E // heads) or qkv.dim() != 2 or qkv.shape[1] != 3 * E or E % heads:
        raise ValueError(f"the packed attention takes float32 CPU projections (T, 3 E), E a multiple of {heads} heads "
                         f"of a multiple of 16, got {qkv.dtype} {tuple(qkv.shape)} on {qkv.device}")
    if layout.tokens != T:
        raise ValueError(f"starts must run from 0 to the {T} tokens, got {layout.starts.tolist()}")
    if queries is not None and (queries.dtype != torch.bool or queries.shape != (T,) or queries.device != qkv.device):
        raise ValueError(f"queries must be a bool mask of the {T} tokens on the CPU, got {queries.dtype} "
                         f"{tuple(queries.shape)} on {queries.device}")
    queries = None if queries is None else queries.contiguous()  # (kept alive here while the kernel reads it)
    out, lse = qkv.new_empty(T, E), qkv.new_empty(T, heads)
    _check(native.library().packed_attention_forward(qkv.data_ptr(), layout.starts.data_ptr(),
                                                     layout.groups.data_ptr(), _pointer(queries),
                                                     len(layout.groups) - 1, heads, E // heads, scale,
                                                     out.data_ptr(), lse.data_ptr(), native.threads(T * E)))
    return out, lse


def _pointer(queries: torch.Tensor | None) -> int | None:
    """The address of a contiguous mask (the caller keeps it alive), or None."""
    return None if queries is None else queries.data_ptr()


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, layout, heads, scale, queries):
        qkv, queries = qkv.contiguous(), None if queries is None else queries.contiguous()
        out, lse = forward(qkv, layout, heads, scale, queries=queries)
        ctx.save_for_backward(qkv, out, lse, queries)
        ctx.layout, ctx.heads, ctx.scale = layout, heads, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        qkv, out, lse, queries = ctx.saved_tensors
        layout, grad = ctx.layout, grad.contiguous()
        dqkv = torch.empty_like(qkv)
        E = out.shape[1]
        _check(native.library().packed_attention_backward(
            qkv.data_ptr(), out.data_ptr(), lse.data_ptr(), grad.data_ptr(), layout.starts.data_ptr(),
            layout.groups.data_ptr(), _pointer(queries), len(layout.groups) - 1, ctx.heads, E // ctx.heads, ctx.scale,
            dqkv.data_ptr(), native.threads(qkv.numel())))
        return dqkv, None, None, None, None


def attend(qkv: torch.Tensor, starts: torch.Tensor | Segments, heads: int, scale: float,
           groups: torch.Tensor | None = None, queries: torch.Tensor | None = None) -> torch.Tensor:
    """The attention's output (T, E), heads merged, of the projections ``qkv`` (T, 3 E) of segments laid end to end
    at ``starts`` (S + 1 offsets, or ``Segments``), each token attending to its segment's tokens up to itself, and a
    later segment of one of ``groups`` to its group's first segment too (see ``forward``); differentiable in
    ``qkv``. With ``queries`` (T,) bool, only the marked tokens' outputs are computed: the others' are 0, and take
    no gradient (a caller must not read them). ``applies(qkv, head size)`` must hold."""
    layout = starts if isinstance(starts, Segments) else segments(starts, groups)
    if torch.is_grad_enabled() and qkv.requires_grad:
        return _Function.apply(qkv, layout, heads, scale, queries)
    return forward(qkv, layout, heads, scale, queries=queries)[0]
