"""Stable-Baselines3 policies that wrap any Hugging Face causal LM, for both RLHF envs.

SB3's own algorithms (``PPO``, ``A2C``, sb3_contrib's ``MaskablePPO``) train these policies as they are. The LM
is named in ``policy_kwargs`` (``lm``: a bundled name such as ``"sft"``, a checkpoint directory or a hub id,
loaded with ``rlhf_env.models.load_policy``), so the kwargs serialise and ``PPO.save`` / ``PPO.load``
round-trip (the LM is loaded by name, then the saved weights replace its own). ``save_pretrained(dir)`` writes
the trained LM as a checkpoint that ``rlhf eval --policy DIR`` accepts. The LM must share the env's tokenizer
(the envs read its token ids), and ``temperature`` must be the env's: both divide the logits by it.

**SB3's pieces, mapped onto the LM.** The features extractor (``LMTrunk``) is the LM's trunk, read at each
observation's last attended token (position ids from the attention mask, so padding changes nothing); the
``mlp_extractor`` is empty; ``action_net`` *is* the LM head (no new V x d layer); ``value_net`` is a
zero-initialised linear head on the same hidden state (``agents.policy.ValueHead``). ``ortho_init`` is refused,
since SB3 would re-initialise every pretrained ``nn.Linear``, and dropout is switched off, as in
``agents/ppo.py``.

**Token env** (``InstructToken-v0``, ``Discrete(V)`` actions): ``LMActorCriticPolicy`` for ``PPO`` / ``A2C``
and ``MaskableLMActorCriticPolicy`` for ``MaskablePPO`` with the env's ``action_masks()`` (NLPO-style: the
reference's top-p tokens). MaskablePPO keeps a float32 mask per step and vocabulary entry
(``mask_buffer_bytes``). Each step runs the trunk over the whole context (SB3 has no KV cache).
``make_sb3_token_env`` builds SB3's vec env of it. The env ends a response at the length limit with a
termination, not a truncation (it is then scored and nothing follows), so SB3 bootstraps no value there.

**Bandit** (``InstructBandit-v0``): SB3 takes no ``Dict`` actions, so ``ResponseActions`` wraps the SB3 vec env
of ``rlhf_env.envs.sb3.make_sb3_vec_env`` (``make_sb3_bandit`` builds both): an action is the whole response's
token ids, ``MultiDiscrete([V] * max_new_tokens)``, PAD after the end. ``LMSequencePolicy`` samples it with
the sampler (``rlhf_env.sampling.sample_from_ids``) and scores it by teacher forcing
(``agents.policy.response_forward``); its log-prob is the sequence's, summed over the response mask
(``rlhf_env.sampling.response_mask``: up to and including the first EOS; a PAD before any EOS ends the
response and is not part of it), as the env counts the KL and as ``agents/ppo.py`` does.

**The KL penalty and SB3's ``ent_coef``.** Neither env's SB3 action carries the policy's log-probs, so the
env pays only the reference's half of ``score - kl_coef * sum_t (log pi - log pi_ref)``:

- token env: ``kl_coef * log pi_ref(a_t | s_t)`` per token, plus the score at the end;
- bandit through ``ResponseActions``: the bandit's reward with ``logprobs = 0``, ``score + kl_coef * sum_t
  log pi_ref(y_t | x, y_<t)`` over the response mask.

In both, an episode's return plus ``kl_coef * (-log pi(actions))`` is exactly the bandit's reward of the same
response (``kl_regularised_return`` measures it; in the token env, an episode ended by a PAD, which is not part
of the response, also pays that PAD's ``-kl_coef * log pi``). SB3's ``ent_coef = kl_coef`` supplies the missing
``-kl_coef * log pi`` half in expectation: ``E[-log pi(a_t | s_t)]`` is the entropy at ``s_t``, and for a whole
response, ``E[-log pi(y | x)]`` is the expected sum of the per-token entropies along it (the chain rule of
entropy), which is the entropy ``LMSequencePolicy.evaluate_actions`` returns. (Both of its sums leave out the
position of a PAD that ends a response, so there the two differ by the PAD's share, which is small for an LM
that rarely samples PAD.) SB3 adds the entropy to the loss, not to the reward, so its gradient is that of the
entropy at the visited states (the usual entropy bonus), not the exact gradient of ``-kl_coef * E[log pi]``.

    from stable_baselines3 import PPO
    from agents.sb3 import LMSequencePolicy, make_sb3_bandit
    venv = make_sb3_bandit(num_envs=16, kl_coef=0.05)
    model = PPO(LMSequencePolicy, venv, n_steps=1, batch_size=8, ent_coef=0.05, policy_kwargs={"lm": "sft"})
"""

