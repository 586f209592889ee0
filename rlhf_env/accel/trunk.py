"""GPT-2's trunk for the packed training forwards, its last block run only where its output is read.

``rlhf_env.packing`` runs the rows of a batch packed end to end and keeps the last hidden states at the
positions that predict the responses (``Packing.index``): in a PPO minibatch, about a third of the positions.
Every block but the last must run at every real position, since the later positions attend to the earlier ones;
the last block's attention must too (its keys and values come from every position), but its output projection, its
MLP and the final LayerNorm are needed at the kept positions only. And the packed rows end in padding (the
longest sequence sets their length): everything runs on the real tokens only, laid end to end; the attention
too where the package's C kernel does it (``rlhf_env.accel.packed_attention``, chosen per machine by
``rlhf_env.accel.kernels``), else PyTorch's reads them scattered back into the packed rows. ``hidden_at`` runs a
Hugging Face GPT-2 that way, through the model's own modules (so the accelerated layers and GELU of
``rlhf_env.accel`` apply, and gradients reach every parameter as in the model's own forward): the same hidden
states to float rounding, and the same gradients, as ``model.base_model`` followed by ``Packing.gather`` (tested).

``applies(model)`` says where it is used: an HF ``GPT2Model`` trunk that ``rlhf_env.accel`` accelerated (the
package's own models, or one asked for), without cross-attention or the upcast-and-reorder attention, and with no
dropout active (RL runs with dropout off), or the envs' torch-only GPT-2 (``rlhf_env.accel.gpt2.TorchGPT2``).
Anything else takes the model's own forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from rlhf_env.accel import accelerated, c_packed_attention, packed_attention

if TYPE_CHECKING:
    from rlhf_env.packing import Packing


def applies(model) -> bool:
    """Whether ``hidden_at`` can stand in for ``model.base_model``'s forward (see the module docstring): also for
    the envs' torch-only GPT-2 (``rlhf_env.accel.gpt2.TorchGPT2``, inference only) while acceleration is on."""
    from rlhf_env.accel.gpt2 import TorchGPT2
    from rlhf_env.accel.switch import switched_on

    trunk, config = getattr(model, "base_model", None), getattr(model, "config", None)
    if isinstance(model, TorchGPT2):
        return switched_on() and len(trunk.h) > 0
    if type(trunk).__name__ != "GPT2Model" or not type(trunk).__module__.startswith("transformers."):
        return False
    dropout = max(config.embd_pdrop, config.attn_pdrop, config.resid_pdrop) if model.training else 0.0
    return (accelerated(model) and not config.add_cross_attention and not config.reorder_and_upcast_attn
            and dropout == 0.0 and len(trunk.h) > 0 and hasattr(trunk.h[0].attn, "scaling"))


def _heads(attn) -> tuple[int, int, float]:
    """(heads, head size, scale) of an attention module: transformers' GPT-2's or ``TorchGPT2``'s."""
    if hasattr(attn, "num_heads"):  # transformers'
        return attn.num_heads, attn.head_dim, attn.scaling
    return attn.n_head, attn.c_proj.weight.shape[0] // attn.n_head, attn.scale  # (its weight: (in, out))


def hidden_at(model, packing: Packing) -> torch.Tensor:
    """``model.base_model``'s last hidden states (after its final LayerNorm) at ``packing.index`` (B, K): of the
    packed rows ``packing.ids`` (N, C), whose sequences each restart their ``position_ids`` at 0, or of
    ``rlhf_env.packing.shared_plan``'s layout (one row; ``groups``: prompts and the responses that continue them):
    (B, K, E). Everything but the attention runs on the real tokens only (``packing.real``), not on the padding
    that ends a packed row; the attention too where the package's C kernel does it
    (``rlhf_env.accel.packed_attention``, where ``rlhf_env.accel.kernels`` chose it), else PyTorch's on the packed
    rows (not for a layout with ``groups``)."""
    trunk = model.base_model
    real = packing.real
    x = trunk.wte(packing.ids.view(-1)[real]) + trunk.wpe(packing.position_ids.view(-1)[real])  # (T, E)
    x = trunk.drop(x) if hasattr(trunk, "drop") else x  # (no dropout is active: ``applies``)
    attention = attention_of(packing, c_attention(model, x.dtype))
    *blocks, last = trunk.h
    for block in blocks:
        x = x + block.attn.c_proj(attention(block.attn, block.ln_1(x)))
        x = x + block.mlp(block.ln_2(x))
    attended = attention(last.attn, last.ln_1(x), last=True)
    x = x[packing.real_index.reshape(-1)] + last.attn.c_proj(attended)
    x = x + last.mlp(last.ln_2(x))
    return trunk.ln_f(x).view(*packing.index.shape, x.shape[-1])


