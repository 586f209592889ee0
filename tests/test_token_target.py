"""The token target (``agents.token_target``): q is the per-token KL-regularised optimum of a likelihood RM, the
agent refuses rewards without one, and PPO with it moves the policy towards q on new samples."""

import csv

import numpy as np
import pytest
import torch

from agents.configs import TOKEN_TARGET_COEF, GRPOConfig, REINFORCEConfig, RLOOConfig
from agents.ppo import PPOAgent
from agents.token_target import TokenTarget, token_kl
from rlhf_env.rewards import NormalizedReward
from rlhf_env.rewards.likelihood import LikelihoodReward, LikelihoodRewardModel
from rlhf_env.sampling import encode_prompts, response_log_softmax
from tests.test_ppo import tiny_config


@pytest.fixture
def likelihood_rm_dir(tokenizer, tmp_path):
    """A likelihood RM whose LM is another tiny GPT-2 (not the policy), weight 0.8 and gain 1.5."""
    from rlhf_env.models import new_model, save_policy
    from tests.conftest import TINY_DIMS

    torch.manual_seed(1)
    model = LikelihoodRewardModel(new_model(TINY_DIMS, tokenizer).eval(), tokenizer)
    with torch.no_grad():
        model.weight.fill_(0.8)
    model.gain, model.bias = 1.5, 0.2
    save_policy(model, tokenizer, tmp_path / "rm")
    return tmp_path / "rm"


def test_q_is_the_per_token_optimum_of_the_rm_reward_less_the_kl_penalty(tiny_model, tokenizer, likelihood_rm_dir):
    """log q = log_softmax(log pi_ref + c / beta * log p), c = weight * gain (/ std when normalised); and q
    maximises sum_v pi(v) [c log p(v) - beta log(pi(v) / pi_ref(v))] against seeded random distributions, where
    its value is beta log Z."""
    reward = LikelihoodReward(str(likelihood_rm_dir))
    lm = reward.model.lm
    ids, mask = encode_prompts(tokenizer, ["Q: what is 3 plus 4 ?\nA: 7", "Q: hi\nA: hello there"])
    R, beta = 3, 0.3
    target = TokenTarget(tiny_model, reward, tokenizer)(ids, mask, R, beta)
    ref = response_log_softmax(tiny_model, ids, mask, R)[0].detach()
    logp = response_log_softmax(lm, ids, mask, R)[0]
    c = 0.8 * 1.5
    torch.testing.assert_close(target, torch.log_softmax(ref + c / beta * logp, -1), atol=1e-5, rtol=0)
    halved = TokenTarget(tiny_model, NormalizedReward(reward, mean=0.0, std=2.0), tokenizer)(ids, mask, R, beta)
    torch.testing.assert_close(halved, torch.log_softmax(ref + c / 2 / beta * logp, -1), atol=1e-5, rtol=0)
    raw = LikelihoodReward(str(likelihood_rm_dir), normalize=False)  # scores without the gain: c = the weight
    torch.testing.assert_close(TokenTarget(tiny_model, raw, tokenizer)(ids, mask, R, beta, rows=1),
                               torch.log_softmax(ref + 0.8 / beta * logp, -1), atol=1e-5, rtol=0)

    def value(log_pi):  # the expected immediate return at each position, (B, R)
        return (log_pi.exp() * (c * logp - beta * (log_pi - ref))).sum(-1)

    log_z = torch.logsumexp(ref + c / beta * logp, -1)
    torch.testing.assert_close(value(target), beta * log_z, atol=1e-4, rtol=1e-4)
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 5.0):
        other = torch.log_softmax(target + scale * torch.randn(target.shape, generator=g), -1)
        assert (value(other) < value(target)).all()
    assert (value(ref) < value(target) - 1e-3).all()  # the reference itself is not optimal
    assert token_kl(target, target).abs().max() < 1e-5
    assert (token_kl(ref, target) > 0).all()


def test_the_token_target_refuses_a_reward_without_token_log_probs_and_a_zero_beta(tiny_model, tokenizer,
                                                                                   likelihood_rm_dir, tiny_policy_dir,
                                                                                   world_dir, tmp_path):
    with pytest.raises(ValueError, match="needs a reward that sums its LM's token log-probs"):
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", kl_coef=0.05,
                             token_target_coef=1.0))  # brevity
    with pytest.raises(ValueError, match="token_target_coef needs kl_coef > 0"):
        tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", reward=str(likelihood_rm_dir), kl_coef=0.0,
                    token_target_coef=1.0)
    target = TokenTarget(tiny_model, LikelihoodReward(str(likelihood_rm_dir)), tokenizer)
    ids, mask = encode_prompts(tokenizer, ["Q: hi\nA: hello"])
    with pytest.raises(ValueError, match="needs a KL coefficient > 0"):
        target(ids, mask, 1, beta=0.0)


