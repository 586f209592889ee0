"""Faster CPU kernels for this package's own models, behind one switch.

- ``onednn``: float32 linear layers (forward and gradients) through oneDNN instead of MKL, where
  ``kernels`` measured it faster on this machine;
- ``decoder``: the sampler's lean GPT-2 path (static KV cache, packed weights, bucketed prefill);
- ``fuse_gelu``: GPT-2's five-kernel ``gelu_new`` swapped for the same tanh GELU in one kernel: aten's, or the
  package's C kernel (``gelu``) where ``kernels`` measured it faster on this machine;
- ``native``: the package's C kernels (the GELU, the decoder's decode-step attention and its bias and LayerNorm passes,
  the packed training attention, the sampler's draw), built once per machine;
- ``gpt2``: the envs' frozen bundled models (reference, likelihood RM) in plain torch, loaded without
  importing transformers (``rlhf_env.models.load_reference``).

None of them changes a result beyond float rounding (the tests compare each with stock PyTorch).

**When they apply.** ``rlhf_env.models.load_policy`` and ``load_classifier`` accelerate the bundled models
and, unless asked with ``accel=True``, no other: a user's hub model runs on stock PyTorch layers. The
sampler and the token env take the lean decoder only for an accelerated model or a ``gpt2`` one (or when
asked with ``fast=True``). Everything is off when the environment variable ``RLHF_ENV_ACCEL=0`` is set (``rlhf
--no-accel COMMAND`` sets it), and wherever the one-time ``probe()`` finds that this torch computes any of
the op variants differently from ``F.linear`` (then with a warning).
"""

from __future__ import annotations

import functools
import warnings
import weakref
from typing import TYPE_CHECKING

from rlhf_env.accel.switch import ENV_VAR, switched_on

if TYPE_CHECKING:  # torch loads at the probe: the rlhf command reads the switch (accel.switch) without it
    import torch

_accelerated: weakref.WeakSet = weakref.WeakSet()


def enabled() -> bool:
    """Whether acceleration may be used in this process: switched on, and the probe passed."""
    return switched_on() and probe()


@functools.cache
def probe() -> bool:
    """Run every oneDNN op variant this package uses against ``F.linear`` once per process: a plain and a
    strided (transposed-view) weight, a packed weight with and without the fused tanh GELU, and the input
    and weight gradients. False, with a warning, on any mismatch or error; True where oneDNN is absent (the
    layers then take PyTorch's own path, so there is nothing to get wrong)."""
    from rlhf_env.accel import onednn

    if not onednn.kernel_works():
        return True
    try:
        mismatch = _probe_mismatch(onednn)
    except (RuntimeError, NotImplementedError, AttributeError) as e:
        mismatch = f"{type(e).__name__}: {e}"
    if mismatch:
        warnings.warn(f"rlhf_env.accel: oneDNN's linear disagrees with F.linear ({mismatch}); using stock PyTorch "
                      f"layers in this process (set {ENV_VAR}=0 to skip the probe)", RuntimeWarning, stacklevel=2)
        return False
    return True


