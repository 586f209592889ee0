"""The maths of PPO for language models, as pure functions over (B, T) tensors with a (B, T) mask.

Shapes: B responses, T response tokens; ``mask`` is 1 on real tokens (EOS included), 0 on padding.
Sources: Schulman et al. 2017 (PPO), 2016 (GAE); Ziegler et al. 2019 (adaptive KL);
Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (per-token rewards, whitening).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _local(total: torch.Tensor) -> torch.Tensor:
    return total


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None, all_sum=_local) -> torch.Tensor:
    """Mean of the masked entries (along ``dim``). ``all_sum`` turns a local sum into one over a larger batch
    (data-parallel ranks: ``rlhf_env.training.distributed.all_sum``), whose mean it then is."""
    if dim is None:
        return all_sum((x * mask).sum()) / all_sum(mask.sum()).clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, all_sum=_local) -> torch.Tensor:
    """Unbiased variance of the masked entries (``all_sum`` as in ``masked_mean``)."""
    mean = masked_mean(x, mask, all_sum=all_sum)
    n = all_sum(mask.sum())
    return all_sum(((x - mean) ** 2 * mask).sum()) / (n - 1).clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
           all_sum=_local) -> torch.Tensor:
    """Normalise the masked entries to std 1 (and mean 0 unless ``shift_mean=False``); padding stays 0.
    ``all_sum`` as in ``masked_mean``: the mean and variance of a larger batch."""
    mean, var = masked_mean(x, mask, all_sum=all_sum), masked_var(x, mask, all_sum=all_sum)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (http://joschu.net/blog/kl-approx.html).

    k1 = log r (unbiased, can be negative), k2 = (log r)^2 / 2, k3 = (r^-1 - 1) + log r, with
    r = pi / pi_ref. The env's reward uses k1, the per-sequence sum of which is the bandit's KL.
    """
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


def per_token_rewards(score: torch.Tensor, log_ratio: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> torch.Tensor:
    """``-kl_coef * log_ratio`` at every real token, plus ``score`` (B,) on the last real token (EOS),
    not on the padding after it (TRL #3750). Summed over tokens it is the bandit's reward."""
    rewards = -kl_coef * log_ratio * mask
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & mask.bool()  # (B, T) one-hot of the last token
    return rewards + score[:, None] * last


def leave_one_out_advantages(returns: torch.Tensor, group_size: int) -> torch.Tensor:
    """``R_i - mean_{j != i} R_j`` within consecutive groups of ``group_size`` responses to one prompt
    (RLOO: Kool et al. 2019; Ahmadian et al. 2024). ``returns`` (B,), B a multiple of ``group_size`` >= 2.

    The baseline removes what all responses to a prompt share (how easy the prompt is), so that the
    advantage is only how much better this response is than its siblings, with no critic to learn.
    """
    B = returns.shape[0]
    if group_size < 2 or B % group_size:
        raise ValueError(f"leave-one-out needs groups of at least 2 that divide the batch; got {group_size} for {B}")
    groups = returns.reshape(B // group_size, group_size)
    baseline = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(B)


def group_normalized_advantages(returns: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """Each return's z-score within its consecutive group of ``group_size`` responses to one prompt:
    ``(R_i - mean_g) / (std_g + eps)`` with the unbiased std (GRPO: Shao et al. 2024). ``returns`` (B,).

    Like leave-one-out it removes what a prompt's responses share; unlike it, it also rescales each prompt's
    group to unit spread, so a prompt where the responses barely differ weighs as much as one where they
    differ a lot (and a group that does not differ at all gets 0)."""
    B = returns.shape[0]
    if group_size < 2 or B % group_size:
        raise ValueError(f"group normalisation needs groups of at least 2 that divide the batch; got {group_size} "
                         f"for {B}")
    groups = returns.reshape(B // group_size, group_size)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + eps)).reshape(B)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response; the value after the last token is 0.

    Returns ``(advantages, returns)``, both (B, T) and zero on padding; ``returns = advantages + values``.
    """
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m
        advantages[:, t] = running
        next_value = values[:, t] * m  # padding contributes no bootstrap value
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float = 0.2, max_log_ratio: float = 20.0) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (to minimise), with the log-ratio clamped for numerical safety."""
    log_ratio = (logprobs - old_logprobs).clamp(-max_log_ratio, max_log_ratio)
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"approx_kl": masked_mean(ratio - 1 - log_ratio, mask).item(),  # k3, non-negative
                 "clip_frac": masked_mean(((ratio - 1).abs() > clip).float(), mask).item(),
                 "ratio_mean": masked_mean(ratio, mask).item(),
                 "ratio_max": ratio[mask.bool()].max().item() if mask.any() else 1.0}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float = 0.2) -> torch.Tensor:
    """Clipped value loss: 0.5 * max((v - R)^2, (clip(v, v_old +- clip) - R)^2), masked mean."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


@dataclass
class KLController:
    """Fixed (``target=None``) or adaptive KL coefficient (Ziegler et al. 2019):
    ``coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon``."""

    coef: float = 0.05
    target: float | None = None
    """Target KL per sequence in nats (6 in lm-human-preferences); None keeps coef fixed."""
    horizon: int = 10_000

    def update(self, kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * n_steps / self.horizon
        return self.coef