def test_by_default_ppo_uses_the_token_target_wherever_the_reward_allows_it(tiny_policy_dir, world_dir,
                                                                          likelihood_rm_dir, tmp_path, capsys):
    """token_target_coef=None (PPO's default): on, at TOKEN_TARGET_COEF, with a likelihood RM and beta > 0; off,
    with the reason on stderr, for a reward without token log-probs or with beta = 0, where an explicit weight is
    an error. GRPO, RLOO and REINFORCE keep their published recipes: off unless asked for."""
    on = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "on", reward=str(likelihood_rm_dir),
                              kl_coef=0.05))
    assert on.config.token_target_coef is None
    assert on.token_target is not None and on.token_target_coef == TOKEN_TARGET_COEF > 0
    assert f"token target on, weight {TOKEN_TARGET_COEF:g}" in capsys.readouterr().err
    brevity = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "brevity", kl_coef=0.05))
    assert brevity.token_target is None and brevity.token_target_coef == 0
    assert "token target off (it needs a reward that sums its LM's token log-probs" in capsys.readouterr().err
    beta0 = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "beta0", reward=str(likelihood_rm_dir),
                                 kl_coef=0.0))
    assert beta0.token_target is None and beta0.token_target_coef == 0
    assert "token target off (kl_coef is 0)" in capsys.readouterr().err
    assert GRPOConfig.token_target_coef == RLOOConfig.token_target_coef == REINFORCEConfig.token_target_coef == 0


def test_ppo_with_the_token_target_moves_new_samples_towards_q(tiny_policy_dir, world_dir, likelihood_rm_dir,
                                                             tmp_path):
    """The logged loss is KL(pi || q) over each iteration's update, on that iteration's fresh samples: with the
    token target it falls to under half its start in 10 iterations; with a negligible weight (the same loss
    logged, the policy gradient alone driving the policy) it ends at over twice that."""
    finals = {}
    for coef in (1.0, 1e-8):
        out = tmp_path / str(coef)
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, out, reward=str(likelihood_rm_dir), iterations=10,
                             kl_coef=0.05, lr=1e-2, token_target_coef=coef, missing_eos_penalty=None)).train()
        with open(out / "train.csv") as f:
            kls = [float(row["token_target_kl"]) for row in csv.DictReader(f)]
        finals[coef] = float(np.mean(kls[-3:]))
        if coef == 1.0:
            assert finals[coef] < 0.5 * kls[0], kls
    assert finals[1.0] < 0.5 * finals[1e-8], finals



def test_a_resumed_run_rebuilds_its_token_target_on_the_saved_normalisation(tiny_policy_dir, world_dir,
                                                                            likelihood_rm_dir, tmp_path):
    """With normalize_reward, q's c divides by the fitted std; a resumed run restores that std after building its
    token target on the raw reward, so it must build it again: the resumed c equals the saved run's."""
    def make():
        return PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", reward=str(likelihood_rm_dir),
                                    kl_coef=0.05, normalize_reward=True, iterations=2))

    first = make()
    assert isinstance(first.env.unwrapped.reward, NormalizedReward)
    first.env.reset(seed=0)  # a checkpoint holds the env's pending prompts
    first.save()
    resumed = make()  # a checkpoint exists: built on the raw reward, before resume restores the statistics
    raw_coef = resumed.token_target.coef
    resumed.resume()
    assert resumed.token_target.coef == pytest.approx(first.token_target.coef)
    assert abs(first.token_target.coef - raw_coef) > 1e-3 * abs(raw_coef)  # the normalisation matters here


