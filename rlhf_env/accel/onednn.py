"""float32 linear layers through oneDNN on a CPU, for training as well as inference.

PyTorch sends a float32 ``addmm``/``linear`` on a CPU to MKL. For the small shapes of this package's models
oneDNN, which PyTorch also ships, is faster on some CPUs and slower on others (``benchmarks/bench_sampler.py``
and ``benchmarks/bench_ppo_iteration.py`` measure both; their JSON has the figures), so
``rlhf_env.accel.kernels`` measures the two on each machine and model shape. The results agree to float32
rounding. ``rlhf_env.accel`` decides which models use it.

``use_onednn_linears(model)`` makes every HF ``Conv1D`` (GPT-2's projections) and ``nn.Linear`` of a
model compute ``x @ W.T + b`` and its gradients with oneDNN's ``_linear_pointwise`` (the kernel
TorchInductor uses for CPU linears), where that applies: float32 inputs on a CPU, outside autocast, and
enough work for oneDNN's fixed cost per call to pay (``worth_it``).
Anything else (CUDA, bfloat16 autocast, half weights, a torch without oneDNN) takes the layer's own
forward, and so does everything inside ``with rlhf_env.accel.onednn.disabled():``. The layers keep their
parameters, state-dict keys and class hierarchy. Not supported through oneDNN: second derivatives
(they raise) and ``torch.func`` transforms.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from rlhf_env.accel.switch import switched_on


@functools.cache
def kernel_works() -> bool:
    """Whether this torch has oneDNN's linear kernel at all."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        one = torch.ones(1, 1, device="cpu")
        torch.ops.mkldnn._linear_pointwise(one, one, None, "none", [], "")
        return True
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


_disabled = contextvars.ContextVar("rlhf_onednn_disabled", default=False)


@contextlib.contextmanager
def disabled():
    """Inside this block (in this thread or task) every layer takes PyTorch's own kernels (MKL on a CPU),
    e.g. to compare the two. A decoder built before the block keeps the kernels it chose."""
    token = _disabled.set(True)
    try:
        yield
    finally:
        _disabled.reset(token)


def available(tensor: torch.Tensor) -> bool:
    """Whether oneDNN's float32 linear applies to ``tensor`` (a weight or an input); never inside
    ``disabled()``, ``torch.backends.mkldnn.flags(enabled=False)`` or ``RLHF_ENV_ACCEL=0``."""
    return (not _disabled.get() and switched_on() and torch.backends.mkldnn.enabled
            and tensor.device.type == "cpu" and tensor.dtype == torch.float32 and kernel_works())


def _mm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``weight`` (out, in); strided views are fine."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) reordered into oneDNN's blocked layout, for ``packed_linear``."""
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None,
                  tanh_gelu: bool = False) -> torch.Tensor:
    """``x @ W.T + bias`` on a weight from ``pack`` (inference only), optionally followed by the tanh GELU
    in the same kernel."""
    op, algorithm = ("gelu", "tanh") if tanh_gelu else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, op, [], algorithm)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _mm(x, weight, bias)

    @staticmethod
    @once_differentiable  # a second derivative through this kernel raises instead of being silently 0
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(grad, weight.t())  # grad @ weight
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_weight = _mm(flat.t(), x.reshape(-1, x.shape[-1]).t())  # grad.T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` (weight (out, in)) through oneDNN, differentiable; only for float32 CPU tensors."""
    return _Linear.apply(x, weight, bias)


# A oneDNN call has a fixed cost of some microseconds however small it is, several times MKL's: for a few
# rows and under about a million multiply-adds (e.g. one token through a 128 x 384 projection) MKL was
# faster where we measured.
MIN_ROWS = 16
MIN_MULTIPLY_ADDS = 1 << 20


def worth_it(rows: int, weight: torch.Tensor) -> bool:
    """Whether ``rows`` inputs through ``weight`` are enough work for oneDNN to beat MKL."""
    return rows >= MIN_ROWS or rows * weight.numel() >= MIN_MULTIPLY_ADDS


def _applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (available(x) and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and not torch.is_autocast_enabled("cpu") and x.shape[-1] > 0
            and worth_it(x.numel() // x.shape[-1], weight))


def maybe_onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (weight (out, in), a strided view too), through oneDNN where it applies."""
    return linear(x, weight, bias) if _applies(x, weight) else F.linear(x, weight, bias)


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` through oneDNN where it applies."""

    def forward(self, x):
        return maybe_onednn_linear(x, self.weight, self.bias)


@functools.cache
def _onednn_conv1d() -> type:
    """The class ``OneDNNConv1D``, made on first use so that importing this module does not import transformers."""
    from transformers.pytorch_utils import Conv1D

    def forward(self, x):
        if _applies(x, self.weight):
            return linear(x, self.weight.t(), self.bias)
        return Conv1D.forward(self, x)

    doc = "HF's ``Conv1D`` (weight (in, out)) through oneDNN where it applies."
    return type("OneDNNConv1D", (Conv1D,), {"forward": forward, "__module__": __name__, "__doc__": doc})


def __getattr__(name: str):
    if name == "OneDNNConv1D":
        return _onednn_conv1d()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def use_onednn_linears(model: torch.nn.Module) -> torch.nn.Module:
    """Switch every ``Conv1D`` and ``nn.Linear`` of ``model`` (exact types, not subclasses) to its oneDNN
    subclass in place, if this torch has oneDNN; returns ``model``. ``rlhf_env.accel.accelerate`` calls it
    for the models that should have it."""
    if kernel_works():
        conv1d = _onednn_conv1d()
        swaps = {conv1d.__base__: conv1d, torch.nn.Linear: OneDNNLinear}
        for module in model.modules():
            swap = swaps.get(type(module))
            if swap is not None:
                module.__class__ = swap
    return model
