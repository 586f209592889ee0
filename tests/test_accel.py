"""rlhf_env.accel: one switch, the bundled and package-saved models only, and a probe that falls back."""

import json
import math
import time
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

import rlhf_env.accel as accel
from rlhf_env.accel import native, onednn
from rlhf_env.accel.decoder import GPT2Decoder
from rlhf_env.accel.gelu import TanhGELU
from rlhf_env.accel.switch import ENV_VAR, switched_off
from rlhf_env.models import load_policy, new_model
from rlhf_env.sampling import HFDecoder, encode_prompts, lean_decoder_applies, sample_from_ids

needs_onednn = pytest.mark.skipif(not onednn.kernel_works(), reason="this torch has no oneDNN")
C_MEASURED = ("gelu", "sampling", "fused") if native.compiler() is not None else ()  # measured where they build
PROMPTS = ["Q: what is two plus three ?\nA:", "Q: sort : pear apple .\nA:"]


def kernels_cpu_seconds():
    from rlhf_env.accel import kernels

    return kernels.cpu_seconds()


def swapped(model) -> bool:
    return any(type(m) in (onednn.OneDNNConv1D, onednn.OneDNNLinear) for m in model.modules())


def decoders_used(monkeypatch, model, tokenizer, **kwargs) -> list[str]:
    """Which decoder's prefill ran when the sampler sampled ``model`` (a spy on both)."""
    used = []
    for cls in (GPT2Decoder, HFDecoder):
        real = cls.prefill
        monkeypatch.setattr(cls, "prefill", lambda self, *a, real=real, name=cls.__name__, **k:
                            used.append(name) or real(self, *a, **k))
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    sample_from_ids(model, tokenizer, ids, mask, 4, 1.0, torch.Generator().manual_seed(0), **kwargs)
    return used


@needs_onednn
def test_bundled_and_package_saved_models_are_accelerated_others_only_when_asked(tiny_policy_dir, tmp_path,
                                                                                 monkeypatch):
    sft, tokenizer = load_policy("sft")
    ours, _ = load_policy(str(tiny_policy_dir))  # saved by save_policy
    assert swapped(sft) and swapped(ours) and accel.accelerated(sft)
    assert decoders_used(monkeypatch, ours, tokenizer) == ["GPT2Decoder"]
    # A model someone else saved (no mark in its config), e.g. from the hub: stock layers unless asked.
    plain = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    del plain.config.rlhf_env_accel
    plain.save_pretrained(tmp_path / "theirs")
    tokenizer.save_pretrained(tmp_path / "theirs")
    theirs, _ = load_policy(str(tmp_path / "theirs"))
    assert not swapped(theirs) and not accel.accelerated(theirs)
    assert type(theirs.transformer.h[0].attn.c_attn) is Conv1D
    assert decoders_used(monkeypatch, theirs, tokenizer) == ["HFDecoder"]
    asked, _ = load_policy(str(tmp_path / "theirs"), accel=True)
    assert swapped(asked) and decoders_used(monkeypatch, asked, tokenizer) == ["GPT2Decoder"]
    assert not swapped(load_policy(str(tiny_policy_dir), accel=False)[0])


@needs_onednn
def test_the_switch_turns_everything_off(tiny_policy_dir, monkeypatch):
    accelerated, tokenizer = load_policy(str(tiny_policy_dir))
    monkeypatch.setenv(ENV_VAR, "0")
    model, _ = load_policy(str(tiny_policy_dir))
    assert not swapped(model) and not accel.enabled()
    assert not onednn.available(torch.ones(1))  # a model accelerated before the switch: its layers too
    assert not lean_decoder_applies(accelerated)
    assert decoders_used(monkeypatch, accelerated, tokenizer) == ["HFDecoder"]
    monkeypatch.delenv(ENV_VAR)
    assert accel.enabled() and lean_decoder_applies(accelerated)
    with switched_off():
        assert not swapped(load_policy(str(tiny_policy_dir))[0])
    assert accel.switched_on()


