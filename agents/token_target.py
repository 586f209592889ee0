"""A target over whole next-token distributions, for a reward that sums its language model's token log-probs.

The bundled RM (``rlhf_env.rewards.likelihood``) scores ``r(x, y) = c * sum_t log p(y_t | x, y_<t)`` (plus a
constant), with ``c`` its fitted weight times its normalising gain. With the env's KL penalty, the return of a
response is ``sum_t [c log p(y_t) - beta log(pi(y_t) / pi_ref(y_t))]``, and at each position the distribution
that maximises the expected immediate term is

    q(. | x, y_<t)  proportional to  pi_ref(. | x, y_<t) * p(. | x, y_<t) ** (c / beta)

(the KL-regularised optimum, token by token: myopic, since the optimum over whole responses also weighs each
token's effect on the later ones). ``KL(pi || q)`` at the positions that the policy's own samples
visit is a loss over the whole vocabulary at every position: its gradient has no sampling noise, where the
policy gradient learns from the one token sampled there. PPO adds it to its loss with ``token_target_coef``
(``agents.ppo``); the sampled advantages still carry what it leaves out (a token's effect on the later ones,
EOS and the missing-EOS penalty). q reads the policy's own token ids with the RM's LM, where the RM scores a
response's text as it tokenises it (prompt and response apart): the same tokens for the policies of this package,
which share the RM's tokenizer (checked), so a proxy only where a policy's ids are not its tokenizer's split.

Both distributions are those the env's step has just computed to score the same responses (the reference's for
the KL, the RM's for its score): q reads them from there where they are kept (``kept_by`` and the RM's
``keep_forwards``; ``rlhf_env.sampling.reuse_forward``) and runs the models again only for rows they miss.
"""

from __future__ import annotations

import torch

from rlhf_env.rewards import NormalizedReward
from rlhf_env.rewards.likelihood import LikelihoodReward
from rlhf_env.sampling import response_log_softmax, reuse_forward


class TokenTarget:
    """``log q`` (B, R, V) at the response positions of a batch, from the env's reference and reward."""

    def __init__(self, reference, reward, tokenizer, kept_by=()):
        """``reference``: the env's reference policy; ``reward``: the env's reward (a likelihood RM, possibly
        normalised), read as it is now (a resumed run's normalisation is restored before its first rollout);
        ``kept_by``: more objects whose ``kept`` forwards it reads, each asked to keep them (the env's scorer)."""
        problem = refusal(reward, tokenizer)
        if problem:
            raise ValueError(f"token_target_coef: {problem}; set token_target_coef=0")
        scale = 1.0
        if isinstance(reward, NormalizedReward):
            scale, reward = 1.0 / reward.std, reward.reward
        rm = reward.model
        self.reference, self.lm = reference, rm.lm
        self.coef = rm.weight.item() * reward.gain * scale  # c: the reward per nat of the LM's log-probability
        self.sources = (reward, *kept_by)
        for source in self.sources:
            source.keep_forwards = True

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, R: int, beta: float, temperature: float = 1.0,
                 rows: int | None = None) -> torch.Tensor:
        """``log q`` at the positions that predict the last R tokens of ``ids`` (B, T), for KL coefficient beta;
        ``rows`` at a time (all at once if None), so that the (rows, R, V) intermediates stay an update's size."""
        if beta <= 0:
            raise ValueError("the token target needs a KL coefficient > 0 (with beta = 0 it is the LM's argmax)")
        kept = [k for source in self.sources for k in source.kept]
        reference = self._log_softmax(kept, self.reference, ids, mask, R, temperature, rows)
        lm = self._log_softmax(kept, self.lm, ids, mask, R, 1.0, rows)
        return torch.cat([product_log_softmax(reference[chunk], lm[chunk], self.coef / beta)
                          for chunk in torch.arange(len(ids), device=ids.device).split(rows or len(ids))])

    @staticmethod
    def _log_softmax(kept, model, ids, mask, R, temperature, rows) -> torch.Tensor:
        """``response_log_softmax`` of ``model`` (B, R, V): from ``kept`` forwards where they hold the rows, the
        others run ``rows`` at a time."""
        out, found = reuse_forward(kept, model, ids, mask, R, temperature)
        missing = torch.nonzero(~found).squeeze(1)
        for chunk in missing.split(rows or len(ids)) if len(missing) else ():
            part = response_log_softmax(model, ids[chunk], mask[chunk], R, temperature)[0]
            if out is None:
                out = part.new_zeros(len(ids), *part.shape[1:])
            out[chunk] = part
        return out


def refusal(reward, tokenizer) -> str:
    """Why the token target cannot work with this reward and this policy tokenizer ("" if it can): it needs a
    reward that sums its LM's token log-probs, read with the policy's own token ids."""
    if isinstance(reward, NormalizedReward):
        reward = reward.reward
    if not isinstance(reward, LikelihoodReward):
        return (f"it needs a reward that sums its LM's token log-probs (a likelihood RM, such as the bundled rm); "
                f"{getattr(reward, 'name', type(reward).__name__)!r} is not one")
    if reward.model.tokenizer.get_vocab() != tokenizer.get_vocab():
        return "it reads the policy's token ids with the reward model's LM, so the reward model must share the " \
               "policy's tokenizer"
    return ""


def product_log_softmax(reference: torch.Tensor, lm: torch.Tensor, alpha: float) -> torch.Tensor:
    """``log q`` for q ∝ pi_ref * p^alpha, from the two log-softmaxes (..., V)."""
    return torch.log_softmax(reference + alpha * lm, -1)


def token_kl(logp_all: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``KL(pi || q)`` (B, R) from the policy's log-softmax and ``log q``, each (B, R, V)."""
    return (logp_all.exp() * (logp_all - target)).sum(-1)
