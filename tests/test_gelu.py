"""rlhf_env.accel.gelu: the C tanh GELU computes aten's function, forward and backward, and falls back to aten's."""

import json

import pytest
import torch
import torch.nn.functional as F

import rlhf_env.accel as accel
from rlhf_env.accel import gelu, native
from rlhf_env.accel.gelu import TanhGELU
from rlhf_env.accel.gpt2 import load_torch_gpt2
from rlhf_env.accel.switch import switched_off
from rlhf_env.models import new_model

needs_compiler = pytest.mark.skipif(native.compiler() is None, reason="no C compiler to build the kernel")


def inputs() -> torch.Tensor:
    """Seeded normal values at several scales, a dense sweep, and the edges: zeros, tiny, the clamp and beyond."""
    generator = torch.Generator().manual_seed(0)
    edges = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-4, -1e-4, 5.0, -5.0, 12.0, -12.0, 40.0, -40.0, 1e4, -1e4])
    return torch.cat([torch.randn(20_000, generator=generator) * scale for scale in (0.1, 1.0, 4.0)]
                     + [torch.linspace(-20, 20, 40_001), edges])  # over PARALLEL_FROM: several threads


def ulps(got: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|got - exact| in units of the last place of float32 at ``exact``."""
    magnitude = exact.float().abs()
    return (got.double() - exact).abs() / (torch.nextafter(magnitude, torch.tensor(float("inf"))) - magnitude).double()


@needs_compiler
def test_the_c_gelu_is_at_least_as_close_to_float64_as_atens():
    """Forward and backward against the tanh GELU in float64. Forward: within 32 float32 ulps wherever the value is
    above 1e-6 (aten's tanh form loses whole digits in the negative tail: far more ulps there) and 1e-9 below it;
    backward: within 1e-6, where aten is within about 3e-6. Both agree with aten's to float32 tolerance."""
    assert native.library() is not None  # a compiler is there: the build must work
    x = inputs()
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    exact = F.gelu(x.double(), approximate="tanh")
    ours, aten = gelu.forward(x), F.gelu(x, approximate="tanh")
    large = exact.abs() > 1e-6
    assert ulps(ours, exact)[large].max() <= 32 < ulps(aten, exact)[large].max()
    assert (ours.double() - exact)[~large].abs().max() <= 1e-9
    torch.testing.assert_close(ours, aten)  # float32 tolerance
    exact_grad = torch.ops.aten.gelu_backward(grad.double(), x.double(), approximate="tanh")
    aten_grad = torch.ops.aten.gelu_backward(grad, x, approximate="tanh")
    value, slope = gelu.forward_slope(x)
    assert torch.equal(value, ours)  # the training forward's value is the inference forward's, bit for bit
    ours_grad = grad * slope
    assert torch.isfinite(ours_grad).all()
    assert (ours_grad.double() - exact_grad).abs().max() <= 1e-6 < (aten_grad.double() - exact_grad).abs().max()
    torch.testing.assert_close(ours_grad, aten_grad)
    # Far beyond any activation (where aten's own float32 arithmetic overflows): x or 0, derivative 1 or 0.
    far = torch.tensor([1e13, 3e38, -1e13, -3e38])
    assert gelu.forward(far).tolist() == [*far[:2].tolist(), 0.0, 0.0]
    assert gelu.forward_slope(far)[1].tolist() == [1.0, 1.0, 0.0, 0.0]


@needs_compiler
def test_through_autograd_and_in_a_model_it_gives_atens_outputs_and_gradients(tokenizer):
    """``apply`` under autograd (a non-contiguous input too), and a tiny GPT-2 with ``TanhGELU`` against the same
    model on stock PyTorch: logits and every parameter's gradient to float32 tolerance."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 96, generator=generator).t().requires_grad_(True)  # not contiguous
    y = torch.randn(96, 64, generator=generator)
    (ours,) = torch.autograd.grad((gelu.apply(x) * y).sum(), x)
    (stock,) = torch.autograd.grad((F.gelu(x, approximate="tanh") * y).sum(), x)
    torch.testing.assert_close(ours, stock)

    torch.manual_seed(0)
    with switched_off():  # stock PyTorch: GPT-2's own gelu_new
        model = new_model(dict(n_embd=32, n_layer=2, n_head=2), tokenizer)
    assert not any(type(m) is TanhGELU for m in model.modules())
    fast = accel.copy_of(model)
    accel.fuse_gelu(fast, c_kernel=True)
    assert sum(type(m) is TanhGELU for m in fast.modules()) == 2
    ids = torch.randint(0, model.config.vocab_size, (4, 12), generator=generator)
    outputs = [m(input_ids=ids).logits for m in (model, fast)]
    torch.testing.assert_close(outputs[1], outputs[0])
    for out in outputs:
        (out.float() * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    for (name, p), q in zip(model.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


@needs_compiler
def test_the_envs_torch_gpt2_with_the_c_gelu_scores_as_without(tiny_policy_dir):
    stock, fast = load_torch_gpt2(tiny_policy_dir), load_torch_gpt2(tiny_policy_dir, c_gelu=True)
    assert fast.transformer.h[0].mlp.act is gelu.apply
    ids = torch.randint(0, stock.config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast(ids).logits, stock(ids).logits)


@needs_compiler
def test_without_a_compiler_everything_stays_on_pytorchs_kernels(monkeypatch, tmp_path):
    """No compiler: no library, ``apply`` is aten's GELU bit for bit, forcing the package's kernels
    (``RLHF_ENV_KERNELS=onednn``) leaves the GELU and the decode attention on PyTorch's, and so does a resumed run
    that started on the C kernels."""
    from types import SimpleNamespace

    from rlhf_env.accel import kernels

    monkeypatch.setattr(native, "compiler", lambda: None)
    native.library.cache_clear()
    try:
        assert native.library() is None
        x = torch.randn(300, 70, generator=torch.Generator().manual_seed(0))
        assert torch.equal(gelu.apply(x), F.gelu(x, approximate="tanh"))
        with kernels.forced("onednn"):
            forced = kernels.choose(SimpleNamespace(n_embd=8, n_head=2, n_inner=None, vocab_size=16))
            assert forced.layers and not forced.gelu and not forced.attention
        # A run that started on the C GELU, resumed on a machine that cannot build it: aten's, and it says so.
        (tmp_path / "kernels.json").write_text(json.dumps({"choices": [
            {"shape": "1 layer, width 8, 2 heads, inner 32, vocab 16", "layers": False, "decode": False, "gelu": True,
             "attention": True, "speedup": {"gelu": 2.0, "attention": 1.5}, "source": "measured"}]}))
        monkeypatch.setenv(kernels.POLICY_VAR, "auto")
        monkeypatch.setattr(kernels, "_chosen", {})
        kernels.restore(tmp_path)
        (restored,) = kernels.chosen()
        assert restored.source == "run" and not restored.gelu and not restored.attention
        assert "GELU aten (C 2.00x aten), decode attention torch (C 1.50x torch)" in restored.describe()
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
    assert native.library() is not None


def test_a_failed_build_is_remembered_and_said(monkeypatch, tmp_path):
    """A compiler that fails: no library, a warning that names the compiler's messages, and a later process
    (the cache cleared) warns again without running the compiler a second time."""
    from rlhf_env.accel import kernels

    calls = tmp_path / "calls"
    cc = tmp_path / "broken-cc"
    cc.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "broken-cc 1.0"; exit 0; fi\n'
                  f'echo build >> {calls}\necho "cpu.c: error: no such intrinsic" >&2\nexit 1\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv(kernels.CACHE_VAR, str(tmp_path / "cache"))
    native.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not build them"):
            assert native.library() is None
        (log,) = (tmp_path / "cache").glob("cpu-*.failed")
        assert "no such intrinsic" in log.read_text() and "exit status 1" in log.read_text()
        native.library.cache_clear()
        with pytest.warns(UserWarning, match="failed before"):
            assert native.library() is None
        assert calls.read_text().splitlines() == ["build"]  # tried once
        log.unlink()  # deleting the log retries
        native.library.cache_clear()
        with pytest.warns(UserWarning, match="could not build them"):
            assert native.library() is None
        assert calls.read_text().splitlines() == ["build", "build"]
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
    assert native.library() is not None
