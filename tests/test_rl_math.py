"""PPO's maths against hand computations."""

import math

import pytest
import torch

from agents.rl_math import (
    KLController,
    gae,
    kl_estimate,
    leave_one_out_advantages,
    masked_mean,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten,
)


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.5, 2.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 9.0], [1.0, 0.5, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).float()
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: deltas d2 = 1 - 0.3, d1 = 0 + 0.3 - 0.2, d0 = 0 + 0.2 - 0.1
    d2, d1, d0 = 0.7, 0.1, 0.1
    a2 = d2
    a1 = d1 + 0.95 * a2
    a0 = d0 + 0.95 * a1
    # row 1: d1 = 2 - 0.5, d0 = 0.5 + 0.5 - 1.0
    b1 = 1.5
    b0 = 0.0 + 0.95 * b1
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0], [b0, b1, 0.0, 0.0]]))
    torch.testing.assert_close(ret, (adv + values) * mask)


def test_gae_with_lambda_one_gives_monte_carlo_returns():
    rewards = torch.tensor([[1.0, -2.0, 3.0]])
    values = torch.tensor([[0.3, 0.1, -0.4]])
    _, ret = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[2.0, 1.0, 3.0]]))


def test_leave_one_out_advantages_match_a_hand_computation():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0])
    torch.testing.assert_close(leave_one_out_advantages(returns, 2), torch.tensor([-1.0, 1.0, -3.0, 3.0]))
    others = torch.tensor([11 / 3, 10 / 3, 9 / 3, 6 / 3])  # the mean of the other three
    torch.testing.assert_close(leave_one_out_advantages(returns, 4), returns - others)
    assert leave_one_out_advantages(returns + 100.0, 4).sum().abs() < 1e-4  # a shared offset cancels
    with pytest.raises(ValueError, match="groups of at least 2"):
        leave_one_out_advantages(returns, 3)


def test_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]]).float()
    w = whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().abs() < 1e-6 and real.std().item() == pytest.approx(1.0, rel=1e-4)
    assert (w[~mask.bool()] == 0).all()
    kept = whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(2.5) and kept.std().item() == pytest.approx(1.0, rel=1e-4)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    lr = logp - ref
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), lr)
    torch.testing.assert_close(kl_estimate(logp, ref, "k2"), 0.5 * lr**2)
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), torch.exp(-lr) - 1 + lr)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, ref, "k4")


def test_per_token_rewards_put_the_score_on_eos_and_sum_to_the_bandit_reward():
    score = torch.tensor([2.0, -1.0])
    log_ratio = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).float()
    r = per_token_rewards(score, log_ratio, mask, kl_coef=0.5)
    torch.testing.assert_close(r, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.25 - 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(r.sum(1), score - 0.5 * (log_ratio * mask).sum(1))


def test_policy_loss_clips_and_is_one_ratio_before_an_update():
    adv = torch.tensor([[1.0, -1.0]])
    mask = torch.ones(1, 2)
    old = torch.tensor([[-1.0, -1.0]])
    loss, stats = policy_loss(old.clone(), old, adv, mask)
    assert loss.item() == pytest.approx(0.0) and stats["approx_kl"] == 0.0 and stats["ratio_mean"] == 1.0
    new = old + torch.tensor([[math.log(1.5), math.log(1.5)]])  # ratio 1.5 on both tokens
    loss, stats = policy_loss(new, old, adv, mask, clip=0.2)
    # token 0: adv +1: min(1.5, 1.2) -> -1.2 ; token 1: adv -1: max(-(-1.5), -(-1.2)) -> 1.5
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2) and stats["clip_frac"] == 1.0


def test_value_loss_clips_around_the_old_value():
    old, ret, mask = torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.ones(1, 1)
    assert value_loss(torch.tensor([[0.9]]), old, ret, mask, clip=0.2).item() == pytest.approx(0.5 * 0.8**2)
    assert value_loss(torch.tensor([[0.1]]), old, ret, mask, clip=0.2).item() == pytest.approx(0.5 * 0.9**2)


def test_kl_controller_update_formula():
    fixed = KLController(coef=0.1)
    assert fixed.update(kl=100.0, n_steps=64) == 0.1
    adaptive = KLController(coef=0.1, target=6.0, horizon=10_000)
    assert adaptive.update(kl=9.0, n_steps=100) == pytest.approx(0.1 * (1 + 0.2 * 100 / 10_000))
    assert adaptive.update(kl=6.6, n_steps=100) == pytest.approx(0.1 * (1 + 0.2 * 0.01) * (1 + 0.1 * 0.01))
    assert KLController(0.1, 6.0).update(kl=0.0, n_steps=10_000) == pytest.approx(0.08)


def test_masked_mean_per_row():
    x, mask = torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[1, 0], [1, 1]]).float()
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.0, 6.0]))


def test_group_normalized_advantages_by_hand():
    from agents.rl_math import group_normalized_advantages

    returns = torch.tensor([1.0, 3.0, 5.0, 5.0, 5.0, 5.0])
    got = group_normalized_advantages(returns, 3, eps=1e-12)
    assert torch.allclose(got[:3], torch.tensor([-1.0, 0.0, 1.0]))  # mean 3, unbiased std 2: deviations halved
    assert torch.equal(got[3:], torch.zeros(3))  # a group that does not differ carries no signal
    with pytest.raises(ValueError, match="groups of at least 2 that divide the batch"):
        group_normalized_advantages(returns, 4)
