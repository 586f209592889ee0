"""The sampler's decode-step attention through the package's C kernel (``rlhf_env.accel.decoder.attend_c``)
against the same in PyTorch ops (``attend_torch``)."""

from unittest import mock

import pytest
import torch

from rlhf_env.accel import decoder, native
from rlhf_env.accel.decoder import GPT2Decoder, attend_c, attend_torch
from rlhf_env.models import load_policy
from rlhf_env.sampling import encode_prompts, sample_from_ids

needs_kernels = pytest.mark.skipif(native.compiler() is None, reason="no C compiler to build the kernels")


def left_padded_cache(B=5, H=3, D=20, P=7, T=12, seed=0):
    """A layer's cache (2, B, H, T, D) of left-padded prompts (P columns; row 0 unpadded, row 1 with a masked
    column inside its prompt), its additive key mask (B, 1, 1, T) and each row's first real column."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.tensor([0, 2, 6, 3, 5])[:B]
    real = torch.arange(T) >= start[:, None]
    real[1, 4] = False
    cache = torch.randn(2, B, H, T, D, generator=generator) * real[None, :, None, :, None]
    bias = torch.where(real, 0.0, float("-inf"))[:, None, None]
    return cache, bias, start, generator


@needs_kernels
@pytest.mark.parametrize("D", [20, 32])  # a head size that is and one that is not a multiple of the vector width
def test_the_c_kernel_writes_and_attends_as_pytorchs_ops(D):
    cache, bias, start, generator = left_padded_cache(D=D)
    theirs, ours = cache.clone(), cache.clone()
    B, H = cache.shape[1:3]
    for t in range(7, 12):  # decoding steps: each writes its keys and values at column t and attends up to it
        qkv = torch.randn(B, 3 * H * D, generator=generator) * 3
        scale = D**-0.5
        expected = attend_torch(qkv, theirs, bias, t, scale)
        got = attend_c(qkv, ours, bias, start, t, scale)
        assert got.shape == (B, H * D)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # (exp amplifies the sums' rounding)
        assert torch.equal(ours, theirs)  # the same keys and values written, nothing else touched


@needs_kernels
def test_on_several_threads_it_gives_what_one_thread_does(monkeypatch):
    """More (row, head) pairs than threads, not a multiple of them: each thread's share, and its own scores."""
    cache, bias, start, generator = left_padded_cache(B=5, H=3)
    qkv = torch.randn(5, 3 * 3 * 20, generator=generator)
    one = attend_c(qkv, cache.clone(), bias, start, 9, 0.2)
    monkeypatch.setattr(native, "PARALLEL_FROM", 0)  # every call parallel
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert native.threads(1) == 4
        torch.testing.assert_close(attend_c(qkv, cache.clone(), bias, start, 9, 0.2), one, rtol=0, atol=0)
    finally:
        torch.set_num_threads(threads)


def test_it_refuses_what_the_kernel_cannot_take():
    cache, bias, start, generator = left_padded_cache()
    qkv = torch.randn(5, 3 * 3 * 20, generator=generator)
    with pytest.raises(ValueError, match="float32 CPU tensors of one batch, a contiguous cache and a column inside"):
        attend_c(qkv.bfloat16(), cache, bias, start, 8, 0.2)  # a bfloat16 projection (autocast)
    with pytest.raises(ValueError, match=r"column 12, qkv bias None: float32 CPU tensors"):
        attend_c(qkv, cache, bias, start, 12, 0.2)  # past the cache's last column
    with pytest.raises(ValueError, match=r"qkv \(4, 180\)"):
        attend_c(qkv[:4], cache, bias, start, 8, 0.2)  # fewer rows than the cache
    with pytest.raises(ValueError, match=r"qkv bias \(60,\): float32"):
        attend_c(qkv, cache, bias, start, 8, 0.2, torch.zeros(60))  # a bias of the queries only


@needs_kernels
def test_the_projections_bias_is_added_in_the_kernels_pass():
    """``qkv_bias`` gives, bit for bit, what the biased projections would: the keys and values written and the
    attention's output."""
    cache, bias, start, generator = left_padded_cache()
    qkv, qkv_bias = torch.randn(5, 3 * 3 * 20, generator=generator), torch.randn(180, generator=generator)
    theirs, ours = cache.clone(), cache.clone()
    expected = attend_c(qkv + qkv_bias, theirs, bias, start, 8, 0.2)
    assert torch.equal(attend_c(qkv, ours, bias, start, 8, 0.2, qkv_bias), expected)
    assert torch.equal(ours, theirs) and not torch.equal(ours, cache)


