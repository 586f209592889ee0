"""An experimental reward model that keeps SFT's LM head: does reading token likelihoods let an RM check
answers, and does PPO against it stop padding?

``LikelihoodRM`` is the SFT model with its unembedding kept. Its score is a zero-initialised scalar head on
the last token (the InstructGPT RM) plus learned weights on the mean and the sum of its own log-probs of
the response tokens, starting at 1 and 0. It is trained with the InstructGPT ranking loss on the
labelers' comparisons, like ``rlhf rm``, then measured by ``rlhf eval-rm`` and used as PPO's reward
(``rlhf ppo`` defaults otherwise), judged by ``rlhf eval --baseline sft``.

``--labeler-length-bias B`` first re-ranks the same SFT samples with a labeler panel whose spurious
length bias is B (the world's is 0.02), as ``rlhf build-assets`` would, and trains on those rankings.
The RM is still measured on the bundled held-out comparisons.

Prints a table and writes JSON. About 6 minutes on 2 cores (2 of them training, 2 for PPO), 8 with
``--labeler-length-bias``.

    python benchmarks/rm_likelihood.py [--runs-dir runs/rm-likelihood] [--no-ppo]
    python benchmarks/rm_likelihood.py --labeler-length-bias 0 --runs-dir runs/rm-likelihood-bias0 \
        --out benchmarks/results/rm_likelihood_bias0.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from safetensors.torch import load_model, save_model

from agents.ppo import PPOConfig, ppo
from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.models import DATA_DIR, load_policy
from rlhf_env.rewards.metrics import RMEvalConfig, evaluate_reward
from rlhf_env.sampling import positions
from rlhf_env.stages.comparisons import build_comparisons
from rlhf_env.stages.reward_model import ranking_loss
from rlhf_env.world.build import load_split, save_world
from rlhf_env.world.labelers import LabelerConfig


class LikelihoodRM(torch.nn.Module):
    def __init__(self, policy: str = "sft"):
        super().__init__()
        self.lm, self.tokenizer = load_policy(policy)
        for module in self.lm.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        self.head = torch.nn.Linear(self.lm.config.n_embd, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.weights = torch.nn.Parameter(torch.tensor([1.0, 0.0]))  # on the mean and the sum of log-probs

    def forward(self, prompts: list[str], responses: list[str], eos: list[bool]) -> torch.Tensor:
        tok = self.tokenizer
        pairs = [(tok(p)["input_ids"], tok(r + (tok.eos_token if e else ""))["input_ids"])
                 for p, r, e in zip(prompts, responses, eos)]
        width = max(len(p) + len(r) for p, r in pairs)
        ids = torch.full((len(pairs), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        response = torch.zeros(len(pairs), width - 1)  # marks the positions that predict a response token
        for i, (p, r) in enumerate(pairs):  # left padding, as everywhere else in the package
            ids[i, width - len(p) - len(r):] = torch.tensor(p + r)
            mask[i, width - len(p) - len(r):] = 1
            response[i, width - 1 - len(r):] = 1
        out = self.lm(input_ids=ids, attention_mask=mask, position_ids=positions(mask), output_hidden_states=True)
        logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(2, ids[:, 1:, None]).squeeze(2) * response
        total = logp.sum(1)
        mean = total / response.sum(1).clamp(min=1)
        return self.head(out.hidden_states[-1][:, -1]).squeeze(-1) + self.weights[0] * mean + self.weights[1] * total


def flatten(rows):
    return ([r["prompt"] for r in rows for _ in r["responses"]], [x for r in rows for x in r["responses"]],
            [e for r in rows for e in r["eos"]])


def relabelled_comparisons(directory: Path, length_bias: float) -> Path:
    """The bundled comparisons' SFT samples, ranked by labelers with another length bias."""
    if not (directory / "comparisons" / "train.parquet").exists():
        model, tokenizer = load_policy("sft")
        heldout = load_split(DATA_DIR, "prompts", "heldout")
        ranked = build_comparisons(model, tokenizer, load_split(DATA_DIR, "prompts", "rm"),
                                   heldout.select(range(min(300, len(heldout)))), 0,
                                   labeler_config=LabelerConfig(length_bias=length_bias))
        save_world({"comparisons": DatasetDict(ranked)}, directory)
    return directory


