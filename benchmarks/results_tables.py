"""Markdown tables for the README, generated from the benchmarks' JSON (nothing measured here).

    python benchmarks/results_tables.py [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def reward_table(foundation: dict) -> str:
    lines = ["| reward | accuracy vs labelers | held-out labelers | Spearman with gold within a prompt | correct over "
             "incorrect, same length | correct one shorter | prefers padded | best of 4, win rate | best of 16, "
             "win rate |", "|---|---|---|---|---|---|---|---|---|"]
    for r in foundation["reward_models"]:
        lines.append(f"| {r['rm']} | {r['accuracy']:.3f} | {r['accuracy_heldout_labelers']:.3f} | "
                     f"{r['spearman_within_prompt']:.3f} | {r['correct_over_incorrect_same_length']:.3f} | "
                     f"{r['correct_over_incorrect_shorter']:.3f} | {r['prefer_padded']:.3f} | "
                     f"{r['best_of_4_win_rate']:.3f} | {r['best_of_16_win_rate']:.3f} |")
    first = foundation["reward_models"][0]
    lines.append(f"\nLabeler agreement on the same pairs: {first['labeler_agreement']:.3f}. Gold picking the best "
                 f"of 4 and 16: {first['gold_best_of_4_win_rate']:.3f} and {first['gold_best_of_16_win_rate']:.3f}.")
    return "\n".join(lines)


def ppo_table(ppo: dict) -> str:
    rows, greedy = ppo["rows"], ppo["greedy_sft"]
    first = rows[0]
    lines = ["| run | win rate vs SFT | win rate vs sft-large | gold | task success | RM score | KL (nats) | "
             "length | greedy vs greedy SFT | minutes |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| SFT (the reference) | 0.500 | | {first['gold_sft']:.3f} | {first['success_sft']:.3f} | "
             f"{first['rm_score_sft']:.2f} | 0 | {first['length_sft']:.1f} | | |",
             f"| *ceiling: the world's reference answers* | *{first['win_rate_ceiling']:.3f}* | | *1.000* | *1.000* | "
             f"| | | *{first['greedy_win_rate_ceiling']:.3f}* | |",
             f"| *SFT decoded greedily (no RL)* | *{greedy['win_rate_vs_sft']:.3f}* | | *{greedy['gold']:.3f}* | "
             f"*{greedy['success']:.3f}* | | | *{greedy['length']:.1f}* | *0.500* | |"]
    for r in rows:
        lines.append(f"| {r['run']}, seed {r['seed']} | {r['win_rate_vs_sft']:.3f} | "
                     f"{r['win_rate_vs_sft_large']:.3f} | {r['gold']:.3f} | {r['success']:.3f} | "
                     f"{r['rm_score']:.2f} | {r['kl']:.2f} | {r['length']:.1f} | "
                     f"{r['greedy_win_rate_vs_greedy_sft']:.3f} | {r['minutes']:.1f} |")
    summary = ppo.get("default_summary")
    if summary:
        def cell(k, digits=3):
            return f"{summary[k]['mean']:.{digits}f} ± {summary[k]['std']:.{digits}f}"
        lines.append(f"| **default, mean ± std over {sum(r['run'] == 'default' for r in rows)} seeds** | "
                     f"**{cell('win_rate_vs_sft')}** | {cell('win_rate_vs_sft_large')} | {cell('gold')} | "
                     f"{cell('success')} | {cell('rm_score', 2)} | {cell('kl', 2)} | {cell('length', 1)} | "
                     f"{cell('greedy_win_rate_vs_greedy_sft')} | {cell('minutes', 1)} |")
    return "\n".join(lines)


def over_optimisation_table(result: dict) -> str:
    lines = ["| series | n or iteration | KL (nats) | gold | RM score |", "|---|---|---|---|---|"]
    for p in result["best_of_n"]:
        lines.append(f"| best of n | {p['n']} | {p['kl']:.2f} | {p['gold']:.3f} | {p['rm_score']:.2f} |")
    for label, points in result["ppo"].items():
        for p in points:
            lines.append(f"| PPO {label} | {p['iteration']} | {p['kl']:.2f} | {p['gold']:.3f} | {p['rm_score']:.2f} |")
    return "\n".join(lines)


def rm_forms_table(result: dict) -> str:
    n = result["samples"]
    lines = ["| likelihood RM form | accuracy vs labelers | Spearman with gold within a prompt | best of 4, win rate | "
             f"best of {n}, win rate | prefers a padded SFT sample |", "|---|---|---|---|---|---|"]
    for r in result["forms"]:
        lines.append(f"| {r['form']} | {r['accuracy']:.3f} | {r['spearman_within_prompt']:.3f} | "
                     f"{r['best_of_4_win_rate']:.3f} | {r[f'best_of_{n}_win_rate']:.3f} | {r['prefers_padding']:.3f} |")
    gold = result["gold_best_of_n_win_rate"]
    lines.append(f"| *gold picking* | | | *{gold['4']:.3f}* | *{gold[str(n)]:.3f}* | |")
    return "\n".join(lines)


def vector_env_table(result: dict) -> str:
    n = result["num_envs"]
    return "\n".join([
        "| vector env | step (s) | episodes/s |", "|---|---|---|",
        f"| native (one batched reference forward and reward call) | {result['native_step_s']:.3f} | "
        f"{result['native_episodes_per_s']:.0f} |",
        f"| `SyncVectorEnv` ({n} single-env steps) | {result['sync_step_s']:.3f} | "
        f"{result['sync_episodes_per_s']:.0f} |",
        f"\nThe native env is {result['speedup']:.1f}x faster, with the same rewards (max difference "
        f"{result['max_abs_reward_diff']:.0e})."])


def token_env_table(result: dict) -> str:
    return "\n".join([
        "| models | env steps/s |", "|---|---|",
        f"| accelerated (default; `rlhf_env.accel`) | {result['accelerated_steps_per_s']:.0f} |",
        f"| stock PyTorch (`RLHF_ENV_ACCEL=0`) | {result['stock_steps_per_s']:.0f} |"])


def make_table(result: dict) -> str:
    rows = (("torch_import_s", "import torch"), ("transformers_import_s", "import transformers' model code"),
            ("first_make_s", "the first `gym.make` (models, prompts, RM)"), ("fresh_total_s", "fresh process, total"),
            ("warm_make_s", "another `gym.make` in a warm process"))
    return "\n".join(["| `gym.make(\"InstructBandit-v0\")` | seconds |", "|---|---|",
                      *(f"| {label} | {result[key]:.2f} |" for key, label in rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="benchmarks/results")
    results = Path(parser.parse_args().results)
    for name, fn in (("foundation.json", reward_table), ("ppo.json", ppo_table),
                     ("over_optimisation.json", over_optimisation_table), ("rm_forms.json", rm_forms_table),
                     ("vector_env.json", vector_env_table), ("token_env.json", token_env_table),
                     ("make.json", make_table)):
        path = results / name
        if path.exists():
            print(f"<!-- {name} -->\n{fn(json.loads(path.read_text()))}\n")


if __name__ == "__main__":
    main()
