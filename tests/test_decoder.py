"""The lean GPT-2 decoder computes exactly what the HF model computes, and the sampler uses it."""

import pytest
import torch
import torch.nn.functional as F

from rlhf_env.accel.decoder import GPT2Decoder
from rlhf_env.accel.onednn import available as onednn_available
from rlhf_env.accel.onednn import packed_linear
from rlhf_env.models import new_model
from rlhf_env.sampling import HFDecoder, encode_prompts, positions, sample, sample_from_ids
from tests.test_sampling import PROMPTS, EosBoost

from .conftest import TINY_DIMS


@pytest.mark.parametrize("onednn", [True, False] if onednn_available(torch.ones(1)) else [False])
@pytest.mark.parametrize("overrides,chunk", [({}, 16), ({}, 1), ({}, 2),
                                            ({"scale_attn_by_inverse_layer_idx": True, "activation_function": "relu"},
                                             2)])
def test_prefill_and_steps_match_hf_logits(tokenizer, overrides, chunk, onednn, monkeypatch):
    import rlhf_env.accel.decoder as decoder_module

    calls = []
    monkeypatch.setattr("rlhf_env.accel.onednn.MIN_ROWS", 0)  # oneDNN even for these tiny layers
    monkeypatch.setattr(decoder_module, "packed_linear",
                        lambda *args, **kwargs: calls.append(1) or packed_linear(*args, **kwargs))
    torch.manual_seed(0)
    model = new_model(TINY_DIMS, tokenizer, **overrides).eval()
    ids, mask = encode_prompts(tokenizer, PROMPTS)  # left-padded, of different lengths
    extra = torch.randint(2, len(tokenizer), (len(PROMPTS), 5))
    full_ids, full_mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    with torch.no_grad():
        reference = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions(full_mask)).logits
        decoder = GPT2Decoder(model, len(PROMPTS), full_ids.shape[1], onednn=onednn)
        pos = positions(mask)
        got = [decoder.prefill(ids, mask, pos, chunk=chunk)]
        for t in range(extra.shape[1]):
            got.append(decoder.step(extra[:, t], pos[:, -1] + t + 1))
    P = ids.shape[1]
    torch.testing.assert_close(torch.stack(got, 1), reference[:, P - 1:], atol=1e-5, rtol=1e-5)
    assert bool(calls) == onednn


def test_the_fused_kernels_update_the_stream_and_normalise_as_torch_does():
    """``residual_layer_norm`` and ``bias_gelu`` (``rlhf_env/accel/cpu.c``), which the fused decoder runs, against
    the same in PyTorch ops; with and without a bias."""
    from rlhf_env.accel import gelu, native

    if native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 48, generator=generator), torch.randn(7, 48, generator=generator) * 3
    bias, weight, shift = (torch.randn(48, generator=generator) for _ in range(3))
    for b in (bias, None):
        stream, h = x.clone(), torch.empty_like(x)
        native.library().residual_layer_norm(stream.data_ptr(), y.data_ptr(), None if b is None else b.data_ptr(),
                                             weight.data_ptr(), shift.data_ptr(), 1e-5, h.data_ptr(), 7, 48, 1)
        expected = x + (y if b is None else y + b)
        assert torch.equal(stream, expected)  # the same sum, bit for bit
        torch.testing.assert_close(h, F.layer_norm(expected, (48,), weight, shift, 1e-5), rtol=1e-5, atol=1e-5)
    hidden = y.clone()
    native.library().bias_gelu(hidden.data_ptr(), bias.data_ptr(), hidden.data_ptr(), 7, 48, 1)  # in place
    assert torch.equal(hidden, gelu.forward(y + bias))


def test_the_fused_decoder_matches_the_unfused_one(tokenizer, monkeypatch):
    """The fused layers (biases, GELU, residual sums and LayerNorms in the C kernels' passes) give the logits of
    the decoder that runs them as PyTorch ops, prefill and steps, to float rounding."""
    torch.manual_seed(0)
    model = new_model(TINY_DIMS, tokenizer).eval()
    with torch.no_grad():  # biases that matter (a new model's are 0): the fused passes add them
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0.0, 0.5)
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    extra = torch.randint(2, len(tokenizer), (len(PROMPTS), 4), generator=torch.Generator().manual_seed(0))
    runs = []
    for fused in (True, False):
        monkeypatch.setattr(GPT2Decoder, "_fuses", lambda self, fused=fused: fused and self.fused)
        with torch.no_grad():
            decoder = GPT2Decoder(model, len(PROMPTS), ids.shape[1] + extra.shape[1])
            pos = positions(mask)
            got = [decoder.prefill(ids, mask, pos)]
            for t in range(extra.shape[1]):
                got.append(decoder.step(extra[:, t], pos[:, -1] + t + 1))
        runs.append(torch.stack(got, 1))
    if not decoder.fused:
        pytest.skip("the C kernels did not build here")
    assert not torch.equal(runs[0], runs[1])  # two ways of computing ...
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-5)  # ... the same logits


