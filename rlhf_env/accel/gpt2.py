"""A torch-only GPT-2 for scoring: the bundled models without importing transformers.

Importing transformers' model code takes longer than everything else ``gym.make`` does, so the envs' frozen
models (the reference policy, the likelihood RM's language model) load the bundled checkpoints into this
module instead, straight from ``config.json`` and ``model.safetensors`` (``rlhf_env.models.load_reference``).
It runs HF's ``GPT2LMHeadModel`` forward for inference: the same parameter names and layouts (so the
sampler's lean decoder, ``rlhf_env.accel.decoder``, runs it too), the same maths, and the projections
through oneDNN as ``rlhf_env.accel`` gives them to the HF model. Its cache (``KVCache``) serves one use: a
forward over prompts, then one over many responses to them (``rlhf_env.sampling.response_log_softmax``). It
has no dropout, no ``generate`` and no ``save_pretrained``: anything that trains or saves a model loads it with
``rlhf_env.models.load_policy``. The tests compare its log-probs, rewards and KL with the HF path's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from rlhf_env.accel import gelu
from rlhf_env.accel.onednn import maybe_onednn_linear

# GPT2Config's defaults for the settings read here (a saved config.json normally states them all).
DEFAULTS = dict(n_inner=None, layer_norm_epsilon=1e-5, scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                add_cross_attention=False, tie_word_embeddings=True, activation_function="gelu_new")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # the same tanh approximation


def read_config(directory: str | Path) -> SimpleNamespace:
    return SimpleNamespace(**{**DEFAULTS, **json.loads((Path(directory) / "config.json").read_text())})


def supports(config: SimpleNamespace) -> bool:
    """Whether this module computes what transformers would for a checkpoint with this config."""
    return (getattr(config, "model_type", None) == "gpt2"
            and getattr(config, "architectures", None) == ["GPT2LMHeadModel"]
            and not config.add_cross_attention and config.activation_function in TANH_GELUS)


class KVCache:
    """Each layer's keys and values so far, (B, heads, T, head size), as HF's ``DynamicCache`` keeps them."""

    def __init__(self):
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these rows, as ``DynamicCache.batch_select_indices`` does."""
        self.layers = [(k[rows], v[rows]) for k, v in self.layers]


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V), or the last ``logits_to_keep`` positions
    cache: KVCache | None = None


class Linear(nn.Module):
    """``x @ W + b`` for a weight stored (in, out) when ``transposed`` (GPT-2's ``Conv1D``), else (out, in)
    (the LM head), through oneDNN where ``rlhf_env.accel`` allows it."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True, transposed: bool = True, onednn: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty((n_in, n_out) if transposed else (n_out, n_in)))
        self.bias = nn.Parameter(torch.empty(n_out)) if bias else None
        self.transposed, self.onednn = transposed, onednn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t() if self.transposed else self.weight  # (out, in)
        return maybe_onednn_linear(x, weight, self.bias) if self.onednn else F.linear(x, weight, self.bias)


class Attention(nn.Module):
    def __init__(self, config, layer: int, onednn: bool):
        super().__init__()
        E = config.n_embd
        self.c_attn, self.c_proj = Linear(E, 3 * E, onednn=onednn), Linear(E, E, onednn=onednn)
        self.n_head = config.n_head
        self.scale = (E // config.n_head) ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer + 1

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """The attention's output, and the keys and values (``past``'s, then ``x``'s)."""
        B, T, E = x.shape
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, E // self.n_head).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.c_proj(out.transpose(1, 2).reshape(B, T, E)), (k, v)


class MLP(nn.Module):
    def __init__(self, config, onednn: bool, c_gelu: bool = False):
        super().__init__()
        E, inner = config.n_embd, config.n_inner or 4 * config.n_embd
        self.c_fc, self.c_proj = Linear(E, inner, onednn=onednn), Linear(inner, E, onednn=onednn)
        self.act = gelu.tanh_gelu(c_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config, layer: int, onednn: bool, c_gelu: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, layer, onednn)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config, onednn, c_gelu)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, past: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        attended, kv = self.attn(self.ln_1(x), mask, past)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), kv


@dataclass
class TrunkOutput:
    last_hidden_state: torch.Tensor  # (B, T, E), after the final LayerNorm
    cache: KVCache | None = None


