"""InstructBandit-v0 and its native vector env: the Gymnasium contract, exact KL, bad input."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from datasets import Dataset
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import rlhf_env  # noqa: F401  (registers the envs)
from rlhf_env.envs.bandit import InstructBanditEnv
from rlhf_env.rewards import RewardError
from rlhf_env.sampling import positions, response_mask, sample


def draw(space, seed: int = 0):
    """A seeded draw from a space (``space.sample()`` alone uses an unseeded generator)."""
    space.seed(seed)
    return space.sample()

def n_chars(prompts, responses):
    return [0.1 * len(r) for r in responses]


@pytest.fixture
def kwargs(tiny_policy_dir, world_dir):
    return dict(reference=str(tiny_policy_dir), reward=n_chars, data=str(world_dir), prompts="ppo",
                max_prompt_tokens=64, max_new_tokens=16)


def policy_actions(model, tokenizer, prompts, R, seed=0, temperature=1.0):
    """Responses and log-probs of a policy, as action arrays of width R."""
    action = sample(model, tokenizer, prompts, R, temperature, torch.Generator().manual_seed(seed)).action(R)
    return action["response_ids"], action["logprobs"]


@pytest.mark.slow
@pytest.mark.filterwarnings("error:.*not within the")  # Gymnasium only warns when obs leave their space
def test_default_env_passes_gymnasium_and_sb3_checks():
    env = gym.make("InstructBandit-v0")
    check_env(env.unwrapped)
    sb3_check_env(env.unwrapped)


@pytest.mark.filterwarnings("error:.*not within the")  # Gymnasium only warns when obs leave their space
def test_env_checks_pass_on_a_tiny_setup(kwargs):
    env = InstructBanditEnv(**kwargs)
    check_env(env)
    sb3_check_env(env)


def test_same_seed_same_actions_same_everything(kwargs):
    a, b = InstructBanditEnv(**kwargs), InstructBanditEnv(**kwargs)
    action = draw(a.action_space)
    for seed in (0, 1, 2):
        (obs_a, info_a), (obs_b, info_b) = a.reset(seed=seed), b.reset(seed=seed)
        assert all(np.array_equal(obs_a[k], obs_b[k]) for k in obs_a) and info_a == info_b
        ra, rb = a.step(action)[1], b.step(action)[1]
        assert ra == rb


def test_reward_is_score_minus_kl_computed_independently(kwargs, tiny_model, tokenizer):
    env = InstructBanditEnv(kl_coef=0.3, **kwargs)
    obs, info = env.reset(seed=3)
    torch.manual_seed(1)
    acting = type(tiny_model)(tiny_model.config).eval()  # a different policy than the reference
    ids, logp = policy_actions(acting, tokenizer, [info["prompt"]], 16)
    _, reward, terminated, truncated, out = env.step({"response_ids": ids[0], "logprobs": logp[0]})

    n = out["response_length"]
    prompt = tokenizer(info["prompt"], return_tensors="pt")["input_ids"]
    full = torch.cat([prompt, torch.from_numpy(ids[:, :n])], 1)
    with torch.no_grad():  # the reference's log-probs, recomputed without padding
        logits = tiny_model(full).logits[0, prompt.shape[1] - 1:-1]
    ref = torch.log_softmax(logits, -1).gather(1, full[0, prompt.shape[1]:, None])[:, 0].numpy()
    kl = float(np.sum(logp[0, :n] - ref))
    score = n_chars(None, [out["response"]])[0] if out["eos"] else -1.0
    assert out["kl"] == pytest.approx(kl, abs=1e-4)
    assert reward == pytest.approx(score - 0.3 * kl, abs=1e-4)
    assert terminated and not truncated
    np.testing.assert_allclose(out["ref_logprobs"][:n], ref, atol=1e-5)
    assert (out["log_ratio"][n:] == 0).all()


def test_kl_is_zero_when_the_policy_is_the_reference(kwargs, tiny_model, tokenizer):
    env = InstructBanditEnv(**kwargs)
    for seed in range(3):
        _, info = env.reset(seed=seed)
        ids, logp = policy_actions(tiny_model, tokenizer, [info["prompt"]], 16, seed=seed)
        out = env.step({"response_ids": ids[0], "logprobs": logp[0]})[4]
        assert abs(out["kl"]) < 1e-4 and np.abs(out["log_ratio"]).max() < 1e-5


def test_an_agent_without_logprobs_passes_zeros_and_pays_the_reference_surprise(kwargs):
    env = InstructBanditEnv(kl_coef=0.1, **kwargs)
    env.reset(seed=0)
    action = draw(env.action_space)
    action["logprobs"][:] = 0.0
    _, reward, _, _, out = env.step(action)
    n = out["response_length"]
    assert out["kl"] == pytest.approx(-out["ref_logprobs"][:n].sum(), rel=1e-5)
    assert reward == pytest.approx(out["score"] - 0.1 * out["kl"], rel=1e-5)


def test_vector_env_matches_single_env_steps(kwargs, tiny_model, tokenizer):
    vec = gym.make_vec("InstructBandit-v0", num_envs=64, **kwargs)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, info = vec.reset(seed=0)
    prompts = [vec.unwrapped.scorer.prompts[i] for i in info["prompt_index"]]
    ids, logp = policy_actions(tiny_model, tokenizer, prompts, 16, seed=5)
    next_obs, rewards, terminated, truncated, vinfo = vec.step({"response_ids": ids, "logprobs": logp})
    assert terminated.all() and not truncated.any()
    single = InstructBanditEnv(**kwargs)
    for i, index in enumerate(info["prompt_index"]):
        single.reset(options={"prompt_index": int(index)})
        _, r, _, _, out = single.step({"response_ids": ids[i], "logprobs": logp[i]})
        assert r == pytest.approx(rewards[i], abs=1e-5)
        assert out["kl"] == pytest.approx(vinfo["final_info"]["kl"][i], abs=1e-5)
    np.testing.assert_array_equal(vinfo["final_obs"]["input_ids"], obs["input_ids"])
    assert vec.observation_space.contains(next_obs)


def test_vector_env_groups_show_each_prompt_to_consecutive_sub_envs(kwargs):
    """group_size k: num_envs / k prompts per step, each shown to k consecutive sub-envs, at reset and after
    every step; the same seed draws the same groups; k must divide num_envs."""
    vec = gym.make_vec("InstructBandit-v0", num_envs=12, group_size=4, **kwargs)
    obs, info = vec.reset(seed=3)
    groups = info["prompt_index"].reshape(3, 4)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) > 1
    eos = vec.unwrapped.scorer.eos_id
    action = {"response_ids": np.full((12, 16), eos), "logprobs": np.zeros((12, 16), np.float32)}
    _, _, _, _, step_info = vec.step(action)
    after = step_info["prompt_index"].reshape(3, 4)
    assert (after == after[:, :1]).all()
    again = gym.make_vec("InstructBandit-v0", num_envs=12, group_size=4, **kwargs)
    np.testing.assert_array_equal(again.reset(seed=3)[1]["prompt_index"], info["prompt_index"])
    with pytest.raises(ValueError, match="group_size must be a positive divisor of num_envs"):
        gym.make_vec("InstructBandit-v0", num_envs=12, group_size=5, **kwargs)


def test_reset_options_fix_the_prompt_and_render_shows_the_episode(kwargs):
    env = InstructBanditEnv(render_mode="ansi", **kwargs)
    _, info = env.reset(options={"prompt_index": 7})
    assert info["prompt_index"] == 7 and info["prompt"] == env.scorer.prompts[7]
    env.step(draw(env.action_space))
    text = env.render()
    assert env.scorer.prompts[7] in text and "reward" in text and "KL" in text


@pytest.mark.parametrize("change, error, message", [
    (lambda a: {**a, "response_ids": a["response_ids"][:5]}, ValueError, "max_new_tokens=16"),
    (lambda a: {**a, "response_ids": np.append(a["response_ids"], 1)}, ValueError, "longer than max_new_tokens"),
    (lambda a: {**a, "response_ids": a["response_ids"].astype(np.float32)}, ValueError, "must be integers"),
    (lambda a: {**a, "response_ids": np.full(16, 10**6)}, ValueError, "outside the vocabulary"),
    (lambda a: {**a, "logprobs": np.full(16, np.nan, np.float32)}, ValueError, "NaN or inf"),
    (lambda a: {**a, "logprobs": np.full(16, 0.5, np.float32)}, ValueError, "must be <= 0"),
    (lambda a: a["response_ids"], ValueError, "dict with 'response_ids' and 'logprobs'"),
])
def test_bad_actions_are_clear_errors(kwargs, change, error, message):
    env = InstructBanditEnv(**kwargs)
    env.reset(seed=0)
    action = draw(env.action_space)
    action["response_ids"][0] = 5  # a real first token, so the response is not empty
    with pytest.raises(error, match=message):
        env.step(change(action))


def test_step_before_reset_is_a_clear_error(kwargs):
    env = InstructBanditEnv(**kwargs)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(draw(env.action_space))
    env.reset(seed=0)
    env.step(draw(env.action_space))
    with pytest.raises(RuntimeError, match="reset"):  # the episode is over after one step
        env.step(draw(env.action_space))


def test_bad_datasets_and_rewards_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match="empty"):
        InstructBanditEnv(**{**kwargs, "prompts": Dataset.from_dict({"prompt": []})})
    with pytest.raises(ValueError, match=r"unknown prompt split 'ppoo' \(did you mean 'ppo'\?\)\. The bundled splits"):
        InstructBanditEnv(**{**kwargs, "prompts": "ppoo"})  # a typo never reaches the hub
    with pytest.raises(ValueError, match=r"unknown prompt split 'trainn'\. The bundled splits are sft, valid"):
        InstructBanditEnv(**{**kwargs, "prompts": "trainn"})
    with pytest.raises(ValueError, match="no column 'prompt'"):
        InstructBanditEnv(**{**kwargs, "prompts": Dataset.from_dict({"text": ["a"]})})
    long = Dataset.from_dict({"prompt": ["Q: hi\nA:", "Q: " + "apple " * 100 + "\nA:"]})  # ragged once tokenized
    with pytest.raises(ValueError, match="max_prompt_tokens=64"):
        InstructBanditEnv(**{**kwargs, "prompts": long})
    env = InstructBanditEnv(**{**kwargs, "reward": lambda p, r: [float("nan")] * len(r)})
    env.reset(seed=0)
    with pytest.raises(RewardError, match="non-finite"):
        env.step(draw(env.action_space))


def test_custom_prompt_dataset_without_world_columns(kwargs):
    env = InstructBanditEnv(**{**kwargs, "prompts": Dataset.from_dict({"prompt": ["Q: hi\nA:", "Q: yo\nA:"]})})
    _, info = env.reset(seed=0)
    assert info["prompt"] in ("Q: hi\nA:", "Q: yo\nA:") and info["customer_id"] == ""
    assert np.isfinite(env.step(draw(env.action_space))[1])


def test_position_ids_skip_left_padding():
    assert positions(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]


def test_sb3_vec_env_adapter(kwargs):
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    from rlhf_env.envs.sb3 import make_sb3_vec_env

    venv = make_sb3_vec_env(num_envs=4, **kwargs)
    assert isinstance(venv, VecEnv) and venv.num_envs == 4
    venv.seed(0)
    first = venv.reset()
    venv.seed(0)
    assert np.array_equal(venv.reset()["input_ids"], first["input_ids"])  # seeding applies at reset
    actions = {k: np.stack([draw(s, i) for i in range(4)]) for k, s in venv.action_space.spaces.items()}
    obs, rewards, dones, infos = venv.step(actions)
    assert rewards.dtype == np.float32 and rewards.shape == (4,) and dones.all()
    assert len(infos) == 4 and np.array_equal(infos[0]["terminal_observation"]["input_ids"], first["input_ids"][0])
    assert rewards[2] == pytest.approx(infos[2]["score"] - 0.05 * infos[2]["kl"], rel=1e-5)
    assert venv.get_attr("num_envs") == [4] * 4


def test_beta_and_reward_change_through_the_public_contract(kwargs, tiny_model, tokenizer):
    """``kl_coef`` and ``reward`` are settable between steps, also through Gymnasium's wrappers, and the next
    reward follows them exactly."""
    env = gym.make("InstructBandit-v0", **kwargs)  # wrapped (order enforcing, passive checker)
    obs, info = env.reset(seed=3)
    ids, logprobs = policy_actions(tiny_model, tokenizer, [info["prompt"]], 16)
    action = {"response_ids": ids[0], "logprobs": logprobs[0]}
    before = env.step(action)[4]
    env.set_wrapper_attr("kl_coef", 0.5)
    env.unwrapped.reward = lambda prompts, responses: [7.0] * len(responses)
    env.reset(seed=3)
    _, reward, _, _, after = env.step(action)
    assert env.unwrapped.kl_coef == 0.5 and after["kl"] == pytest.approx(before["kl"])
    assert after["rm_score"] == 7.0 and before["rm_score"] != 7.0
    assert reward == pytest.approx(after["score"] - 0.5 * before["kl"])
    with pytest.raises(ValueError, match="kl_coef .* must be a finite number >= 0"):
        env.unwrapped.kl_coef = -0.1


def test_vector_env_state_restores_the_run_exactly(kwargs, tiny_model, tokenizer):
    """get_state/set_state: a fresh env restored from a saved state draws the same prompts from then on."""
    def run(env, obs, steps):
        seen = []
        for _ in range(steps):
            prompts = [env.unwrapped.scorer.prompts[i] for i in env.unwrapped.get_state()["prompt_index"]]
            ids, logprobs = policy_actions(tiny_model, tokenizer, prompts, 16)
            obs, rewards, _, _, info = env.step({"response_ids": ids, "logprobs": logprobs})
            seen.append((info["prompt_index"].tolist(), rewards))
        return obs, seen

    a = gym.make_vec("InstructBandit-v0", num_envs=4, group_size=2, **kwargs)
    obs, _ = a.reset(seed=5)
    obs, _ = run(a, obs, 2)
    state = a.unwrapped.get_state()
    _, expected = run(a, obs, 3)
    b = gym.make_vec("InstructBandit-v0", num_envs=4, group_size=2, **kwargs)
    b.reset(seed=99)  # another seed: everything that matters must come from the state
    obs_b, info_b = b.unwrapped.set_state(json.loads(json.dumps(state)))  # JSON-able, as in a checkpoint
    assert info_b["prompt_index"].tolist() == state["prompt_index"]
    _, got = run(b, obs_b, 3)
    assert [p for p, _ in got] == [p for p, _ in expected]
    assert all(np.allclose(r, s) for (_, r), (_, s) in zip(got, expected))
    with pytest.raises(ValueError, match="before the first reset"):
        gym.make_vec("InstructBandit-v0", num_envs=4, **kwargs).unwrapped.set_state({**state, "prompt_index": None})


def test_single_env_state_restores_the_pending_prompt(kwargs):
    a, b = InstructBanditEnv(**kwargs), InstructBanditEnv(**kwargs)
    a.reset(seed=1)
    state = a.get_state()
    expected = [a.reset()[1]["prompt_index"] for _ in range(3)]
    obs, info = b.set_state(state)
    assert info["prompt_index"] == state["prompt_index"]
    assert np.array_equal(obs["input_ids"], a.scorer.observation(state["prompt_index"])["input_ids"])
    assert [b.reset()[1]["prompt_index"] for _ in range(3)] == expected


def test_a_pad_ends_a_response_without_eos_in_the_sampler_and_the_env(kwargs, tokenizer):
    """One rule for where a response ends (``response_mask``): the env and the sampler agree."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    assert eos != pad
    ids = torch.tensor([[5, 6, eos, pad], [5, pad, 6, eos], [5, 6, 7, 8], [eos, pad, pad, pad]])
    mask, ended = response_mask(ids, eos, pad)
    assert mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, False, True]
    env = InstructBanditEnv(**kwargs)
    env_mask, env_eos = env.scorer.response_mask(ids.numpy())
    assert env_mask.tolist() == mask.tolist() and env_eos.tolist() == ended.tolist()


