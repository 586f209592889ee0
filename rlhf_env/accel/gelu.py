"""GPT-2's tanh GELU on a CPU through a small C kernel (in ``cpu.c``), where it is faster than PyTorch's.

aten's float32 tanh GELU runs several times slower than a plain ``tanh`` of the same tensor on the CPUs tried,
and it is a large share of a PPO update for this package's small models (``rlhf_env.accel.kernels`` times both
GELUs on each machine; a run's log says what it measured). The kernel computes the same function, and in training
its derivative in the same pass (the backward is then one product), in loops that the compiler vectorises, to
float32 rounding of aten's (tested against float64).

- **Build.** ``rlhf_env.accel.native`` compiles the package's C kernels (``cpu.c``) once per machine; without a C
  compiler, or if the build fails, everything stays on aten's GELU.
- **Choice.** ``rlhf_env.accel.kernels`` times both kernels on a model's own MLP width, once per machine, and
  takes this one only where it is faster (``Choice.gelu``); ``RLHF_ENV_KERNELS=stock`` keeps aten's, ``=onednn``
  forces this one.
- **Where.** ``apply`` runs it on float32 CPU tensors (any shape; a copy if not contiguous) and aten's GELU on
  everything else (CUDA, bfloat16 under autocast). ``rlhf_env.accel.fuse_gelu`` puts ``TanhGELU`` into the
  accelerated HF models, and the envs' torch-only GPT-2 and the sampler's lean decoder call ``apply``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rlhf_env.accel import native


def forward(x: torch.Tensor) -> torch.Tensor:
    """The kernel's GELU of a float32 CPU tensor (no autograd); ``native.library()`` must not be None."""
    x = x.contiguous()
    y = torch.empty_like(x)
    native.library().gelu_forward(x.data_ptr(), y.data_ptr(), x.numel(), native.threads(x.numel()))
    return y


def forward_slope(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward``'s GELU of ``x`` (bit for bit) and its derivative there, in one pass (a float32 CPU tensor;
    ``native.library()`` must not be None)."""
    x = x.contiguous()
    y, slope = torch.empty_like(x), torch.empty_like(x)
    native.library().gelu_forward_slope(x.data_ptr(), y.data_ptr(), slope.data_ptr(), x.numel(),
                                        native.threads(x.numel()))
    return y, slope


class _Function(torch.autograd.Function):
    """The forward keeps the derivative instead of the input (the same memory): the backward is one product."""

    @staticmethod
    def forward(ctx, x):
        y, slope = forward_slope(x)
        ctx.save_for_backward(slope)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (slope,) = ctx.saved_tensors
        return grad * slope


def applies(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``: a float32 CPU tensor, and the library built here."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and native.library() is not None


def apply(x: torch.Tensor) -> torch.Tensor:
    """The tanh GELU of ``x``: through the kernel where it ``applies``, else aten's (the same function)."""
    if not applies(x):
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _Function.apply(x)
    return forward(x)


def tanh_gelu(c_kernel: bool):
    """The tanh GELU function to call: ``apply`` (the package's kernel, aten's wherever it does not apply) with
    ``c_kernel``, else aten's."""
    return apply if c_kernel else functools.partial(F.gelu, approximate="tanh")


class TanhGELU(torch.nn.Module):
    """GPT-2's ``gelu_new`` as a module, through ``apply``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply(x)
