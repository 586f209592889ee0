"""gym.make's fast path: the bundled models in plain torch (``rlhf_env.accel.gpt2``) and their tokenizer through
``tokenizers`` alone compute what transformers computes, and making the default env imports neither transformers
nor datasets."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

import rlhf_env  # noqa: F401  (registers the envs)
from rlhf_env.accel import onednn
from rlhf_env.accel.gpt2 import TorchGPT2, load_torch_gpt2
from rlhf_env.accel.switch import switched_off
from rlhf_env.models import MODELS_DIR, load_policy, load_reference, new_model, save_policy
from rlhf_env.sampling import encode_prompts, positions, response_logprobs, sample_from_ids
from rlhf_env.tokenizer import JSONTokenizer
from tests.test_sampling import PROMPTS

from .conftest import TINY_DIMS


@pytest.mark.parametrize("use_onednn", [True, False] if onednn.kernel_works() else [False])
@pytest.mark.parametrize("overrides", [{}, {"scale_attn_by_inverse_layer_idx": True, "layer_norm_epsilon": 1e-3,
                                            "n_inner": 48, "activation_function": "gelu_pytorch_tanh"}])
def test_torch_gpt2_gives_transformers_log_probs(tokenizer, tmp_path, overrides, use_onednn, monkeypatch):
    torch.manual_seed(0)
    save_policy(new_model(TINY_DIMS, tokenizer, **overrides), tokenizer, tmp_path)
    hf, _ = load_policy(str(tmp_path), accel=False)
    monkeypatch.setattr(onednn, "MIN_ROWS", 0)  # oneDNN even for these tiny layers
    calls = []
    monkeypatch.setattr(onednn, "linear", lambda *args: calls.append(1) or onednn._Linear.apply(*args))
    ours = load_torch_gpt2(tmp_path, onednn=use_onednn)
    ids, mask = encode_prompts(tokenizer, PROMPTS)  # left-padded, of different lengths
    extra = torch.randint(2, len(tokenizer), (len(PROMPTS), 6), generator=torch.Generator().manual_seed(0))
    ids, mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    with torch.no_grad():
        for R in (6, ids.shape[1] - 1):  # the last tokens only (logits_to_keep), and every one after the first
            real = mask[:, -R:] * mask[:, -R - 1:-1]  # a real token predicted from a real one (not from padding)
            want = response_logprobs(hf, ids, mask, R, temperature=0.7)[0] * real
            got = response_logprobs(ours, ids, mask, R, temperature=0.7)[0] * real
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        real = mask.bool()
        torch.testing.assert_close(ours(ids, mask, positions(mask)).logits[real],
                                   hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[real],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(extra).logits, hf(input_ids=extra).logits, atol=1e-5, rtol=1e-5)  # defaults
    assert bool(calls) == use_onednn


def test_the_json_tokenizer_is_the_bundled_tokenizer():
    path = MODELS_DIR / "sft"
    ours, hf = JSONTokenizer(path), AutoTokenizer.from_pretrained(path)
    texts = ["Q: what is 12 plus 30 ?\nA: 42 .", " let me know if you need more .", "", "<|endoftext|> hi"]
    assert ours(texts)["input_ids"] == hf(texts)["input_ids"]
    assert ours(texts[0])["input_ids"] == hf(texts[0])["input_ids"]
    ids = np.random.default_rng(0).integers(0, len(hf), (200, 24))
    ids[:, 5] = hf.eos_token_id
    ids[:, 9] = hf.pad_token_id
    for skip in (True, False):
        assert [ours.decode(row, skip_special_tokens=skip) for row in ids] == [
            hf.decode(row, skip_special_tokens=skip) for row in ids]
    assert ours.get_vocab() == hf.get_vocab() and len(ours) == len(hf)
    assert (ours.eos_token_id, ours.pad_token_id) == (hf.eos_token_id, hf.pad_token_id) != (None, None)


def bandit_steps(env, policy, tokenizer):
    """One seeded step of the vector env with SFT samples (most end with EOS), then one with a random action (no
    EOS, zero log-probs): rewards and final infos."""
    out = []
    obs, _ = env.reset(seed=0)
    samples = sample_from_ids(policy, tokenizer, torch.from_numpy(obs["input_ids"]),
                              torch.from_numpy(obs["attention_mask"]), 48, generator=torch.Generator().manual_seed(0))
    actions = samples.action(48)
    for _ in range(2):
        obs, rewards, _, _, info = env.step(actions)
        out.append((rewards, info["final_info"]))
        env.action_space.seed(0)
        actions = env.action_space.sample()
        actions["logprobs"][:] = 0.0
    return out


def test_the_default_env_scores_what_it_scores_through_transformers():
    policy, tokenizer = load_policy("sft")
    fast = gym.make_vec("InstructBandit-v0", num_envs=16)
    fast.unwrapped.scorer.check_policy(tokenizer, policy)  # the JSON tokenizer is the policy's
    with switched_off():  # RLHF_ENV_ACCEL=0: the reference and the RM through transformers
        slow = gym.make_vec("InstructBandit-v0", num_envs=16)
    assert type(fast.unwrapped.scorer.model) is TorchGPT2 and type(fast.unwrapped.reward.model.lm) is TorchGPT2
    assert type(slow.unwrapped.scorer.model) is not TorchGPT2
    steps = list(zip(bandit_steps(fast, policy, tokenizer), bandit_steps(slow, policy, tokenizer)))
    eos = np.concatenate([info["eos"] for (_, info), _ in steps])
    assert eos.any() and not eos.all()  # the RM's scores and the missing-EOS penalty
    for (rewards, info), (want_rewards, want) in steps:
        assert list(info["response"]) == list(want["response"])
        for key in ("rm_score", "kl"):
            np.testing.assert_allclose(info[key], want[key], atol=1e-4, rtol=0, err_msg=key)
        # float32 log-probs near -20 round apart by ~1e-5 between the kernels a machine chooses (oneDNN or MKL)
        np.testing.assert_allclose(info["ref_logprobs"], want["ref_logprobs"], atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(rewards, want_rewards, atol=1e-4, rtol=0)


def test_the_torch_reference_samples_what_the_transformers_one_does():
    """PPO's held-out judge samples the env's reference (with the policy's tokenizer): the same tokens as
    ``load_policy``'s model."""
    reference, _ = load_reference("sft")
    policy, tokenizer = load_policy("sft")
    ids, mask = encode_prompts(tokenizer, PROMPTS)
    a, b = (sample_from_ids(m, tokenizer, ids, mask, 16, 1.0, torch.Generator().manual_seed(0))
            for m in (reference, policy))
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)


def test_making_and_stepping_the_default_envs_imports_neither_transformers_nor_datasets():
    code = """
import sys
import gymnasium as gym, rlhf_env
for name in ("InstructBandit-v0", "InstructToken-v0"):
    env = gym.make(name)
    env.reset(seed=0)
    env.action_space.seed(0)
    action = env.action_space.sample()
    if isinstance(action, dict):
        action["logprobs"][:] = 0.0
    env.step(action)
print(sorted(m for m in ("transformers", "datasets", "sympy") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
