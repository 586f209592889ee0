"""Stable-Baselines3 interop: SB3 rejects Gymnasium ``VectorEnv``s, so this adapts ours to SB3's
``VecEnv`` (same-step resets, ``terminal_observation`` in each env's info, float32 rewards).

    from rlhf_env.envs.sb3 import make_sb3_vec_env
    venv = make_sb3_vec_env(num_envs=64, kl_coef=0.05)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from rlhf_env.envs.bandit import InstructBanditVectorEnv


class SB3VecEnv(VecEnv):
    """Wraps an ``InstructBanditVectorEnv`` as an SB3 ``VecEnv`` (one batched scoring per step)."""

    def __init__(self, env: InstructBanditVectorEnv):
        self.env = env
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: dict[str, np.ndarray] | None = None
        self._seed: int | None = None

    def reset(self):
        obs, _ = self.env.reset(seed=self._seed)
        self._seed = None
        return obs

    def step_async(self, actions) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        final = info["final_info"]
        infos = []
        for i in range(self.num_envs):
            item = {key: values[i] for key, values in final.items()}
            item["terminal_observation"] = {k: v[i] for k, v in info["final_obs"].items()}
            item["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos.append(item)
        return obs, rewards.astype(np.float32), terminated | truncated, infos

    def seed(self, seed: int | None = None):
        self._seed = seed  # applied at the next reset, as SB3 expects
        return [seed] * self.num_envs

    def close(self) -> None:
        self.env.close()

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.env, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list[Any]:
        return [getattr(self.env, method_name)(*args, **kwargs)] * len(self._indices(indices))

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [isinstance(self.env, wrapper_class)] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


def make_sb3_vec_env(num_envs: int = 1, **kwargs: Any) -> SB3VecEnv:
    """An SB3 ``VecEnv`` of ``num_envs`` bandits; ``kwargs`` as for ``InstructBandit-v0``."""
    return SB3VecEnv(InstructBanditVectorEnv(num_envs=num_envs, **kwargs))
