"""Loading policies by bundled name or path, with clear errors for bad input."""

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from rlhf_env.accel.onednn import available as onednn_available
from rlhf_env.models import BUNDLED_POLICIES, SIZES, load_policy, new_model, save_policy
from rlhf_env.sampling import sample


def test_loads_a_local_checkpoint_in_eval_mode(tiny_policy_dir, tiny_model):
    model, tokenizer = load_policy(str(tiny_policy_dir))
    assert not model.training and tokenizer.padding_side == "left"
    for a, b in zip(model.parameters(), tiny_model.parameters()):
        assert torch.equal(a, b)


def test_unknown_policy_name_is_a_clear_error():
    with pytest.raises(ValueError, match="not a bundled model"):
        load_policy("sftt")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such policy path"):
        load_policy(str(tmp_path / "nope"))


def test_directory_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_policy(str(tmp_path))


def test_non_causal_lm_checkpoint_is_a_clear_error(tmp_path, tokenizer):
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, num_labels=1)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    with pytest.raises(ValueError, match="GPT2ForSequenceClassification.*not a causal language model"):
        load_policy(str(tmp_path / "rm"))


def test_model_sizes_match_their_names(tokenizer):
    small = sum(p.numel() for p in new_model("small", tokenizer).parameters())
    large = sum(p.numel() for p in new_model("large", tokenizer).parameters())
    assert set(SIZES) == {"small", "large"}
    assert 0.5e6 < small < 1.5e6 and 3e6 < large < 5e6


@pytest.mark.parametrize("name", BUNDLED_POLICIES)
def test_shipped_policies_load_and_generate(name):
    model, tokenizer = load_policy(name)
    out = sample(model, tokenizer, ["Q: what is 2 plus 3 ?\nA:"] * 4, max_new_tokens=16,
                 generator=torch.Generator().manual_seed(0))
    assert len(out.texts) == 4 and out.response_ids.shape[0] == 4
    assert torch.isfinite(out.logprobs).all()


