"""``ResponseScorer``: the bandit's reward, shared by the single env, the native vector env and the token env.

One call scores a batch of (prompt, response) pairs: it validates the actions, runs **one** batched
forward of the frozen reference model and **one** batched reward call, and returns

    reward = score(x, y) - kl_coef * sum_t (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))

where the sum runs over the real response tokens (up to and including EOS, by
``rlhf_env.sampling.response_mask``), ``log pi`` comes with the action, and ``log pi_ref`` is computed here
at the same temperature as sampling. A response that never emits EOS gets ``missing_eos_penalty`` instead
of the reward model's score (N+ recipe; None scores it like any other response).
"""

from __future__ import annotations

import difflib
import os

import numpy as np
import torch

from rlhf_env.models import context_length, load_reference
from rlhf_env.rewards import Reward, load_reward
from rlhf_env.sampling import KeptForward, response_logprobs, response_mask, trim_padding

LOGPROB_TOLERANCE = 1e-4  # log-probs a hair above 0 from float rounding are accepted


def load_prompts(prompts, prompt_split: str, prompt_column: str, data: str | None):
    """A bundled split name (read with pyarrow alone), a ``datasets.Dataset``, or anything
    ``datasets.load_dataset`` takes; as a ``pyarrow.Table``."""
    from rlhf_env.models import DATA_DIR
    from rlhf_env.world.storage import SPLITS, read_split

    if isinstance(prompts, str) and prompts in SPLITS:
        table = read_split(data or DATA_DIR, "prompts", prompts)
    else:
        from datasets import Dataset, load_dataset

        if isinstance(prompts, Dataset):
            dataset = prompts
        else:
            name = str(prompts)
            if not os.path.exists(name) and "/" not in name:  # neither a path nor an "org/name" hub id: a typo
                close = difflib.get_close_matches(name, SPLITS, n=1)
                raise ValueError(f"unknown prompt split {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                                 + f". The bundled splits are {', '.join(SPLITS)}; other prompts: a local path or "
                                 "'org/name' for datasets.load_dataset, or a datasets.Dataset")
            try:
                dataset = load_dataset(prompts, split=prompt_split)
            except (ConnectionError, FileNotFoundError) as e:
                raise ValueError(f"cannot load prompts {prompts!r} ({type(e).__name__}: {e}); the bundled splits are "
                                 f"{', '.join(SPLITS)}") from None
        table = dataset.with_format("arrow")[:]  # whole Arrow columns, not row-by-row decoding
    if prompt_column not in table.column_names:
        raise ValueError(f"the prompt dataset has no column {prompt_column!r} (columns: {table.column_names})")
    if table.num_rows == 0:
        raise ValueError("the prompt dataset is empty")
    return table


