"""agents/sb3.py: SB3 policies around a Hugging Face causal LM, on the token env and, through ResponseActions,
on the bandit; and the examples that use them."""

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import obs_as_tensor

from agents.sb3 import (
    LMActorCriticPolicy,
    LMSequencePolicy,
    MaskableLMActorCriticPolicy,
    ResponseActions,
    kl_regularised_return,
    make_sb3_bandit,
    make_sb3_token_env,
    mask_buffer_bytes,
)
from rlhf_env.cli import main as rlhf
from rlhf_env.envs.sb3 import make_sb3_vec_env
from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.models import load_policy, new_model, save_policy
from tests.conftest import TINY_DIMS
from tests.test_bandit_env import n_chars
from tests.test_ppo import brevity, perturb

ROOT = Path(__file__).parents[1]
T = 8  # max_new_tokens throughout


@pytest.fixture
def env_kwargs(tiny_policy_dir, world_dir):
    return dict(reference=str(tiny_policy_dir), reward=n_chars, data=str(world_dir), prompts="ppo",
                max_prompt_tokens=64, max_new_tokens=T, kl_coef=0.2)


@pytest.fixture
def other_policy_dir(tiny_model, tokenizer, tmp_path):
    """A policy with the reference's tokenizer but other weights: its KL to the reference is not 0."""
    torch.manual_seed(7)
    model = type(tiny_model)(tiny_model.config).eval()
    save_policy(model, tokenizer, tmp_path / "other")
    return tmp_path / "other"


def token_model(env_kwargs, algo=PPO, policy=LMActorCriticPolicy, n_envs=2, lm=None, venv=None, **kwargs):
    venv = venv or make_sb3_token_env(n_envs, **env_kwargs)
    policy_kwargs = {"lm": lm or env_kwargs["reference"], **kwargs.pop("policy_kwargs", {})}
    settings = dict(n_steps=8, batch_size=8, n_epochs=1, seed=0)
    return algo(policy, venv, policy_kwargs=policy_kwargs, **{**settings, **kwargs})


def bandit_model(env_kwargs, algo=PPO, n_envs=4, lm=None, venv=None, **kwargs):
    venv = venv or make_sb3_bandit(n_envs, **env_kwargs)
    policy_kwargs = {"lm": lm or env_kwargs["reference"], **kwargs.pop("policy_kwargs", {})}
    settings = dict(n_steps=1, seed=0, **({"batch_size": venv.num_envs, "n_epochs": 1} if algo is PPO else {}))
    return algo(LMSequencePolicy, venv, policy_kwargs=policy_kwargs, **{**settings, **kwargs})


def lm_next_token_logp(model, ids: np.ndarray, mask: np.ndarray, temperature: float = 1.0) -> torch.Tensor:
    """log pi(. | context) of the next token, from the LM run on the row's attended tokens alone (no padding)."""
    context = torch.from_numpy(ids[mask == 1])[None]
    with torch.no_grad():
        return torch.log_softmax(model(context).logits[0, -1] / temperature, -1)


# ---------------------------------------------------------------- the token env's policies

@pytest.mark.parametrize("algo, policy", [(PPO, LMActorCriticPolicy), (MaskablePPO, MaskableLMActorCriticPolicy)])
def test_token_policy_is_the_pretrained_lm_with_its_own_head(env_kwargs, tiny_policy_dir, algo, policy):
    model = token_model(env_kwargs, algo, policy)
    p, (fresh, _) = model.policy, load_policy(tiny_policy_dir)
    assert p.action_net is p.lm.get_output_embeddings()
    lm_state = p.lm.state_dict()
    assert all(torch.equal(lm_state[k], v) for k, v in fresh.state_dict().items())  # no SB3 init touched it
    # The only parameters besides the LM's: the value head, zero-initialised. No new V x d layer.
    extra = {n: q for n, q in p.named_parameters() if not n.startswith("features_extractor.lm.")}
    assert set(extra) == {"value_net.linear.weight", "value_net.linear.bias"}
    assert all((q == 0).all() for q in extra.values())
    assert {id(q) for q in p.lm.parameters()} <= {id(q) for g in p.optimizer.param_groups for q in g["params"]}

    # The logits are the LM's next-token logits, whatever the padding: a left-padded prompt, then a response
    # right-padded to max_new_tokens (positions come from the attention mask).
    venv = model.get_env()
    obs = venv.reset()
    eos = fresh.config.eos_token_id
    for tokens in ([5, 5], [eos, 9], [17, 17], None):  # sub-env 0 ends its response and starts another
        log_probs = p.get_distribution(obs_as_tensor(obs, "cpu")).distribution.logits
        for i in range(venv.num_envs):
            want = lm_next_token_logp(fresh, obs["input_ids"][i], obs["attention_mask"][i])
            torch.testing.assert_close(log_probs[i], want, atol=1e-5, rtol=0)
        if tokens is not None:
            obs = venv.step(np.array(tokens))[0]
    assert obs["attention_mask"][:, 64:].sum(1).tolist() == [1, 3] and (obs["attention_mask"][:, :64] == 0).any()