def attention_of(packing: Packing, c_kernel: bool):
    """``hidden_at``'s attention for this layout: ``attention(attn, hidden, last=False)``, a GPT-2 attention
    module's heads, merged, before its output projection, from the real tokens' hidden states (T, E): at every real
    token (T, E), or with ``last`` at the kept positions only (``packing.index``). Through the package's C kernel
    (``c_kernel``), on the real tokens, the last block's queries at the kept positions only; else through PyTorch's,
    on the packed rows (not for a layout with ``groups``)."""
    real = packing.real
    if c_kernel:
        kept = packing.real_index.reshape(-1)
        layout = packed_attention.segments(packing.starts, packing.groups)  # (checked once for every layer)

        def attention(attn, hidden, last=False):
            heads, _, scale = _heads(attn)
            queries = torch.zeros(len(hidden), dtype=torch.bool, device=hidden.device).index_fill_(0, kept, True) \
                if last else None
            out = packed_attention.attend(attn.c_attn(hidden), layout, heads, scale, queries=queries)
            return out[kept] if last else out
        return attention
    if packing.groups is not None:
        raise ValueError("a layout of shared prompts needs the package's C attention (rlhf_env.packing.shared_hidden "
                         "checks it)")
    N, C = packing.ids.shape
    padding = torch.ones(N * C, dtype=torch.bool, device=real.device).index_fill_(0, real, False).nonzero().view(-1)
    # Each position attends to the earlier positions of its own sequence (a new one starts at position 0).
    sequence = (packing.position_ids == 0).cumsum(1)
    causal = torch.ones(C, C, dtype=torch.bool, device=real.device).tril()
    mask = (causal & (sequence[:, :, None] == sequence[:, None, :]))[:, None]  # (N, 1, C, C)

    def attention(attn, hidden, last=False):  # from every packed position's (N * C, E)
        out = _attention(attn, hidden, mask, real, padding, N, C)
        return out[packing.index.reshape(-1)] if last else out[real]
    return attention


def c_attention(model, dtype: torch.dtype) -> bool:
    """Whether ``hidden_at`` runs ``model``'s attention through the package's C kernel for hidden states of
    ``dtype``: chosen on this machine for the model's shape (``rlhf_env.accel.c_packed_attention``), and the
    kernel applies to its projections (float32 on the CPU: not under a bfloat16 autocast, which leaves the rest to
    PyTorch's attention)."""
    probe = torch.empty(0, dtype=dtype, device=next(model.parameters()).device)
    return (not torch.is_autocast_enabled(probe.device.type)
            and packed_attention.applies(probe, _heads(model.base_model.h[0].attn)[1])
            and c_packed_attention(model.config))


def _attention(attn, hidden: torch.Tensor, mask: torch.Tensor, real: torch.Tensor, padding: torch.Tensor, N: int,
               C: int) -> torch.Tensor:
    """A GPT-2 attention module's heads, merged, before its output projection, at every packed position (N * C, E),
    from the real tokens' hidden states (T, E) at ``real``, through PyTorch's attention. The ``padding`` positions get
    zero queries, keys and values (finite: a backward multiplies them by zero): each is a sequence of its own
    (``mask``), which no other position sees."""
    E = hidden.shape[-1]
    _, head_dim, scale = _heads(attn)
    qkv = attn.c_attn(hidden)
    rows = qkv.new_empty(N * C, 3 * E).index_fill_(0, padding, 0.0).index_copy_(0, real, qkv).view(N, C, 3 * E)
    q, k, v = (t.view(N, C, -1, head_dim).transpose(1, 2) for t in rows.split(E, dim=2))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(N * C, E)
