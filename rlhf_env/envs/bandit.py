"""``InstructBandit-v0``: InstructGPT's RL stage as a one-step Gymnasium environment."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rlhf_env.envs.scorer import ResponseScorer, ScorerControls


def bandit_spaces(scorer: ResponseScorer) -> tuple[spaces.Dict, spaces.Dict]:
    V, P, R = scorer.vocab_size, scorer.max_prompt_tokens, scorer.max_new_tokens
    observation = spaces.Dict({
        "input_ids": spaces.Box(0, V - 1, (P,), np.int64),
        "attention_mask": spaces.Box(0, 1, (P,), np.int64),
    })
    action = spaces.Dict({
        "response_ids": spaces.Box(0, V - 1, (R,), np.int64),
        "logprobs": spaces.Box(-np.inf, 0.0, (R,), np.float32),
    })
    return observation, action


class InstructBanditEnv(ScorerControls, gym.Env):
    """
    ## Description
    InstructGPT's RL stage (Ouyang et al. 2022, section 3.5) as a bandit: each episode shows one
    customer prompt, takes one response, scores it with a reward model minus a KL penalty to the
    reference (SFT) policy, and ends. The default world, models and reward ship with the package
    and work offline.

    ## Action Space
    ``Dict(response_ids=Box(0, V-1, (max_new_tokens,), int64), logprobs=Box(-inf, 0, (max_new_tokens,), float32))``:
    the response's token ids, ending with EOS and padded after it with the pad id (tokens after the
    first EOS are ignored; a response without EOS ends at its first pad), and the acting policy's
    log-probability of each token (at the env's ``temperature``).

    An agent that has no log-probs (a random or scripted agent) passes ``logprobs = 0``: that is the
    exact log-probability of a deterministic policy, and the KL term becomes ``-sum_t log pi_ref(y_t)``,
    the reference model's surprise at the response. NaN or inf log-probs are an error.

    ## Observation Space
    ``Dict(input_ids=Box(0, V-1, (max_prompt_tokens,), int64), attention_mask=Box(0, 1, (max_prompt_tokens,), int64))``:
    the prompt, left-padded.

    ## Rewards
    ``score(x, y) - kl_coef * sum_t (logprobs[t] - log pi_ref(y_t | x, y_<t))`` over the real response
    tokens, EOS included. ``score`` is the reward model's score, or ``missing_eos_penalty`` if the
    response never emits EOS. ``info`` carries the decomposition: ``score``, ``rm_score``, ``kl``,
    per-token ``log_ratio`` and ``ref_logprobs`` (zero on padding), ``response_length``, ``eos``,
    ``prompt``, ``response``, ``customer_id`` and ``prompt_index``.

    ## Starting State
    A prompt drawn uniformly with ``self.np_random``; ``reset(options={"prompt_index": i})`` fixes it.
    ``get_state()`` returns the env's random state and pending prompt as a JSON-able dict, and
    ``set_state(state)`` restores them (to resume a run exactly).

    ## Episode End
    Every step terminates the episode (one response per prompt). ``step`` before ``reset`` raises.

    ## Arguments
    - ``prompts``: a bundled split (``ppo`` by default; ``heldout`` for evaluation), a
      ``datasets.Dataset`` with a ``prompt`` column, or a path / hub id for ``datasets.load_dataset``
      (with ``prompt_split``, ``prompt_column``);
    - ``reference``: the reference (SFT) policy, a bundled name (``sft``) or any HF causal LM;
    - ``reward``: anything ``rlhf_env.rewards.load_reward`` takes (``rm``, ``gold``, a path, a callable);
    - ``kl_coef`` (0.05), ``max_prompt_tokens`` (64), ``max_new_tokens`` (48),
      ``missing_eos_penalty`` (-1.0; None for no penalty), ``temperature`` (1.0), ``device`` (``cpu``), ``render_mode``
      (``ansi`` or None), ``data`` (the world's dataset directory).

    ``kl_coef`` and ``reward`` can be changed between steps: ``env.unwrapped.kl_coef = 0.1``, or
    ``env.set_wrapper_attr("kl_coef", 0.1)`` through wrappers (``ScorerControls``).

    ## Version History
    - v0: initial version.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, prompts="ppo", reference="sft", reward="rm", kl_coef: float = 0.05,
                 max_prompt_tokens: int = 64, max_new_tokens: int = 48, missing_eos_penalty: float | None = -1.0,
                 temperature: float = 1.0, device: str = "cpu", prompt_split: str = "train",
                 prompt_column: str = "prompt", data: str | None = None, render_mode: str | None = None):
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.scorer = ResponseScorer(prompts, reference, reward, kl_coef, max_prompt_tokens, max_new_tokens,
                                     missing_eos_penalty, temperature, device, prompt_split, prompt_column, data)
        self.observation_space, self.action_space = bandit_spaces(self.scorer)
        self.render_mode = render_mode
        self._index: int | None = None
        self._last: dict | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = self.scorer.choose_prompt(self.np_random, options)
        self._index, self._last = index, None
        return self.scorer.observation(index), self.scorer.prompt_info(index)

    def get_state(self) -> dict:
        """The random state and the pending prompt (None between episodes), JSON-able."""
        return {"np_random": self.np_random.bit_generator.state, "prompt_index": self._index}

    def set_state(self, state: dict):
        """Restore ``get_state()``'s state; returns ``(observation, info)`` of the pending prompt, as ``reset``
        does, or ``(None, {})`` between episodes."""
        self.np_random.bit_generator.state = state["np_random"]
        self._index, self._last = state["prompt_index"], None
        if self._index is None:
            return None, {}
        return self.scorer.observation(self._index), self.scorer.prompt_info(self._index)

    def step(self, action: dict[str, np.ndarray]):
        if self._index is None:
            raise RuntimeError("call reset() before step(): each episode is one prompt and one response")
        _check_dict_action(action)
        rewards, infos = self.scorer.score(np.array([self._index]), np.asarray(action["response_ids"])[None],
                                         np.asarray(action["logprobs"])[None])
        observation = self.scorer.observation(self._index)
        self._last = {"reward": float(rewards[0]), **infos[0]}
        self._index = None  # the episode is over
        return observation, float(rewards[0]), True, False, infos[0]

    def render(self):
        if self.render_mode != "ansi" or self._last is None:
            return None
        r = self._last
        return (f"{r['prompt']}{r['response']}{'' if r['eos'] else ' [no EOS]'}\n"
                f"reward {r['reward']:+.3f} = score {r['score']:+.3f} - {self.scorer.kl_coef} * KL {r['kl']:.3f}")


class InstructBanditVectorEnv(ScorerControls, VectorEnv):
    """``num_envs`` bandits scored together: one reference forward and one reward call per step.

    Autoreset is ``SAME_STEP``: ``step`` returns the next prompts at once, and the finished episodes'
    observations and infos in ``info["final_obs"]`` and ``info["final_info"]`` (a dict of arrays).

    ``group_size`` k > 1 shows each drawn prompt to k consecutive sub-envs (``num_envs / k`` prompts per
    step), so that an agent gets k responses to the same prompt and can use a per-prompt baseline
    (RLOO, GRPO, PPO's default advantages). With k = 1 the prompts are independent draws.

    The other arguments, ``kl_coef``/``reward`` during a run, and ``get_state``/``set_state`` are those of
    ``InstructBanditEnv``.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, group_size: int = 1, prompts="ppo", reference="sft", reward="rm",
                 kl_coef: float = 0.05, max_prompt_tokens: int = 64, max_new_tokens: int = 48,
                 missing_eos_penalty: float | None = -1.0, temperature: float = 1.0, device: str = "cpu",
                 prompt_split: str = "train", prompt_column: str = "prompt", data: str | None = None,
                 render_mode: None = None):
        if render_mode is not None:
            raise ValueError(f"the vector env does not render; got render_mode={render_mode!r}")
        if group_size < 1 or num_envs % group_size:
            raise ValueError(f"group_size must be a positive divisor of num_envs ({num_envs}), got {group_size}")
        self.scorer = ResponseScorer(prompts, reference, reward, kl_coef, max_prompt_tokens, max_new_tokens,
                                     missing_eos_penalty, temperature, device, prompt_split, prompt_column, data)
        self.num_envs, self.group_size = num_envs, group_size
        self.single_observation_space, self.single_action_space = bandit_spaces(self.scorer)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._index: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if options and "prompt_index" in options:  # the caller's indices, one per sub-env
            self._index = self.scorer.choose_prompt(self.np_random, options, size=self.num_envs)
        else:
            self._index = self._draw()
        return self.scorer.observation(self._index), {"prompt_index": self._index.copy()}

    def get_state(self) -> dict:
        """The random state and the pending prompts (None before the first reset), JSON-able."""
        index = None if self._index is None else self._index.tolist()
        return {"np_random": self.np_random.bit_generator.state, "prompt_index": index}

    def set_state(self, state: dict):
        """Restore ``get_state()``'s state; returns ``(observations, info)`` of the pending prompts, as ``reset``
        does: the run continues exactly as it would have."""
        if state["prompt_index"] is None:
            raise ValueError("this state was saved before the first reset(); call reset() instead")
        self.np_random.bit_generator.state = state["np_random"]
        self._index = np.asarray(state["prompt_index"], dtype=np.int64)
        return self.scorer.observation(self._index), {"prompt_index": self._index.copy()}

    def _draw(self) -> np.ndarray:
        """Prompt indices for the next step: ``num_envs / group_size`` draws, each repeated ``group_size`` times."""
        draws = self.scorer.choose_prompt(self.np_random, size=self.num_envs // self.group_size)
        return np.repeat(draws, self.group_size)

    def step(self, actions: dict[str, np.ndarray]):
        if self._index is None:
            raise RuntimeError("call reset() before step()")
        _check_dict_action(actions)
        rewards, infos = self.scorer.score(self._index, actions["response_ids"], actions["logprobs"])
        final_obs = self.scorer.observation(self._index)
        self._index = self._draw()
        done = np.ones(self.num_envs, dtype=np.bool_)
        final_info = {key: np.array([info[key] for info in infos]) for key in infos[0]}
        info = {"final_obs": final_obs, "final_info": final_info, "_final_obs": done, "_final_info": done,
                "prompt_index": self._index.copy()}
        return self.scorer.observation(self._index), rewards, done, np.zeros(self.num_envs, dtype=np.bool_), info


def _check_dict_action(action) -> None:
    if not isinstance(action, dict) or not {"response_ids", "logprobs"} <= set(action):
        raise ValueError("an action is a dict with 'response_ids' and 'logprobs' "
                         f"(see the env's action_space); got {type(action).__name__}")