def test_token_policy_divides_the_logits_by_its_temperature(env_kwargs, tiny_policy_dir):
    model = token_model(env_kwargs, policy_kwargs={"temperature": 1.7})
    obs = model.get_env().reset()
    log_probs = model.policy.get_distribution(obs_as_tensor(obs, "cpu")).distribution.logits
    fresh, _ = load_policy(tiny_policy_dir)
    want = lm_next_token_logp(fresh, obs["input_ids"][0], obs["attention_mask"][0], temperature=1.7)
    torch.testing.assert_close(log_probs[0], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bad, message", [({"ortho_init": True}, "ortho_init=True would overwrite the pretrained"),
                                          ({"net_arch": [64]}, "sets net_arch itself"),
                                          ({"temperature": 0.0}, r"temperature must be > 0")])
def test_settings_that_would_change_the_lm_are_refused(env_kwargs, bad, message):
    with pytest.raises(ValueError, match=message):
        token_model(env_kwargs, policy_kwargs=bad)


def test_an_lm_with_another_vocabulary_is_refused(env_kwargs, tokenizer, tmp_path):
    save_policy(new_model(TINY_DIMS, tokenizer, vocab_size=len(tokenizer) + 8), tokenizer, tmp_path / "wide")
    with pytest.raises(ValueError, match=f"scores {len(tokenizer) + 8} tokens but the env's actions range over"):
        token_model(env_kwargs, lm=str(tmp_path / "wide"))