def _probe_mismatch(onednn) -> str:
    """'' if every variant matches ``F.linear`` to float32 rounding, else which one does not."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 48, generator=generator, requires_grad=True)
    w_in_out = torch.randn(48, 40, generator=generator)  # HF Conv1D's layout: the layer uses its transpose
    bias = torch.randn(40, generator=generator)
    w = w_in_out.t().contiguous().requires_grad_(True)
    want = F.linear(x, w, bias)
    checks = {
        "plain": onednn.linear(x, w, bias),
        "strided weight": onednn.linear(x, w_in_out.t(), bias),
        "packed": onednn.packed_linear(x.detach(), onednn.pack(w.detach()), bias),
        "packed + tanh GELU": onednn.packed_linear(x.detach(), onednn.pack(w.detach()), bias, tanh_gelu=True),
    }
    expected = {"packed + tanh GELU": F.gelu(want, approximate="tanh")}
    for name, got in checks.items():
        if not torch.allclose(got, expected.get(name, want), atol=1e-4, rtol=1e-4):
            return name
    grad = torch.randn(32, 40, generator=generator)
    # The gradients of (y * grad).sum(): passing ``grad`` as grad_outputs makes torch import sympy (slow).
    want_x, want_w = torch.autograd.grad((want * grad).sum(), (x, w))
    got_x, got_w = torch.autograd.grad((onednn.linear(x, w, bias) * grad).sum(), (x, w))
    if not (torch.allclose(got_x, want_x, atol=1e-4, rtol=1e-4) and torch.allclose(got_w, want_w, atol=1e-4,
                                                                                   rtol=1e-4)):
        return "gradients"
    return ""


def fuse_gelu(model: torch.nn.Module, c_kernel: bool = False) -> torch.nn.Module:
    """Swap every ``gelu_new`` activation (GPT-2's, five elementwise kernels) for the same tanh
    approximation in one kernel: aten's (transformers' ``GELUTanh``), or with ``c_kernel`` the package's
    (``rlhf_env.accel.gelu.TanhGELU``, which falls back to aten's wherever it does not apply); returns
    ``model``. They agree to float rounding. The config is left as it is."""
    from transformers.activations import GELUTanh, NewGELUActivation

    from rlhf_env.accel.gelu import TanhGELU

    for module in model.modules():
        for name, child in module.named_children():
            if type(child) in (NewGELUActivation, GELUTanh, TanhGELU):
                setattr(module, name, TanhGELU() if c_kernel else GELUTanh())
    return model


def accelerate(model: torch.nn.Module, requested: bool | None = None, bundled: bool = False) -> torch.nn.Module:
    """Give ``model`` the fused GELU (the C kernel where ``c_gelu`` says so), and oneDNN linears where
    ``onednn_layers`` says so, in place, if ``requested`` (None: if ``bundled``) and ``enabled()``. The weights,
    state-dict keys and saved files are unchanged. Returns ``model``."""
    from rlhf_env.accel.onednn import use_onednn_linears

    if (bundled if requested is None else requested) and enabled():
        fuse_gelu(model, c_gelu(model.config))
        if onednn_layers(model.config):
            use_onednn_linears(model)
        _accelerated.add(model)
    return model


def onednn_layers(config) -> bool:
    """Whether a model with this config should run its layers through oneDNN here: acceleration is enabled,
    this torch has oneDNN, and ``kernels.choose`` found it faster on this machine (or was told to use it)."""
    from rlhf_env.accel import kernels, onednn

    if not (enabled() and onednn.kernel_works()):
        return False
    try:
        return kernels.choose(config).layers
    except AttributeError:  # a config that names no width or vocabulary: nothing to measure, stay on stock
        return False


def c_gelu(config) -> bool:
    """Whether a model with this config should run its tanh GELU through the package's C kernel here:
    acceleration is enabled and ``kernels.choose`` found the kernel (built on this machine) faster, or was told
    to use it."""
    return _c_kernel(config, "gelu")


def c_attention(config) -> bool:
    """Whether the sampler's lean decoder should run a model's decode-step attention through the package's C
    kernel here (``rlhf_env.accel.decoder``): as ``c_gelu``, for ``kernels.Choice.attention``."""
    return _c_kernel(config, "attention")


def c_packed_attention(config) -> bool:
    """Whether the packed training forwards (``rlhf_env.accel.trunk``) should run a model's attention through the
    package's C kernel here (``rlhf_env.accel.packed_attention``): as ``c_gelu``, for
    ``kernels.Choice.packed_attention``."""
    return _c_kernel(config, "packed_attention")


def c_sampling(config) -> bool:
    """Whether the sampler should draw its tokens from a model's logits through the package's C kernel here
    (``rlhf_env.sampling.draw_logits``): as ``c_gelu``, for ``kernels.Choice.sampling``."""
    return _c_kernel(config, "sampling")


def c_fused(config) -> bool:
    """Whether the sampler's lean decoder should add its projections' biases, residual sums and LayerNorms in the
    package's C kernels' passes here (``rlhf_env.accel.decoder``): as ``c_gelu``, for ``kernels.Choice.fused``."""
    return _c_kernel(config, "fused")


def _c_kernel(config, use: str) -> bool:
    from rlhf_env.accel import kernels

    if not enabled():
        return False
    try:
        return getattr(kernels.choose(config), use)
    except AttributeError:  # as in onednn_layers
        return False


def copy_of(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` that is accelerated if ``model`` is (its fused GELU and oneDNN linears come with
    the copy; the record of them does not, without this)."""
    import copy

    twin = copy.deepcopy(model)
    if model in _accelerated:
        _accelerated.add(twin)
    return twin


def accelerated(model: torch.nn.Module) -> bool:
    """Whether ``accelerate`` switched ``model`` on, and acceleration is still switched on."""
    return switched_on() and model in _accelerated