@needs_kernels
def test_the_c_kernel_never_reads_a_rows_left_padding():
    """NaN in the padding columns before each row's start: PyTorch's ops read them (and give NaN); the kernel
    skips them. A masked column after the start is read, and weighs 0."""
    cache, bias, start, generator = left_padded_cache()
    B, H, D = cache.shape[1], cache.shape[2], cache.shape[4]
    poisoned = cache.clone()
    for b in range(B):
        poisoned[:, b, :, :start[b]] = float("nan")
    qkv = torch.randn(B, 3 * H * D, generator=generator)
    expected = attend_torch(qkv, cache.clone(), bias, 8, D**-0.5)
    torch.testing.assert_close(attend_c(qkv, poisoned, bias, start, 8, D**-0.5), expected, rtol=1e-4, atol=1e-5)
    assert attend_torch(qkv, poisoned, bias, 8, D**-0.5)[2:].isnan().all()


@needs_kernels
def test_the_sampler_draws_the_same_samples_with_either_attention(tiny_policy_dir):
    model, tokenizer = load_policy(str(tiny_policy_dir))
    ids, mask = encode_prompts(tokenizer, ["a", "the longest prompt of them all, by far", "two words"] * 4)
    used = []

    def sample(c_kernel: bool):
        with (mock.patch.object(decoder, "c_attention", lambda config: c_kernel),
              mock.patch.object(decoder, "attend_c", wraps=attend_c) as kernel):
            out = sample_from_ids(model, tokenizer, ids, mask, 24, 1.0, torch.Generator().manual_seed(0), fast=True)
            used.append(kernel.call_count)
            return out

    ours, theirs = sample(True), sample(False)
    assert used[0] >= 2 * (24 - 1) and used[1] == 0  # every layer's every decode step, or none
    assert torch.equal(ours.response_ids, theirs.response_ids)
    torch.testing.assert_close(ours.logprobs, theirs.logprobs, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_a_decoder_that_drops_rows_keeps_each_rows_own_columns(tiny_policy_dir):
    """``keep`` (the sampler drops ended rows) takes each kept row's first real column along: the logits after it
    are those of the decoder on PyTorch's ops (whose prefill zeroes the cache's prompt columns, where the kernel's
    leaves what was there)."""
    model, tokenizer = load_policy(str(tiny_policy_dir))
    ids, mask = encode_prompts(tokenizer, ["a", "the longest prompt of them all, by far", "two words", "x y"])
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, model.config.vocab_size, (6, 4), generator=generator)
    logits = []
    for c_kernel in (True, False):
        with mock.patch.object(decoder, "c_attention", lambda config, c_kernel=c_kernel: c_kernel), torch.no_grad():
            lean = GPT2Decoder(model, 4, ids.shape[1] + 6)
            assert lean.c_attention == lean.packed_prefill == c_kernel  # (the prompts' real tokens only, or buckets)
            if c_kernel:  # a cache of garbage: the kernel's prefill does not zero it, and no column it skips is read
                lean.cache.fill_(float("nan"))
            lean.prefill(ids, mask, pos)
            out = [lean.step(tokens[i], pos[:, -1] + 1 + i) for i in range(3)]
            lean.keep(torch.tensor([2, 0]))  # the short rows, in another order
            out += [lean.step(tokens[i, [2, 0]], pos[[2, 0], -1] + 1 + i) for i in range(3, 6)]
        logits.append(out)
    for ours, theirs in zip(*logits):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


@needs_kernels
def test_a_resumed_run_keeps_the_c_attention_it_started_with(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    from rlhf_env.accel import kernels

    monkeypatch.setenv(kernels.POLICY_VAR, "auto")
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.setattr(kernels, "measure", lambda *shape: pytest.fail("a resumed run measures nothing"))
    (tmp_path / "kernels.json").write_text(json.dumps({"choices": [
        {"shape": "1 layer, width 8, 2 heads, inner 32, vocab 16", "layers": False, "decode": False, "gelu": False,
         "attention": True, "speedup": {"attention": 1.5}, "source": "measured"}]}))
    kernels.restore(tmp_path)
    choice = kernels.choose(SimpleNamespace(n_embd=8, n_head=2, n_inner=None, vocab_size=16))
    assert (choice.source, choice.attention, choice.gelu) == ("run", True, False)


@needs_kernels
def test_the_kernel_reports_its_status():
    """``attend_step`` returns 0 when it could allocate (1 would raise ``MemoryError`` in ``attend_c``): the status
    reaches Python as an int."""
    cache, bias, start, generator = left_padded_cache()
    qkv = torch.randn(5, 3 * 3 * 20, generator=generator)
    k, v, out = cache[0], cache[1], torch.empty(5, 60)
    status = native.library().attend_step(qkv.data_ptr(), None, k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1),
                                          bias.data_ptr(), bias.stride(0), start.data_ptr(), 5, 3, 20, 8, 0.2,
                                          out.data_ptr(), 1)
    assert status == 0 and torch.isfinite(out).all()