class ResponseScorer:
    """Prompts, the frozen reference policy and the reward: everything the envs need to score responses."""

    def __init__(self, prompts="ppo", reference="sft", reward="rm", kl_coef: float = 0.05,
                 max_prompt_tokens: int = 64, max_new_tokens: int = 48, missing_eos_penalty: float | None = -1.0,
                 temperature: float = 1.0, device: str = "cpu", prompt_split: str = "train",
                 prompt_column: str = "prompt", data: str | None = None):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (greedy decoding has no log-probs), got {temperature}")
        table = load_prompts(prompts, prompt_split, prompt_column, data)
        self.prompts: list[str] = table[prompt_column].to_pylist()
        self.customer_ids = (table["customer_id"].to_pylist() if "customer_id" in table.column_names
                             else [""] * len(self.prompts))
        self.model, self.tokenizer = load_reference(reference, device)
        context = context_length(self.model)
        if max_prompt_tokens + max_new_tokens > context:
            raise ValueError(f"max_prompt_tokens + max_new_tokens = {max_prompt_tokens + max_new_tokens} exceeds "
                             f"the reference model's context of {context} tokens")
        self.prompt_ids, self.prompt_mask = left_padded(self.tokenizer(self.prompts)["input_ids"], max_prompt_tokens,
                                                        self.tokenizer.pad_token_id, self.prompts)
        self.reward = load_reward(reward, device=device, data=data)
        self.data = data
        self.kl_coef = check_kl_coef(kl_coef)
        self.missing_eos_penalty, self.temperature = missing_eos_penalty, temperature
        self.max_prompt_tokens, self.max_new_tokens, self.device = max_prompt_tokens, max_new_tokens, device
        self.vocab_size = len(self.tokenizer)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        # with keep_forwards, the last step's reference forward stays in ``kept`` (``rlhf_env.sampling.KeptForward``)
        # for a reader of the same tokens: PPO's token target (``agents.token_target``)
        self.keep_forwards, self.kept = False, []

    def check_policy(self, tokenizer, policy, name: str = "the policy") -> None:
        """The env reads an agent's token ids with the reference's tokenizer: refuse a policy that reads them
        another way, with what differs."""
        problems = []
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            problems.append(f"vocabularies differ ({len(tokenizer)} vs {len(self.tokenizer)} tokens)")
        for attr, mine in (("eos_token_id", self.eos_id), ("pad_token_id", self.pad_id)):
            if getattr(tokenizer, attr) != mine:
                problems.append(f"{attr} {getattr(tokenizer, attr)} vs {mine}")
        if policy.get_input_embeddings().num_embeddings < self.vocab_size:
            problems.append(f"the policy embeds {policy.get_input_embeddings().num_embeddings} tokens, the env emits "
                            f"up to {self.vocab_size}")
        if problems:
            raise ValueError(f"policy {name!r} and the env's reference do not share a tokenizer: "
                             f"{'; '.join(problems)}. The env reads the policy's token ids, so both must come "
                             "from the same tokenizer.")

    def choose_prompt(self, rng: np.random.Generator, options: dict | None = None, size: int | None = None):
        """The episode's prompt index (or ``size`` of them, an array): ``options["prompt_index"]`` if
        given, else uniform from ``rng``."""
        n = len(self.prompts)
        if not options or "prompt_index" not in options:
            return int(rng.integers(n)) if size is None else rng.integers(n, size=size)
        index = np.asarray(options["prompt_index"], dtype=np.int64)
        index = int(index) if size is None else index.reshape(size)
        if np.any(index < 0) or np.any(index >= n):
            raise ValueError(f"prompt_index {index} out of range [0, {n})")
        return index

    def final_scores(self, rm_scores: np.ndarray, eos: np.ndarray) -> np.ndarray:
        """The score of each response: the reward model's if it emitted EOS, else ``missing_eos_penalty``
        (unless that is None)."""
        rm_scores = np.asarray(rm_scores, dtype=np.float64)
        return rm_scores if self.missing_eos_penalty is None else np.where(eos, rm_scores, self.missing_eos_penalty)

    def prompt_info(self, index: int) -> dict:
        return {"prompt_index": index, "prompt": self.prompts[index], "customer_id": self.customer_ids[index]}

    def observation(self, index: int | np.ndarray) -> dict[str, np.ndarray]:
        """The left-padded prompt(s) at ``index`` (an int, or an array for a batch), as fresh arrays."""
        return {"input_ids": self.prompt_ids[index].copy(), "attention_mask": self.prompt_mask[index].copy()}

    def response_mask(self, response_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask (B, R), eos (B,)) by ``rlhf_env.sampling.response_mask``, the sampler's rule."""
        mask, eos = response_mask(torch.from_numpy(response_ids), self.eos_id, self.pad_id)
        return mask.numpy(), eos.numpy()

    def check_actions(self, response_ids, logprobs) -> tuple[np.ndarray, np.ndarray]:
        response_ids, logprobs = np.asarray(response_ids), np.asarray(logprobs)
        R = self.max_new_tokens
        if response_ids.ndim != 2 or response_ids.shape[1] != R:
            raise ValueError(f"response_ids must have shape (B, max_new_tokens={R}), padded after EOS with the pad "
                             f"id {self.pad_id}; got {response_ids.shape} (a response longer than max_new_tokens?)")
        if response_ids.dtype.kind not in "iu":
            raise ValueError(f"response_ids must be integers, got dtype {response_ids.dtype}")
        if logprobs.shape != response_ids.shape:
            raise ValueError(f"logprobs must have the shape of response_ids {response_ids.shape}, got {logprobs.shape}")
        if logprobs.dtype.kind != "f":
            raise ValueError(f"logprobs must be floats, got dtype {logprobs.dtype}")
        if (response_ids < 0).any() or (response_ids >= self.vocab_size).any():
            bad = response_ids[(response_ids < 0) | (response_ids >= self.vocab_size)]
            raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {self.vocab_size})")
        return response_ids.astype(np.int64), logprobs.astype(np.float64)

    @torch.no_grad()
    def reference_logprobs(self, index: np.ndarray, response_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """log pi_ref(y_t | x, y_<t) at the sampling temperature, (B, R), 0 on padding. One forward, over
        the columns that are not padding in every row (``trim_padding``)."""
        ids = torch.from_numpy(np.concatenate([self.prompt_ids[index], response_ids], 1)).to(self.device)
        full_mask = torch.from_numpy(np.concatenate([self.prompt_mask[index], mask], 1)).to(self.device)
        ids, full_mask, used = trim_padding(ids, full_mask, torch.from_numpy(mask).to(self.device))
        logp, logp_all, _ = response_logprobs(self.model, ids, full_mask, used, self.temperature)
        self.kept = [KeptForward(self.model, ids, full_mask, logp_all, self.temperature)] if self.keep_forwards else []
        out = np.zeros(response_ids.shape, dtype=np.float64)
        out[:, :used] = (logp * full_mask[:, -used:]).cpu().numpy()
        return out

    def score(self, index: np.ndarray, response_ids, logprobs) -> tuple[np.ndarray, list[dict]]:
        """Rewards (B,) and one info dict per pair; see the module docstring."""
        response_ids, logprobs = self.check_actions(response_ids, logprobs)
        mask, eos = self.response_mask(response_ids)
        real = mask.astype(bool)
        if not np.isfinite(logprobs[real]).all():
            raise ValueError("logprobs contain NaN or inf on real response tokens")
        if (logprobs[real] > LOGPROB_TOLERANCE).any():
            raise ValueError(f"logprobs must be <= 0 (they are log-probabilities); got {logprobs[real].max():.4g}")
        ref = self.reference_logprobs(index, response_ids, mask)
        log_ratio = (np.where(real, logprobs, 0.0) - ref) * mask  # (B, R)
        kl = log_ratio.sum(1)
        texts = [self.tokenizer.decode(ids[m], skip_special_tokens=True) for ids, m in zip(response_ids, real)]
        prompts = [self.prompts[i] for i in index]
        rm_scores = self.reward(prompts, texts, eos)
        scores = self.final_scores(rm_scores, eos)
        rewards = scores - self.kl_coef * kl
        infos = [{"score": float(scores[b]), "rm_score": float(rm_scores[b]), "kl": float(kl[b]),
                  "log_ratio": log_ratio[b].astype(np.float32), "ref_logprobs": ref[b].astype(np.float32),
                  "response_length": int(mask[b].sum()), "eos": bool(eos[b]), "prompt": prompts[b],
                  "response": texts[b], "customer_id": self.customer_ids[int(index[b])],
                  "prompt_index": int(index[b])} for b in range(len(index))]
        return rewards, infos


def left_padded(ids: list[list[int]], width: int, pad_id: int, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of prompts, left-padded to ``width``, and their mask: two (N, width) int64 arrays. A prompt of
    no tokens or more than ``width`` is an error."""
    lengths = np.array([len(row) for row in ids])
    if lengths.max() > width or lengths.min() == 0:
        i = int(np.argmax(lengths)) if lengths.max() > width else int(np.argmin(lengths))
        raise ValueError(f"prompt {i} has {lengths[i]} tokens; prompts need 1..max_prompt_tokens={width} tokens: "
                         f"{prompts[i]!r}")
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    for row, tokens in zip(out, ids):
        row[width - len(tokens):] = tokens
    return out, (np.arange(width) >= width - lengths[:, None]).astype(np.int64)


def check_kl_coef(kl_coef: float) -> float:
    if not (np.isfinite(kl_coef) and kl_coef >= 0):
        raise ValueError(f"kl_coef (beta) must be a finite number >= 0, got {kl_coef}")
    return float(kl_coef)


class ScorerControls:
    """The public way to change an env's beta and reward during a run (``env.unwrapped.kl_coef = 0.1``; through
    Gymnasium wrappers, ``env.set_wrapper_attr("kl_coef", 0.1)``). Mixed into every env of this package."""

    scorer: ResponseScorer

    @property
    def kl_coef(self) -> float:
        """beta: the KL penalty's coefficient, used from the next step on (an adaptive controller sets it)."""
        return self.scorer.kl_coef

    @kl_coef.setter
    def kl_coef(self, value: float) -> None:
        self.scorer.kl_coef = check_kl_coef(value)

    @property
    def reward(self) -> Reward:
        """The reward that scores responses; set anything ``rlhf_env.rewards.load_reward`` takes, e.g. a
        ``NormalizedReward`` around the current one."""
        return self.scorer.reward

    @reward.setter
    def reward(self, spec) -> None:
        self.scorer.reward = load_reward(spec, device=self.scorer.device, data=self.scorer.data)
