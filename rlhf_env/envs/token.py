"""``InstructToken-v0``: the same RLHF task, one token per step (for token-level RL, e.g. SB3 PPO or
NLPO-style MaskablePPO)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from rlhf_env.accel.decoder import GPT2Decoder
from rlhf_env.envs.scorer import ResponseScorer, ScorerControls
from rlhf_env.sampling import HFDecoder, lean_decoder_applies, positions


class InstructTokenEnv(ScorerControls, gym.Env):
    """
    ## Description
    The bandit's task unrolled into tokens: each step appends one token to the response. It is the
    Gymnasium view of the policy as a token-level MDP (RL4LMs-style), with the same objective as
    ``InstructBandit-v0``.

    ## The objective, and how it equals the bandit's
    A discrete action carries no log-probability, so the KL to the reference is split in two:

    - the env pays ``kl_coef * log pi_ref(a_t | s_t)`` at every token, plus the score when the
      response ends (the RM score on EOS, ``missing_eos_penalty`` at the length limit);
    - the agent adds ``kl_coef * (-log pi(a_t | s_t))`` to each reward, or, in expectation, the same
      coefficient times its policy's entropy at ``s_t`` (SB3's ``ent_coef``).

    Per episode, ``return + kl_coef * sum_t -log pi(a_t)`` is exactly the bandit's reward
    ``score - kl_coef * sum_t (log pi(a_t) - log pi_ref(a_t))``; ``info["bandit_reward_without_policy_term"]``
    is the env's side of it. (Tested numerically: ``tests/test_token_env.py``.)

    ## Action Space
    ``Discrete(vocab_size)``: the next token. ``action_masks()`` allows the reference model's top-p
    (``mask_top_p``) or top-k (``mask_top_k``) tokens, for MaskablePPO (NLPO).

    ## Observation Space
    ``Dict(input_ids=Box(0, V-1, (P + R,), int64), attention_mask=Box(0, 1, (P + R,), int64))``: the
    left-padded prompt (``P = max_prompt_tokens``) followed by the response so far, right-padded to
    ``R = max_new_tokens``.

    ## Rewards
    ``kl_coef * log pi_ref(a_t | s_t)`` per token, plus the score on the last token (see above).

    ## Starting State
    A prompt drawn with ``self.np_random`` (``options={"prompt_index": i}`` fixes it).

    ## Episode End
    Terminates when the action is EOS, or PAD (which ends a response without EOS, as in the bandit, and is
    not part of it), and terminates at ``max_new_tokens`` tokens: the response is then scored (with
    ``missing_eos_penalty``) and nothing follows, so the length limit is part of the task, not a time limit
    (the observation shows the position). It never truncates, so an agent does not bootstrap a value there.

    ## Arguments
    Those of ``InstructBandit-v0``, plus ``mask_top_p`` (0.9) and ``mask_top_k`` (None); ``kl_coef`` and
    ``reward`` can be changed between episodes as there.
    The reference model keeps a KV cache per episode (the sampler's decoder: ``rlhf_env.accel.decoder`` for
    GPT-2): a step is one token's forward, not the context's.

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, prompts="ppo", reference="sft", reward="rm", kl_coef: float = 0.05,
                 max_prompt_tokens: int = 64, max_new_tokens: int = 48, missing_eos_penalty: float | None = -1.0,
                 temperature: float = 1.0, device: str = "cpu", prompt_split: str = "train",
                 prompt_column: str = "prompt", data: str | None = None, render_mode: str | None = None,
                 mask_top_p: float = 0.9, mask_top_k: int | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if not 0 < mask_top_p <= 1:
            raise ValueError(f"mask_top_p must be in (0, 1], got {mask_top_p}")
        if mask_top_k is not None and mask_top_k < 1:
            raise ValueError(f"mask_top_k must be None or >= 1, got {mask_top_k}")
        self.scorer = core = ResponseScorer(prompts, reference, reward, kl_coef, max_prompt_tokens, max_new_tokens,
                                            missing_eos_penalty, temperature, device, prompt_split, prompt_column,
                                            data)
        P, R, V = core.max_prompt_tokens, core.max_new_tokens, core.vocab_size
        self.observation_space = spaces.Dict({"input_ids": spaces.Box(0, V - 1, (P + R,), np.int64),
                                              "attention_mask": spaces.Box(0, 1, (P + R,), np.int64)})
        self.action_space = spaces.Discrete(V)
        self.render_mode, self.mask_top_p, self.mask_top_k = render_mode, mask_top_p, mask_top_k
        # The reference's incremental decoder (the sampler's): the lean GPT-2 path when it applies.
        self._decoder = GPT2Decoder(core.model, 1, P + R) if lean_decoder_applies(core.model) else HFDecoder(core.model)
        self._t: int | None = None

    def _keep(self, logits: torch.Tensor) -> None:
        """Keep log pi_ref of the next token, (V,), from the reference's next-token logits (1, V)."""
        self._ref_logp = torch.log_softmax(logits[0].float() / self.scorer.temperature, -1)

    def _observation(self) -> dict[str, np.ndarray]:
        return {"input_ids": self._ids.copy(), "attention_mask": self._mask.copy()}

    @torch.no_grad()
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = self.scorer.choose_prompt(self.np_random, options)
        P, R = self.scorer.max_prompt_tokens, self.scorer.max_new_tokens
        self._index, self._t, self._tokens, self._ref_sum = index, 0, [], 0.0
        self._ids = np.full(P + R, self.scorer.pad_id, np.int64)
        self._mask = np.zeros(P + R, np.int64)
        self._ids[:P], self._mask[:P] = self.scorer.prompt_ids[index], self.scorer.prompt_mask[index]
        mask = torch.from_numpy(self._mask[None, :P]).to(self.scorer.device)
        ids = torch.from_numpy(self._ids[None, :P]).to(self.scorer.device)
        self._keep(self._decoder.prefill(ids, mask, positions(mask)))
        return self._observation(), self.scorer.prompt_info(index)

    def action_masks(self) -> np.ndarray:
        """The reference model's top-p / top-k tokens at this state, as a bool mask (V,)."""
        if self._t is None:
            raise RuntimeError("call reset() before action_masks()")
        probs = self._ref_logp.exp()
        order = torch.argsort(probs, descending=True)
        keep = torch.zeros_like(probs, dtype=torch.bool)
        if self.mask_top_k is not None:
            keep[order[: self.mask_top_k]] = True
        else:
            cumulative = probs[order].cumsum(0)
            keep[order[: int((cumulative < self.mask_top_p).sum()) + 1]] = True  # the smallest nucleus
        return keep.cpu().numpy()

    @torch.no_grad()
    def step(self, action):
        if self._t is None:
            raise RuntimeError("call reset() before step()")
        token = int(action)
        if not self.action_space.contains(token):
            raise ValueError(f"token id {token} is outside the vocabulary [0, {self.action_space.n})")
        core, P = self.scorer, self.scorer.max_prompt_tokens
        is_eos = token == core.eos_id
        ends = token == core.pad_id and not is_eos  # a PAD ends the response and is not part of it
        ref_logp = 0.0 if ends else float(self._ref_logp[token])
        if not ends:
            self._ids[P + self._t], self._mask[P + self._t] = token, 1
            self._tokens.append(token)
            self._ref_sum += ref_logp
            self._t += 1
        reward = core.kl_coef * ref_logp
        terminated = is_eos or ends or self._t >= core.max_new_tokens
        info: dict[str, Any] = {"ref_logprob": ref_logp}
        if terminated:
            text = core.tokenizer.decode(self._tokens, skip_special_tokens=True)
            prompt = core.prompts[self._index]
            rm_score = float(core.reward([prompt], [text], [is_eos])[0])
            score = float(core.final_scores(rm_score, is_eos))
            reward += score
            info.update(score=score, rm_score=rm_score, eos=is_eos, response=text, prompt=prompt,
                        response_length=self._t, customer_id=core.customer_ids[self._index],
                        bandit_reward_without_policy_term=score + core.kl_coef * self._ref_sum)
            self._last = {"reward": score + core.kl_coef * self._ref_sum, **info}
            self._t = None
        else:
            pos = torch.tensor([int(self._mask[: P + self._t].sum()) - 1], device=core.device)
            self._keep(self._decoder.step(torch.tensor([token], device=core.device), pos))
        return self._observation(), float(reward), bool(terminated), False, info

    def render(self):
        if self.render_mode != "ansi" or getattr(self, "_last", None) is None:
            return None
        r = self._last
        return f"{r['prompt']}{r['response']}{'' if r['eos'] else ' [no EOS]'}\nscore {r['score']:+.3f}"
