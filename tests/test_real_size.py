"""Standard architectures at GPT-2 small's size, with random weights: their shapes, and one `rlhf ppo` iteration
through the command line with a policy, reference and reward model of that size."""

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from rlhf_env.cli import main
from rlhf_env.models import TOKENIZER_DIR, load_tokenizer
from rlhf_env.real_size import build_real_size, model_config, parameter_counts

ARCHS = [("gpt2-small", "gpt2"), ("llama", "llama")]


def test_gpt2_small_has_the_published_parameter_count_with_gpt2s_vocabulary():
    counts = parameter_counts("gpt2-small", load_tokenizer(TOKENIZER_DIR))
    assert counts["parameters_with_gpt2_vocab"] == 124_439_808  # GPT-2 small, as published
    assert counts["parameters"] == 124_439_808 - (50257 - 768) * 768  # only the (tied) embedding shrinks


def test_the_llama_style_model_has_grouped_query_attention_and_a_swiglu_mlp():
    from transformers import AutoModelForCausalLM

    config = model_config("llama", load_tokenizer(TOKENIZER_DIR))
    with torch.device("meta"):
        layer = AutoModelForCausalLM.from_config(config).model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (768, 768)
    assert layer.self_attn.k_proj.weight.shape == (256, 768)  # 4 key-value heads of 64 for 12 query heads
    assert layer.mlp.gate_proj.weight.shape == layer.mlp.up_proj.weight.shape == (2048, 768)
    assert config.hidden_act == "silu" and config.vocab_size == 768


def test_an_unknown_architecture_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown architecture 'gpt3'; choose one of \('gpt2-small', 'llama'\)"):
        model_config("gpt3", load_tokenizer(TOKENIZER_DIR))


@pytest.mark.slow
@pytest.mark.parametrize("arch, model_type", ARCHS, ids=[a for a, _ in ARCHS])
def test_rlhf_ppo_runs_one_iteration_with_real_size_policy_reference_and_reward(arch, model_type, tmp_path):
    paths = build_real_size(arch, tmp_path / "models")
    out = tmp_path / "ppo"
    policy, reward = str(paths["policy"]), str(paths["reward"])
    assert main(["ppo", "--policy", policy, "--reference", policy, "--reward", reward, "--iterations", "1",
                 "--batch_size", "8", "--group_size", "4", "--minibatch_size", "4", "--ppo_epochs", "1",
                 "--max_new_tokens", "8", "--eval_every", "0", "--final_eval_episodes", "8", "--save_every", "0",
                 "--weight_decay", "0", "--out", str(out)]) == 0  # no decay: only the gradient moves the weights
    result = json.loads((out / "result.json").read_text())  # the final held-out evaluation
    assert result["total_steps"] == 1 and result["kl"] > 0  # the trained policy has left its reference
    with open(out / "train.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert all(math.isfinite(float(row[k])) for k in ("pg_loss", "rm_score", "kl", "entropy"))
    assert float(row["grad_norm"]) > 0
    final = AutoConfig.from_pretrained(out / "final")
    assert (final.model_type, final.num_hidden_layers, final.hidden_size) == (model_type, 12, 768)
    start, end = load_file(paths["policy"] / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert start.keys() == end.keys()
    assert all(start[k].shape == end[k].shape for k in start)
    assert sum(not torch.equal(start[k], end[k]) for k in start) > len(start) / 2  # the update reached most tensors
