"""Where the reward comes from: one protocol, many adapters.

    from rlhf_env.rewards import load_reward
    reward = load_reward("rm")                    # the bundled learned reward model
    scores = reward(prompts, responses)          # np.ndarray float64, shape (B,)

``load_reward`` accepts:

- ``"rm"``: the bundled reward model, the frozen ``sft-large`` LM's log-likelihood of the
  response, its weight fitted to the labelers' rankings (``rlhf_env.rewards.likelihood``);
- ``"rm-scalar"``: InstructGPT's design, a scalar head on the SFT trunk, trained on the same rankings;
  both normalised so that SFT samples score N(0, 1);
- ``"gold"``: the world's gold grader (an oracle, for experiments);
- ``"labelers"``: the labeler panel's noise-free mean utility, gold plus their length bias (what a perfect
  model of the labelers would score; an oracle too);
- a local path or hub id of any ``AutoModelForSequenceClassification`` (its own tokenizer);
- any callable ``fn(prompts, responses) -> B numbers``;
- an ``http://`` or ``https://`` URL of a reward server (``rlhf_env.rewards.server``): one process holds the
  model and every env, worker and rank scores through it (``timeout``, ``retries`` go to ``RemoteReward``);
- a ``Reward`` instance (returned as is); build ensembles with ``EnsembleReward``, and rescale a reward
  so that some policy's samples score N(0, 1) with ``NormalizedReward.fit``.
"""

from __future__ import annotations

import inspect
from typing import Callable

from rlhf_env.paths import BUNDLED_REWARDS, resolve
from rlhf_env.rewards.base import CallableReward, EnsembleReward, NormalizedReward, Reward, RewardError, check_scores

__all__ = ["CallableReward", "EnsembleReward", "GoldReward", "NormalizedReward", "Reward", "RewardError",
           "SequenceClassifierReward", "check_reward", "check_scores", "is_url", "load_reward"]

ORACLES = ("gold", "labelers")  # load_reward's names that are no model


def load_reward(spec: str | Callable | Reward = "rm", device: str = "cpu", data: str | None = None,
                **kwargs) -> Reward:
    """A Reward from a name, path, hub id, callable or Reward (see the module docstring).

    ``data`` is the world's dataset directory, used by ``gold`` to look up each prompt's task;
    other keyword arguments go to the adapter.
    """
    if isinstance(spec, Reward):
        return spec
    if callable(spec):
        return _adapter(spec, CallableReward, spec, **kwargs)
    if is_url(spec):
        from rlhf_env.rewards.server import RemoteReward

        return _adapter(spec, RemoteReward, spec, **kwargs)
    if spec == "gold":
        from rlhf_env.rewards.gold import GoldReward

        return _adapter(spec, GoldReward, data, **kwargs)
    if spec == "labelers":
        from rlhf_env.rewards.gold import LabelerReward

        return _adapter(spec, LabelerReward, data, **kwargs)
    from rlhf_env.rewards.likelihood import LikelihoodReward, is_likelihood_rm

    path = resolve(spec, BUNDLED_REWARDS)
    if is_likelihood_rm(path):
        return _adapter(spec, LikelihoodReward, path, device=device, **kwargs)
    from rlhf_env.rewards.classifier import SequenceClassifierReward

    return _adapter(spec, SequenceClassifierReward, spec, device=device, **kwargs)


def _adapter(spec, cls, *args, **kwargs) -> Reward:
    """``cls(*args, **kwargs)``, refusing by name the settings that ``cls`` does not take."""
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        unknown = [name for name in kwargs if name not in parameters]
        if unknown:
            why = (" (label and transform are a sequence-classifier RM's: --reward_label, --reward_transform)"
                   if {"label", "transform"} & set(unknown) else "")
            name = spec if isinstance(spec, str) else getattr(spec, "__name__", type(spec).__name__)
            raise ValueError(f"reward {name!r} loads as {cls.__name__}, which takes no {', '.join(unknown)}{why}")
    return cls(*args, **kwargs)


def is_url(spec) -> bool:
    """Whether a reward spec names a reward server (``rlhf serve-reward``) rather than a model or a name."""
    return isinstance(spec, str) and spec.startswith(("http://", "https://"))


def check_reward(spec) -> None:
    """Raise now for a name or path that ``load_reward`` would refuse only once it got to the model: a local path
    that does not exist, a misspelt bundled name (``resolve``'s checks). Configs call it, so that the mistake is
    reported before anything loads. A callable, an oracle or a URL passes."""
    if not (callable(spec) or spec in ORACLES or is_url(spec)):
        resolve(spec, BUNDLED_REWARDS)


def __getattr__(name):  # heavy adapters load lazily: importing the protocol does not import torch
    if name == "GoldReward":
        from rlhf_env.rewards.gold import GoldReward

        return GoldReward
    if name == "SequenceClassifierReward":
        from rlhf_env.rewards.classifier import SequenceClassifierReward

        return SequenceClassifierReward
    raise AttributeError(name)