@pytest.mark.slow
def test_async_vector_env_steps_the_envs_in_worker_processes_as_the_sync_one_does(kwargs):
    """``vectorization_mode="async"``: each sub-env, with its reference and reward, lives in a worker process,
    started with "spawn" (forking a process whose torch has run OpenMP threads can deadlock the child)."""
    envs = {mode: gym.make_vec("InstructBandit-v0", num_envs=2, vectorization_mode=mode, kl_coef=0.1,
                               vector_kwargs={"context": "spawn"} if mode == "async" else {}, **kwargs)
            for mode in ("sync", "async")}
    assert type(envs["async"]).__name__ == "AsyncVectorEnv"
    shape = envs["sync"].single_action_space["response_ids"].shape
    rng = np.random.default_rng(0)
    action = {"response_ids": rng.integers(5, 50, size=(2, *shape)), "logprobs": np.full((2, *shape), -2.0, np.float32)}
    out = {}
    for mode, env in envs.items():
        obs, _ = env.reset(seed=0)
        out[mode] = (obs, *env.step(action)[1:])
        env.close()
    np.testing.assert_array_equal(out["sync"][0]["input_ids"], out["async"][0]["input_ids"])
    assert out["sync"][0]["input_ids"][0].tolist() != out["sync"][0]["input_ids"][1].tolist()  # two prompts
    np.testing.assert_allclose(out["async"][1], out["sync"][1], atol=1e-6)  # rewards
    assert np.abs(out["sync"][1]).min() > 0.1
    np.testing.assert_allclose(out["async"][4]["kl"], out["sync"][4]["kl"], atol=1e-6)
