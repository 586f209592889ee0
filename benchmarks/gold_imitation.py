"""How far the small policy gets by imitating gold's best of n: rounds of rejection-sampling fine-tuning (expert
iteration) with the gold grader as a perfect selector, judged on held-out customers.

The gold-oracle target (issue 12: a gold win rate of 0.69 against SFT's samples) is the level of gold's best of 8
SFT samples, which picks one of 8 answers per prompt at test time. A policy answers once. Each round here samples
``--n`` responses of the current policy to ``--prompts`` training prompts (the ``ppo`` split, new ones each round
while they last), keeps each prompt's gold-best response that ended with EOS (``agents.best_of_n.BestOfN`` with
gold as the reward), fine-tunes the policy on those as the SFT stage does its demonstrations
(``rlhf_env.stages.sft.demonstration_examples``, ``rlhf_env.training.trainer.train_causal_lm``: response tokens and
EOS), and judges the policy as ``rlhf eval --baseline sft`` does (500 held-out prompts, eval seed 0, ties half).
Round 0 is SFT itself.
So the table says how much of best-of-n's win rate a policy of this size keeps once it must answer alone.

Prints a table and writes JSON.

    python benchmarks/gold_imitation.py [--rounds 12] [--prompts 2048] [--n 8]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agents.best_of_n import BestOfN
from rlhf_env.configs import EvalConfig, TrainConfig
from rlhf_env.evaluation import evaluate
from rlhf_env.models import load_policy
from rlhf_env.paths import DATA_DIR, assets_digest
from rlhf_env.stages.sft import demonstration_examples
from rlhf_env.training.trainer import train_causal_lm
from rlhf_env.world.build import load_split


def best_of_n(chooser: BestOfN, rows) -> tuple[list, float, float]:
    """Each prompt's gold-best of ``chooser.n`` samples that ended with EOS (``agents.best_of_n``, gold as the
    reward), as the SFT stage's (input_ids, labels) examples; and the mean gold of all samples and of each
    prompt's best."""
    chooser.model.eval()
    prompts = list(rows["prompt"])
    texts, eos, gold = chooser.candidates(prompts)
    best = np.where(eos, gold, -np.inf).argmax(1)
    kept = [i for i in range(len(prompts)) if eos[i, best[i]]]  # prompts where some response ended
    demonstrations = {"prompt": [prompts[i] for i in kept],  # (sampled texts start with the space that
                      "response": [texts[i][best[i]].removeprefix(" ") for i in kept]}  # demonstrations lack)
    return demonstration_examples(demonstrations, chooser.tokenizer), float(gold.mean()), float(gold.max(1).mean())


def judge(model, tokenizer, episodes: int) -> dict:
    model.eval()
    judged = evaluate(EvalConfig(policy=(model, tokenizer), baseline="sft", episodes=episodes))
    return {"win_rate_vs_sft": judged["win_rate"], "gold": judged["gold_a"], "success": judged["success_a"],
            "success_sft": judged["success_b"], "win_rate_ceiling": judged["win_rate_ceiling"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=2048, help="training prompts per round")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt; gold keeps the best")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--episodes", type=int, default=500, help="held-out prompts of each judgement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs-dir", default="runs/gold-imitation")
    parser.add_argument("--out", default="benchmarks/results/gold_imitation.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy("sft")
    prompts = load_split(DATA_DIR, "prompts", "ppo").shuffle(seed=0)
    chooser = BestOfN((model, tokenizer), "gold", n=args.n, batch_size=128)
    started = time.perf_counter()
    rows = [{"round": 0, "examples": 0, **judge(model, tokenizer, args.episodes), "seconds": 0.0}]
    print(f"{'round':>6}{'examples':>10}{'sampled gold':>14}{'best of n':>11}{'win rate vs SFT':>17}{'success':>9}"
          f"{'seconds':>9}")
    print(f"{0:>6}{'':>10}{'':>14}{'':>11}{rows[0]['win_rate_vs_sft']:>17.3f}{rows[0]['success']:>9.3f}{0:>9.0f}")
    for r in range(1, args.rounds + 1):
        first = (r - 1) * args.prompts % len(prompts)
        batch = prompts.select([(first + i) % len(prompts) for i in range(args.prompts)])
        examples, mean, best = best_of_n(chooser, batch)
        train_causal_lm(model, tokenizer, examples,
                        TrainConfig(out=f"{args.runs_dir}/round{r}", epochs=args.epochs, lr=args.lr, save_every=0,
                                    seed=r, resume=False), desc=f"round {r}")
        row = {"round": r, "examples": len(examples), "sampled_gold": mean, "best_of_n_gold": best,
               **judge(model, tokenizer, args.episodes), "seconds": time.perf_counter() - started}
        rows.append(row)
        print(f"{r:>6}{len(examples):>10}{mean:>14.3f}{best:>11.3f}{row['win_rate_vs_sft']:>17.3f}"
              f"{row['success']:>9.3f}{row['seconds']:>9.0f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "runs_dir")}
    Path(args.out).write_text(json.dumps({"settings": settings, "assets": assets_digest(), "torch": torch.__version__,
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