from __future__ import annotations

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

from agents.policy import ValueHead, entropy, response_forward
from rlhf_env.envs.sb3 import make_sb3_vec_env
from rlhf_env.envs.token import InstructTokenEnv
from rlhf_env.models import load_policy, save_policy
from rlhf_env.sampling import positions, response_mask, sample_from_ids, trim_padding

MASK_BYTES = 4  # MaskablePPO stores masks as float32


def mask_buffer_bytes(n_steps: int, n_envs: int, vocab_size: int) -> int:
    """Bytes of MaskablePPO's action-mask buffer on the token env: float32 ``(n_steps, n_envs, V)``. It grows
    with the vocabulary, where SB3's ``Discrete`` action buffer stores one index per step."""
    return n_steps * n_envs * vocab_size * MASK_BYTES


def token_ids(obs) -> tuple[torch.Tensor, torch.Tensor]:
    """The observation's ids and attention mask as long tensors (SB3 hands Box observations over as floats)."""
    return obs["input_ids"].long(), obs["attention_mask"].long()


def last_token_hidden(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The trunk's last hidden state (B, d) at each row's last attended token. Rows may be padded on both sides
    (the token env: a left-padded prompt, then the response so far, right-padded); columns that are padding
    in every row are cut first, which changes nothing."""
    used = mask.bool().any(0).int()
    first, end = int(used.argmax()), len(used) - int(used.flip(0).argmax())
    ids, mask = ids[:, first:end], mask[:, first:end]
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    return out.last_hidden_state[torch.arange(len(ids), device=ids.device), last]


class LMTrunk(BaseFeaturesExtractor):
    """SB3 features extractor: the causal LM ``lm`` (loaded by name with dropout off), read at each
    observation's last attended token. ``self.lm`` is the whole LM, head included."""

    def __init__(self, observation_space: spaces.Dict, lm: str = "sft"):
        model, tokenizer = load_policy(lm)
        super().__init__(observation_space, features_dim=model.get_output_embeddings().weight.shape[1])
        for module in model.modules():  # dropout off whatever SB3's train/eval mode (N+)
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.lm, self.tokenizer = model, tokenizer

    def forward(self, obs) -> torch.Tensor:
        return last_token_hidden(self.lm, *token_ids(obs))


class LMPolicyMixin:
    """What the three policies share: the LM as features extractor and action net, a zero-initialised value
    head, no orthogonal init, and the LM named in the constructor's kwargs (``lm``, ``temperature``)."""

    OWN_KWARGS = ("net_arch", "features_extractor_class", "features_extractor_kwargs", "share_features_extractor")

    def __init__(self, observation_space, action_space, lr_schedule, lm: str = "sft", temperature: float = 1.0,
                 ortho_init: bool = False, **kwargs):
        name = type(self).__name__
        if ortho_init:
            raise ValueError(f"ortho_init=True would overwrite the pretrained LM's weights; {name} needs "
                             "ortho_init=False")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (the env's sampling temperature), got {temperature}")
        for key in self.OWN_KWARGS:
            if key in kwargs:
                raise ValueError(f"{name} sets {key} itself (the LM is the network); remove it from policy_kwargs")
        super().__init__(observation_space, action_space, lr_schedule, net_arch=[], ortho_init=False,
                         features_extractor_class=LMTrunk, features_extractor_kwargs={"lm": str(lm)},
                         share_features_extractor=True, **kwargs)
        self.lm_name, self.temperature = str(lm), float(temperature)
        multi = isinstance(action_space, spaces.MultiDiscrete)
        sizes = set(action_space.nvec.tolist()) if multi else {int(action_space.n)}
        vocab = self.action_net.weight.shape[0]
        if sizes != {vocab}:
            raise ValueError(f"the LM {self.lm_name!r} scores {vocab} tokens but the env's actions range over "
                             f"{sorted(sizes)}: the LM must share the env's tokenizer")

    @property
    def lm(self):
        return self.features_extractor.lm

    @property
    def tokenizer(self):
        return self.features_extractor.tokenizer

    def _build(self, lr_schedule) -> None:
        self._build_mlp_extractor()  # net_arch=[]: the identity
        self.action_net = self.lm.get_output_embeddings()
        self.value_net = ValueHead(self.features_dim)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor):
        return self.action_dist.proba_distribution(action_logits=self.action_net(latent_pi).float() / self.temperature)

    def _get_constructor_parameters(self) -> dict:
        data = super()._get_constructor_parameters()
        for key in self.OWN_KWARGS:
            data.pop(key, None)
        return {**data, "lm": self.lm_name, "temperature": self.temperature}

    def save_pretrained(self, directory) -> None:
        """Write the LM (trained weights) and its tokenizer as a Hugging Face checkpoint (``save_policy``)."""
        save_policy(self.lm, self.tokenizer, directory)


class LMActorCriticPolicy(LMPolicyMixin, ActorCriticPolicy):
    """The token env's policy for SB3's ``PPO`` and ``A2C``: next-token logits from the LM, divided by
    ``temperature``. ``policy_kwargs``: ``lm`` (required in practice; default ``"sft"``), ``temperature``, and
    SB3's optimiser options."""


class MaskableLMActorCriticPolicy(LMPolicyMixin, MaskableActorCriticPolicy):
    """``LMActorCriticPolicy`` for sb3_contrib's ``MaskablePPO``: the env's ``action_masks()`` zero the
    probability of every token outside the reference's nucleus."""


class LMSequencePolicy(LMPolicyMixin, ActorCriticPolicy):
    """The bandit's policy (through ``ResponseActions``) for SB3's ``PPO`` and ``A2C``: one action is a whole
    response, ``(max_new_tokens,)`` token ids, sampled autoregressively at ``temperature`` (greedy when
    deterministic). Its log-prob is the response's, its entropy the sum of the per-token entropies along it,
    its value the value head on the prompt's last hidden state."""

    def __init__(self, observation_space, action_space, lr_schedule, **kwargs):
        if not isinstance(action_space, spaces.MultiDiscrete) or len(set(action_space.nvec.tolist())) != 1:
            raise ValueError(f"LMSequencePolicy needs MultiDiscrete([V] * max_new_tokens) actions (wrap the bandit "
                             f"in agents.sb3.ResponseActions), got {action_space}")
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _sample(self, obs, deterministic: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Responses (B, T) padded with PAD, and their log-probs (B,) at the policy's temperature."""
        ids, mask = token_ids(obs)
        T = self.action_space.shape[0]
        samples = sample_from_ids(self.lm, self.tokenizer, ids, mask, T, 0.0 if deterministic else self.temperature)
        actions = torch.full((len(ids), T), self.tokenizer.pad_token_id, dtype=torch.long, device=ids.device)
        actions[:, :samples.response_ids.shape[1]] = samples.response_ids
        if deterministic:  # the sampler's greedy log-probs are at temperature 1
            return actions, self.score(obs, actions)[1]
        return actions, (samples.logprobs * samples.response_mask).sum(1)

    def score(self, obs, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(values (B,), log pi(y | x) (B,), sum of per-token entropies (B,))`` of responses ``actions``
        (B, T), by one teacher-forced forward over the prompt and the response mask."""
        ids, mask = token_ids(obs)
        actions = actions.long()  # SB3's rollout buffer keeps actions as floats
        real, _ = response_mask(actions, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
        ids, full_mask, r = trim_padding(torch.cat([ids, actions], 1), torch.cat([mask, real], 1), real)
        logprobs, logp_all, hidden = response_forward(self.lm, ids, full_mask, r, self.temperature, want_hidden=True)
        real = real[:, :r]
        return self.value_net(hidden[:, 0]), (logprobs * real).sum(1), (entropy(logp_all) * real).sum(1)

    def forward(self, obs, deterministic: bool = False):
        actions, log_prob = self._sample(obs, deterministic)
        return actions, self.predict_values(obs), log_prob

    def evaluate_actions(self, obs, actions: torch.Tensor):
        return self.score(obs, actions)

    def _predict(self, observation, deterministic: bool = False) -> torch.Tensor:
        return self._sample(observation, deterministic)[0]

    def get_distribution(self, obs):
        raise NotImplementedError("a response is sampled token by token; there is no one distribution over "
                                  "whole responses to return (use forward, predict or evaluate_actions)")


class ResponseActions(VecEnvWrapper):
    """The bandit's SB3 ``VecEnv`` (``rlhf_env.envs.sb3.SB3VecEnv``) with actions SB3 can take:
    ``MultiDiscrete([V] * max_new_tokens)``, the response's token ids, PAD after the end (tokens after the first
    EOS are ignored). The bandit gets ``logprobs = 0``, so each reward is ``score + kl_coef * sum_t log
    pi_ref(y_t | x, y_<t)`` over the response; adding ``kl_coef * (-log pi(y | x))`` gives the bandit's
    ``score - kl_coef * KL`` exactly (see the module docstring). Observations and infos are the bandit's."""

    def __init__(self, venv: VecEnv):
        space = venv.action_space
        if not isinstance(space, spaces.Dict) or set(space.spaces) != {"response_ids", "logprobs"}:
            raise ValueError(f"ResponseActions wraps the bandit's SB3 vec env (make_sb3_vec_env), whose actions are "
                             f"Dict(response_ids, logprobs); got {space}")
        ids = space["response_ids"]
        super().__init__(venv, action_space=spaces.MultiDiscrete(np.full(ids.shape, int(ids.high.max()) + 1)))

    def step_async(self, actions) -> None:
        ids = np.rint(np.asarray(actions, dtype=np.float64)).astype(np.int64).reshape(self.num_envs, -1)
        self.venv.step_async({"response_ids": ids, "logprobs": np.zeros(ids.shape, np.float32)})

    def step_wait(self):
        return self.venv.step_wait()

    def reset(self):
        return self.venv.reset()


def make_sb3_bandit(num_envs: int = 1, **kwargs) -> ResponseActions:
    """``num_envs`` bandits as one SB3 ``VecEnv`` with ``MultiDiscrete`` response actions; ``kwargs`` as for
    ``InstructBandit-v0``."""
    return ResponseActions(make_sb3_vec_env(num_envs, **kwargs))


def make_sb3_token_env(num_envs: int = 1, **kwargs) -> VecEnv:
    """``num_envs`` token envs in SB3's ``DummyVecEnv``, each in a ``Monitor``; ``kwargs`` as for
    ``InstructToken-v0``. (``make_vec_env("InstructToken-v0")`` would pass
    ``render_mode="rgb_array"``, which the env refuses.)"""
    return make_vec_env(InstructTokenEnv, n_envs=num_envs, env_kwargs=kwargs)


@torch.no_grad()
def kl_regularised_return(policy, venv: VecEnv, episodes: int = 1, seed: int | None = 0) -> dict[str, float]:
    """Sample ``policy`` in ``venv`` (either env; masks applied for a maskable policy) and return the means over
    episodes of ``sum_t r_t - kl_coef * log pi(a_t | s_t)``, which is each episode's bandit reward ``score -
    kl_coef * KL`` (``reward``), and of the score (``score``). Every sub-env runs its first ``episodes`` episodes,
    so that short episodes are not over-represented; ``seed`` seeds the envs' prompts. It resets ``venv``: a model
    that trains on it should reset it too (``learn()`` does, unless ``reset_num_timesteps=False``)."""
    policy.set_training_mode(False)
    beta = float(venv.get_attr("kl_coef")[0])
    masked = isinstance(policy, MaskableActorCriticPolicy)
    if seed is not None:
        venv.seed(seed)
    obs = venv.reset()
    done_episodes, running = np.zeros(venv.num_envs, int), np.zeros(venv.num_envs)
    rewards, scores = [], []
    while (done_episodes < episodes).any():
        masks = {"action_masks": get_action_masks(venv)} if masked else {}
        actions, _, log_prob = policy(obs_as_tensor(obs, policy.device), **masks)
        obs, reward, dones, infos = venv.step(actions.cpu().numpy())
        running += reward - beta * log_prob.cpu().numpy()
        for i in np.flatnonzero(dones):
            if done_episodes[i] < episodes:
                rewards.append(running[i])
                scores.append(infos[i]["score"])
            done_episodes[i] += 1
            running[i] = 0.0
    return {"reward": float(np.mean(rewards)), "score": float(np.mean(scores)), "episodes": len(rewards)}
