"""A reward model that keeps its language-model head: the bundled default RM (``rm``).

InstructGPT's RM replaces the SFT model's unembedding by a scalar head. In this world that design learns
length and filler words, not correctness (``rlhf eval-rm --rm rm-scalar``): a scalar read at EOS cannot
check an answer, while an SFT model's own next-token probabilities already do (an answer with a wrong
number or a swapped word is unlikely under a model that learned the task). So this RM scores

    r(x, y) = w * sum_t log p(y_t | x, y_<t)

over the response tokens (EOS included when the policy emitted it), with p the SFT language model it was built
from, kept frozen (``rlhf rm --lm_epochs`` trains it first; the bundled ``rm``'s is untrained). The weight is
fitted with the paper's K-ranking loss on the labelers' comparisons, to ``r(x, y) + w_len * len(y)``: the length
term soaks up the labelers' spurious length preference while fitting and is dropped from the reward (a
length-decorrelated RM, as in ODIN: Chen et al. 2024). A gain and a bias then make SFT samples score mean 0 and std 1.

Why the sum and not the mean log-prob, which agrees more with the labelers (they like longer answers):
every token's log-prob is at most 0, so appending anything to a response can only lower a sum, while a
predictable pleasantry ("let me know if you need more .") raises a mean. PPO finds that within a default
run and pads wrong answers with it (``benchmarks/rm_forms.py`` measures both forms).

On disk it is an ordinary Hugging Face causal-LM directory (safetensors + config.json + tokenizer) plus
``reward_config.json`` (kind, weight, normalisation). Loading reads tensors and JSON only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from rlhf_env.rewards.base import Reward

CONFIG_FILE = "reward_config.json"


def is_likelihood_rm(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists()


class LikelihoodRewardModel(torch.nn.Module):
    """A causal LM, frozen for scoring, and a learned weight on its log-likelihood of the response (see the
    module)."""

    def __init__(self, lm, tokenizer):
        super().__init__()
        self.lm, self.tokenizer = lm.requires_grad_(False).eval(), tokenizer
        self.weight = torch.nn.Parameter(torch.tensor(1.0))  # on the response's summed log-probs
        self.length_weight = torch.nn.Parameter(torch.tensor(0.0))  # per response token; fitting only
        self.gain, self.bias = 1.0, 0.0  # normalisation, applied by ``LikelihoodReward``

    @property
    def config(self):
        """The LM's config: what it saves as its ``config.json`` (``save_pretrained``)."""
        return self.lm.config

    def train(self, mode: bool = True):
        super().train(mode)
        self.lm.eval()  # frozen: no dropout, ever
        return self

    def encode(self, prompts: list[str], responses: list[str], eos: list[bool]):
        """``(ids, mask, predicts)``: ``prompt + response (+ EOS)`` ids and mask (B, T) and the mask (B, R) of the
        response tokens, which are the last R columns. Prompt and response are tokenised apart, as the policy
        produced them. Where prompts repeat enough for the LM to share them (``rlhf_env.sampling.shares``), the
        prompts are left-padded and the responses right-padded, in two blocks, so that each prompt's forward is
        shared (``rlhf_env.sampling.response_log_softmax``); else each row is left-padded whole (less padding)."""
        from rlhf_env.sampling import shares

        tok, device = self.tokenizer, self.weight.device
        pairs = [(tok(p)["input_ids"], tok(r)["input_ids"] + ([tok.eos_token_id] if e else []))
                 for p, r, e in zip(prompts, responses, eos)]
        blocks = shares(self.lm, len(pairs), len(set(prompts)))
        P, R = max(len(p) for p, _ in pairs), max(1, max(len(r) for _, r in pairs))
        T = P + R if blocks else max(R + 1, max(len(p) + len(r) for p, r in pairs))
        ids = torch.full((len(pairs), T), tok.pad_token_id, dtype=torch.long)
        mask, predicts = torch.zeros_like(ids), torch.zeros(len(pairs), R)
        for i, (p, r) in enumerate(pairs):
            end = P + len(r) if blocks else T  # where the row's response ends
            ids[i, end - len(p) - len(r):end] = torch.tensor(p + r)
            mask[i, end - len(p) - len(r):end] = 1
            first = 0 if blocks else R - len(r)  # its first column among the last R
            predicts[i, first:first + len(r)] = 1
        return ids.to(device), mask.to(device), predicts.to(device)

    def features(self, prompts: list[str], responses: list[str], eos: list[bool], grad: bool = False,
                 kept: list | None = None) -> torch.Tensor:
        """(B, 2): the sum of the response's token log-probs, and its length in tokens; with ``grad``, the first
        differentiable in the LM's weights (``rlhf rm --lm_epochs``: the LM trained by the ranking loss). Appends
        the forward to ``kept`` if given (``rlhf_env.sampling.KeptForward``)."""
        from rlhf_env.sampling import KeptForward, response_logprobs

        ids, mask, predicts = self.encode(prompts, responses, eos)
        with torch.set_grad_enabled(grad):
            logp, logp_all, _ = response_logprobs(self.lm, ids, mask, predicts.shape[1])  # the last R columns' tokens
            if kept is not None:
                kept.append(KeptForward(self.lm, ids, mask, logp_all))
            return torch.stack([(logp * predicts).sum(1), predicts.sum(1)], 1)

    def forward(self, prompts: list[str], responses: list[str], eos: list[bool], fitting: bool = False
                ) -> torch.Tensor:
        """Raw (unnormalised) rewards, shape (B,); with ``fitting``, plus the length term."""
        f = self.features(prompts, responses, eos)
        return self.score_features(f, fitting)

    def score_features(self, f: torch.Tensor, fitting: bool = False) -> torch.Tensor:
        reward = self.weight * f[:, 0]
        return reward + self.length_weight * f[:, 1] if fitting else reward

    def save_pretrained(self, directory: str | Path, state_dict: dict | None = None) -> None:
        """The LM (``model.safetensors`` and ``config.json``, in the dtype of ``state_dict`` if given) and
        ``reward_config.json``; the caller saves the tokenizer, as ``save_policy`` and the trainer's
        checkpoints do."""
        directory = Path(directory)
        lm_state = None if state_dict is None else {k[len("lm."):]: v for k, v in state_dict.items()
                                                    if k.startswith("lm.")}
        self.lm.save_pretrained(directory, state_dict=lm_state)
        (directory / CONFIG_FILE).write_text(json.dumps(
            {"kind": "likelihood", "weight": self.weight.item(), "length_weight": self.length_weight.item(),
             "reward_gain": self.gain, "reward_bias": self.bias}, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> LikelihoodRewardModel:
        """Load a directory written by ``save_pretrained`` (tensors and JSON only), in float32, for scoring
        (``rlhf_env.models.load_reference``: the bundled RM without transformers)."""
        from rlhf_env.models import load_reference

        lm, tokenizer = load_reference(str(directory), device)
        model = cls(lm, tokenizer)
        config = json.loads((Path(directory) / CONFIG_FILE).read_text())
        with torch.no_grad():
            model.weight.fill_(config["weight"])
            model.length_weight.fill_(config["length_weight"])
        model.gain, model.bias = float(config["reward_gain"]), float(config["reward_bias"])
        return model.to(device).eval()


class LikelihoodReward(Reward):
    """A ``LikelihoodRewardModel`` (bundled name or directory) as a normalised reward."""

    def __init__(self, model: LikelihoodRewardModel | str | Path, device: str | torch.device = "cpu",
                 batch_size: int = 64, normalize: bool = True):
        if not isinstance(model, LikelihoodRewardModel):
            self.name = str(model)
            model = LikelihoodRewardModel.from_pretrained(model, device)
        else:
            self.name = "likelihood-rm"
        self.model, self.batch_size = model.eval(), batch_size
        self.gain, self.bias = (model.gain, model.bias) if normalize else (1.0, 0.0)
        # with keep_forwards, the last call's LM forwards stay in ``kept`` (``rlhf_env.sampling.KeptForward``) for a
        # reader of the same tokens: PPO's token target (``agents.token_target``)
        self.keep_forwards, self.kept = False, []

    def _features(self, prompts, responses, eos) -> torch.Tensor:
        kept = [] if self.keep_forwards else None
        features = torch.cat([self.model.features(prompts[i:i + self.batch_size], responses[i:i + self.batch_size],
                                                  eos[i:i + self.batch_size], kept=kept)
                              for i in range(0, len(prompts), self.batch_size)])
        self.kept = kept or []
        return features

    def _normalised(self, raw: torch.Tensor) -> np.ndarray:
        return raw.cpu().numpy().astype(np.float64) * self.gain + self.bias

    @torch.no_grad()
    def score(self, prompts, responses, eos):
        return self._normalised(self.model.score_features(self._features(prompts, responses, eos)))

    @torch.no_grad()
    def score_with_length_term(self, prompts: list[str], responses: list[str], eos: list[bool]
                               ) -> tuple[np.ndarray, np.ndarray]:
        """(the reward, the same with the length term it was fitted with) from one forward: the second is the RM
        as a model of the labelers' preferences (``rlhf eval-rm`` measures its accuracy both ways), never the
        reward a policy gets."""
        f = self._features(prompts, responses, eos)
        return (self._normalised(self.model.score_features(f)),
                self._normalised(self.model.score_features(f, fitting=True)))
