"""A lean incremental forward for Hugging Face GPT-2, used by the sampler.

Small models on a CPU spend most of a decoding step in per-module Python overhead, not in
arithmetic: HF ``generate`` (logits processors, stopping criteria, a dynamic cache that grows by
concatenation, attention-mask construction at every step) gets a 0.9M-parameter GPT-2 to a few
hundred tokens/s per row. This path runs the same maths with plain tensor ops on the model's own
parameters, as they are when the decoder is built (the oneDNN path reorders a copy of each weight
matrix then): ``sample_from_ids`` builds one per batch, so a policy that is being trained is always
sampled as it is now.

- a **static KV cache**, allocated once for prompt + response and written in place, and one
  additive key mask; a decoding step reads each row's columns up to its own token;
- a prefill that skips the left padding: on the prompts' real tokens laid end to end, through the packed
  attention's C kernel (``rlhf_env.accel.packed_attention``) where ``rlhf_env.accel.kernels`` chose it, else most
  of it (rows bucketed by prompt length);
- the projections and the LM head through oneDNN's float32 GEMM on weights reordered once per decoder
  (``torch.ops.mkldnn._linear_pointwise``, the kernel TorchInductor uses for frozen CPU linears), where
  torch has it and ``rlhf_env.accel.kernels`` measured it faster on this machine, and ``addmm`` elsewhere;
- the MLP's tanh GELU in the same oneDNN kernel as its first projection (else the package's C kernel or
  ``F.gelu``'s, as ``rlhf_env.accel.kernels`` chose), where the layers are not ``fused``;
- where ``rlhf_env.accel.kernels`` chose the fused passes and the C GELU and decode attention (``fused``; not under an
  autocast), the projections without their biases, which
  the C kernels add in the passes that follow: the attention's (queries, keys and values), the GELU's
  (``bias_gelu``), and one pass that adds a projection's output and bias to the residual stream and takes the next
  LayerNorm (``residual_layer_norm``), where PyTorch would run an op for each (``addmm`` with a bias is much slower
  than ``mm`` at these small shapes);
- ``scaled_dot_product_attention`` for a bucketed prefill's attention, and for a decoding step's the package's C kernel
  (``attend_c``: the new keys and values written and each row's attention in one pass, which reads no column of a
  row's left padding) where ``rlhf_env.accel.kernels`` measured it faster than the same in PyTorch ops
  (``attend_torch``) on this machine;
- the LM head only on the last position.

It matches HF's logits to float rounding (tested). ``GPT2Decoder.supports(model)`` says whether a
model can use it (an HF GPT-2, or the torch-only ``rlhf_env.accel.gpt2.TorchGPT2``); anything else goes through
the generic HF path in ``rlhf_env.sampling``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf_env.accel import c_attention, c_fused, c_gelu, c_packed_attention, gelu, kernels, native, packed_attention
from rlhf_env.accel.gpt2 import TANH_GELUS, TorchGPT2
from rlhf_env.accel.onednn import available as onednn_available
from rlhf_env.accel.onednn import pack, packed_linear, worth_it


class Linear:
    """``act(x @ weight.T + bias)`` for a weight (out, in) that stays fixed while this object is used:
    through oneDNN on a reordered copy of the weight if ``onednn`` (which also applies a tanh GELU in
    the same kernel when ``tanh_gelu``), else ``addmm`` on the weight itself."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, onednn: bool, act=None,
                 tanh_gelu: bool = False):
        self.bias, self.onednn, self.act, self.weight = bias, onednn, act, weight.T  # (in, out) for addmm
        self.tanh_gelu = tanh_gelu  # oneDNN applies it in the GEMM kernel
        self.onednn_act = None if tanh_gelu else act
        self.packed = pack(weight) if onednn else None

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ weight.T`` alone: no bias, no activation (the fused decoder adds them in its C kernels' passes)."""
        if self.onednn and worth_it(x.shape[0], self.weight):
            return packed_linear(x, self.packed)
        return x @ self.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn and worth_it(x.shape[0], self.weight):  # else MKL is faster (e.g. one row)
            y = packed_linear(x, self.packed, self.bias, self.tanh_gelu)
            return y if self.onednn_act is None else self.onednn_act(y)
        y = x @ self.weight if self.bias is None else torch.addmm(self.bias, x, self.weight)
        return y if self.act is None else self.act(y)


def attend_torch(qkv: torch.Tensor, kv: torch.Tensor, key_bias: torch.Tensor, t: int, scale: float) -> torch.Tensor:
    """One decoding step's attention in PyTorch ops: the step's projections ``qkv`` (B, 3 E) give the queries, and
    the keys and values that are written at column ``t`` of the layer's cache ``kv`` (2, B, H, T, D); every
    row attends to its columns up to ``t`` with the additive ``key_bias`` (B, 1, 1, T). Returns (B, E)."""
    B, H, D = qkv.shape[0], kv.shape[2], kv.shape[4]
    qkv = qkv.view(B, 3, H, 1, D)
    kv[:, :, :, t:t + 1] = qkv[:, 1:].transpose(0, 1)
    scores = (qkv[:, 0] @ kv[0, :, :, :t + 1].transpose(-1, -2)).mul_(scale).add_(key_bias[..., :t + 1])
    return (torch.softmax(scores, -1) @ kv[1, :, :, :t + 1]).view(B, H * D)


def attend_c(qkv: torch.Tensor, kv: torch.Tensor, key_bias: torch.Tensor, start: torch.Tensor, t: int,
             scale: float, qkv_bias: torch.Tensor | None = None) -> torch.Tensor:
    """``attend_torch`` through the package's C kernel (float32 CPU tensors, ``native.library()`` built), which
    reads each row's columns from ``start`` (B,) on only: a row's left padding, masked in ``key_bias``, is skipped
    instead of multiplied by 0. ``qkv_bias`` (3 E,), if given, is added to ``qkv`` in the kernel's pass (the
    projection then runs without its bias). Shapes, types and layouts are checked first: the kernel trusts them."""
    B, H, T, D = kv.shape[1], kv.shape[2], kv.shape[3], kv.shape[4]
    floats = (qkv, kv, key_bias) if qkv_bias is None else (qkv, kv, key_bias, qkv_bias)
    if not (all(x.dtype == torch.float32 and x.device.type == "cpu" for x in floats) and start.dtype == torch.long
            and kv.is_contiguous() and key_bias.is_contiguous() and start.is_contiguous() and 0 <= t < T
            and qkv.shape == (B, 3 * H * D) and key_bias.shape == (B, 1, 1, T) and start.shape == (B,)
            and (qkv_bias is None or (qkv_bias.shape == (3 * H * D,) and qkv_bias.is_contiguous()))):
        raise ValueError(f"attend_c: qkv {tuple(qkv.shape)} {qkv.dtype}, cache {tuple(kv.shape)} {kv.dtype}, "
                         f"key bias {tuple(key_bias.shape)}, start {tuple(start.shape)} {start.dtype}, column {t}, "
                         f"qkv bias {None if qkv_bias is None else tuple(qkv_bias.shape)}: float32 CPU tensors of one "
                         "batch, a contiguous cache and a column inside it")
    qkv, out = qkv.contiguous(), torch.empty(B, H * D)
    k, v = kv[0], kv[1]
    if native.library().attend_step(qkv.data_ptr(), None if qkv_bias is None else qkv_bias.data_ptr(),
                                    k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1),
                                    key_bias.data_ptr(), key_bias.stride(0), start.data_ptr(), B, H, D, t, scale,
                                    out.data_ptr(), native.threads(B * H * (t + 1) * D)):
        raise MemoryError("attend_c: the kernel could not allocate its scores")
    return out


