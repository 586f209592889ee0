"""The reward protocol: one batched call from texts to float64 scores.

Every reward in this package, and any a user plugs in, is used as::

    scores = reward(prompts: list[str], responses: list[str])   # np.ndarray, float64, shape (B,)
    scores = reward(prompts, responses, eos=[True, False, ...])  # optional: did each response end?

``eos`` says whether each response ended with the policy's EOS token (default: all did). A reward
that can see the ending (the learned RMs, which read their score at EOS, and the gold grader) uses
it, so a response cut off at the length limit is judged as such; a plain callable ignores it.

``Reward.__call__`` checks the output of ``score`` (shape, numeric type, finiteness) so that a broken
reward fails loudly at the call, not as a NaN advantage three steps later.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


class RewardError(ValueError):
    """A reward returned something that is not one finite number per (prompt, response)."""


class Reward:
    """Base class: subclasses implement ``score``; callers use ``reward(prompts, responses)``."""

    name = "reward"

    def score(self, prompts: list[str], responses: list[str], eos: list[bool]) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 eos: Sequence[bool] | None = None) -> np.ndarray:
        prompts, responses = list(prompts), list(responses)
        eos = [True] * len(responses) if eos is None else [bool(e) for e in eos]
        if not len(prompts) == len(responses) == len(eos):
            raise ValueError(f"{len(prompts)} prompts, {len(responses)} responses and {len(eos)} eos flags")
        return check_scores(self.score(prompts, responses, eos), len(prompts), self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def check_scores(scores, n: int, name: str = "reward") -> np.ndarray:
    """Return ``scores`` as float64 of shape (n,), or raise a RewardError saying what is wrong."""
    try:
        array = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores)
    except Exception as e:  # e.g. a ragged list
        raise RewardError(f"{name} returned {type(scores).__name__}, which is not an array of numbers: {e}") from None
    if array.dtype.kind not in "biuf":
        raise RewardError(f"{name} returned non-numeric values (dtype {array.dtype}); expected floats")
    if array.shape != (n,):
        raise RewardError(f"{name} returned shape {array.shape}; expected ({n},), one score per response")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise RewardError(f"{name} returned {int(bad.sum())} non-finite score(s) (NaN or inf) at "
                          f"indices {np.flatnonzero(bad)[:5].tolist()}")
    return array


class CallableReward(Reward):
    """Any Python function ``fn(prompts, responses) -> array-like of B numbers``."""

    def __init__(self, fn: Callable[[list[str], list[str]], Sequence[float]], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "callable")

    def score(self, prompts, responses, eos):
        return self.fn(prompts, responses)


class EnsembleReward(Reward):
    """Combine several rewards: ``mean``, ``min``, or ``mean_minus_std`` (mean - k * std).

    Conservative combinations (min, mean - k*std) are a known mitigation for reward over-optimisation
    (Coste et al. 2023, "Reward Model Ensembles Help Mitigate Overoptimization").
    """

    MODES = ("mean", "min", "mean_minus_std")

    def __init__(self, members: Sequence[Reward], mode: str = "mean", k: float = 1.0):
        if mode not in self.MODES:
            raise ValueError(f"unknown ensemble mode {mode!r}; choose one of {self.MODES}")
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members, self.mode, self.k = list(members), mode, k
        self.name = f"{mode}({', '.join(m.name for m in self.members)})"

    def score(self, prompts, responses, eos):
        scores = np.stack([m(prompts, responses, eos) for m in self.members])  # (M, B)
        if self.mode == "mean":
            return scores.mean(0)
        if self.mode == "min":
            return scores.min(0)
        return scores.mean(0) - self.k * scores.std(0)


class NormalizedReward(Reward):
    """``(reward - mean) / std``, with the mean and std of the scores of some reference responses: e.g.
    the initial policy's samples, so that they score N(0, 1) (the N+ recipe). A reward of any scale then
    meets the KL penalty, the missing-EOS penalty and a value head that starts at 0 on the same terms as
    the bundled reward models, which were normalised that way when trained.

    ``NormalizedReward.fit(reward, prompts, responses, eos)`` measures the mean and std; the constructor
    takes them as they are (e.g. read back from a checkpoint).
    """

    def __init__(self, reward: Reward | Callable, mean: float, std: float):
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise ValueError(f"cannot normalise by mean {mean} and std {std}: need finite values and std > 0")
        reward = reward if isinstance(reward, Reward) else CallableReward(reward)
        self.reward, self.mean, self.std = reward, float(mean), float(std)
        self.name = f"normalised({reward.name})"

    @classmethod
    def fit(cls, reward: Reward | Callable, prompts: Sequence[str], responses: Sequence[str],
            eos: Sequence[bool] | None = None) -> NormalizedReward:
        reward = reward if isinstance(reward, Reward) else CallableReward(reward)
        scores = reward(prompts, responses, eos)
        if len(scores) < 2 or not scores.std() > 0:
            raise ValueError(f"{reward.name} gives all {len(scores)} reference responses the same score "
                             f"({scores[0] if len(scores) else None}); there is no scale to normalise by")
        return cls(reward, scores.mean(), scores.std())

    def score(self, prompts, responses, eos):
        return (self.reward(prompts, responses, eos) - self.mean) / self.std