def train(rm: LikelihoodRM, data: Path = DATA_DIR, epochs: int = 3, lr: float = 1e-4, batch_size: int = 8,
          seed: int = 0) -> float:
    """Train with the ranking loss; return the last epoch's pairwise accuracy."""
    rows = load_split(data, "comparisons", "train").to_list()
    optimizer = torch.optim.AdamW(rm.parameters(), lr=lr)
    per_epoch = math.ceil(len(rows) / batch_size)
    steps = epochs * per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / steps)
    rng, accuracies = np.random.default_rng(seed), []
    for step in range(steps):
        if step % per_epoch == 0:
            order = rng.permutation(len(rows))
        start = (step % per_epoch) * batch_size
        batch = [rows[i] for i in order[start:start + batch_size]]
        loss, accuracy = ranking_loss(rm(*flatten(batch)), [r["ranking"] for r in batch])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        accuracies.append(accuracy.item())
    return float(np.mean(accuracies[-per_epoch:]))


class Reward:
    """The trained RM as a reward, normalised to mean 0 / std 1 on the test comparisons' SFT samples."""

    __name__ = "likelihood_rm"  # names the reward in PPO's run fingerprint

    def __init__(self, rm: LikelihoodRM, data: Path = DATA_DIR):
        self.rm = rm.eval()
        raw = self.raw(*flatten(load_split(data, "comparisons", "test").to_list()))
        self.mean, self.std = raw.mean(), raw.std()

    @torch.no_grad()
    def raw(self, prompts, responses, eos) -> np.ndarray:
        return np.concatenate([self.rm(prompts[i:i + 256], responses[i:i + 256], eos[i:i + 256]).numpy()
                               for i in range(0, len(prompts), 256)])

    def __call__(self, prompts, responses, eos=None):
        eos = [True] * len(responses) if eos is None else [bool(e) for e in eos]
        return (self.raw(list(prompts), list(responses), eos) - self.mean) / self.std


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", default="runs/rm-likelihood")
    parser.add_argument("--no-ppo", action="store_true")
    parser.add_argument("--labeler-length-bias", type=float, default=None,
                        help="re-rank the comparisons with labelers of this length bias (the world's: 0.02)")
    parser.add_argument("--out", default="benchmarks/results/rm_likelihood.json")
    args = parser.parse_args()
    runs = Path(args.runs_dir)
    data = DATA_DIR if args.labeler_length_bias is None else relabelled_comparisons(runs / "data",
                                                                                    args.labeler_length_bias)
    torch.manual_seed(0)
    rm = LikelihoodRM()
    weights = runs / "model.safetensors"
    if weights.exists():
        load_model(rm, weights)
    else:
        accuracy = train(rm, data)
        runs.mkdir(parents=True, exist_ok=True)
        save_model(rm, str(weights))  # handles the tied embedding / LM head
        (runs / "train.json").write_text(json.dumps({"last_epoch_accuracy": accuracy}))
    reward = Reward(rm, data)
    measured = {**evaluate_reward(RMEvalConfig(rm=reward)), "rm": "likelihood RM",
                "labeler_length_bias": args.labeler_length_bias,
                "weights_mean_sum": rm.weights.tolist()}
    result = {"rm": measured}
    if not args.no_ppo:
        out = runs / "ppo"
        if not (out / "result.json").exists():
            ppo(PPOConfig(reward=reward, out=str(out)))
        trained = json.loads((out / "result.json").read_text())
        judged = evaluate(EvalConfig(policy=str(out / "final"), baseline="sft"))
        result["ppo"] = {"win_rate_vs_sft": judged["win_rate"], "win_rate_ceiling": judged["win_rate_ceiling"],
                         "gold": judged["gold_a"], "success": judged["success_a"], "length": judged["length_a"],
                         "rm_score": trained["rm_score"], "kl": trained["kl"]}
    keys = ("accuracy", "accuracy_heldout_labelers", "gold_spearman", "prefer_padded",
            "correct_over_incorrect_longer", "correct_over_incorrect_same_length", "correct_over_incorrect_shorter")
    for k in keys:
        print(f"{k:<40}{measured[k]:>8.3f}")
    for k, v in result.get("ppo", {}).items():
        print(f"ppo {k:<36}{v:>8.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