def test_dropout_stays_off_in_sb3_training_mode(env_kwargs, tokenizer, tmp_path):
    torch.manual_seed(0)
    dropout = dict(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    save_policy(new_model(TINY_DIMS, tokenizer, **dropout), tokenizer, tmp_path / "dropout")
    model = token_model(env_kwargs, lm=str(tmp_path / "dropout"))
    obs = obs_as_tensor(model.get_env().reset(), "cpu")
    model.policy.set_training_mode(True)  # what PPO.train() does
    actions = torch.tensor([3, 4])
    first, second = (model.policy.evaluate_actions(obs, actions)[1] for _ in range(2))
    torch.testing.assert_close(first, second, atol=0, rtol=0)


class RecordRewards(BaseCallback):
    def __init__(self):
        super().__init__()
        self.rewards = []

    def _on_step(self) -> bool:
        self.rewards.append(self.locals["rewards"].copy())
        return True


def test_a_response_at_the_length_limit_is_terminal_for_sb3(env_kwargs, tokenizer):
    """At max_new_tokens the response is finished and scored: SB3 must not add gamma * V(final observation)."""
    model = token_model({**env_kwargs, "reward": brevity}, n_envs=1, n_steps=2 * T)
    perturb(model.policy.value_net, 1.0)  # V != 0 everywhere
    head = model.policy.lm.get_output_embeddings().weight.data
    head[[tokenizer.eos_token_id, tokenizer.pad_token_id]] -= 100  # neither EOS nor PAD: T tokens each
    record = RecordRewards()
    model.learn(2 * T, callback=record)
    assert [info["l"] for info in model.ep_info_buffer] == [T, T]  # two responses ended by the limit
    np.testing.assert_array_equal(model.rollout_buffer.rewards[:, 0], np.concatenate(record.rewards))


class RecordMasks(BaseCallback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def _on_step(self) -> bool:
        self.steps.append((self.locals["actions"].copy(), self.locals["action_masks"].copy()))
        return True


def test_maskable_ppo_never_takes_a_masked_action_and_its_buffer_is_the_stated_size(env_kwargs):
    venv = make_sb3_token_env(2, mask_top_k=3, **env_kwargs)
    model = token_model(env_kwargs, MaskablePPO, MaskableLMActorCriticPolicy, venv=venv, n_steps=16, batch_size=16)
    obs = obs_as_tensor(venv.reset(), "cpu")
    masks = np.stack(venv.env_method("action_masks"))
    unmasked = model.policy.get_distribution(obs).distribution.probs
    assert (unmasked * torch.from_numpy(masks)).sum(1).max() < 0.5  # a policy ignoring the masks would break them
    masked = model.policy.get_distribution(obs, action_masks=masks).distribution.probs
    assert (masked[~torch.from_numpy(masks)] == 0).all()

    record = RecordMasks()
    model.learn(64, callback=record)
    assert len(record.steps) == 64 // 2
    for actions, step_masks in record.steps:
        assert step_masks.sum(1).tolist() == [3, 3]
        assert step_masks[np.arange(2), actions].all()

    V = len(venv.get_attr("scorer")[0].tokenizer)
    assert model.rollout_buffer.action_masks.nbytes == mask_buffer_bytes(16, 2, V)
    assert mask_buffer_bytes(2048, 1, 768) == 6_291_456  # the bundled vocabulary, SB3's default n_steps


@pytest.mark.parametrize("kind", ["token", "bandit"])
def test_ppo_save_and_load_round_trip_the_trained_policy(env_kwargs, tiny_policy_dir, tmp_path, kind):
    model = token_model(env_kwargs, learning_rate=1e-2) if kind == "token" else bandit_model(env_kwargs,
                                                                                             learning_rate=1e-2)
    model.learn(16)
    venv = model.get_env()
    obs = obs_as_tensor(venv.reset(), "cpu")
    shape, generator = (venv.num_envs, *venv.action_space.shape), torch.Generator().manual_seed(0)
    actions = torch.randint(2, 500, shape, generator=generator)

    def scores(policy):
        with torch.no_grad():
            return policy.evaluate_actions(obs, actions)

    model.save(tmp_path / "model.zip")
    loaded = type(model).load(tmp_path / "model.zip")
    model.policy.save(tmp_path / "policy.pt")
    policy_alone = type(model.policy).load(tmp_path / "policy.pt")
    pretrained = (token_model if kind == "token" else bandit_model)(env_kwargs, venv=venv)
    trained = scores(model.policy)
    assert (trained[1] - scores(pretrained.policy)[1]).abs().max() > 1e-2  # learn() moved the LM
    before, after = pretrained.policy.lm.state_dict(), model.policy.lm.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every tensor, the trunk's included
    assert trained[0].abs().max() > 1e-4  # and the value head
    for restored in (loaded.policy, policy_alone):
        assert restored.lm_name == str(tiny_policy_dir)
        for a, b in zip(trained, scores(restored)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_save_pretrained_writes_a_checkpoint_that_rlhf_eval_accepts(env_kwargs, tiny_policy_dir, world_dir, tmp_path,
                                                                   capsys):
    model = token_model(env_kwargs, learning_rate=1e-2)
    model.learn(16)
    model.policy.save_pretrained(tmp_path / "export")
    exported, _ = load_policy(tmp_path / "export")
    obs = model.get_env().reset()
    log_probs = model.policy.get_distribution(obs_as_tensor(obs, "cpu")).distribution.logits
    fresh, _ = load_policy(tiny_policy_dir)
    for i in range(2):
        want = lm_next_token_logp(exported, obs["input_ids"][i], obs["attention_mask"][i])
        torch.testing.assert_close(log_probs[i], want, atol=1e-5, rtol=0)
        before = lm_next_token_logp(fresh, obs["input_ids"][i], obs["attention_mask"][i])
        assert (want - before).abs().max() > 1e-2  # the trained weights were exported, not the pretrained ones
    capsys.readouterr()
    assert rlhf(["eval", "--policy", str(tmp_path / "export"), "--baseline", str(tiny_policy_dir), "--data",
                 str(world_dir), "--episodes", "4", "--max_new_tokens", str(T), "--json"]) == 0
    assert '"n": 4' in capsys.readouterr().out


def test_evaluate_takes_an_sb3_model_and_judges_its_lm(env_kwargs, tiny_policy_dir, world_dir, tmp_path):
    model = token_model(env_kwargs, learning_rate=1e-2)
    model.learn(16)
    model.policy.save_pretrained(tmp_path / "export")
    config = dict(baseline=str(tiny_policy_dir), data=str(world_dir), episodes=12, max_new_tokens=T)
    judged = evaluate(EvalConfig(policy=model, **config))
    exported = evaluate(EvalConfig(policy=str(tmp_path / "export"), **config))
    assert judged["policy"] == f"PPO({tiny_policy_dir})"
    assert [e["a"] for e in judged["examples"]] == [e["a"] for e in exported["examples"]]  # the same samples
    assert judged["gold_a"] == exported["gold_a"] and judged["win_rate"] == exported["win_rate"]


# ---------------------------------------------------------------- the bandit: ResponseActions and LMSequencePolicy

def test_response_actions_are_the_token_ids_and_other_spaces_are_refused(env_kwargs, tokenizer):
    venv = make_sb3_bandit(4, **env_kwargs)
    assert venv.action_space == spaces.MultiDiscrete([len(tokenizer)] * T)
    assert venv.observation_space == make_sb3_vec_env(1, **env_kwargs).observation_space
    token_venv = make_sb3_token_env(1, **env_kwargs)
    with pytest.raises(ValueError, match=r"Dict\(response_ids, logprobs\)"):
        ResponseActions(token_venv)
    with pytest.raises(ValueError, match=r"needs MultiDiscrete\(\[V\] \* max_new_tokens\) actions"):
        token_model(env_kwargs, policy=LMSequencePolicy, venv=token_venv)
    with pytest.raises(NotImplementedError, match="sampled token by token"):
        bandit_model(env_kwargs, venv=venv).policy.get_distribution(obs_as_tensor(venv.reset(), "cpu"))


def teacher_forced_logprobs(model, obs, actions, eos_id, pad_id, temperature=1.0):
    """Per-token log pi(y_t | x, y_<t) (B, T) of each row's response up to its first EOS (included) or PAD (not
    included), each row run alone without padding; 0 after the end."""
    out = np.zeros(actions.shape, np.float32)
    for i, row in enumerate(actions):
        prompt = torch.from_numpy(obs["input_ids"][i][obs["attention_mask"][i] == 1])
        n = next((t + 1 if tok == eos_id else t for t, tok in enumerate(row) if tok in (eos_id, pad_id)), len(row))
        with torch.no_grad():
            logits = model(torch.cat([prompt, torch.from_numpy(row)])[None]).logits[0]
        logp = torch.log_softmax(logits[len(prompt) - 1:-1] / temperature, -1)
        out[i, :n] = logp[torch.arange(n), torch.from_numpy(row[:n])].numpy()
    return out


def test_wrapper_reward_plus_the_policy_term_is_the_bandit_reward_exactly(env_kwargs, other_policy_dir, tokenizer):
    """reward + kl_coef * (-log pi(y)) == score - kl_coef * sum_t (log pi - log pi_ref), per sample, with log pi
    from the policy; the bandit's side computed independently (its own env, log-probs by plain teacher forcing).
    Two responses are cut by hand: one ends with EOS (included), one with a PAD (not part of it)."""
    venv = make_sb3_bandit(6, **env_kwargs)
    policy = bandit_model(env_kwargs, venv=venv, lm=str(other_policy_dir)).policy
    venv.seed(3)
    obs = venv.reset()
    torch.manual_seed(0)
    actions = policy(obs_as_tensor(obs, "cpu"))[0].numpy()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    actions[0, 2], actions[1, 3] = eos, pad  # then more tokens, which are not part of the responses
    _, rewards, _, infos = venv.step(actions.astype(np.float32))  # SB3's buffer keeps actions as floats
    assert [info["response_length"] for info in infos[:2]] == [3, 3]
    log_pi = policy.evaluate_actions(obs_as_tensor(obs, "cpu"), torch.from_numpy(actions).float())[1].detach()

    bandit = make_sb3_vec_env(6, **env_kwargs)
    bandit.seed(3)
    assert np.array_equal(bandit.reset()["input_ids"], obs["input_ids"])
    other, _ = load_policy(other_policy_dir)
    logprobs = teacher_forced_logprobs(other, obs, actions, eos, pad)
    _, bandit_rewards, _, bandit_infos = bandit.step({"response_ids": actions, "logprobs": logprobs})
    np.testing.assert_allclose(log_pi.numpy(), logprobs.sum(1), atol=1e-4)
    np.testing.assert_allclose(rewards - 0.2 * log_pi.numpy(), bandit_rewards, atol=1e-4)
    assert (0.2 * -log_pi.numpy() > 1).all()  # the policy term matters
    assert max(abs(info["kl"]) for info in bandit_infos) > 0.1  # the policy is not the reference


def test_sequence_policy_forward_and_evaluate_actions_agree(env_kwargs, tokenizer, tiny_policy_dir):
    """The sampler's log-probs are the teacher-forced ones (PPO's ratio is 1 before an update), the values are the
    same in both, and the entropy is the sum of the per-token entropies along the response."""
    venv = make_sb3_bandit(4, **env_kwargs)
    policy = bandit_model(env_kwargs, venv=venv, policy_kwargs={"temperature": 1.3}).policy
    perturb(policy.value_net, 1.0)
    obs = venv.reset()
    torch.manual_seed(0)
    with torch.no_grad():
        actions, values, log_prob = policy(obs_as_tensor(obs, "cpu"))
        float_obs = {k: torch.from_numpy(v).float() for k, v in obs.items()}  # as SB3's rollout buffer gives them
        values_again, log_prob_again, entropy = policy.evaluate_actions(float_obs, actions.float())
    assert actions.shape == (4, T) and actions.dtype == torch.long and values.abs().min() > 1e-3
    torch.testing.assert_close(log_prob_again, log_prob, atol=1e-5, rtol=0)
    torch.testing.assert_close(values_again, values, atol=1e-5, rtol=0)

    fresh, _ = load_policy(tiny_policy_dir)
    ids, mask = obs["input_ids"][0], obs["attention_mask"][0]
    entropy_sum = 0.0
    for t in range(T):  # the tiny model rarely ends a response early: all T tokens count
        assert actions[0, t] not in (tokenizer.eos_token_id, tokenizer.pad_token_id)
        logp = lm_next_token_logp(fresh, np.concatenate([ids, actions[0, :t].numpy()]),
                                  np.concatenate([mask, np.ones(t, np.int64)]), temperature=1.3)
        entropy_sum += float(-(logp.exp() * logp).sum())
    assert float(entropy[0]) == pytest.approx(entropy_sum, abs=1e-4)

    greedy = [policy.predict(obs, deterministic=True)[0] for _ in range(2)]
    assert np.array_equal(*greedy) and greedy[0].shape == (4, T)
    first = lm_next_token_logp(fresh, ids, mask)
    assert greedy[0][0, 0] == int(first.argmax())


def test_the_entropy_term_is_minus_the_sequence_log_prob_in_expectation(env_kwargs):
    """E_y[sum_t H(pi(. | x, y_<t))] = E_y[-log pi(y | x)] (the chain rule of entropy): what lets SB3's
    ent_coef = kl_coef supply the -kl_coef * log pi half of the bandit's reward. The policy's weights are perturbed
    so that its per-token entropies vary (the tiny LM's are all near log V)."""
    venv = make_sb3_bandit(256, **env_kwargs)
    policy = bandit_model(env_kwargs, venv=venv).policy
    perturb(policy.lm, 0.3)
    obs = obs_as_tensor(venv.reset(), "cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        actions, _, log_prob = policy(obs)
        entropy = policy.evaluate_actions(obs, actions)[2]
    diff = (entropy + log_prob).numpy()
    standard_error = diff.std() / np.sqrt(len(diff))
    assert abs(diff.mean()) < 3 * standard_error
    assert 3 * standard_error < 0.03 * float(entropy.mean())  # it would see a bias of 3%


def test_a_response_ended_by_a_pad_counts_its_tokens_only(env_kwargs, tokenizer):
    """A sampled PAD ends a response and is not part of it (rlhf_env.sampling.response_mask): the sampling
    pass's log-prob leaves it out as the teacher-forced one does. The LM is pushed towards PAD to sample some."""
    venv = make_sb3_bandit(16, **env_kwargs)
    policy = bandit_model(env_kwargs, venv=venv).policy
    pad_row = policy.lm.get_output_embeddings().weight.data[tokenizer.pad_token_id]
    policy.lm.transformer.ln_f.bias.data = 5.0 * pad_row / pad_row.norm() ** 2  # PAD's logit + 5, others ~unchanged
    obs = venv.reset()
    torch.manual_seed(0)
    with torch.no_grad():
        actions, _, log_prob = policy(obs_as_tensor(obs, "cpu"))
        teacher_forced = policy.evaluate_actions(obs_as_tensor(obs, "cpu"), actions.float())[1]
    ends = [int(np.argmax(row == tokenizer.pad_token_id)) for row in actions.numpy()]
    assert len({e for e in ends if e > 0}) >= 3  # PAD-ended responses of several lengths
    torch.testing.assert_close(log_prob, teacher_forced, atol=1e-5, rtol=0)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    independent = teacher_forced_logprobs(policy.lm, obs, actions.numpy(), eos, pad)
    np.testing.assert_allclose(log_prob.numpy(), independent.sum(1), atol=1e-4)


@pytest.mark.parametrize("kind", ["token", "bandit"])
def test_a_policy_at_the_envs_temperature_pays_no_kl_against_its_own_reference(env_kwargs, kind):
    """The policy is the reference LM: at the env's temperature, every episode's score - kl_coef * KL is its score;
    at another temperature it is not."""
    kwargs = {**env_kwargs, "temperature": 1.7}
    venv = make_sb3_token_env(2, **kwargs) if kind == "token" else make_sb3_bandit(4, **kwargs)
    build = token_model if kind == "token" else bandit_model
    for temperature, kl_free in ((1.7, True), (1.0, False)):
        policy = build(kwargs, venv=venv, policy_kwargs={"temperature": temperature}).policy
        result = kl_regularised_return(policy, venv, episodes=2)
        assert result["episodes"] == 2 * venv.num_envs
        assert (abs(result["reward"] - result["score"]) < 1e-4) == kl_free, (temperature, result)


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_ppo_and_a2c_train_the_sequence_policy(env_kwargs, algo):
    model = bandit_model(env_kwargs, algo, n_envs=8, learning_rate=1e-3)
    before = [q.detach().clone() for q in model.policy.parameters()]
    model.learn(16)
    after = list(model.policy.parameters())
    assert all(torch.isfinite(q).all() for q in after)
    assert not torch.equal(before[0], after[0])  # the LM's embedding (and head)
    assert not torch.equal(before[-2], after[-2])  # the value head


# ---------------------------------------------------------------- learning and the examples

SHORT = dict(reward=brevity, kl_coef=0.0, missing_eos_penalty=None)  # shorter is better, scored with or without EOS


@pytest.mark.slow
def test_sb3_ppo_learns_a_trivially_learnable_reward_on_the_bandit(env_kwargs):
    """Brevity: the tiny policy's responses score about -1.1; 12 PPO iterations of 32 responses must get it above
    -0.4 (the LM learns to end at once). One minibatch of all 32 a step: with minibatches of 8 at this learning
    rate the return wandered about -0.4 from 12 to 32 iterations, on either side by float rounding alone (another
    machine's kernels); with 32, it passed -0.2 by 12 and reached 0 by 24, with either kernels."""
    kwargs = {**env_kwargs, **SHORT}
    model = bandit_model(kwargs, n_envs=32, batch_size=32, n_epochs=4, learning_rate=1e-2)
    before = kl_regularised_return(model.policy, model.get_env(), episodes=2)["reward"]
    model.learn(384)
    after = kl_regularised_return(model.policy, model.get_env(), episodes=2)["reward"]
    assert before < -0.9 and after > -0.4, (before, after)


@pytest.mark.slow
def test_sb3_ppo_learns_a_trivially_learnable_reward_on_the_token_env(env_kwargs):
    """The same brevity reward, one token per step: 12 PPO iterations of 8 x 16 steps must get above -0.4. (At 9,
    float rounding alone, e.g. another GELU kernel, moved the result between -0.17 and -0.40.)"""
    kwargs = {**env_kwargs, **SHORT}
    model = token_model(kwargs, n_envs=8, n_steps=16, batch_size=32, n_epochs=4, learning_rate=1e-2, gamma=1.0)
    before = kl_regularised_return(model.policy, model.get_env(), episodes=4)["reward"]
    model.learn(12 * 128)
    after = kl_regularised_return(model.policy, model.get_env(), episodes=4)["reward"]
    assert before < -0.9 and after > -0.4, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("name, steps, num_envs", [("sb3_bandit", 640, 32), ("sb3_token", 4096, 8)])
def test_examples_run_and_learn_with_tiny_settings(env_kwargs, capsys, name, steps, num_envs):
    """Each example, on the tiny model with the brevity reward and a high learning rate, prints a mean reward
    that rose by more than half a point."""
    main = runpy.run_path(str(ROOT / "examples" / f"{name}.py"))["main"]
    kwargs = {**env_kwargs, **SHORT}
    before, after = main(policy=kwargs.pop("reference"), steps=steps, num_envs=num_envs, lr=1e-2, episodes=4, **kwargs)
    assert after > before + 0.5, (before, after)
    assert f"before {before:.3f}, after {after:.3f}" in capsys.readouterr().out
