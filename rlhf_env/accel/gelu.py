"""GPT-2's tanh GELU on a CPU through a small C kernel (``gelu.c``), where it is faster than PyTorch's.

aten's float32 tanh GELU runs several times slower than a plain ``tanh`` of the same tensor on the CPUs tried,
and it is a large share of a PPO update for this package's small models (``rlhf_env.accel.kernels`` times both
GELUs on each machine; a run's log says what it measured). ``gelu.c`` computes the same function, forward and
backward, in loops that the compiler vectorises, to float32 rounding of aten's (tested against float64).

- **Build.** At first use, ``library()`` compiles ``gelu.c`` with the system's C compiler (``$CC``, else ``cc`` or
  ``gcc``; ``-O3 -march=native -fopenmp``, 512-bit vectors where the CPU has them) into
  ``$RLHF_ENV_CACHE/gelu-<hash>.so`` (the hash covers the source, the compiler, the flags and the CPU's model and
  instruction sets: built once per machine, and one file per CPU in a cache that several share) and loads it with
  ``ctypes``: no Python build step, no pickles. Without a compiler, or if the build or load fails, it is None and
  everything stays on aten's GELU.
- **Choice.** ``rlhf_env.accel.kernels`` times both kernels on a model's own MLP width, once per machine, and
  takes this one only where it is faster (``Choice.gelu``); ``RLHF_ENV_KERNELS=stock`` keeps aten's, ``=onednn``
  forces this one.
- **Where.** ``apply`` runs it on float32 CPU tensors (any shape; a copy if not contiguous) and aten's GELU on
  everything else (CUDA, bfloat16 under autocast). ``rlhf_env.accel.fuse_gelu`` puts ``TanhGELU`` into the
  accelerated HF models, and the envs' torch-only GPT-2 and the sampler's lean decoder call ``apply``.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

SOURCE = Path(__file__).with_name("gelu.c")
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-shared", "-fPIC")
PARALLEL_FROM = 1 << 16  # elements below which one thread does it all (a parallel region costs microseconds)


def compiler() -> str | None:
    """The C compiler to build with: ``$CC``, else ``cc`` or ``gcc`` on the PATH; None if there is none."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, built at the first call in this machine's cache if need be; None where it cannot be
    built or loaded (then the caller stays on aten)."""
    from rlhf_env.accel.kernels import cache_file, cpuinfo

    cc = compiler()
    if cc is None:
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        cpu = [cpuinfo("model name") or platform.processor(), cpuinfo("flags")]  # what -march=native compiles for
        digest = hashlib.sha256("\n".join([SOURCE.read_text(), cc, version, *FLAGS, *cpu]).encode()).hexdigest()[:16]
        target = cache_file().with_name(f"gelu-{digest}.so")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # built aside, then moved in atomically
                built = Path(tmp) / target.name
                subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(built)], check=True, capture_output=True,
                               timeout=120)
                os.replace(built, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError):
        return None
    lib.gelu_forward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
    lib.gelu_backward.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
    lib.gelu_forward.restype = lib.gelu_backward.restype = None
    return lib


def _threads(n: int) -> int:
    return torch.get_num_threads() if n >= PARALLEL_FROM else 1


def forward(x: torch.Tensor) -> torch.Tensor:
    """The kernel's GELU of a float32 CPU tensor (no autograd); ``library()`` must not be None."""
    x = x.contiguous()
    y = torch.empty_like(x)
    library().gelu_forward(x.data_ptr(), y.data_ptr(), x.numel(), _threads(x.numel()))
    return y


def backward(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` times the GELU's derivative at ``x`` (float32 CPU tensors of one shape)."""
    x, grad = x.contiguous(), grad.contiguous()
    out = torch.empty_like(x)
    library().gelu_backward(x.data_ptr(), grad.data_ptr(), out.data_ptr(), x.numel(), _threads(x.numel()))
    return out


class _Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return forward(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return backward(x, grad)


def applies(x: torch.Tensor) -> bool:
    """Whether the kernel can run on ``x``: a float32 CPU tensor, and the library built here."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and library() is not None


def apply(x: torch.Tensor) -> torch.Tensor:
    """The tanh GELU of ``x``: through the kernel where it ``applies``, else aten's (the same function)."""
    if not applies(x):
        return F.gelu(x, approximate="tanh")
    if torch.is_grad_enabled() and x.requires_grad:
        return _Function.apply(x)
    return forward(x)


class TanhGELU(torch.nn.Module):
    """GPT-2's ``gelu_new`` as a module, through ``apply``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply(x)