def test_reuse_forward_reads_the_same_tokens_in_another_padding_layout(tiny_model, tokenizer):
    """A kept forward over whole rows left-padded (the RM's layout) serves a batch laid out as the policy's
    (prompt left-padded, response right-padded): the rows with the same real tokens are found, with the
    distributions that a forward of their own gives; a row of other tokens, another model or another temperature
    is not found."""
    from rlhf_env.models import new_model
    from rlhf_env.sampling import KeptForward, reuse_forward
    from tests.conftest import TINY_DIMS

    prompts = ["Q: what is 3 plus 4 ?\nA:", "Q: hi\nA:", "Q: a b c\nA:"]
    responses = [" 7", " hello there , nice to meet you", " c"]
    p_ids, p_mask = encode_prompts(tokenizer, prompts)
    r_tok = [tokenizer(r)["input_ids"] for r in responses]
    R = max(map(len, r_tok))
    r_ids = torch.full((3, R), tokenizer.pad_token_id)
    r_mask = torch.zeros(3, R, dtype=torch.long)
    for i, t in enumerate(r_tok):
        r_ids[i, :len(t)], r_mask[i, :len(t)] = torch.tensor(t), 1
    ids, mask = torch.cat([p_ids, r_ids], 1), torch.cat([p_mask, r_mask], 1)
    whole_ids, whole_mask = encode_prompts(tokenizer, [p + r for p, r in zip(prompts[:2], responses[:2])])
    assert not torch.equal(whole_mask, mask[:2])  # another layout: no padding between prompt and response
    Rk = max(len(t) for t in r_tok[:2]) + 1  # the kept window covers the responses
    kept = [KeptForward(tiny_model, whole_ids, whole_mask, response_log_softmax(tiny_model, whole_ids, whole_mask,
                                                                                Rk)[0])]
    out, found = reuse_forward(kept, tiny_model, ids, mask, R)
    assert found.tolist() == [True, True, False]  # the third row's tokens were never read
    assert reuse_forward(kept, tiny_model, ids, mask.float(), R)[1].tolist() == [True, True, False]  # any mask dtype
    own = response_log_softmax(tiny_model, ids, mask, R)[0]
    real = r_mask[:2].bool()
    torch.testing.assert_close(out[:2][real], own[:2][real], atol=1e-5, rtol=0)
    assert (out[2] == 0).all() and (out[:2][~real] == 0).all()
    same, all_found = reuse_forward(kept, tiny_model, whole_ids, whole_mask, Rk)  # the very batch: its tensor
    assert same is kept[0].log_softmax and all_found.all()
    torch.manual_seed(3)
    other = new_model(TINY_DIMS, tokenizer).eval()
    assert reuse_forward(kept, other, ids, mask, R)[0] is None
    assert not reuse_forward(kept, tiny_model, ids, mask, R, temperature=0.7)[1].any()
    whole = reuse_forward(kept, tiny_model, ids, mask, ids.shape[1])[1]  # reaching the first tokens, kept by none
    assert not whole.any()


def test_the_token_target_reads_the_env_steps_forwards_and_runs_models_only_for_rows_they_miss(
        tiny_policy_dir, world_dir, likelihood_rm_dir, tmp_path):
    """In PPO's rollout, q comes from the env's own reference and RM forwards: the reference never runs again,
    and the RM's LM only on the rows whose response text retokenises to other ids than the policy sampled; q is
    the same as from forwards of its own."""
    from unittest import mock

    from agents import token_target
    from rlhf_env.sampling import trim_padding

    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", reward=str(likelihood_rm_dir),
                                 kl_coef=0.05, batch_size=16))
    target, tok = agent.token_target, agent.tokenizer
    rerun = {id(target.reference): 0, id(target.lm): 0}

    def counted(model, ids, *args, **kwargs):
        rerun[id(model)] += len(ids)
        return response_log_softmax(model, ids, *args, **kwargs)

    obs = agent.env.reset(seed=0)[0]
    with mock.patch.object(token_target, "response_log_softmax", counted):
        batch = agent.rollout(obs)
    responses = batch["ids"][:, -batch["response_mask"].shape[1]:]
    other_ids = sum(tok(tok.decode(row[m.bool()], skip_special_tokens=True))["input_ids"]
                    + ([tok.eos_token_id] if eos else []) != row[m.bool()].tolist()
                    for row, m, eos in zip(responses, batch["response_mask"], batch["eos"]))
    assert rerun == {id(target.reference): 0, id(target.lm): other_ids}
    ids, mask, r = trim_padding(batch["ids"], batch["mask"], batch["response_mask"])
    ref = response_log_softmax(target.reference, ids, mask, r)[0]
    lm = response_log_softmax(target.lm, ids, mask, r)[0]
    real = batch["response_mask"][:, :r].bool()
    torch.testing.assert_close(batch["token_target"][real],
                               torch.log_softmax(ref + target.coef / agent.kl.coef * lm, -1)[real], atol=1e-5, rtol=0)
    agent.env.unwrapped.scorer.kept = []  # nothing kept: every row runs again
    with mock.patch.object(token_target, "response_log_softmax", counted):
        target(ids, mask, r, agent.kl.coef)
    assert rerun[id(target.reference)] == len(ids)