def test_the_cli_flag_sets_the_switch(monkeypatch, capsys):
    from rlhf_env.cli import main

    monkeypatch.setenv(ENV_VAR, "1")  # monkeypatch restores the environment as it was before, after the test
    assert accel.switched_on()
    assert main(["--no-accel", "--help"]) == 0
    assert "--no-accel" in capsys.readouterr().out and not accel.switched_on()


@needs_onednn
@pytest.mark.parametrize("broken", ["linear", "packed_linear"])
def test_a_probe_mismatch_falls_back_to_stock_layers_with_a_warning(tiny_policy_dir, monkeypatch, broken):
    real = getattr(onednn, broken)
    monkeypatch.setattr(onednn, broken, lambda *args, **kwargs: real(*args, **kwargs) * 1.01)
    accel.probe.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="disagrees with F.linear"):
            assert not accel.probe()
        model, _ = load_policy(str(tiny_policy_dir))
        assert not swapped(model) and not accel.accelerated(model)
    finally:
        monkeypatch.undo()
        accel.probe.cache_clear()
    assert accel.probe()


@pytest.fixture
def measured_kernels(tmp_path, monkeypatch):
    """The default policy (auto: measure), a cache of its own, no choices made yet, ``measure`` replaced by
    given speed-ups, and a machine that other processes leave free; returns the list of shapes it was asked to
    measure."""
    from rlhf_env.accel import kernels

    monkeypatch.setenv(kernels.POLICY_VAR, "auto")
    monkeypatch.setenv(kernels.CACHE_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.setattr(kernels, "cpu_seconds", lambda: (100.0, 10.0))  # no CPU time passes: no load
    asked = []
    speedups = {32: {"layers": 1.25, "decode": 0.8},
                48: {"layers": 1.02, "decode": 1.1, "gelu": 2.0, "attention": 1.5, "packed_attention": 1.8,
                     "sampling": 1.4, "fused": 1.2}}
    monkeypatch.setattr(kernels, "measure", lambda width, inner, vocab, n_layer, heads: asked.append(width)
                        or speedups[width])
    return asked


@needs_onednn
def test_kernels_are_chosen_by_measurement_once_per_machine_and_shape(measured_kernels, tiny_policy_dir, tokenizer,
                                                                      monkeypatch):
    from rlhf_env.accel import kernels

    model, _ = load_policy(str(tiny_policy_dir))  # width 32: oneDNN 1.25x in training layers, 0.8x decoding
    assert swapped(model) and accel.accelerated(model)  # fused GELU and the lean decoder either way
    decoder = GPT2Decoder(model, 2, 8)
    assert not decoder.head.onednn and not decoder.layers[0][3].onednn  # decoding stays on addmm
    assert measured_kernels == [32]
    (choice,) = kernels.chosen()
    assert (choice.layers, choice.decode, choice.source) == (True, False, "measured")
    assert ("layers oneDNN (oneDNN 1.25x stock), decode MKL (oneDNN 0.80x stock), GELU aten, decode attention torch, "
            "packed attention SDPA, draw torch, bias and LayerNorm passes torch; measured now" in choice.describe())
    assert not decoder.c_attention  # not measured: PyTorch's ops
    assert not any(type(m) is TanhGELU for m in model.modules())  # GELU: not measured, so aten's

    monkeypatch.setattr(kernels, "_chosen", {})  # as a new process on this machine: the cache answers
    load_policy(str(tiny_policy_dir))
    assert measured_kernels == [32] and kernels.chosen()[0].source == "cache"
    assert kernels.chosen()[0].speedup == {"layers": 1.25, "decode": 0.8}

    # A gain inside the margin keeps stock PyTorch; a clear one takes oneDNN, or the C GELU and attentions.
    wider = new_model(dict(n_embd=48, n_layer=1, n_head=2), tokenizer)
    decoder = GPT2Decoder(wider, 2, 8)
    assert not swapped(wider) and decoder.head.onednn and measured_kernels == [32, 48]
    assert type(wider.transformer.h[0].mlp.act) is TanhGELU and kernels.chosen()[1].gelu
    assert decoder.c_attention == (native.library() is not None) and kernels.chosen()[1].attention
    assert accel.c_packed_attention(wider.config) and kernels.chosen()[1].packed_attention
    assert accel.c_sampling(wider.config) and kernels.chosen()[1].sampling
    assert not accel.c_sampling(model.config)  # width 32: not measured, so PyTorch's draw
    assert accel.c_fused(wider.config) and decoder.fused == (native.library() is not None)
    assert not accel.c_fused(model.config) and not GPT2Decoder(model, 2, 8).fused
    assert ("1 layer, width 48, 2 heads, inner 192, vocab 768: layers MKL (oneDNN 1.02x stock), decode oneDNN (oneDNN "
            "1.10x stock), GELU C kernel (C 2.00x aten), decode attention C kernel (C 1.50x torch), packed attention "
            "C kernel (C 1.80x SDPA), draw C kernel (C 1.40x torch), bias and LayerNorm passes C kernel (C 1.20x "
            "torch); measured now" == kernels.chosen()[1].describe())
    with kernels.forced("stock"):  # nothing measured, no oneDNN
        assert not swapped(load_policy(str(tiny_policy_dir))[0]) and measured_kernels == [32, 48]
        assert [c.source for c in kernels.chosen()] == ["stock"]
    assert [c.source for c in kernels.chosen()] == ["cache", "measured"]  # the block's choices are forgotten


def test_a_bad_kernel_policy_is_refused_with_the_allowed_values(monkeypatch):
    from rlhf_env.accel import kernels

    monkeypatch.setenv(kernels.POLICY_VAR, "fastest")
    with pytest.raises(ValueError, match="RLHF_ENV_KERNELS='fastest': use one of auto, onednn, stock"):
        kernels.policy()


@needs_onednn
def test_a_real_measurement_gives_both_speedups_and_is_cached(tmp_path, monkeypatch):
    from rlhf_env.accel import kernels

    monkeypatch.setenv(kernels.POLICY_VAR, "auto")
    monkeypatch.setenv(kernels.CACHE_VAR, str(tmp_path))
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.setattr(kernels, "cpu_seconds", lambda: None)  # the load unknown (as off Linux): cached
    config = SimpleNamespace(n_embd=16, n_inner=None, vocab_size=40)
    choice = kernels.choose(config)
    # finite positive ratios (on a busy machine they range far: the next test)
    assert set(choice.speedup) == {"layers", "decode", *C_MEASURED} and all(0 < v < math.inf for v in
                                                                            choice.speedup.values())
    assert (choice.source, choice.load) == ("measured", None)
    assert choice.layers == (choice.speedup["layers"] > 1 / (1 - kernels.MARGIN))
    assert choice.gelu == (choice.speedup.get("gelu", 0) > 1 / (1 - kernels.MARGIN))
    saved = json.loads((tmp_path / "kernels.json").read_text())
    assert saved == {f"{kernels.machine()} | 1 layer, width 16, inner 64, vocab 40": {
        "layers": choice.layers, "decode": choice.decode, "gelu": choice.gelu, "attention": False,
        "packed_attention": False, "sampling": choice.sampling, "fused": choice.fused,
        "speedup": choice.speedup}}  # no heads: no attention


def test_a_measurement_while_other_processes_hold_the_cpus_is_used_but_not_cached(measured_kernels, tmp_path,
                                                                                   monkeypatch):
    """Under load the ratios are skewed far past noise (a scratch run beside a PPO run: the C draw 300x torch's,
    oneDNN's decode 0.01x): such a choice serves its process, and the next process measures again."""
    from rlhf_env.accel import kernels

    config = SimpleNamespace(n_embd=32, n_inner=None, vocab_size=40)
    cpus = kernels.os.cpu_count()
    # between the two readings the machine was busy for cpus + 1.5 CPU-seconds, this process for 0.5 of them
    readings = iter([(100.0, 10.0), (100.0 + cpus + 1.5, 10.5)])
    monkeypatch.setattr(kernels, "cpu_seconds", lambda: next(readings))
    choice = kernels.choose(config)
    assert (choice.source, choice.layers, choice.load, measured_kernels) == ("contended", True, cpus + 1.0, [32])
    assert choice.describe().endswith(f"measured now, while other processes kept {cpus + 1.0:.2f} CPUs busy: not "
                                      "cached, so measured again by the next process")
    assert not (tmp_path / "cache" / "kernels.json").exists()
    monkeypatch.setattr(kernels, "_chosen", {})  # the next process, on a free machine: measures and caches
    readings = iter([(200.0, 20.0), (200.5, 20.5)])  # all the machine's CPU time was this process's
    choice = kernels.choose(config)
    assert (choice.source, choice.load, measured_kernels) == ("measured", 0.0, [32, 32])
    assert json.loads((tmp_path / "cache" / "kernels.json").read_text())[f"{kernels.machine()} | 1 layer, width 32, "
                                                                          "inner 128, vocab 40"]["layers"] is True


@pytest.mark.parametrize("cpus, threads, free_up_to", [(2, 2, 0.25), (8, 2, 6.25), (4, 8, 0.25)])
def test_a_measurement_is_contended_where_others_leave_its_threads_too_few_cpus(monkeypatch, cpus, threads,
                                                                                free_up_to):
    from rlhf_env.accel import kernels

    monkeypatch.setattr(kernels.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert not kernels.contended(None) and not kernels.contended(free_up_to - 0.01)
    assert kernels.contended(free_up_to + 0.01)


@pytest.mark.skipif(kernels_cpu_seconds() is None, reason="no /proc to read CPU time from")
def test_cpu_seconds_counts_this_process_s_work_within_the_machine_s():
    from rlhf_env.accel import kernels

    before = kernels.cpu_seconds()
    start = time.process_time()
    while time.process_time() - start < 0.3:  # 0.3 s of this process's CPU time
        pass
    after = kernels.cpu_seconds()
    own, busy = after[1] - before[1], after[0] - before[0]
    assert 0.27 <= own < 5 and busy >= own - 0.03  # (ticks of 10 ms)
    assert kernels.others_load(before, after, 0.0) == max(0.0, busy - own) / kernels.LOAD_WINDOW_S
    assert kernels.others_load(None, after, 2.0) is None


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler to build the kernels")
@pytest.mark.parametrize("heads", [2, 4])  # heads of 16 (the packed attention's vectors), and of 8
def test_the_packed_attention_is_measured_where_the_kernel_takes_the_heads(monkeypatch, heads):
    from rlhf_env.accel import kernels

    monkeypatch.setattr(kernels, "BUDGET_S", 0.0)  # the fewest rounds
    speedup = kernels.measure(32, 128, 40, n_layer=1, heads=heads)
    assert ("packed_attention" in speedup) == (heads == 2) and "attention" in speedup
    assert all(0 < v < math.inf for v in speedup.values())  # (beside another process they range past 100)


def test_under_several_ranks_nothing_is_measured_a_cached_choice_holds_else_stock(measured_kernels, monkeypatch):
    from rlhf_env.accel import kernels

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = SimpleNamespace(n_embd=32, n_inner=None, vocab_size=40)
    choice = kernels.choose(config)
    assert (choice.layers, choice.decode, choice.source, measured_kernels) == (False, False, "unmeasured", [])
    assert "not measured under several ranks: stock kernels" in choice.describe()
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.delenv("WORLD_SIZE")
    kernels.choose(config)  # one process measures and caches it
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.setenv("WORLD_SIZE", "2")
    choice = kernels.choose(config)
    assert (choice.layers, choice.decode, choice.source, measured_kernels) == (True, False, "cache", [32])


@pytest.mark.parametrize("cache_text", ["{not json", "[1, 2]", "ENTRY", "NO GELU", "NO ATTENTION",
                                        "NO PACKED ATTENTION", "NO DRAW"])
def test_an_unreadable_or_older_cache_is_measured_again_and_rewritten(measured_kernels, tmp_path, cache_text):
    from rlhf_env.accel import kernels

    config = SimpleNamespace(n_embd=32, n_inner=None, vocab_size=40)
    key = f"{kernels.machine()} | 1 layer, width 32, inner 128, vocab 40"
    if cache_text == "ENTRY":  # an entry of another format: no speed-ups
        cache_text = json.dumps({key: {"layers": True, "decode": True}})
    if cache_text == "NO GELU":  # an older version's entry: GELU not measured
        cache_text = json.dumps({key: {"layers": True, "decode": True, "speedup": {"layers": 1.3, "decode": 1.3}}})
    if cache_text == "NO ATTENTION":  # an older version's entry: decode attention not measured
        cache_text = json.dumps({key: {"layers": True, "decode": True, "gelu": True,
                                       "speedup": {"layers": 1.3, "decode": 1.3, "gelu": 2.0}}})
    if cache_text == "NO PACKED ATTENTION":  # an older version's entry: the packed training attention not measured
        cache_text = json.dumps({key: {"layers": True, "decode": True, "gelu": True, "attention": True,
                                       "speedup": {"layers": 1.3, "decode": 1.3, "gelu": 2.0, "attention": 1.5}}})
    if cache_text == "NO DRAW":  # the last version's entry: the sampler's draw and fused passes not measured
        cache_text = json.dumps({key: {"layers": True, "decode": True, "gelu": True, "attention": True,
                                       "packed_attention": True, "speedup": {"layers": 1.3, "decode": 1.3}}})
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kernels.json").write_text(cache_text)
    choice = kernels.choose(config)
    assert (choice.source, measured_kernels) == ("measured", [32])
    saved = json.loads((tmp_path / "cache" / "kernels.json").read_text())
    assert saved[key] == {"layers": True, "decode": False, "gelu": False, "attention": False,
                          "packed_attention": False, "sampling": False, "fused": False,
                          "speedup": {"layers": 1.25, "decode": 0.8}}


def test_a_choice_cached_for_other_c_kernels_is_measured_again(measured_kernels, tmp_path):
    """The cache's key names the C kernels' source: after a change to ``cpu.c``, its kernels are timed again."""
    from rlhf_env.accel import kernels

    config = SimpleNamespace(n_embd=32, n_inner=None, vocab_size=40)
    shape = "1 layer, width 32, inner 128, vocab 40"
    assert f"C kernels {native.source_digest()}" in kernels.machine()
    older = kernels.machine().replace(native.source_digest(), "0123456789ab")
    entry = {"layers": False, "decode": True, "gelu": True, "attention": True, "packed_attention": True,
             "sampling": True, "fused": True, "speedup": {"layers": 0.9, "decode": 1.3}}
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kernels.json").write_text(json.dumps({f"{older} | {shape}": entry}))
    choice = kernels.choose(config)
    assert (choice.source, measured_kernels, choice.layers) == ("measured", [32], True)


@needs_onednn
def test_a_choice_made_under_no_grad_measures_the_backward_too(tmp_path, monkeypatch, tokenizer):
    """The sampler builds its decoder under no_grad: a shape first seen there is still measured, backward too."""
    from rlhf_env.accel import kernels

    monkeypatch.setenv(kernels.POLICY_VAR, "auto")
    monkeypatch.setenv(kernels.CACHE_VAR, str(tmp_path))
    monkeypatch.setattr(kernels, "_chosen", {})
    monkeypatch.setattr(kernels, "cpu_seconds", lambda: None)  # (as on a free machine, whatever runs beside)
    torch.manual_seed(0)
    with kernels.forced("stock"):  # loaded unaccelerated: its shape is not chosen at load
        model = new_model(dict(n_embd=24, n_layer=1, n_head=2), tokenizer)
    with torch.no_grad():
        GPT2Decoder(model, 2, 8)
    (choice,) = kernels.chosen()
    attention = ("attention",) if C_MEASURED else ()  # (a config with heads: the C attention is measured too)
    assert choice.source == "measured" and set(choice.speedup) == {"layers", "decode", *C_MEASURED, *attention}


def test_a_resumed_run_keeps_the_kernels_it_started_with(measured_kernels, tiny_policy_dir, world_dir, tmp_path,
                                                          monkeypatch):
    """The first run measures oneDNN faster for its layers; measured again now it would lose, yet the resumed
    run keeps oneDNN (OUT/kernels.json), without measuring."""
    from agents.ppo import PPOAgent
    from rlhf_env.accel import kernels
    from tests.test_ppo import tiny_config

    PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=1, save_every=1)).train()
    assert measured_kernels == [32]
    monkeypatch.setattr(kernels, "_chosen", {})  # a new process, on a machine where MKL wins
    monkeypatch.setattr(kernels, "measure", lambda *shape: measured_kernels.append(shape[0]) or {"layers": 0.8,
                                                                                               "decode": 0.8})
    monkeypatch.setenv(kernels.CACHE_VAR, str(tmp_path / "another-cache"))
    resumed = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=2, save_every=1))
    assert swapped(resumed.policy) and measured_kernels == [32]
    resumed.train()
    (choice,) = kernels.chosen()
    assert (choice.layers, choice.decode, choice.source) == (True, False, "run")
    monkeypatch.setattr(kernels, "_chosen", {})
    fresh = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "fresh", iterations=1))  # a new run measures
    assert not swapped(fresh.policy) and measured_kernels == [32, 32]


