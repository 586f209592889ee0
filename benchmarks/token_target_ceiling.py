"""What the token target aims at: q sampled directly, token by token, and judged on held-out customers.

The token target (``agents/token_target.py``) pulls PPO's policy towards q ∝ π_ref · p_rm^α at every position,
with α = c/β for the bundled likelihood RM (c its weight times its gain, β the KL coefficient). Here q is not
learned but sampled: at every step both models (the reference ``sft`` and the RM's frozen LM) run on the same
prefix, and the next token is drawn from their normalised product. Its gold win rate against SFT's samples (``rlhf
eval``'s judge: held-out customers' prompts, eval seed 0, ties half) is what a policy that matched q everywhere
would score: where the token term pulls at that β, not a bound (the sampled advantages can pass it). α = 0 is
SFT itself (the judge's noise floor).

With ``--greedy``, q is decoded greedily (its argmax at every step) and judged against SFT decoded greedily, the
comparison of ``ppo.json``'s greedy column: what a policy that matched q everywhere would score there. Its
α = 0 row is greedy SFT against itself (0.5 up to ties).

Prints a table and writes JSON.

    python benchmarks/token_target_ceiling.py [--betas 0.05 0.1] [--episodes 500]
    python benchmarks/token_target_ceiling.py --greedy --out benchmarks/results/token_target_ceiling_greedy.json
    python benchmarks/token_target_ceiling.py --rm runs/my-rm/final --out /tmp/q_my_rm.json   # another RM's q
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from agents.token_target import product_log_softmax
from rlhf_env.configs import EvalConfig
from rlhf_env.evaluation import evaluate
from rlhf_env.models import BUNDLED_REWARDS, load_reference, load_tokenizer, resolve
from rlhf_env.paths import assets_digest
from rlhf_env.rewards.likelihood import LikelihoodRewardModel
from rlhf_env.sampling import draw, encode_prompts, positions


class ProductSampler:
    """A callable policy (prompts -> responses, ended) that samples q ∝ π_ref · p^α (or, ``greedy``, takes its
    argmax), and keeps each response's KL from π_ref (its summed log q - log π_ref)."""

    def __init__(self, reference, lm, tokenizer, alpha: float, max_new_tokens: int = 48, batch_size: int = 125,
                 greedy: bool = False):
        # (no ``lm`` and ``tokenizer`` pair of attributes: rlhf_env.evaluation.respond would sample that LM)
        self.models, self.encoder, self.alpha, self.greedy = (reference, lm), tokenizer, alpha, greedy
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.kl: list[float] = []

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[list[str], list[bool]]:
        generator = torch.Generator().manual_seed(0)
        texts, ended = [], []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = encode_prompts(self.encoder, prompts[start:start + self.batch_size])
            out = self._sample(ids, mask, generator)
            texts += out[0]
            ended += out[1]
        return texts, ended

    def _sample(self, ids, mask, generator):
        eos, pad = self.encoder.eos_token_id, self.encoder.pad_token_id
        B = len(ids)
        pos = positions(mask)
        outs = [model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
                for model in self.models]
        done, tokens, kl = torch.zeros(B, dtype=torch.bool), [], torch.zeros(B)
        last = pos[:, -1:]
        for _ in range(self.max_new_tokens):
            ref, lm = (torch.log_softmax(o.logits[:, -1].float(), -1) for o in outs)
            log_q = product_log_softmax(ref, lm, self.alpha)
            token = log_q.argmax(-1) if self.greedy else draw(log_q, generator)
            picked = token[:, None]
            kl += torch.where(done, 0.0, (log_q.gather(1, picked) - ref.gather(1, picked))[:, 0])
            token = torch.where(done, pad, token)
            tokens.append(token)
            done |= token == eos
            if done.all():
                break
            mask, last = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1), last + 1
            outs = [model(input_ids=token[:, None], attention_mask=mask, position_ids=last, cache=o.cache,
                          use_cache=True) for model, o in zip(self.models, outs)]
        self.kl += kl.tolist()
        texts, ended = [], []
        for row in torch.stack(tokens, 1).tolist():
            stop = row.index(eos) if eos in row else len(row)
            texts.append(self.encoder.decode([t for t in row[:stop] if t != pad]))
            ended.append(eos in row)
        return texts, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.05],
                        help="KL coefficients; each gives alpha = c / beta (0.05 is rlhf ppo's default)")
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--greedy", action="store_true",
                        help="decode q greedily and judge it against SFT decoded greedily")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rm", default="rm", help="the likelihood RM whose q is sampled: rm, or a path (e.g. "
                        "benchmarks/sizes.py's RM on another large SFT)")
    parser.add_argument("--out", default="benchmarks/results/token_target_ceiling.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference, tokenizer = load_reference("sft")[0], load_tokenizer("sft")  # (an HF tokenizer: it pads)
    rm = LikelihoodRewardModel.from_pretrained(resolve(args.rm, BUNDLED_REWARDS))
    c = rm.weight.item() * rm.gain
    rows = []
    print(f"{'beta':>8}{'alpha':>8}{'win rate vs SFT':>17}{'gold':>8}{'success':>9}{'KL (nats)':>11}{'length':>8}")
    for beta in [None, *args.betas]:  # None: alpha 0, SFT itself
        alpha = 0.0 if beta is None else c / beta
        policy = ProductSampler(reference, rm.lm, tokenizer, alpha, greedy=args.greedy)
        # (a callable policy decodes as it does; the temperature reaches the baseline, SFT)
        judged = evaluate(EvalConfig(policy=policy, baseline="sft", episodes=args.episodes,
                                     temperature=0.0 if args.greedy else 1.0))
        row = {"beta": beta, "alpha": alpha, "win_rate_vs_sft": judged["win_rate"], "gold": judged["gold_a"],
               "success": judged["success_a"], "success_sft": judged["success_b"], "kl": float(np.mean(policy.kl)),
               "length": judged["length_a"], "win_rate_ceiling": judged["win_rate_ceiling"]}
        rows.append(row)
        print(f"{'—' if beta is None else beta:>8}{alpha:>8.2f}{row['win_rate_vs_sft']:>17.3f}{row['gold']:>8.3f}"
              f"{row['success']:>9.3f}{row['kl']:>11.2f}{row['length']:>8.1f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rm": args.rm, "rm_coef": c, "episodes": args.episodes,
                                          "greedy": args.greedy,
                                          "assets": assets_digest(),
                                          "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
