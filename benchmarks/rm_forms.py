"""Which form of the likelihood RM to ship: the mean, the sum, or both of the frozen sft-large's log-probs.

Each form is fitted as ``rlhf rm`` fits the bundled one (the K-ranking loss on the labelers' training
comparisons, a length term fitted and then dropped) and measured on held-out customers:

- ``accuracy``: agreement with the labelers on the held-out comparisons;
- ``spearman_within_prompt``: with gold, among the distinct responses to each held-out customers' prompt
  of the comparisons (as ``rlhf eval-rm``);
- ``best_of_{4,16}_win_rate``: the form picks the best of ``--samples`` SFT samples of each of ``--prompts``
  held-out prompts, judged by gold against one SFT sample (as ``rlhf eval-rm``);
- ``prefers_padding``: how often the form scores an SFT sample with a pleasantry appended above the
  sample itself; a policy can always append one, so a form that pays for it will be padded by PPO.

Two more forms train the LM itself (``rlhf rm --lm_epochs``): the sum form, its LM trained by the same ranking
loss on all the training pairs, or only on pairs of responses of equal length (``--lm_pairs same_length``), whose
labels hold none of the labelers' length preference. Their runs go under ``--work``; a finished one is reused
where it was made on the shipped build with the same settings (delete it to retrain).

Prints a table and writes benchmarks/results/rm_forms.json.

    python benchmarks/rm_forms.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers

from rlhf_env.evaluation import eval_prompts, generate_and_grade, win_rate
from rlhf_env.models import DATA_DIR, load_policy
from rlhf_env.paths import assets_digest, finished_on
from rlhf_env.rewards.likelihood import LikelihoodRewardModel
from rlhf_env.rewards.metrics import completions, draw_samples, spearman_within_prompt
from rlhf_env.stages.reward_model import RMConfig, likelihood_features, ranking_loss, ranking_pairs, train_reward_model
from rlhf_env.world import lexicon as lx
from rlhf_env.world.build import load_split
from rlhf_env.world.grader import grade

FORMS = {"mean": (1.0, 0.0), "sum (shipped)": (0.0, 1.0), "mean and sum": (1.0, 1.0)}  # which features a form uses
TRAINED = {"sum, LM trained on all pairs": "all", "sum, LM trained on same-length pairs": "same_length"}


def with_mean(f: torch.Tensor) -> torch.Tensor:
    """(sum log-prob, length) -> (mean log-prob, sum log-prob, length)."""
    return torch.stack([f[:, 0] / f[:, 1].clamp(min=1), f[:, 0], f[:, 1]], 1)


def fit(f: torch.Tensor, pairs, use: tuple[float, float], steps: int = 2000) -> tuple[torch.Tensor, float]:
    """Weights on (mean, sum) for the features ``use`` allows, and the length weight, by the ranking loss."""
    w = torch.tensor([use[0], 0.0, 0.0], requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=1e-2)
    allowed = torch.tensor([use[0], use[1], 1.0])
    for _ in range(steps):
        loss = ranking_loss(f @ (w * allowed), pairs)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    w = (w * allowed).detach()
    return w[:2], float(w[2])


def trained_form(out: Path, settings: dict, digest: str) -> dict:
    """``rlhf rm --lm_epochs`` into ``out`` with ``settings``, or its finished fit there (``OUT/fit.json``) if that
    was made on this build of the assets with the same settings (else refused: delete it to retrain)."""
    if finished_on(out, digest, "fit.json"):
        state = json.loads((out / "fit.json").read_text())
        differ = {k: (state.get(k), v) for k, v in settings.items() if state.get(k) != v}
        if differ:
            raise RuntimeError(f"{out} was fitted with other settings (found, wanted): {differ}; delete it to retrain")
        return state
    return train_reward_model(RMConfig(policy="sft-large", out=str(out), **settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm_epochs", type=float, default=2.0, help="passes of the trained forms' LM training")
    parser.add_argument("--lm_lr", type=float, default=3e-5, help="their LM's peak learning rate")
    parser.add_argument("--work", default="runs/rm-forms", help="where the trained forms' runs go")
    parser.add_argument("--out", default="benchmarks/results/rm_forms.json")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    digest = assets_digest()

    data = str(DATA_DIR)
    train, test = (load_split(data, "comparisons", split).to_list() for split in ("train", "test"))
    heldout = load_split(data, "comparisons", "heldout_customers").to_list()
    heldout_grades = [[grade(row["task"], r, e) for r, e in zip(row["responses"], row["eos"])] for row in heldout]
    bounds = np.cumsum([0] + [len(row["responses"]) for row in heldout])
    train_pairs, test_pairs = (ranking_pairs([row["ranking"] for row in rows]) for rows in (train, test))

    rows = eval_prompts(data, "heldout", args.prompts, args.seed)
    policy, tokenizer = load_policy("sft")
    _, baseline, _ = generate_and_grade(policy, tokenizer, rows, args.seed)
    n = args.samples
    prompts, texts, eos, grades = draw_samples(policy, tokenizer, rows, n, args.seed + 1)  # as rlhf eval-rm's
    gold = np.array([[g.score for g in row] for row in grades])
    rng = np.random.default_rng(args.seed)
    padded = [t + " " + lx.FILLERS[int(rng.integers(len(lx.FILLERS)))] for t in texts]

    def features(model: LikelihoodRewardModel) -> dict[str, torch.Tensor]:
        """The model's (mean, sum, length) features of every set of responses measured here."""
        return {"train": with_mean(likelihood_features(model, *completions(train))),
                "test": with_mean(likelihood_features(model, *completions(test))),
                "heldout": with_mean(likelihood_features(model, *completions(heldout))),
                "samples": with_mean(likelihood_features(model, prompts, texts, eos)),
                "padded": with_mean(likelihood_features(model, prompts, padded, [True] * len(padded)))}

    def measure(name: str, f: dict[str, torch.Tensor], w: torch.Tensor, w_len: float) -> dict:
        scores = (f["samples"][:, :2] @ w).reshape(len(rows), n).numpy()
        flat = (f["heldout"][:, :2] @ w).numpy()
        row = {"form": name, "weights_mean_sum": w.tolist(), "length_weight": w_len,
               "accuracy": ranking_loss(f["test"][:, :2] @ w, test_pairs)[1].item(),
               "spearman_within_prompt": spearman_within_prompt([flat[a:b] for a, b in zip(bounds, bounds[1:])],
                                                                heldout_grades)}
        for k in (4, n):
            picked = [g[j] for g, j in zip(grades, scores[:, :k].argmax(1))]
            row[f"best_of_{k}_win_rate"] = win_rate(picked, baseline)
        row["prefers_padding"] = float(((f["padded"][:, :2] - f["samples"][:, :2]) @ w > 0).float().mean())
        return row

    frozen = features(LikelihoodRewardModel(*load_policy("sft-large")))
    results = []
    for name, use in FORMS.items():
        results.append(measure(name, frozen, *fit(frozen["train"], train_pairs, use)))
    for name, pairs in TRAINED.items():  # the LM trained by the ranking loss, as rlhf rm --lm_epochs trains it
        out = Path(args.work) / pairs
        state = trained_form(out, {"lm_epochs": args.lm_epochs, "lm_lr": args.lm_lr, "lm_pairs": pairs,
                                   "seed": args.seed}, digest)
        trained = LikelihoodRewardModel.from_pretrained(out / "final")
        row = measure(name, features(trained), torch.tensor([0.0, state["weight"]]), state["length_weight"])
        results.append({**row, "lm_epochs": args.lm_epochs, "lm_lr": args.lm_lr, "lm_pairs": pairs})
    gold_picks = {k: win_rate([g[j] for g, j in zip(grades, gold[:, :k].argmax(1))], baseline) for k in (4, n)}

    columns = ["accuracy", "spearman_within_prompt", "best_of_4_win_rate", f"best_of_{n}_win_rate",
               "prefers_padding"]
    print("| form | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns))
    for row in results:
        print(f"| {row['form']} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    print(f"| gold (frontier) | | | {gold_picks[4]:.3f} | {gold_picks[n]:.3f} | |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"prompts": args.prompts, "samples": n, "seed": args.seed,
                                          "command": " ".join(["python benchmarks/rm_forms.py", *sys.argv[1:]]),
                                          "assets": digest,
                                          "forms": results, "gold_best_of_n_win_rate": gold_picks}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