def test_a_run_recorded_before_heads_and_attention_were_measured_resumes_on_its_kernels(measured_kernels, tmp_path):
    """An older ``OUT/kernels.json`` names shapes without heads and has no attention choice: the resumed run takes
    its layers and GELU as recorded and PyTorch's decode attention, and measures nothing."""
    from rlhf_env.accel import kernels

    (tmp_path / "kernels.json").write_text(json.dumps({"choices": [
        {"shape": "1 layer, width 32, inner 128, vocab 40", "layers": True, "decode": False, "gelu": False,
         "speedup": {"layers": 1.3, "decode": 0.9}, "source": "measured"}]}))
    kernels.restore(tmp_path)
    choice = kernels.choose(SimpleNamespace(n_embd=32, n_head=4, n_inner=None, vocab_size=40))
    assert (choice.shape, choice.layers, choice.decode, choice.gelu, choice.attention, choice.source) == (
        "1 layer, width 32, 4 heads, inner 128, vocab 40", True, False, False, False, "run")
    assert measured_kernels == []


def test_a_run_recorded_before_the_draw_and_fused_passes_resumes_without_them(measured_kernels, tmp_path):
    """A ``OUT/kernels.json`` of the version before the C draw and the decoder's fused passes: the resumed run keeps
    its recorded C kernels and takes PyTorch's draw and unfused layers, which that run sampled with."""
    from rlhf_env.accel import kernels

    (tmp_path / "kernels.json").write_text(json.dumps({"choices": [
        {"shape": "1 layer, width 32, 4 heads, inner 128, vocab 40", "layers": False, "decode": False, "gelu": True,
         "attention": True, "packed_attention": True, "speedup": {"layers": 0.9, "decode": 0.9},
         "source": "measured"}]}))
    kernels.restore(tmp_path)
    choice = kernels.choose(SimpleNamespace(n_embd=32, n_head=4, n_inner=None, vocab_size=40))
    built = native.library() is not None
    assert (choice.gelu, choice.attention, choice.packed_attention, choice.sampling, choice.fused, choice.source) == (
        built, built, built, False, False, "run")
    assert measured_kernels == []