class Trunk(nn.Module):
    """HF ``GPT2Model``'s inference forward: embeddings, blocks and the final LayerNorm."""

    def __init__(self, config: SimpleNamespace, onednn: bool = False, c_gelu: bool = False):
        super().__init__()
        E = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, E)
        self.wpe = nn.Embedding(config.n_positions, E)
        self.h = nn.ModuleList(Block(config, i, onednn, c_gelu) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(E, eps=config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                use_cache: bool = False, keep: int = 0) -> TrunkOutput:
        """See ``TorchGPT2.forward``; ``keep`` > 0: the hidden states of the last that many positions only.
        Without ``attention_mask`` and ``cache``, position ids that restart within a row mark sequences packed end
        to end, which attend only within themselves (as transformers does)."""
        T, device = input_ids.shape[1], input_ids.device
        past = cache.layers if cache is not None and cache.layers else [None] * len(self.h)
        before = 0 if past[0] is None else past[0][0].shape[2]
        packed = attention_mask is None and position_ids is not None and before == 0
        if position_ids is None:
            position_ids = torch.arange(T, device=device)[None]
        x = self.wte(input_ids) + self.wpe(position_ids)
        causal = torch.ones(T, before + T, dtype=torch.bool, device=device).tril(before)  # query i: keys <= before + i
        mask = causal[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.bool()[:, None, None, :]
        elif packed:  # packed sequences: each starts where the position ids do not go up by one
            starts = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1) != 1
            sequence = starts.cumsum(-1).expand(len(input_ids), T)
            mask = mask & (sequence[:, None, :, None] == sequence[:, None, None, :])
        # A query that may see no key (left padding) sees itself: its output is ignored, and must not be NaN.
        mask = mask | (causal & ~causal.tril(before - 1))
        layers = []
        for block, kv in zip(self.h, past):
            x, kv = block(x, mask, kv)
            if use_cache:  # (else each layer's keys and values go as soon as the layer is done)
                layers.append(kv)
        if use_cache:
            cache = cache if cache is not None else KVCache()
            cache.layers = layers
        return TrunkOutput(self.ln_f(x[:, -keep:]), cache if use_cache else None)


class TorchGPT2(nn.Module):
    """HF ``GPT2LMHeadModel``'s inference forward in plain torch, with its parameter names."""

    def __init__(self, config: SimpleNamespace, onednn: bool = False, c_gelu: bool = False):
        super().__init__()
        self.config = config
        self.transformer = Trunk(config, onednn, c_gelu)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False, transposed=False, onednn=onednn)

    @property
    def base_model(self) -> Trunk:
        return self.transformer

    def get_output_embeddings(self) -> Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0, cache: KVCache | None = None,
                use_cache: bool = False) -> LMOutput:
        """Logits of ``input_ids`` (B, T) as HF computes them: ``attention_mask`` (B, past + T) hides padding
        keys, ``position_ids`` default to 0..T-1, and ``logits_to_keep`` > 0 keeps the last that many positions.
        With ``use_cache``, the keys and values are appended to ``cache`` (a new one if None), which the output
        holds; a ``cache`` given holds the ``past`` tokens that ``input_ids`` continue."""
        out = self.transformer(input_ids, attention_mask, position_ids, cache, use_cache, keep=logits_to_keep)
        return LMOutput(self.lm_head(out.last_hidden_state), out.cache)


def load_torch_gpt2(directory: str | Path, onednn: bool = False, c_gelu: bool = False) -> TorchGPT2:
    """A float32 ``TorchGPT2`` from an HF GPT-2 directory (``config.json``, ``model.safetensors``), in eval
    mode with no gradients; ``onednn``: its projections through oneDNN where that applies; ``c_gelu``: its GELU
    through the package's C kernel (``rlhf_env.accel.gelu``) where that applies."""
    from safetensors.torch import load_file

    config = read_config(directory)
    if not supports(config):
        raise ValueError(f"{directory} is not a GPT-2 LM head model that TorchGPT2 computes exactly")
    model = TorchGPT2(config, onednn, c_gelu)  # (not on the meta device: that imports torch._dynamo, slowly)
    state = {k: v.float() for k, v in load_file(Path(directory) / "model.safetensors").items()}
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state, assign=True)
    return model.requires_grad_(False).eval()
