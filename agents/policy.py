"""The networks an RL agent trains on top of a causal LM, and their guards: the policy's response log-probs
and entropies (``response_forward``), a value head on the policy's trunk, a separate critic from a reward
model, a warning for emulated bfloat16, and the error a diverged run raises."""

from __future__ import annotations

import warnings

import torch

from rlhf_env.packing import response_hidden
from rlhf_env.sampling import response_logprobs


def check_native_bf16(device: str) -> None:
    """Warn where bfloat16 matmuls are emulated: there ``bf16`` makes training slower, not faster."""
    dev = torch.device(device)
    if dev.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    elif dev.type == "cpu":  # x86: AVX-512 BF16 or AMX; other CPUs are not checked
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        native = True
    if not native:
        warnings.warn(f"bf16=True on a {dev.type} without native bfloat16 matmuls: expect it to be slower than "
                      "float32", stacklevel=3)


class NonFiniteLoss(ValueError):
    """Training diverged (NaN or inf); nothing after the last good checkpoint was saved."""


class ValueHead(torch.nn.Module):
    """A scalar value per token from hidden states, zero-initialised (values start at 0)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # float32 values, also under bf16
            return self.linear(hidden.float()).squeeze(-1)


class Critic(torch.nn.Module):
    """A separate value model: a reward model's trunk and head, applied at every token (N+)."""

    def __init__(self, reward_model):
        super().__init__()
        self.model = reward_model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, R: int, pack: bool = True) -> torch.Tensor:
        """Values (B, R) of the last R tokens' predicting positions; ``pack``: see ``rlhf_env.packing``."""
        hidden = response_hidden(self.model, ids, mask, R, pack)[:, :-1]
        with torch.autocast(ids.device.type, enabled=False):  # float32 values, also under bf16
            return self.model.score(hidden.float()).squeeze(-1)  # (B, R)


def response_forward(policy, ids, mask, R: int, temperature: float, want_hidden: bool = False,
                     share_prompts: bool = True, pack: bool = True):
    """Log-probs (B, R) of the response tokens and the log-softmax (B, R, V) at the positions that predict them
    (only those go through the LM head). Also the last hidden states there if ``want_hidden``. ``share_prompts``
    and ``pack``: see ``rlhf_env.sampling.response_log_softmax``."""
    logprobs, logp_all, out = response_logprobs(policy, ids, mask, R, temperature, share_prompts=share_prompts,
                                                pack=pack, output_hidden_states=want_hidden)
    hidden = out.hidden_states[-1][:, -R - 1:-1] if want_hidden else None
    return logprobs, logp_all, hidden


def entropy(logp_all: torch.Tensor) -> torch.Tensor:
    """Entropies (B, R) of a log-softmax (B, R, V)."""
    return -(logp_all.exp() * logp_all).sum(-1)
