"""GPT-2's trunk for the packed training forwards, its last block run only where its output is read.

``rlhf_env.packing`` runs the rows of a batch packed end to end and keeps the last hidden states at the
positions that predict the responses (``Packing.index``): in a PPO minibatch, about a third of the positions.
Every block but the last must run at every position, since the later positions attend to the earlier ones; the
last block's attention must too (its keys and values come from every position), but its output projection, its
MLP and the final LayerNorm are needed at the kept positions only. ``hidden_at`` runs a Hugging Face GPT-2 that
way, through the model's own modules (so the accelerated layers and GELU of ``rlhf_env.accel`` apply, and
gradients reach every parameter as in the model's own forward): the same hidden states to float rounding, and the
same gradients, as ``model.base_model`` followed by ``Packing.gather`` (tested).

``applies(model)`` says where it is used: an HF ``GPT2Model`` trunk that ``rlhf_env.accel`` accelerated (the
package's own models, or one asked for), without cross-attention or the upcast-and-reorder attention, and with no
dropout active (RL runs with dropout off). Anything else takes the model's own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_env.accel import accelerated


def applies(model) -> bool:
    """Whether ``hidden_at`` can stand in for ``model.base_model``'s forward (see the module docstring)."""
    trunk, config = getattr(model, "base_model", None), getattr(model, "config", None)
    if type(trunk).__name__ != "GPT2Model" or not type(trunk).__module__.startswith("transformers."):
        return False
    dropout = max(config.embd_pdrop, config.attn_pdrop, config.resid_pdrop) if model.training else 0.0
    return (accelerated(model) and not config.add_cross_attention and not config.reorder_and_upcast_attn
            and dropout == 0.0 and len(trunk.h) > 0 and hasattr(trunk.h[0].attn, "scaling"))


def hidden_at(model, ids: torch.Tensor, position_ids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``model.base_model``'s last hidden states (after its final LayerNorm) at ``index`` (B, K), flat positions
    of the packed rows ``ids`` (N, C), whose sequences each restart their ``position_ids`` at 0: (B, K, E)."""
    trunk = model.base_model
    N, C = ids.shape
    x = trunk.drop(trunk.wte(ids) + trunk.wpe(position_ids))
    # Each position attends to the earlier positions of its own sequence (a new one starts at position 0).
    sequence = (position_ids == 0).cumsum(1)
    causal = torch.ones(C, C, dtype=torch.bool, device=ids.device).tril()
    mask = (causal & (sequence[:, :, None] == sequence[:, None, :]))[:, None]  # (N, 1, C, C)
    *blocks, last = trunk.h
    for block in blocks:
        x = x + block.attn.c_proj(_attention(block.attn, block.ln_1(x), mask))
        x = x + block.mlp(block.ln_2(x))
    kept = index.reshape(-1)
    E = x.shape[-1]
    attended = _attention(last.attn, last.ln_1(x), mask).reshape(N * C, E)[kept]
    x = x.reshape(N * C, E)[kept] + last.attn.c_proj(attended)
    x = x + last.mlp(last.ln_2(x))
    return trunk.ln_f(x).view(*index.shape, E)


def _attention(attn, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A GPT-2 attention module's heads, merged, before its output projection: (N, C, E)."""
    N, C, E = hidden.shape
    q, k, v = (t.view(N, C, -1, attn.head_dim).transpose(1, 2) for t in attn.c_attn(hidden).split(E, dim=2))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scaling)
    return out.transpose(1, 2).reshape(N, C, E)