def test_fused_gelu_computes_what_gpt2s_own_activation_does(tiny_policy_dir, tokenizer):
    """Every load swaps GPT-2's five-kernel gelu_new for the tanh GELU in one kernel (here the package's C kernel,
    which the tests' RLHF_ENV_KERNELS=onednn forces where it builds, else aten's): same logits, config untouched."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import GELUTanh, NewGELUActivation

    from rlhf_env.accel.gelu import TanhGELU
    from rlhf_env.accel.native import library

    original = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    assert any(isinstance(m, NewGELUActivation) for m in original.modules())
    model, _ = load_policy(str(tiny_policy_dir))
    acts = [m for m in model.modules() if isinstance(m, (GELUTanh, NewGELUActivation, TanhGELU))]
    assert acts and all(type(m) is (TanhGELU if library() is not None else GELUTanh) for m in acts)
    assert model.config.activation_function == "gelu_new"
    ids = tokenizer(["Translate to French: good morning", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = original(**ids).logits
        got = model(**ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_float32_attention_under_bf16_autocast_is_not_saved(tiny_policy_dir, tokenizer, tmp_path):
    """bf16 training keeps attention in float32 (SDPA's bfloat16 backward is slow on a CPU): the switch
    changes no float32 result, holds under autocast, and a saved checkpoint loads without this package."""
    from transformers import AutoModelForCausalLM

    from rlhf_env.models import float32_attention, save_policy

    model, _ = load_policy(str(tiny_policy_dir))
    ids = tokenizer(["Translate to French: good morning", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        want = model(**ids).logits
        assert float32_attention(model)
        assert torch.allclose(model(**ids).logits, want, atol=1e-6)
        seen = []
        hook = model.transformer.h[0].attn.c_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(**ids).logits
        hook.remove()
    assert seen == [torch.bfloat16]  # the attention's output goes back to autocast's dtype
    assert (got.float() - want).abs().max() < 0.2  # bfloat16 projections: close, not equal
    save_policy(model, tokenizer, tmp_path / "saved")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "saved").config._attn_implementation != "rlhf_sdpa_float32"


@pytest.mark.skipif(not onednn_available(torch.ones(1)), reason="this torch has no oneDNN")
def test_onednn_linears_give_hf_gpt2s_logits_and_gradients(tiny_policy_dir, tokenizer, tmp_path, monkeypatch):
    """Every load routes GPT-2's Conv1D projections and the LM head through oneDNN: the same logits and
    gradients as HF's own layers (MKL), bfloat16 under autocast, and checkpoints HF loads as they were."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    import rlhf_env.accel.onednn as onednn
    from rlhf_env.accel.onednn import OneDNNConv1D, OneDNNLinear
    from rlhf_env.models import save_policy

    monkeypatch.setattr(onednn, "MIN_ROWS", 0)  # oneDNN even for this tiny model
    calls = []
    real_mm = onednn._mm
    monkeypatch.setattr(onednn, "_mm", lambda *args: calls.append(1) or real_mm(*args))

    original = AutoModelForCausalLM.from_pretrained(tiny_policy_dir).eval()
    model, _ = load_policy(str(tiny_policy_dir))
    layers = [m for m in model.modules() if isinstance(m, (Conv1D, torch.nn.Linear))]
    assert layers and all(type(m) in (OneDNNConv1D, OneDNNLinear) for m in layers)
    ids = tokenizer(["Translate to French: good morning", "Hi"], return_tensors="pt", padding=True)
    grads = []
    for m in (original, model):
        out = m(**ids).logits
        torch.log_softmax(out, -1)[..., 5].mean().backward()
        grads.append((out.detach(), {n: p.grad for n, p in m.named_parameters()}))
    (want, want_grads), (got, got_grads) = grads
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(calls) == 3 * len(layers)  # each layer's forward, input gradient and weight gradient
    assert want_grads.keys() == got_grads.keys()
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(**ids).logits.dtype == torch.bfloat16  # autocast's bfloat16 matmuls, not oneDNN float32
    monkeypatch.setattr(onednn, "MIN_ROWS", 16)
    calls.clear()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids["input_ids"][:1, :1]).logits,
                                   original(input_ids=ids["input_ids"][:1, :1]).logits)
    assert not calls  # one token is too little work for oneDNN: MKL
    save_policy(model, tokenizer, tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert type(reloaded.lm_head) is torch.nn.Linear
    assert model.state_dict().keys() == reloaded.state_dict().keys()


@pytest.mark.skipif(not onednn_available(torch.ones(1)), reason="this torch has no oneDNN")
def test_onednn_switches_and_limits():
    """disabled() and mkldnn's own flag switch oneDNN off and back on; a second derivative raises rather
    than being silently wrong; a zero-width input takes the layer's own forward."""
    from rlhf_env.accel import onednn

    probe = torch.ones(1)
    with onednn.disabled():
        with onednn.disabled():
            assert not onednn.available(probe)
        assert not onednn.available(probe)
    assert onednn.available(probe)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not onednn.available(probe)
    assert onednn.available(probe)

    x, weight = torch.randn(32, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    (grad,) = torch.autograd.grad(onednn.linear(x, weight).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(grad.sum(), weight)
    layer = onednn.use_onednn_linears(torch.nn.Sequential(torch.nn.Linear(0, 3)))
    assert layer(torch.randn(20, 0)).shape == (20, 3)


def test_loading_and_saving_a_local_model_print_no_progress_bar(tiny_policy_dir, tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # conftest turns the bars off for the whole suite
    try:
        model, tokenizer = load_policy(str(tiny_policy_dir))
        save_policy(model, tokenizer, tmp_path / "saved")
        err = capfd.readouterr().err
        assert "Loading weights" not in err and "Writing model shards" not in err
        assert hf_logging.is_progress_bar_enabled()  # left as it was
    finally:
        hf_logging.disable_progress_bar()
