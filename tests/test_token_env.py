"""InstructToken-v0: the token-level view of the same KL-regularised objective."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlhf_env  # noqa: F401  (registers the envs)
from rlhf_env.envs.bandit import InstructBanditEnv
from rlhf_env.envs.token import InstructTokenEnv
from rlhf_env.sampling import sample
from tests.test_bandit_env import n_chars


@pytest.fixture
def kwargs(tiny_policy_dir, world_dir):
    return dict(reference=str(tiny_policy_dir), reward=n_chars, data=str(world_dir), prompts="ppo",
                max_prompt_tokens=64, max_new_tokens=12, kl_coef=0.2)


@pytest.mark.slow
@pytest.mark.filterwarnings("error:.*not within the")  # Gymnasium only warns when obs leave their space
def test_default_token_env_passes_gymnasium_and_sb3_checks():
    env = gym.make("InstructToken-v0")
    check_env(env.unwrapped)
    sb3_check_env(env.unwrapped)


@pytest.mark.filterwarnings("error:.*not within the")  # Gymnasium only warns when obs leave their space
def test_token_env_checks_and_determinism(kwargs):
    env = InstructTokenEnv(**kwargs)
    check_env(env)
    sb3_check_env(env)
    other = InstructTokenEnv(**kwargs)
    for e in (env, other):
        e.reset(seed=4)
    for token in (5, 9, 17):
        a, b = env.step(token), other.step(token)
        assert a[1] == b[1] and np.array_equal(a[0]["input_ids"], b[0]["input_ids"])


def run_episode(env, tokens, prompt_index):
    env.reset(options={"prompt_index": prompt_index})
    total, steps = 0.0, []
    for token in tokens:
        _, reward, terminated, truncated, info = env.step(int(token))
        total += reward
        steps.append(info)
        if terminated or truncated:
            return total, steps
    raise AssertionError("the episode did not end")


def test_return_plus_policy_term_equals_the_bandit_reward_exactly(kwargs, tiny_model, tokenizer):
    """Per episode: token-env return + kl_coef * sum -log pi(a_t) == bandit reward."""
    torch.manual_seed(7)
    policy = type(tiny_model)(tiny_model.config).eval()  # not the reference
    token_env, bandit = InstructTokenEnv(**kwargs), InstructBanditEnv(**kwargs)
    for index in range(6):
        prompt = token_env.scorer.prompts[index]
        action = sample(policy, tokenizer, [prompt], 12, 1.0, torch.Generator().manual_seed(index)).action(12)
        n = int((action["response_ids"][0] != tokenizer.pad_token_id).sum())
        total, steps = run_episode(token_env, action["response_ids"][0][:n], index)
        bandit.reset(options={"prompt_index": index})
        _, bandit_reward, _, _, info = bandit.step({k: v[0] for k, v in action.items()})
        policy_term = 0.2 * float(-action["logprobs"][0][:n].sum())
        assert total + policy_term == pytest.approx(bandit_reward, abs=1e-4)
        # The KV-cached per-token reference log-probs equal the bandit's full forward.
        np.testing.assert_allclose([s["ref_logprob"] for s in steps], info["ref_logprobs"][:n], atol=1e-4)


@pytest.mark.slow
def test_expected_return_plus_entropy_bonus_equals_expected_score_minus_kl(kwargs, tiny_model, tokenizer):
    """In expectation the agent's side is kl_coef * entropy (an entropy bonus): E[return + kl_coef * sum_t H_t]
    equals E[score - kl_coef * KL], the bandit's reward of the same responses, computed independently."""
    torch.manual_seed(7)
    policy = type(tiny_model)(tiny_model.config).eval()
    token_env, bandit = InstructTokenEnv(**kwargs), InstructBanditEnv(**kwargs)
    with_entropy, bandit_rewards = [], []
    rng = np.random.default_rng(0)
    for episode in range(60):
        obs, info = token_env.reset(seed=episode)
        total, entropy, tokens, logps, done = 0.0, 0.0, [], [], False
        while not done:
            ids = torch.from_numpy(obs["input_ids"][obs["attention_mask"] == 1])[None]
            with torch.no_grad():
                logp = torch.log_softmax(policy(ids).logits[0, -1].double(), -1).numpy()
            token = int(rng.choice(len(logp), p=np.exp(logp) / np.exp(logp).sum()))
            entropy += float(-(np.exp(logp) * logp).sum())
            tokens.append(token)
            logps.append(logp[token])
            obs, reward, terminated, truncated, _ = token_env.step(token)
            total += reward
            done = terminated or truncated
        with_entropy.append(total + 0.2 * entropy)
        action = {"response_ids": np.full(12, tokenizer.pad_token_id, np.int64), "logprobs": np.zeros(12, np.float32)}
        action["response_ids"][: len(tokens)], action["logprobs"][: len(tokens)] = tokens, logps
        bandit.reset(options={"prompt_index": info["prompt_index"]})
        bandit_rewards.append(bandit.step(action)[1])
    diff = np.array(with_entropy) - np.array(bandit_rewards)
    assert abs(diff.mean()) < 3 * diff.std() / np.sqrt(len(diff))
    assert np.std(bandit_rewards) > 10 * abs(diff.mean())  # the check is tight relative to the signal


def test_episode_ends_on_eos_or_at_the_length_limit(kwargs, tokenizer):
    env = InstructTokenEnv(**kwargs)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(tokenizer.eos_token_id)
    assert terminated and not truncated and info["eos"] and info["response_length"] == 1
    env.reset(seed=0)
    for _ in range(12):
        _, reward, terminated, truncated, info = env.step(5)
    assert terminated and not truncated and info["score"] == -1.0  # scored: the end of the task, not a time limit


@pytest.mark.parametrize("bad, message", [({"render_mode": "human"}, "render_mode must be None or 'ansi'"),
                                          ({"mask_top_p": 5}, r"mask_top_p must be in \(0, 1\], got 5"),
                                          ({"mask_top_k": 0}, "mask_top_k must be None or >= 1")])
def test_bad_arguments_are_clear_errors(kwargs, bad, message):
    with pytest.raises(ValueError, match=message):
        InstructTokenEnv(**kwargs, **bad)


def test_a_pad_ends_the_episode_without_eos_as_in_the_bandit(kwargs, tokenizer):
    env = InstructTokenEnv(**kwargs)
    env.reset(seed=0)
    env.step(5)
    _, reward, terminated, truncated, info = env.step(tokenizer.pad_token_id)
    assert terminated and not truncated and not info["eos"]
    assert info["response_length"] == 1 and info["ref_logprob"] == 0.0  # the PAD is not part of the response
    assert info["score"] == -1.0 and reward == -1.0  # missing_eos_penalty, and no KL term for the PAD


def test_action_masks_are_the_reference_nucleus_or_top_k(kwargs):
    env = InstructTokenEnv(mask_top_k=7, **kwargs)
    env.reset(seed=0)
    assert env.action_masks().sum() == 7
    env = InstructTokenEnv(mask_top_p=0.5, **kwargs)
    env.reset(seed=0)
    mask = env.action_masks()
    probs = env._ref_logp.exp().numpy()
    assert probs[mask].sum() >= 0.5
    assert probs[mask].sum() - probs[mask].min() < 0.5  # minimal: dropping the least likely falls short


def test_bad_token_and_step_before_reset_are_clear_errors(kwargs):
    env = InstructTokenEnv(**kwargs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        env.step(10**6)
