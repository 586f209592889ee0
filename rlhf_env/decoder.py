"""A lean incremental forward for Hugging Face GPT-2, used by the sampler.

Small models on a CPU spend most of a decoding step in per-module Python overhead, not in
arithmetic: HF ``generate`` (logits processors, stopping criteria, a dynamic cache that grows by
concatenation, attention-mask construction at every step) gets a 0.9M-parameter GPT-2 to a few
hundred tokens/s per row. This path runs the same maths with plain tensor ops on the model's own
parameters (no copy, so a policy that is being trained is always read fresh):

- a **static KV cache**, allocated once for prompt + response and written in place, and one
  additive key mask; a decoding step reads prefix views of both;
- a prefill that skips most of the left padding (rows bucketed by prompt length);
- ``addmm`` for the Conv1D projections, ``scaled_dot_product_attention`` for attention, the fused
  tanh GELU kernel;
- the LM head only on the last position.

It matches HF's logits to float rounding (tested). ``GPT2Decoder.supports(model)`` says whether a
model can use it; anything else goes through the generic HF path in ``rlhf_env.sampling``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GPT2Decoder:
    def __init__(self, model, batch_size: int, max_length: int):
        from transformers.activations import ACT2FN

        c, t = model.config, model.transformer
        self.wte, self.wpe, self.head_weight = t.wte.weight, t.wpe.weight, model.lm_head.weight  # head: (V, E)
        self.ln_f = (t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
        # Per layer, the parameters in the order they are used (no module attribute lookups per step).
        self.layers = [(b.ln_1.weight, b.ln_1.bias, b.ln_1.eps, b.attn.c_attn.weight, b.attn.c_attn.bias,
                        b.attn.c_proj.weight, b.attn.c_proj.bias, b.ln_2.weight, b.ln_2.bias, b.ln_2.eps,
                        b.mlp.c_fc.weight, b.mlp.c_fc.bias, b.mlp.c_proj.weight, b.mlp.c_proj.bias) for b in t.h]
        self.n_head, self.n_embd, self.head_dim = c.n_head, c.n_embd, c.n_embd // c.n_head
        fused = c.activation_function in ("gelu_new", "gelu_pytorch_tanh")  # one kernel, not five
        self.act = (lambda x: F.gelu(x, approximate="tanh")) if fused else ACT2FN[c.activation_function]
        base = self.head_dim**-0.5 if c.scale_attn_weights else 1.0
        self.scales = [base / (i + 1) if c.scale_attn_by_inverse_layer_idx else base for i in range(len(self.layers))]
        p = self.head_weight
        # Keys and values of a layer side by side, so that a step writes both with one copy.
        self.cache = torch.empty(len(self.layers), 2, batch_size, self.n_head, max_length, self.head_dim,
                                 dtype=p.dtype, device=p.device)
        self.key_bias = torch.zeros(batch_size, 1, 1, max_length, dtype=p.dtype, device=p.device)  # -inf: padding
        self.length = 0  # tokens in the cache

    @staticmethod
    def supports(model) -> bool:
        from transformers import GPT2LMHeadModel

        return type(model) is GPT2LMHeadModel and not model.config.add_cross_attention

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Run the left-padded prompts (B, P); return the next-token logits (B, V).

        Rows are sorted by length and run ``chunk`` at a time, each chunk cut to its own longest
        prompt: about half of a batch of prompts is padding, which would otherwise cost compute.
        """
        B, P = ids.shape
        if B != self.cache.shape[2] or P > self.cache.shape[4]:
            raise ValueError(f"a decoder for {self.cache.shape[2]} rows of up to {self.cache.shape[4]} tokens got "
                             f"prompts of shape {tuple(ids.shape)}")
        E, H, D = self.n_embd, self.n_head, self.head_dim
        self.key_bias[:, 0, 0, :P] = torch.where(mask.bool(), 0.0, float("-inf"))
        self.cache[:, :, :, :, :P].zero_()  # padding columns a chunk skips are masked, but NaN * 0 is NaN
        lengths = mask.sum(1)
        logits = torch.empty(B, self.head_weight.shape[0], dtype=self.head_weight.dtype, device=ids.device)
        for rows in torch.argsort(lengths).split(chunk):
            start = P - max(int(lengths[rows].max()), 1)  # an empty prompt still runs its last (padding) column
            n, b = P - start, len(rows)
            causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
            # A padding query may see only itself: a row of the mask that is all False would give NaNs.
            attn = (causal & mask[rows, None, None, start:].bool()) | torch.eye(n, dtype=torch.bool, device=ids.device)
            x = (self.wte[ids[rows, start:]] + self.wpe[pos[rows, start:]]).view(b * n, E)
            for i, (w1, b1, e1, wqkv, bqkv, wo, bo, w2, b2, e2, wfc, bfc, wproj, bproj) in enumerate(self.layers):
                h = F.layer_norm(x, (E,), w1, b1, e1)
                q, k, v = torch.addmm(bqkv, h, wqkv).view(b, n, 3, H, D).permute(2, 0, 3, 1, 4)
                self.cache[i, 0, rows, :, start:P] = k
                self.cache[i, 1, rows, :, start:P] = v
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn, scale=self.scales[i])
                x = torch.addmm(bo, out.transpose(1, 2).reshape(b * n, E), wo).add_(x)
                h = self.act(torch.addmm(bfc, F.layer_norm(x, (E,), w2, b2, e2), wfc))
                x = torch.addmm(bproj, h, wproj).add_(x)
            logits[rows] = self._head(x.view(b, n, E)[:, -1])
        self.length = P
        return logits

    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,) at positions ``pos`` (B,); return the next logits (B, V)."""
        B, E = token.shape[0], self.n_embd
        t = self.length
        self.length = end = t + 1
        bias = self.key_bias[:, :, :, :end]
        x = self.wte[token] + self.wpe[pos]  # (B, E)
        for i, (w1, b1, e1, wqkv, bqkv, wo, bo, w2, b2, e2, wfc, bfc, wproj, bproj) in enumerate(self.layers):
            qkv = torch.addmm(bqkv, F.layer_norm(x, (E,), w1, b1, e1), wqkv).view(B, 3, self.n_head, 1, self.head_dim)
            kv = self.cache[i]  # (2, B, H, T, D)
            kv[:, :, :, t:end] = qkv[:, 1:].transpose(0, 1)
            scores = (qkv[:, 0] @ kv[0, :, :, :end].transpose(-1, -2)).mul_(self.scales[i]).add_(bias)
            out = torch.softmax(scores, -1) @ kv[1, :, :, :end]  # (B, H, 1, D)
            x = torch.addmm(bo, out.view(B, E), wo).add_(x)
            h = self.act(torch.addmm(bfc, F.layer_norm(x, (E,), w2, b2, e2), wfc))
            x = torch.addmm(bproj, h, wproj).add_(x)
        return self._head(x)

    def _head(self, last: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(last, (self.n_embd,), *self.ln_f) @ self.head_weight.T
