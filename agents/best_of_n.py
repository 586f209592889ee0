"""Best-of-n: sample n responses from the policy and answer with the one the reward scores highest.

No training at all, so it is the reference every RL agent is judged next to: what the reward buys at a KL
to the policy of at most ``log n - (n - 1) / n`` nats. It is a policy for ``rlhf_env.evaluation.evaluate``
(a callable from prompts to responses), so it is judged exactly like a trained checkpoint::

    from agents.best_of_n import BestOfN
    from rlhf_env.evaluation import EvalConfig, evaluate

    result = evaluate(EvalConfig(policy=BestOfN("sft", "rm", n=8), baseline="sft"))
"""

from __future__ import annotations

import numpy as np
import torch

from rlhf_env.models import load_policy
from rlhf_env.rewards import load_reward
from rlhf_env.sampling import sample_n


class BestOfN:
    def __init__(self, policy="sft", reward="rm", n: int = 4, temperature: float = 1.0, max_new_tokens: int = 48,
                 seed: int = 0, batch_size: int = 64, device: str = "cpu", data: str | None = None):
        """``policy``: anything ``load_policy`` takes, or a ``(model, tokenizer)`` pair; ``reward``: anything
        ``load_reward`` takes (the bundled ``rm``, ``gold`` as an oracle, a callable, ...)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        self.model, self.tokenizer = policy if isinstance(policy, tuple) else load_policy(policy, device)
        self.reward = load_reward(reward, device=device, data=data)
        self.n, self.temperature, self.max_new_tokens = n, temperature, max_new_tokens
        self.batch_size, self.generator = batch_size, torch.Generator(device=device).manual_seed(seed)
        label = policy if isinstance(policy, str) else "policy"
        self.name = f"best-of-{n}({label}, {reward if isinstance(reward, str) else self.reward.name})"

    def candidates(self, prompts: list[str]) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """n sampled responses per prompt, their EOS flags and their rewards, each (len(prompts), n)."""
        repeated, texts, eos = sample_n(self.model, self.tokenizer, prompts, self.n, self.generator,
                                        self.max_new_tokens, self.temperature, self.batch_size)
        scores = self.reward(repeated, texts, eos)
        shape = (len(prompts), self.n)
        grouped = [texts[i * self.n:(i + 1) * self.n] for i in range(len(prompts))]
        return grouped, np.array(eos).reshape(shape), np.asarray(scores).reshape(shape)

    def __call__(self, prompts: list[str]) -> tuple[list[str], list[bool]]:
        """The highest-scoring of n samples for each prompt, and whether it ended with EOS."""
        texts, eos, scores = self.candidates(list(prompts))
        best = scores.argmax(1)
        return [row[j] for row, j in zip(texts, best)], [bool(row[j]) for row, j in zip(eos, best)]
