"""The shipped world and models, measured: the tables in the README's Results section.

Runs, on the bundled assets:
- ``rlhf eval`` for sft vs base, sft-large vs base-large and sft-large vs sft on held-out customers;
- ``rlhf world``: inter-labeler agreement and the labelers' spurious length preference;
- ``rlhf eval-rm`` for rm, rm-scalar, the gold grader (as a ceiling) and the labelers' noise-free utility
  (what a perfect model of the labelers would measure).

Prints markdown tables and writes benchmarks/results/foundation.json.

    python benchmarks/foundation_report.py [--episodes 1000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import transformers

from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.paths import assets_digest
from rlhf_env.rewards.metrics import RMEvalConfig, evaluate_reward
from rlhf_env.stages.comparisons import WorldStatsConfig, world_stats

PAIRS = (("sft", "base"), ("sft-large", "base-large"), ("sft-large", "sft"))
REWARDS = ("rm", "rm-scalar", "gold")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/foundation.json")
    args = parser.parse_args()
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()

    evals = [evaluate(EvalConfig(policy=a, baseline=b, episodes=args.episodes, seed=args.seed)) for a, b in PAIRS]
    world = world_stats(WorldStatsConfig(seed=args.seed))
    rms = [evaluate_reward(RMEvalConfig(rm=name, seed=args.seed)) for name in REWARDS]
    # A perfect model of the labelers: the bound on what an RM that fits them exactly would measure.
    rms.append({**evaluate_reward(RMEvalConfig(rm="labelers", seed=args.seed)), "rm": "labelers (noise-free)"})

    print(f"Policies on held-out customers' prompts (n={evals[0]['n']}, temperature 1, seed {args.seed}):\n")
    print("| A vs B | win rate of A | ceiling | gold A | gold B | success A | success B | length A | length B |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in evals:
        print(f"| {r['policy']} vs {r['baseline']} | {r['win_rate']:.3f} | {r['win_rate_ceiling']:.3f} | "
              f"{r['gold_a']:.3f} | {r['gold_b']:.3f} | "
              f"{r['success_a']:.3f} | {r['success_b']:.3f} | {r['length_a']:.1f} | {r['length_b']:.1f} |")
    families = evals[0]["families"]
    print("\nSuccess by family, sft vs base:\n")
    print("| family | " + " | ".join(families) + " |")
    print("|---|" + "---|" * len(families))
    print("| sft | " + " | ".join(f"{f['success_a']:.2f}" for f in families.values()) + " |")
    print("| base | " + " | ".join(f"{f['success_b']:.2f}" for f in families.values()) + " |")
    print(f"\nLabelers: agreement {world['labeler_agreement']:.3f} ({world['agreement_pool']}); "
          f"they prefer a padded answer {world['prefer_padded']:.3f} of the time (gold: never) and rank a correct "
          f"response above an incorrect one {world['correct_first']:.3f} of the time.\n")
    print("| reward | accuracy, held-out comparisons | accuracy, held-out labelers | labeler agreement (same pairs) "
          "| Spearman with gold | Spearman within a prompt | prefers padded answer | best of 4, win rate | "
          "best of 16, win rate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rms:
        print(f"| {r['rm']} | {r['accuracy']:.3f} | {r['accuracy_heldout_labelers']:.3f} | "
              f"{r['labeler_agreement']:.3f} | {r['gold_spearman']:.3f} | {r['spearman_within_prompt']:.3f} | "
              f"{r['prefer_padded']:.3f} | {r['best_of_4_win_rate']:.3f} | {r['best_of_16_win_rate']:.3f} |")
    print("\nHow often each reward scores a correct response above an incorrect one to the same prompt (held-out "
          "customers' comparisons), by the correct response's length relative to the incorrect one:\n")
    print("| reward | correct one longer | same length | correct one shorter |")
    print("|---|---|---|---|")
    for r in rms:
        print(f"| {r['rm']} | " + " | ".join(f"{r[f'correct_over_incorrect_{k}']:.3f} (n={r[f'n_correct_pairs_{k}']})"
                                             for k in ("longer", "same_length", "shorter")) + " |")
    print(f"\n({rms[0]['n']} held-out comparisons, {rms[0]['n_pairs']} pairs; gold correlation on "
          f"{rms[0]['n_gold']} SFT samples for held-out customers)")
    for r in evals:
        r.pop("examples")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"assets": assets_digest(), "evals": evals, "world": world,
                                          "reward_models": rms}, indent=1))


if __name__ == "__main__":
    main()