def first_rows(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For each row of left-padded prompts (B, P), the index of the first row with the same prompt (its ids
    under its mask: pad ids may differ)."""
    prompts = torch.cat([ids * mask, mask], 1)
    _, rows = torch.unique(prompts, dim=0, return_inverse=True)
    B = len(ids)
    first = torch.full((int(rows.max()) + 1,), B, device=ids.device)
    return first.scatter_reduce(0, rows, torch.arange(B, device=ids.device), "amin")[rows]


class GPT2Decoder:
    def __init__(self, model, batch_size: int, max_length: int, onednn: bool | None = None):
        """``onednn``: run the projections and the LM head through oneDNN (default: where available and
        ``kernels.choose`` found it faster here)."""
        c, t = model.config, model.transformer
        self.wte, self.wpe, self.head_weight = t.wte.weight, t.wpe.weight, model.lm_head.weight  # head: (V, E)
        self.ln_f = (t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
        if onednn is None:
            onednn = onednn_available(self.head_weight) and kernels.choose(c).decode
        self.head = Linear(self.head_weight, None, onednn)

        tanh_gelu = c.activation_function in TANH_GELUS
        if tanh_gelu:  # the package's C kernel where kernels.choose found it faster, else aten's
            act = gelu.tanh_gelu(c_gelu(c))
        else:  # transformers' activations, imported only for a model that has another
            from transformers.activations import ACT2FN

            act = ACT2FN[c.activation_function]

        def conv1d(module, **kwargs):  # HF's Conv1D keeps its weight as (in, out)
            return Linear(module.weight.T, module.bias, onednn, **kwargs)

        # Per layer, the parameters in the order they are used (no module attribute lookups per step). The
        # MLP's first projection includes its activation.
        self.layers = [(b.ln_1.weight, b.ln_1.bias, b.ln_1.eps, conv1d(b.attn.c_attn), conv1d(b.attn.c_proj),
                        b.ln_2.weight, b.ln_2.bias, b.ln_2.eps, conv1d(b.mlp.c_fc, act=act, tanh_gelu=tanh_gelu),
                        conv1d(b.mlp.c_proj)) for b in t.h]
        self.n_head, self.n_embd, self.head_dim = c.n_head, c.n_embd, c.n_embd // c.n_head
        base = self.head_dim**-0.5 if c.scale_attn_weights else 1.0
        self.scales = [base / (i + 1) if c.scale_attn_by_inverse_layer_idx else base for i in range(len(self.layers))]
        p = self.head_weight
        # Keys and values of a layer side by side, so that a step writes both with one copy.
        self.cache = torch.empty(len(self.layers), 2, batch_size, self.n_head, max_length, self.head_dim,
                                 dtype=p.dtype, device=p.device)
        self.key_bias = torch.zeros(batch_size, 1, 1, max_length, dtype=p.dtype, device=p.device)  # -inf: padding
        self.start = torch.zeros(batch_size, dtype=torch.long, device=p.device)  # each row's first real column
        self.length = 0  # tokens in the cache
        self.c_attention = (p.device.type == "cpu" and p.dtype == torch.float32 and c_attention(c)
                            and native.library() is not None)
        # The prefill on the prompts' real tokens only, through the packed attention's C kernel, where that was
        # chosen too (the decode steps' kernel then reads no column it leaves unwritten).
        self.packed_prefill = (self.c_attention and packed_attention.applies(p, self.head_dim)
                               and c_packed_attention(c))
        # Each projection's bias, the MLP's GELU and the residual sums in the C kernels' passes (``bias_gelu``,
        # ``residual_layer_norm``, the attention's), where they and the C GELU and attention were chosen here.
        self.fused = (self.c_attention and tanh_gelu and c_gelu(c) and c_fused(c)
                      and all(x is not None and x.dtype == torch.float32 and x.is_contiguous()
                          for x in self._vectors()))

    @staticmethod
    def supports(model) -> bool:
        """An HF GPT-2 LM, or the torch-only one of ``rlhf_env.accel.gpt2``."""
        if type(model) is TorchGPT2:
            return True
        from transformers import GPT2LMHeadModel

        return type(model) is GPT2LMHeadModel and not model.config.add_cross_attention

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, chunk: int = 16,
                share_prompts: bool = True) -> torch.Tensor:
        """Run the left-padded prompts (B, P); return the next-token logits (B, V).

        Where the packed attention's C kernel runs here (``packed_prefill``), the prompts' real tokens run laid end
        to end, with no padding at all. Else rows are sorted by length and run ``chunk`` at a time, each chunk cut
        to its own longest prompt: about half of a batch of prompts is padding, which would otherwise cost
        compute. Rows with the same prompt (a group of samples of one prompt) run it once if ``share_prompts``,
        and the others copy its keys, values and logits.
        """
        B, P = ids.shape
        if B != self.cache.shape[2] or P > self.cache.shape[4]:
            raise ValueError(f"a decoder for {self.cache.shape[2]} rows of up to {self.cache.shape[4]} tokens got "
                             f"prompts of shape {tuple(ids.shape)}")
        self.key_bias[:, 0, 0, :P] = torch.where(mask.bool(), 0.0, float("-inf"))
        self.start = mask.long().argmax(1)  # (a row of all padding: 0, and the bias masks it)
        if not self.c_attention:  # padding columns a chunk skips are masked, but NaN * 0 is NaN (the C kernel
            self.cache[:, :, :, :, :P].zero_()  # reads no column before a row's start: no need)
        lengths = mask.sum(1)
        # (B,): the first row with each row's prompt
        first = first_rows(ids, mask) if share_prompts else torch.arange(B, device=ids.device)
        distinct = first.unique()
        logits = torch.empty(B, self.head_weight.shape[0], dtype=self.head_weight.dtype, device=ids.device)
        left_padded = torch.equal(mask.bool(), torch.arange(P, device=ids.device) >= P - lengths[:, None])
        if self.packed_prefill and left_padded and bool((lengths[distinct] > 0).all()):
            logits[distinct] = self._packed_prefill(ids, pos, lengths, distinct)
        else:
            self._chunked_prefill(ids, mask, pos, lengths, distinct, chunk, logits)
        if len(distinct) < B:  # the other rows of each prompt: its keys and values (and its padding columns)
            copies = (first != torch.arange(B, device=ids.device)).nonzero().squeeze(1)
            self.cache[:, :, copies, :, :P] = self.cache[:, :, first[copies], :, :P]
            logits = logits[first]
        self.length = P
        return logits

    def _packed_prefill(self, ids, pos, lengths, distinct) -> torch.Tensor:
        """The ``distinct`` rows' prompts' real tokens laid end to end, each attending to its own through the
        packed attention's C kernel; their keys and values written into the cache at their columns. Returns the
        next-token logits of each of these rows."""
        P = ids.shape[1]
        E, H, D = self.n_embd, self.n_head, self.head_dim
        n = lengths[distinct]
        ends = n.cumsum(0)
        starts = torch.cat([ends.new_zeros(1), ends])
        rows = distinct.repeat_interleave(n)  # each token's row, and its column
        within = torch.arange(int(ends[-1]), device=ids.device) - starts[:-1].repeat_interleave(n)
        columns = P - n.repeat_interleave(n) + within
        layout = packed_attention.segments(starts)
        # Where each token's heads go in a layer's keys (or values) (B, H, T_max, D), as rows of D floats
        T_max = self.cache.shape[4]
        at = ((rows[:, None] * H + torch.arange(H, device=ids.device)) * T_max + columns[:, None]).view(-1)

        def attend(i, h):
            qkv = self.layers[i][3](h)  # (T, 3 E)
            for j, part in enumerate(qkv[:, E:].view(-1, 2, H * D).unbind(1)):  # the keys, then the values
                self.cache[i, j].view(-1, D).index_copy_(0, at, part.reshape(-1, D))
            return packed_attention.attend(qkv, layout, H, self.scales[i])

        x = self.wte[ids[rows, columns]] + self.wpe[pos[rows, columns]]  # (T, E)
        return self._head(self._layers(x, attend)[ends - 1])

    def _chunked_prefill(self, ids, mask, pos, lengths, distinct, chunk, logits) -> None:
        """The ``distinct`` rows' prompts in chunks of rows of similar lengths, each cut to its longest, through
        ``scaled_dot_product_attention``; their next-token logits written into ``logits``."""
        P = ids.shape[1]
        E, H, D = self.n_embd, self.n_head, self.head_dim
        for rows in distinct[torch.argsort(lengths[distinct])].split(chunk):
            start = P - max(int(lengths[rows].max()), 1)  # an empty prompt still runs its last (padding) column
            n, b = P - start, len(rows)
            causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
            # A padding query may see only itself: a row of the mask that is all False would give NaNs.
            attn = (causal & mask[rows, None, None, start:].bool()) | torch.eye(n, dtype=torch.bool, device=ids.device)

            def attend(i, h, rows=rows, start=start, b=b, n=n, attn=attn):  # (called in this iteration)
                q, k, v = self.layers[i][3](h).view(b, n, 3, H, D).permute(2, 0, 3, 1, 4)
                self.cache[i, 0, rows, :, start:P] = k
                self.cache[i, 1, rows, :, start:P] = v
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, scale=self.scales[i])
                return out.transpose(1, 2).reshape(b * n, E)

            x = (self.wte[ids[rows, start:]] + self.wpe[pos[rows, start:]]).view(b * n, E)
            logits[rows] = self._head(self._layers(x, attend).view(b, n, E)[:, -1])

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,) at positions ``pos`` (B,); return the next logits (B, V)."""
        t = self.length
        self.length = t + 1
        fused = self._fuses()

        def attend(i, h):
            qkv_proj = self.layers[i][3]
            if fused:  # the projections' bias added in the kernel
                return attend_c(qkv_proj.matmul(h), self.cache[i], self.key_bias, self.start, t, self.scales[i],
                                qkv_proj.bias)
            qkv = qkv_proj(h)  # (B, 3 E)
            if self.c_attention:  # (a bfloat16 projection under an autocast too: the cache's padding is not zeroed)
                return attend_c(qkv.float(), self.cache[i], self.key_bias, self.start, t, self.scales[i])
            return attend_torch(qkv, self.cache[i], self.key_bias, t, self.scales[i])

        return self._head(self._layers(self.wte[token] + self.wpe[pos], attend, fused))

    def _layers(self, x: torch.Tensor, attend, fused: bool | None = None) -> torch.Tensor:
        """The blocks on the residual stream ``x`` (N, E), which they may update in place; ``attend(i, h)`` is
        layer ``i``'s attention of its first LayerNorm's output ``h`` (its projections, and its keys and values written
        into the cache). Returns the final LayerNorm of the stream, for the LM head. ``fused`` (default:
        ``_fuses()``) adds the projections' biases and the residual sums in the C kernels' passes."""
        if fused is None:
            fused = self._fuses()
        E = self.n_embd
        h = F.layer_norm(x, (E,), *(self.layers[0][:3] if self.layers else self.ln_f))
        for i, (_, _, _, _, o, w2, b2, e2, fc, proj) in enumerate(self.layers):
            after = self.layers[i + 1][:3] if i + 1 < len(self.layers) else self.ln_f  # the next LayerNorm
            if fused:
                h = self._residual_norm(x, o.matmul(attend(i, h)), o.bias, (w2, b2, e2))
                h = self._residual_norm(x, proj.matmul(self._bias_gelu(fc.matmul(h), fc.bias)), proj.bias, after)
            else:  # (the sum in the projection's output: under an autocast, the stream takes its bfloat16)
                x = o(attend(i, h)).add_(x)
                h = F.layer_norm(x, (E,), w2, b2, e2)
                x = proj(fc(h)).add_(x)
                h = F.layer_norm(x, (E,), *after)
        return h

    def _fuses(self) -> bool:
        """Whether the layers run ``fused`` now: not under an autocast, whose projections are not float32."""
        return self.fused and not torch.is_autocast_enabled("cpu")

    def _vectors(self) -> list[torch.Tensor]:
        """The biases and LayerNorm parameters that the fused kernels read."""
        return [*self.ln_f[:2], *(x for w1, b1, _, qkv, o, w2, b2, _, fc, proj in self.layers
                                  for x in (w1, b1, qkv.bias, o.bias, w2, b2, fc.bias, proj.bias))]

    @staticmethod
    def _bias_gelu(hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The tanh GELU of ``hidden + bias``, in place (float32, contiguous), through the C kernel."""
        native.library().bias_gelu(hidden.data_ptr(), bias.data_ptr(), hidden.data_ptr(), len(hidden),
                                   hidden.shape[1], native.threads(hidden.numel()))
        return hidden

    @staticmethod
    def _residual_norm(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor, norm) -> torch.Tensor:
        """``x += y + bias`` in place (float32, contiguous); returns the LayerNorm ``norm`` (weight, bias, eps) of
        the new ``x``, through the C kernel."""
        h = torch.empty_like(x)
        weight, shift, eps = norm
        native.library().residual_layer_norm(x.data_ptr(), y.data_ptr(), bias.data_ptr(), weight.data_ptr(),
                                             shift.data_ptr(), eps, h.data_ptr(), len(x), x.shape[1],
                                             native.threads(x.numel()))
        return h

    def keep(self, rows: torch.Tensor) -> None:
        """Run only ``rows`` (indices of this decoder's rows) from now on; they keep their cache (one copy of it)."""
        self.cache = self.cache[:, :, rows]
        self.key_bias = self.key_bias[rows]
        self.start = self.start[rows]

    def _head(self, normed: torch.Tensor) -> torch.Tensor:
        """The LM head's logits of rows of the final LayerNorm's output."""
        return self.head(normed)