def test_under_an_autocast_the_decoder_runs_unfused_in_bfloat16(tokenizer, monkeypatch):
    """The fused passes take float32 projections: under a bfloat16 autocast the step runs PyTorch's ops (whose
    residual stream takes the projections' bfloat16, as before the fused passes), close to float32's logits."""
    torch.manual_seed(0)
    model = new_model(TINY_DIMS, tokenizer).eval()
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    token = torch.randint(2, len(tokenizer), (len(PROMPTS),), generator=torch.Generator().manual_seed(0))
    fused_calls = []
    real = GPT2Decoder._residual_norm
    monkeypatch.setattr(GPT2Decoder, "_residual_norm", staticmethod(lambda *a: fused_calls.append(1) or real(*a)))
    logits = []
    for autocast in (False, True):
        with torch.no_grad():
            decoder = GPT2Decoder(model, len(PROMPTS), ids.shape[1] + 1)
            pos = positions(mask)
            decoder.prefill(ids, mask, pos)
            fused_calls.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits.append(decoder.step(token, pos[:, -1] + 1).float())
            assert bool(fused_calls) == (decoder.fused and not autocast)
    if not decoder.fused:
        pytest.skip("the C kernels did not build here")
    assert not torch.equal(logits[0], logits[1])
    torch.testing.assert_close(logits[1], logits[0], rtol=0.05, atol=0.05)  # bfloat16's rounding


@pytest.mark.parametrize("chunk", [16, 1])
def test_rows_of_one_prompt_prefill_it_once_and_match_hf(tokenizer, chunk, monkeypatch):
    """Groups of rows with one prompt, interleaved: each distinct prompt goes through the layers once (a spy on
    the LM head counts rows), and every row's cache, continued with its own tokens, gives HF's logits."""
    torch.manual_seed(0)
    model = new_model(TINY_DIMS, tokenizer).eval()
    order = [0, 1, 0, 2, 1, 0, 2, 0]  # 3 distinct prompts of different lengths
    ids, mask = encode_prompts(tokenizer, [PROMPTS[i] for i in order])
    extra = torch.randint(2, len(tokenizer), (len(order), 4), generator=torch.Generator().manual_seed(0))
    full_ids, full_mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    heads = []
    real_head = GPT2Decoder._head
    monkeypatch.setattr(GPT2Decoder, "_head", lambda self, x: heads.append(len(x)) or real_head(self, x))
    with torch.no_grad():
        reference = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions(full_mask)).logits
        decoder = GPT2Decoder(model, len(order), full_ids.shape[1])
        pos = positions(mask)
        got = [decoder.prefill(ids, mask, pos, chunk=chunk)]
        prefill_rows = sum(heads)
        for t in range(extra.shape[1]):
            got.append(decoder.step(extra[:, t], pos[:, -1] + t + 1))
    assert prefill_rows == 3
    heads.clear()
    with torch.no_grad():  # not shared: every row runs its prompt, to the same logits
        unshared = GPT2Decoder(model, len(order), full_ids.shape[1]).prefill(ids, mask, pos, chunk=chunk,
                                                                               share_prompts=False)
    assert sum(heads) == len(order)
    torch.testing.assert_close(unshared, got[0], atol=1e-5, rtol=1e-5)
    P = ids.shape[1]
    torch.testing.assert_close(torch.stack(got, 1), reference[:, P - 1:], atol=1e-5, rtol=1e-5)


def test_fast_and_generic_paths_sample_the_same_tokens(tiny_model, tokenizer):
    ids, mask = encode_prompts(tokenizer, PROMPTS * 3)
    runs = [sample_from_ids(tiny_model, tokenizer, ids, mask, 20, 0.8, torch.Generator().manual_seed(1), fast=fast)
            for fast in (True, False)]
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-5, rtol=0)


def test_the_sampler_picks_the_fast_path_only_for_plain_gpt2(tiny_model, tokenizer, monkeypatch):
    """The same tokens either way, and a spy on both decoders shows which one ran."""
    used = []
    for cls in (GPT2Decoder, HFDecoder):
        real = cls.prefill
        monkeypatch.setattr(cls, "prefill", lambda self, *a, real=real, name=cls.__name__, **k:
                            used.append(name) or real(self, *a, **k))
    assert GPT2Decoder.supports(tiny_model)
    wrapped = EosBoost(tiny_model, tokenizer.eos_token_id, boost=0.0)  # any other module takes the HF path
    assert not GPT2Decoder.supports(wrapped)
    a = sample(wrapped, tokenizer, PROMPTS, 8, 1.0, torch.Generator().manual_seed(0))
    b = sample(tiny_model, tokenizer, PROMPTS, 8, 1.0, torch.Generator().manual_seed(0))
    assert used == ["HFDecoder", "GPT2Decoder"]
    assert torch.equal(a.response_ids, b.response_ids)
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    with pytest.raises(ValueError, match="GPT-2 only"):
        sample_from_ids(wrapped, tokenizer, ids, mask, 8, fast=True)


def test_without_stop_at_eos_every_row_gets_the_full_budget(tiny_model, tokenizer):
    model = EosBoost(tiny_model, tokenizer.eos_token_id, boost=100.0)  # EOS at every step
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    s = sample_from_ids(model, tokenizer, ids, mask, 6, 1.0, torch.Generator().manual_seed(0), stop_at_eos=False)
    assert s.response_ids.shape == (len(PROMPTS), 6)


def test_skipped_padding_columns_cannot_leak_nan(tiny_model, tokenizer):
    """The bucketed prefill leaves padding columns unwritten; whatever the buffer held there must not matter."""
    prompts = ["Q: hi\nA:"] * 3 + ["Q: sort : fig apple pear cup door egg grape kiwi lime .\nA:"]
    ids, mask = encode_prompts(tokenizer, prompts)
    decoder = GPT2Decoder(tiny_model, len(prompts), ids.shape[1] + 2)
    decoder.cache.fill_(float("nan"))  # e.g. a reused buffer, or torch.empty's garbage
    with torch.no_grad():
        logits = decoder.prefill(ids, mask, positions(mask), chunk=2)
        logits = decoder.step(logits.argmax(-1), positions(mask)[:, -1] + 1)
    assert torch.isfinite(logits).all()
