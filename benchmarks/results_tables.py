"""The results pages, generated from the benchmarks' JSON (nothing is measured here): docs/results.md,
docs/performance.md and the README's headline table (between its `<!-- results -->` markers). A test
(tests/test_docs.py) checks that the files are what this script writes from the JSON in the repository.

    python benchmarks/results_tables.py            # rewrite the pages from benchmarks/results/*.json
    python benchmarks/results_tables.py --check    # exit 1 if a page is not up to date
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlhf_env.accel import kernels
from rlhf_env.paths import assets_digest


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
    for r in foundation["reward_models"]:
        if "accuracy_with_length_term" in r:  # a likelihood RM: its preference model keeps the fitted length term
            gap = 100 * (r["labeler_agreement"] - r["accuracy_with_length_term"])
            low, high = (100 * x for x in r["agreement_gap_interval_with_length_term"])
            lines.append(f"`{r['rm']}` as it was fitted, with the length term that its reward drops (the RM as a "
                         f"model of the labelers): accuracy {r['accuracy_with_length_term']:.3f}, held-out labelers "
                         f"{r['accuracy_heldout_labelers_with_length_term']:.3f}; {gap:.1f} points below labeler "
                         f"agreement ({low:.1f} to {high:.1f}: a 95% interval over the comparisons, resampled).")
    return "\n".join(lines)


SUMMARIZED_RUNS = ("default", "black-box", "gold-oracle", "token-target", "token-target-300")  # ppo_runs' summaries


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
    for name in SUMMARIZED_RUNS:
        summary, seeds = ppo.get(f"{name}_summary"), sum(r["run"] == name for r in rows)
        if not summary or seeds < 2:  # one seed's row is above
            continue

        def cell(k, digits=3, summary=summary):
            return f"{summary[k]['mean']:.{digits}f} ± {summary[k]['std']:.{digits}f}"
        lines.append(f"| **{name}, mean ± std over {seeds} seeds** | "
                     f"**{cell('win_rate_vs_sft')}** | {cell('win_rate_vs_sft_large')} | {cell('gold')} | "
                     f"{cell('success')} | {cell('rm_score', 2)} | {cell('kl', 2)} | {cell('length', 1)} | "
                     f"{cell('greedy_win_rate_vs_greedy_sft')} | {cell('minutes', 1)} |")
    greedy_note = greedy_decomposition(ppo)
    return "\n".join(lines + ([greedy_note] if greedy_note else []))


GREEDY_TARGET = 0.55  # issue 12: PPO decoded greedily against SFT decoded greedily


def greedy_decomposition(ppo: dict) -> str:
    """Why the greedy column moves so little: decoded greedily, two policies mostly give the same answer, or
    answers that gold scores alike, so a win rate against greedy SFT is about 0.5 + half the gain in task success.
    The sentence shows that on each summary row and says what task success the greedy target asks for."""
    sft, ceiling = ppo["greedy_sft"]["success"], ppo["rows"][0]["greedy_win_rate_ceiling"]
    fits = []
    for name in SUMMARIZED_RUNS:
        summary = ppo.get(f"{name}_summary")
        if summary and "greedy_success" in summary:
            success = summary["greedy_success"]["mean"]
            fits.append(f"{name} {success:.3f}, so {0.5 + (success - sft) / 2:.3f} "
                        f"(measured {summary['greedy_win_rate_vs_greedy_sft']['mean']:.3f})")
    if not fits:
        return ""
    return (f"\nDecoded greedily, the win rate against greedy SFT is about 0.5 + (greedy task success − greedy SFT's "
            f"{sft:.3f}) / 2: mean greedy success {'; '.join(fits)}. The ceiling, every answer right, is "
            f"{0.5 + (1 - sft) / 2:.3f} by that rule (measured {ceiling:.3f}); a greedy win rate of "
            f"{GREEDY_TARGET:.2f} asks for a greedy task success of {sft + 2 * (GREEDY_TARGET - 0.5):.3f}.")


def betas_flag(result: dict) -> str:
    """The ``--betas`` that reproduce ``result``'s rows (the row of SFT itself has none)."""
    return "--betas " + " ".join(f"{row['beta']:g}" for row in result["rows"] if row["beta"] is not None)


def token_target_ceiling_table(result: dict) -> str:
    greedy = result.get("greedy", False)
    kl = "log q − log π_ref summed along the greedy path" if greedy else "KL from SFT (nats)"
    lines = [f"| β | α | win rate vs {'greedy ' if greedy else ''}SFT | gold | task success | {kl} | length |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        beta = f"— ({'greedy ' if greedy else ''}SFT)" if r["beta"] is None else f"{r['beta']:g}"
        lines.append(f"| {beta} | {r['alpha']:.2f} | {r['win_rate_vs_sft']:.3f} | {r['gold']:.3f} | "
                     f"{r['success']:.3f} | {r['kl']:.2f} | {r['length']:.1f} |")
    return "\n".join(lines)


def gold_imitation_table(result: dict) -> str:
    n = result["settings"]["n"]
    lines = [f"| round | examples (gold's best of {n}) | gold of the round's samples | gold of the best of {n} | "
             "win rate vs SFT | task success | minutes so far, judging included |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["round"] == 0:
            lines.append(f"| 0 (SFT) | | | | {r['win_rate_vs_sft']:.3f} | {r['success']:.3f} | |")
        else:
            lines.append(f"| {r['round']} | {r['examples']} | {r['sampled_gold']:.3f} | {r['best_of_n_gold']:.3f} | "
                         f"{r['win_rate_vs_sft']:.3f} | {r['success']:.3f} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines)


def greedy_frontier_table(result: dict) -> str:
    """Markdown: greedy task success by family for greedy SFT, each policy and the frontier; the last columns, all
    prompts and the win rate against greedy SFT (measured; for the frontier, by the rule)."""
    rows, best = result["rows"], result["frontier"]
    families = list(rows[0]["n"])
    lines = ["| greedy | " + " | ".join(f"{f} (n={rows[0]['n'][f]})" for f in families)
             + " | all | win rate vs greedy SFT |", "|---" * (len(families) + 3) + "|",
             "| sft | " + " | ".join(f"{rows[0]['sft_success'][f]:.2f}" for f in families)
             + f" | {rows[0]['sft_task_success']:.3f} | 0.500 |"]
    for r in rows:
        lines.append(f"| {r['policy']} | " + " | ".join(f"{r['success'][f]:.2f}" for f in families)
                     + f" | {r['task_success']:.3f} | {r['win_rate']:.3f} |")
    lines.append("| *frontier: the best of these on each family* | "
                 + " | ".join(f"*{best['success'][f]:.2f}*" for f in families)
                 + f" | *{best['task_success']:.3f}* | *{best['expected_win_rate']:.3f}* (0.5 + half the gain) |")
    if "rm_checks" in result:
        lines.append("| *rm: correct over incorrect, held-out customers' comparisons* | "
                     + " | ".join(f"*{result['rm_checks'][f]:.2f}*" for f in families) + " | | |")
    return "\n".join(lines)


def over_optimisation_table(result: dict) -> str:
    lines = ["| series | n, temperature or iteration | KL (nats) | gold | RM score | win rate vs SFT |",
             "|---|---|---|---|---|---|"]
    series = [("best of n", "n", result["best_of_n"]), ("sharpened SFT", "temperature", result.get("sharpened", []))]
    series += [(f"PPO {label}", "iteration", points) for label, points in result["ppo"].items()]
    series += [(f"PPO {label} (RM score: {run['reward']}'s)", "iteration", run["points"])
               for label, run in result.get("ppo_other_reward", {}).items()]
    for name, key, points in series:
        for p in points:
            win = f"{p['win_rate']:.3f}" if "win_rate" in p else ""
            lines.append(f"| {name} | {p[key]:g} | {p['kl']:.2f} | {p['gold']:.3f} | {p['rm_score']:.2f} | {win} |")
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
    trained = [r for r in result["forms"] if "lm_epochs" in r]
    if trained:
        lines.append("\nThe forms whose LM is trained: `rlhf rm " + "`, `rlhf rm ".join(
            f"--lm_epochs {r['lm_epochs']:g} --lm_lr {r['lm_lr']:g} --lm_pairs {r['lm_pairs']}" for r in trained)
                     + "`, its weights fitted again after the LM's training. All pairs include the labelers' "
                     "preference for longer answers; same-length pairs hold none of it.")
    return "\n".join(lines)


def sizes_table(result: dict) -> str:
    columns = {"accuracy": "RM accuracy vs labelers", "spearman_within_prompt": "RM Spearman within a prompt",
               "correct_over_incorrect_same_length": "RM correct over incorrect, same length",
               "best_of_16_win_rate": "RM best of 16, win rate"}
    lines = ["| large SFT | SFT lr | valid gold | win rate vs sft | vs shipped sft-large | success | "
             + " | ".join(columns.values()) + " |", "|---|---|---|---|---|---|" + "---|" * len(columns)]
    for r in result["rows"]:
        large = f"{r['vs_sft_large']['win_rate']:.3f}" if "vs_sft_large" in r else ""
        valid = f"{r['best_valid_gold']:.3f}" if "best_valid_gold" in r else ""
        lines.append(f"| {r['name']} | {r['lr']:g} | {valid} | {r['vs_sft']['win_rate']:.3f} | {large} | "
                     f"{r['vs_sft']['success']:.3f} | " + " | ".join(f"{r['rm'][c]:.3f}" for c in columns) + " |")
    seeds = result.get("ppo_seeds") or []
    if seeds:
        lines += ["", f"The default `rlhf ppo` on each RM (`--reward`), seeds {', '.join(map(str, seeds))}, judged as "
                  "the PPO table below judges a run (500 held-out prompts); the means, each seed's in brackets:", "",
                  "| PPO on the RM of | win rate vs sft | vs shipped sft-large | greedy vs greedy sft | gold | success "
                  "| KL |", "|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            p = r["ppo"]
            each = " / ".join(f"{run['win_rate_vs_sft']:.3f}" for run in p["runs"])
            lines.append(f"| {r['name']} | {p['win_rate_vs_sft']:.3f} ({each}) | {p['win_rate_vs_sft_large']:.3f} | "
                         f"{p['greedy_win_rate_vs_greedy_sft']:.3f} | {p['gold']:.3f} | {p['success']:.3f} | "
                         f"{p['kl']:.2f} |")
    families = sorted(result["rows"][0]["vs_sft"]["families"])
    lines += ["", "Win rate against sft by family:", "",
              "| large SFT | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for r in result["rows"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['vs_sft']['families'][f]:.3f}" for f in families) + " |")
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
    rows = (("torch_import_s", "`import torch` alone, for scale"),
            ("fresh_make_s", "`import gymnasium, rlhf_env` and `gym.make`, fresh process"),
            ("fresh_make_reset_step_s", "... and the first `reset` and `step`"),
            ("warm_make_s", "another `gym.make` in a warm process"))
    imported = " and ".join(result["heavy_imports"]) or "neither transformers nor datasets"
    return "\n".join(["| `gym.make(\"InstructBandit-v0\")` | seconds |", "|---|---|",
                      *(f"| {label} | {result[key]:.2f} |" for key, label in rows)]) + (
        f"\n\nMedians of {result['repeats']} fresh processes; making and stepping the env imported {imported}.")


def pairs_table(evals: list[dict]) -> str:
    """``rlhf eval`` results, one row per pair of policies."""
    lines = ["| A vs B | win rate of A | ceiling | gold A | gold B | success A | success B | length A | length B |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in evals:
        lines.append(f"| {e['policy']} vs {e['baseline']} | {e['win_rate']:.3f} | {e['win_rate_ceiling']:.3f} | "
                     f"{e['gold_a']:.3f} | {e['gold_b']:.3f} | {e['success_a']:.3f} | {e['success_b']:.3f} | "
                     f"{e['length_a']:.1f} | {e['length_b']:.1f} |")
    return "\n".join(lines)


def policies_table(foundation: dict) -> str:
    lines = [pairs_table(foundation["evals"])]
    first = foundation["evals"][0]
    families = sorted(first["families"])
    lines += ["", f"Success by family, {first['policy']} vs {first['baseline']}:", "",
              "| family | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for side, name in (("a", first["policy"]), ("b", first["baseline"])):
        lines.append(f"| {name} | " + " | ".join(f"{first['families'][f][f'success_{side}']:.2f}" for f in families)
                     + " |")
    return "\n".join(lines)


def sampler_table(result: dict) -> str:
    torch_attention = all("lean_torch_attention_tokens_per_s" in r for r in result["rows"])  # (older runs lack it)
    unfused = all("lean_unfused_tokens_per_s" in r for r in result["rows"])  # (and this)
    lines = ["| policy | parameters | HF `generate`, MKL | HF `generate`, measured kernels | our sampler, HF forward + "
             "cache | " + ("our sampler, lean path, PyTorch attention | " if torch_attention else "")
             + ("our sampler, lean path, unfused | " if unfused else "")
             + "our sampler, lean GPT-2 path | speed-up vs `generate`, MKL |",
             "|---|---|---|---|---|" + "---|" * (torch_attention + unfused) + "---|---|"]
    for r in result["rows"]:
        lean_torch = f"{r['lean_torch_attention_tokens_per_s']:,.0f} | " if torch_attention else ""
        lean_unfused = f"{r['lean_unfused_tokens_per_s']:,.0f} | " if unfused else ""
        lines.append(f"| {r['policy']} | {r['parameters'] / 1e6:.1f}M | {r['hf_generate_mkl_tokens_per_s']:,.0f} "
                     f"tokens/s | {r['hf_generate_tokens_per_s']:,.0f} | {r['hf_cache_loop_tokens_per_s']:,.0f} | "
                     f"{lean_torch}{lean_unfused}{r['lean_gpt2_tokens_per_s']:,.0f} | "
                     f"**{r['speedup_vs_generate_mkl']:.1f}×** |")
    lines += ["", "| policy | prefill | per decode step | attention (decode) | projections and head | KV-cache read "
              "rate | GEMM, MKL | GEMM, oneDNN |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['policy']} | {r['lean_prefill_share']:.0%} | {r['lean_step_ms']:.2f} ms | "
                     f"{r['lean_attention_share']:.0%} | {r['lean_projection_share']:.0%} | "
                     f"{r['kv_cache_read_gb_per_s']:.1f} GB/s | {r['gemm_gflops_mkl']:.0f} GFLOP/s | "
                     f"{r['gemm_gflops_onednn']:.0f} GFLOP/s |")
    lines.append(f"\n{result['batch_size']} prompts, {result['new_tokens']} new tokens each, {result['threads']} "
                 f"threads, median of {result['repeats']}; this machine streams memory at "
                 f"{result['streaming_read_gb_per_s']:.0f} GB/s. Attention: its share of the wall time; its read "
                 "rate: the keys and values of the columns it reads (the C kernel skips each row's left padding) over "
                 "that time.")
    lines += [f"Kernels chosen for `{r['policy']}` (`rlhf_env.accel.kernels`): {r['kernels']}." for r in result["rows"]
              if "kernels" in r]
    return "\n".join(lines)


def shared_prompts_table(result: dict) -> str:
    lines = ["| policy | batch | rows per prompt | pass | every prompt recomputed (s) | each prompt once (s) | "
             "speed-up | shared by default |", "|---|---|---|---|---|---|---|---|"]
    passes = {"train": "forward + backward", "env": "forward", "sample": "sample (lean decoder, prefill shared)",
              "classifier": "classifier RM scores"}
    for r in result["rows"]:
        lines.append(f"| {r['policy']} | {r['batch']} | {r['rows_per_prompt']:.2f} | {passes[r['mode']]} | "
                     f"{r['full_s']:.4f} | {r['shared_s']:.4f} | **{r['speedup']:.2f}×** | "
                     f"{'yes' if r['shared_path_taken'] else 'no'} |")
    lines.append(f"\n{result['threads']} threads, median of the repeats. The agents and envs share prompts from any "
                 "repeated prompt where the package's trunk runs the model with its C attention, else from "
                 f"{result['share_from']} rows per distinct prompt (`rlhf_env.sampling.shares`, `SHARE_FROM`).")
    return "\n".join(lines)


def padding_table(result: dict) -> str:
    passes = {"train": "forward + backward", "env": "forward", "classifier": "classifier RM scores"}
    lines = ["| policy | threads | batch | pass | one chunk (s) | in chunks (s) | speed-up | chunks |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["chunks"]:
        lines.append(f"| {r['policy']} | {r['threads']} | {r['batch']} | {passes[r['mode']]} | "
                     f"{r['one_chunk_s']:.4f} | {r['chunked_s']:.4f} | **{r['speedup']:.2f}×** | {r['chunks']} |")
    lines += ["", "| policy | threads | batch | sampler, neither cut (s) | prompt columns cut (s) | "
              "and ended rows dropped (s) | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in result["sampler"]:
        lines.append(f"| {r['policy']} | {r['threads']} | {r['batch']} | {r['neither_s']:.4f} | "
                     f"{r['prompt columns cut_s']:.4f} | {r['and ended rows dropped_s']:.4f} | "
                     f"**{r['speedup']:.2f}×** |")
    if result.get("packing"):
        lines += ["", "| policy | threads | batch | pass | padded (s) | packed (s) | speed-up | positions: padded, "
                  "packed, real |", "|---|---|---|---|---|---|---|---|"]
        for r in result["packing"]:
            lines.append(f"| {r['policy']} | {r['threads']} | {r['batch']} | {passes[r['mode']]} | "
                         f"{r['padded_s']:.4f} | {r['packed_s']:.4f} | **{r['speedup']:.2f}×** | "
                         f"{r['padded_positions']:,}, {r['packed_positions'] or '—'}, {r['real_positions']:,} |")
    lines.append(f"\nMedian of the repeats. `CHUNK_COST` {result['chunk_cost']} positions per extra forward and "
                 f"thread, `COMPACT_AT` {result['compact_at']}"
                 + (f", `PACK_BELOW` {result['pack_below']}." if "pack_below" in result else "."))
    return "\n".join(lines)


def ppo_iteration_table(result: dict) -> str:
    names = {"sample": "sample (rollout, policy)", "reference": "reference forward (env)",
             "reward": "reward model (env)", "values": "values (rollout)",
             "update": "update (epochs × minibatches, forward + backward + AdamW)",
             "other": "other (env bookkeeping, decoding, advantages)"}
    labels = {"float32": "float32, measured kernels",
              "float32_unkept": "float32, token target runs its own forwards",
              "float32_unshared": "float32, prompts not shared",
              "float32_onednn": "float32, all oneDNN + C kernels", "float32_mkl": "float32, all MKL",
              "float32_stock": "float32, stock PyTorch (MKL, aten GELU)", "bf16": "bf16"}
    columns = [(labels["float32"], result)] + [(labels[k], result[k]) for k in list(labels)[1:]
                                               if isinstance(result.get(k), dict)]
    lines = ["| phase | " + " | ".join(f"{name} (s)" for name, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for phase, label in names.items():
        lines.append(f"| {label} | " + " | ".join(f"{c['phase_s'][phase]:.3f}" for _, c in columns) + " |")
    lines.append("| **total** | " + " | ".join(f"**{c['iteration_s']:.3f}** ({c['episodes_per_s']:.0f} episodes/s)"
                                                for _, c in columns) + " |")
    lines.append(f"\n{result['batch_size']} episodes, {result['ppo_epochs']} epochs of minibatches of "
                 f"{result['minibatch_size']}, {result['threads']} threads; the float32 update runs its matmuls at "
                 f"{result['update_gflops']:.0f} GFLOP/s, {result['update_flop_efficiency']:.0%} of this machine's "
                 f"fastest float32 matmul ({result['matmul_peak_gflops']:.0f} GFLOP/s).")
    if result.get("kernels"):
        lines.append("The default's kernel choice (`rlhf_env.accel.kernels`): " + "; ".join(result["kernels"]) + ".")
    return "\n".join(lines)


def vs_trl_quality_table(result: dict) -> str:
    st, curves = result["settings"], result["curves"]
    weight = st.get("ours_token_target_coef")  # None: measured before the token target existed
    changed = st.get("trl_overrides") or {}
    ours_changed = {k: v for k, v in (st.get("ours_overrides") or {}).items() if k != "token_target_coef"}
    if ours_changed and ours_changed == changed:  # one recipe on both sides: the footer describes it
        st, changed, ours_changed = {**st, **changed}, {}, {}
    trl_recipe = ("its own recipe: " + ", ".join(f"{k} {v:g}" for k, v in changed.items())) if changed else \
        "same recipe"
    ours_recipe = "".join(f", {k} {v:g}" for k, v in ours_changed.items())
    names = {"ours": f"ours (`rlhf ppo`{ours_recipe}, {f'token target {weight:g}' if weight else 'no token target'})",
             "trl": f"TRL {st['trl_version']} `RLOOTrainer`, {trl_recipe}, no token target"}
    generations = sorted({p["generation"] for curve in curves.values() for p in curve})
    lines = ["| generation | " + " | ".join(f"{names[s]}: training s | win rate" for s in curves) + " |",
             "|---" * (1 + 2 * len(curves)) + "|"]
    for g in generations:
        cells = []
        for curve in curves.values():
            point = next((p for p in curve if p["generation"] == g), None)
            cells += [f"{point['train_s']:.0f}", f"{point['win_rate']:.3f}"] if point else ["—", "—"]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    summary = result.get("summary", {})
    if "seconds_per_generation" in summary:
        per = summary["seconds_per_generation"]
        lines.append(f"\nTraining seconds per generation: ours {per['ours']:.2f}, TRL {per['trl']:.2f}: TRL takes "
                     f"**{summary['seconds_per_generation_trl_over_ours']:.2f}×** our time.")
    for row in summary.get("targets", []):
        times = ", ".join(f"{side} {'never' if t is None else f'{t:.0f} s'}" for side, t in row["train_s"].items())
        ratio = "" if row["trl_over_ours"] is None else f": TRL takes **{row['trl_over_ours']:.2f}×** our time"
        lines.append(f"\nTo a held-out win rate of {row['target']:.3f}: {times}{ratio}.")
    run = (f"the first {st['stop_after']} of a {st['generations']}-generation schedule" if st["stop_after"] <
           st["generations"] else f"{st['generations']} generations")
    lines.append(f"\nOne seed each; {run}, generations of {st['batch_size']} episodes ({st['group_size']} "
                 f"samples per prompt, leave-one-out baseline, KL {st['kl_coef']:g} in the reward, "
                 f"{st['ppo_epochs']} passes of minibatches of {st['minibatch_size']}, lr {st['lr']:g}), the bundled "
                 f"`{st['reward']}` as reward for both (TRL's through `rlhf serve-reward`), {st['threads']} threads; "
                 f"judged every {st['eval_every']} generations on {st['eval_episodes']} held-out prompts, so a win "
                 "rate moves by a few points with the prompts drawn, and a time to a target hangs on one such "
                 "judgement: the seconds per generation are the steadier ratio. Training seconds leave out loading, "
                 "judging and saving.")
    return "\n".join(lines)


def vs_trl_table(result: dict) -> str:
    st, summary, systems = result["settings"], result["summary"], result["systems"]
    policies = [p for p in st["policies"] if p in summary]
    lines = ["| system | one step |" + "".join(f" `{p}` episodes/s | `{p}` tokens/s | `{p}` peak RSS (MiB) |"
                                                for p in policies), "|---|---|" + "---|---|---|" * len(policies)]
    for name, system in systems.items():
        cells = []
        for p in policies:
            s = summary[p].get(name)
            if s is None:
                cells += ["failed" if name in result["errors"] else "—", "", ""]
                continue
            e = s["episodes_per_s"]
            cells += [f"{e['median']:.1f} ({e['min']:.1f}..{e['max']:.1f})", f"{s['tokens_per_s']['median']:,.0f}",
                      f"{s['peak_rss_mib']['median']:,.0f}"]
        lines.append(f"| {system['runs']} | {system['one_step']} | " + " | ".join(cells) + " |")
    notes = {"ours-ppo-head/trl-ppo": "less work: a value head, not a critic",
             "ours-ppo-critic/trl-ppo": "equal work", "ours-rloo/trl-rloo": "equal work"}
    lines += ["", "| ours / TRL (median episodes/s; tokens/s) | " + " | ".join(f"`{p}`" for p in policies) + " |",
              "|---" * (len(policies) + 1) + "|"]
    for pair in dict.fromkeys(k for p in policies for k in result["ratios"].get(p, {})):
        cells = [result["ratios"][p].get(pair) for p in policies]
        lines.append(f"| {pair.replace('/', ' / ')} ({notes.get(pair, '')}) | " + " | ".join(
            f"**{r['episodes_per_s']:.2f}×**; {r['tokens_per_s']:.2f}×" if r else "—" for r in cells) + " |")
    sides = {"ours-rloo": "ours", "trl-ppo": "TRL's PPO", "trl-rloo": "TRL's RLOO"}
    versions = "; ".join(f"{side}: " + ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "trl") if k in v)
                         for name, side in sides.items() if (v := result["versions"].get(name)))
    lines.append(f"\nEvery system: the same policy, the world's `{st['prompts']}` prompts, `{st['reward']}` as reward "
                 f"(and as critic where there is one; TRL's PPO takes a sequence classifier, which the default `rm` is "
                 f"not; our rows run with `--reward {st['reward']} --batch_size {st['batch_size']}`), "
                 f"{st['batch_size']} completions a step of at most {st['max_new_tokens']} new tokens at "
                 f"temperature {st['temperature']:g}, KL coefficient {st['kl_coef']:g} to a frozen copy of the policy, "
                 f"{st['threads']} thread(s). Median (min..max) over {st['repeats']} interleaved runs of "
                 f"{st['steps']} steps, each a fresh process after {st['warmup']} warm-up step(s); tokens are response "
                 f"tokens up to and including EOS; peak RSS is the process's. Versions: {versions}.")
    for name, error in result["errors"].items():
        lines.append(f"\n{name} failed: `{error.splitlines()[0][:300]}`")
    if result.get("bounds"):
        lines.append("\n" + bounds_table(result["bounds"]))
    lines.append("\nTime to quality: `benchmarks/vs_trl_quality.py`, in the next section.")
    return "\n".join(lines)


QUALITY_RUNS = {"vs_trl_quality.json": "TRL on its own recipe", "vs_trl_quality_same_recipe.json": "TRL on our recipe",
                "vs_trl_quality_100.json": "one recipe on both sides"}


def trl_ahead(results: Path) -> str | None:
    """Where TRL is ahead of us, or closest, in vs_trl.json and the time-to-quality runs: set-up time, peak RSS,
    how the ratios fall with the model's size, and any target that TRL reached first."""
    vs = load(results, "vs_trl.json")
    if not vs:
        return None
    summary, ratios, bounds = vs["summary"], vs["ratios"], vs.get("bounds", {})
    policies = [p for p in vs["settings"]["policies"] if p in summary]
    pairs = {name: system["against"] for name, system in vs["systems"].items() if system["against"]}  # ours: TRL's
    lines = []
    if len(policies) > 1:
        small, large = policies[0], policies[-1]
        both = [f"{ours}/{trl}" for ours, trl in pairs.items()
                if all(f"{ours}/{trl}" in ratios[p] for p in (small, large))]
        narrows = all(ratios[large][pair]["episodes_per_s"] < ratios[small][pair]["episodes_per_s"] for pair in both)
        sizes = [f"{pair.split('/')[0]} {ratios[small][pair]['episodes_per_s']:.2f}× on `{small}`, "
                 f"{ratios[large][pair]['episodes_per_s']:.2f}× on `{large}`" for pair in both]
        rates = [f"{bounds[p]['ours-ppo-critic']['update_gflops']:.0f} GFLOP/s on `{p}`" for p in (small, large)
                 if "ours-ppo-critic" in bounds.get(p, {})]
        lines.append(f"- **{'The lead narrows as the model grows' if narrows else 'The lead by model size'}** ("
                     + "; ".join(sizes) + "). Both sides run the "
                     "same PyTorch matmuls; ours saves around them (the sampler's per-step work, padding, the "
                     "attention, the GELU, Python between small ops), and that share of a step falls with the width: "
                     "our critic PPO's update runs at " + " and ".join(rates) + " (its matmul FLOPs over its time, "
                     "the table above). At GPT-2 small's size, where the matmuls are nearly all of a step, no TRL "
                     "run was measured.")
    equal_work = {ours: trl for ours, trl in pairs.items() if ours != "ours-ppo-head"}  # (the head does less work)
    for p in policies:
        for ours, trl in equal_work.items():
            if ours not in summary[p] or trl not in summary[p]:
                continue
            o, t = summary[p][ours], summary[p][trl]
            if t["setup_s"]["median"] < o["setup_s"]["median"]:
                lines.append(f"- **Set-up** (`{p}`, {ours} against {trl}): TRL's worker reaches its first step in "
                             f"{t['setup_s']['median']:.2f} s, ours in {o['setup_s']['median']:.2f} s (medians, "
                             "from the process's start: imports, loading the models and the prompts).")
            if t["peak_rss_mib"]["median"] < o["peak_rss_mib"]["median"]:
                lines.append(f"- **Memory** (`{p}`, {ours} against {trl}): TRL's peak RSS "
                             f"{t['peak_rss_mib']['median']:,.0f} MiB, ours {o['peak_rss_mib']['median']:,.0f} MiB.")
    for name, label in QUALITY_RUNS.items():
        quality = load(results, name)
        for row in (quality or {}).get("summary", {}).get("targets", []):
            t = row["train_s"]
            if t.get("trl") is not None and (t.get("ours") is None or t["trl"] < t["ours"]):
                ours = "never" if t.get("ours") is None else f"{t['ours']:.0f} s"
                lines.append(f"- **Time to quality** ({label}, `{name}`): TRL reached a win rate of "
                             f"{row['target']:.3f} first, in {t['trl']:.0f} s against our {ours}.")
    if not any(line.startswith(("- **Set-up", "- **Memory")) for line in lines):
        lines.append("- Set-up time and peak RSS: ours is at or below TRL's in every row of the table above.")
    return "\n".join(lines)


def bounds_table(bounds: dict) -> str:
    """What a step 3x as fast as TRL's leaves for each of our rows' updates (vs_trl.json's ``bounds``)."""
    lines = ["What 3× TRL would take (medians; the update's matmul FLOPs counted by `FlopCounterMode`, attention "
             "not counted; the peak is this machine's fastest float32 matmul at the same threads):", "",
             "| row | policy | 3× TRL's step | our step | our update (matmul GFLOP/s) | the rest | update time left "
             "at 3× | matmul rate it needs | share of peak |", "|---|---|---|---|---|---|---|---|---|"]
    for policy, rows in bounds.items():
        for name, b in rows.items():
            needed = ("none left" if b["gflops_needed"] is None else f"{b['update_s_needed']:.2f} s")
            rate = "—" if b["gflops_needed"] is None else f"{b['gflops_needed']:.0f} GFLOP/s"
            share = ("—" if b["gflops_needed"] is None
                     else f"{b['needed_share_of_peak']:.0%} of {b['matmul_peak_gflops']:.0f} GFLOP/s")
            lines.append(f"| {name} | `{policy}` | {b['target_step_s']:.2f} s | {b['step_s']:.2f} s | "
                         f"{b['update_s']:.2f} s ({b['update_gflops']:.0f}) | {b['rest_s']:.2f} s | {needed} | "
                         f"{rate} | {share} |")
    return "\n".join(lines)


def real_size_table(result: dict) -> str:
    c, per_episode = result["config"], result["seconds_per_episode"]
    names = {"sample": "sample (rollout, policy)", "env": "env step (reference and reward model)",
             "update": "update (epochs × minibatches, forward + backward + AdamW)", "iteration": "**total**"}
    lines = [f"GPT-2 small's shape with random weights, {result['parameters']:,} parameters with the bundled "
             f"tokenizer's vocabulary ({result['parameters_with_gpt2_vocab']:,} with GPT-2's); one PPO iteration "
             f"of {c['batch_size']} episodes ({c['ppo_epochs']} epochs of minibatches of {c['minibatch_size']}, "
             f"{result['mean_response_tokens']:.1f} of at most {c['max_new_tokens']} new tokens), "
             f"{result['threads']} thread(s), after {result['warmup']} warm-up iteration(s)"
             + ("; the default batch would take minutes an iteration here, so the figures per episode scale "
                "from this batch:" if result["scaled_from_batch"] else ":"), "",
             "| phase | s per iteration | s per episode |", "|---|---|---|"]
    for phase, label in names.items():
        lines.append(f"| {label} | {result['phase_s'][phase]:.1f} | {per_episode[phase]:.3f} |")
    lines.append(f"\nPeak RSS {result['peak_rss_mb']:,.0f} MiB; one AdamW step {result['adamw_step_s']:.2f} s; a gloo "
                 f"all-reduce of the {result['gradient_bytes'] / 2**20:,.0f} MiB gradient between 2 local processes "
                 f"{result['all_reduce_2_processes_median_s']:.2f} s (median). Projected seconds per 1,000 episodes:")
    lines += ["", "| ranks | link | all-reduce (s) | compute (s) | communication (s) | total (s) | speedup |",
              "|---|---|---|---|---|---|---|"]
    for row in result["projection"]:
        cells = [row["ranks"], f"{row['link']} ({row['bandwidth_gb_s']:.2f} GB/s)", f"{row['all_reduce_s']:.2f}",
                 f"{row['compute_s']:.0f}", f"{row['communication_s']:.0f}", f"{row['seconds_per_1000_episodes']:.0f}",
                 f"{row['speedup']:.2f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("\nAssumptions:\n\n" + "\n".join(f"- {a}" for a in result["assumptions"]))
    return "\n".join(lines)


def cli_errors_table(result: dict) -> str:
    lines = [f"Each case in a fresh `rlhf` process, start to exit (median of {result['repeats']}):", "",
             "| mistake | seconds | exit code | error lines | traceback | message |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['case']} | {r['seconds']:.2f} | {r['exit_code']} | {r['error_lines']} | "
                     f"{'yes' if r['traceback'] else 'no'} | `{r['message']}` |")
    return "\n".join(lines)


def data_parallel_table(result: dict) -> str:
    lines = [f"`rlhf ppo` at {result['batch_size']} episodes an iteration, its other settings the defaults (median "
             f"of {result['iterations'] - 1} iterations after a warm-up), one set-up after another:", "",
             "| set-up | episodes/s | speed-up vs 1 x 1 | efficiency per core | sample (s) | env (s) | update (s) |",
             "|---|---|---|---|---|---|---|"]
    for label, r in result["setups"].items():
        lines.append(f"| {label} | {r['episodes_per_s']:.1f} | {r['speedup_vs_1x1']:.2f} | {r['efficiency']:.0%} | "
                     f"{r['time_sample']:.2f} | {r['time_env']:.2f} | {r['time_update']:.2f} |")
    lines += ["", f"Projected from the 1 x 1 phases, an upper bound ({result['parameters'] / 1e6:.1f}M parameters; a "
              f"gradient all-reduce between 2 local processes took {result['all_reduce_2_processes_s'] * 1e3:.2f} ms; "
              "the 2-process row above is what 2 ranks measured):", "",
              "| ranks | episodes/s | s per 1,000 episodes | speed-up | largest minibatch share / even share |",
              "|---|---|---|---|---|"]
    for r in result["projection"]:
        lines.append(f"| {r['ranks']} | {r['episodes_per_s']:.1f} | {r['seconds_per_1000_episodes']:.0f} | "
                     f"{r['speedup']:.2f} | {r['largest_share_over_even']:.2f} |")
    lines.append("\nAssumptions:\n\n" + "\n".join(f"- {a}" for a in result["assumptions"]))
    if "full_run" in result:
        f = result["full_run"]
        lines.append(f"\nThe default run (seed 0) on 2 processes: held-out win rate vs SFT {f['win_rate_vs_sft']:.3f}, "
                     f"gold {f['gold']:.3f}, KL {f['kl']:.2f}, {f['wall_s'] / 60:.1f} min; one process, seeds 0..2: "
                     + ", ".join(f"{w:.3f}" for w in f["one_process_seeds"]) + ".")
        lines += stale_lines(result, "data_parallel.json")
    return "\n".join(lines)


def algorithms_table(result: dict) -> str:
    lines = ["| algorithm | reward | seeds | win rate vs SFT | task success | gold | RM score | KL | episodes | "
             "learn (s) | episodes/s | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(s, key, digits):
        m = s[key]
        if m["mean"] != m["mean"]:  # NaN: nothing to measure (episodes/s of an algorithm that steps no episode)
            return "—"
        spread = f" ({m['min']:.{digits}f}..{m['max']:.{digits}f})" if s["seeds"] > 1 else ""
        return f"{m['mean']:.{digits}f}{spread}"

    for s in result["summary"]:
        bound = "*" if s["algo"].startswith("best-of-") else ""
        lines.append(f"| {s['algo']} | {s['reward']} | {s['seeds']} | {cell(s, 'win_rate_vs_start', 3)} | "
                     f"{cell(s, 'success', 3)} | {cell(s, 'gold', 3)} | {cell(s, 'rm_score', 2)} | "
                     f"{cell(s, 'kl', 2)}{bound} | {s['episodes']['mean']:.0f} | {cell(s, 'learn_seconds', 0)} | "
                     f"{cell(s, 'episodes_per_second', 1)} | {s['peak_rss_mb']['mean']:.0f} |")
    st, rows = result["settings"], result.get("rows", [])
    betas = ", ".join(sorted({f"{r['kl_coef']}" for r in rows})) or "?"
    start = ", ".join(sorted({r.get("policy", "sft") for r in rows})) or "sft"
    lines.append(f"\nEvery run starts from `{start}` with a budget of {st['episodes']} episodes and β = {betas}, "
                 f"and is judged on {st['eval_episodes']} held-out customers' prompts against the start's samples "
                 "(mean over seeds, then min..max). Best-of-n (no training) and DPO (offline, from the comparisons) "
                 "step no episode; \\* best-of-n's KL is the bound log n − (n − 1)/n, not a measurement. "
                 f"{st['jobs']} runs at a time, {st['threads']} thread each: the times compare within this table only.")
    return "\n".join(lines)


def reliability_table(result: dict) -> str:
    lines = ["| check | what happened |", "|---|---|"]
    k = result.get("kill_and_resume")
    if k:
        lines.append(f"| kill -9 at random points ({k['during_checkpoint_write']} of them left a half-written "
                     f"checkpoint), then the same command again | {k['identical']} of {k['kills']} reruns finished "
                     "with weights identical to an uninterrupted run's |")
    c = result.get("corrupted_checkpoint")
    if c:
        warning = c["message"].split(": ", 1)[-1]  # without the source line of the warning
        lines.append(f"| a corrupted checkpoint file | exit code {c['exit_code']}; `{warning}` |")
    for key, label in (("reward_raises", "a reward that raises at its fourth call"),
                       ("reward_nan", "a reward that returns NaN at its fourth call")):
        r = result.get(key)
        if r:
            lines.append(f"| {label} | `{r['message']}`; the last good checkpoint (iteration "
                         f"{r['last_checkpoint_iteration']}) is kept |")
    t = result.get("two_runs_one_out")
    if t:
        lines.append(f"| a second run into the same `--out` while the first runs | exit code {t['second_exit_code']}: "
                     f"`{t['message']}` |")
    soak = result.get("soak")
    if soak:
        lines.append(f"| a soak run of {soak['episodes']:,} episodes ({soak['iterations']} iterations, "
                     f"{soak['minutes']:.0f} min) | resident memory {soak['rss_mb_first']:.0f} MB at the first "
                     f"iteration, {soak['rss_mb_after_warmup']:.0f} after warm-up, {soak['rss_mb_last']:.0f} at the "
                     f"end (range after warm-up {soak['rss_mb_min_after_warmup']:.0f}-"
                     f"{soak['rss_mb_max_after_warmup']:.0f}); slope "
                     f"{soak['rss_slope_mb_per_1000_iterations']:+.1f} MB per 1000 iterations |")
    return "\n".join(lines)


SHIPPED = assets_digest()  # the quality benchmarks record the build they ran on as "assets"


def on_shipped(result: dict) -> bool:
    """Whether a quality benchmark's JSON was made on the shipped build of the assets."""
    return result.get("assets") == SHIPPED


def stale_lines(result: dict, name: str) -> list[str]:
    """``stale``'s warning as lines of text joined by newlines: after a blank line, so that it is a paragraph."""
    return [line for note in stale(result, name) for line in ("", note)]


def stale(result: dict, name: str) -> list[str]:
    """A warning for a quality benchmark's table whose JSON was made on another build of the shipped models and data
    (or before the JSON recorded its build): its figures are not the shipped models'."""
    if on_shipped(result):
        return []
    made = f"build {result['assets']}" if result.get("assets") else "an earlier build"
    return [f"**Not rerun on the shipped assets (build {SHIPPED}):** `{name}` was made on {made} of the models and "
            "data, so these figures are not the shipped models'."]


def algorithms_command(algorithms: dict) -> str:
    """The command that made algorithms.json: its runs given one seed only, from its settings."""
    st = algorithms["settings"]
    flags = [f"--{key.replace('_', '-')} {' '.join(st[key])}" for key in ("first_seed_only", "first_seed_only_rewards")
             if st.get(key)]
    return " ".join(["python benchmarks/algorithms.py", *flags])


def ppo_command(ppo: dict, out: str = "") -> str:
    """The command that made ppo.json, or the JSON ``out`` (its variants and seeds, where it recorded them)."""
    flags = [f"--{key} {' '.join(map(str, ppo[key]))}" for key in ("variants", "seeds") if ppo.get(key)]
    return " ".join(["python benchmarks/ppo_runs.py", *flags, *([f"--out benchmarks/results/{out}"] if out else [])])


SLOW_HOST = "ppo_slow_host.json"  # ppo_runs' seed 0 again, on a slower 2-core host than ppo.json's


def load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.exists() else None


NAV = ("[README](../README.md) · [world](world.md) · [envs](envs.md) · [rewards](rewards.md) · [agents](agents.md) · "
       "[results](results.md) · [performance](performance.md) · [roadmap](roadmap.md)")
GENERATED = ("*Generated by `python benchmarks/results_tables.py` from `benchmarks/results/*.json`: edit that script "
             "or rerun a benchmark, not this page.*")


def results_page(results: Path) -> str:
    parts = ["# Results", NAV, GENERATED]
    algorithms = load(results, "algorithms.json")
    if algorithms:
        parts += ["## Every algorithm on one task",
                  f"`{algorithms_command(algorithms)}` runs each through `rlhf bench` "
                  "(JSON in `benchmarks/results/algorithms.json`, plot in `algorithms.png`).",
                  algorithms_table(algorithms), *stale(algorithms, "algorithms.json"),
                  "![frontier](../benchmarks/results/algorithms.png)"]
    foundation = load(results, "foundation.json")
    if foundation:
        world = foundation["world"]
        parts += ["## The world, the shipped policies and the reward models",
                  "`python benchmarks/foundation_report.py` (JSON in `benchmarks/results/foundation.json`). \"Win "
                  "rate\" is the gold grader's preference on held-out customers' prompts, ties counted half; "
                  "\"ceiling\" is what the world's reference answers (gold 1.0) get against B's samples, the most "
                  "any policy A can score; \"success\" is explicit task success.",
                  policies_table(foundation),
                  f"Labelers (`rlhf world`): agreement {world['labeler_agreement']:.3f} on {world['agreement_pool']} "
                  f"(InstructGPT: 0.726 ± 0.015); they prefer a padded answer {world['prefer_padded']:.3f} of the "
                  f"time (gold: never) and rank a correct response above an incorrect one {world['correct_first']:.3f}"
                  " of the time.",
                  "The reward models on the held-out comparisons and held-out customers' prompts. `rm` (the "
                  "default) is the frozen `sft-large` LM's summed log-probability of the response with a fitted "
                  "weight; `rm-scalar` is InstructGPT's scalar head on the small SFT trunk; `gold` is the grader; "
                  "\"labelers (noise-free)\" is a perfect model of the labelers. \"Best of n\" lets the reward pick "
                  "one of n SFT samples, judged by gold against one SFT sample.",
                  reward_table(foundation), *stale(foundation, "foundation.json")]
    forms = load(results, "rm_forms.json")
    if forms:
        parts += ["Which form of the likelihood RM to ship (`python benchmarks/rm_forms.py`, "
                  "`benchmarks/results/rm_forms.json`):", rm_forms_table(forms), *stale(forms, "rm_forms.json")]
    lengths = load(results, "training_lengths.json")
    if lengths:
        variants = "; ".join(f"`{name}`: " + ", ".join(f"`--{k} {v}`" for k, v in b["settings"].items())
                             + f" (valid gold {b['sft_valid_gold']:.3f} at step {b['sft_best_step']})"
                             for name, b in lengths["builds"].items())
        parts += ["How long to train each size (`python benchmarks/training_lengths.py`, "
                  "`benchmarks/results/training_lengths.json`): SFT variants built aside by `rlhf build-assets` "
                  "with other lengths (the shipped ones are untouched), judged on "
                  f"{lengths['episodes']} held-out customers' prompts. The variants, each with the SFT checkpoint "
                  f"it kept: {variants}.", pairs_table(lengths["evals"]),
                  "The likelihood RM fitted on each large SFT (the shipped `rm`'s recipe), measured as above:",
                  reward_table(lengths),
                  *([f"**Made on an earlier build than the shipped one ({SHIPPED}):** the rows named \"shipped\" are "
                     "that build's models; the shipped models are now built with the lengths that "
                     "`rlhf_env/assets/manifest.json` records."] if not on_shipped(lengths) else [])]
    sizes = load(results, "sizes.json")
    if sizes:
        parts += ["The large SFT model's learning rate (`python benchmarks/sizes.py`, "
                  "`benchmarks/results/sizes.json`): `base-large` fine-tuned as "
                  "`rlhf sft --base base-large --lr LR` does, judged on "
                  f"{sizes['episodes']} held-out customers' prompts, and the likelihood RM fitted on it (the shipped "
                  "`rm`'s recipe), measured as above.", sizes_table(sizes),
                  *stale(sizes, "sizes.json"),
                  *(["So its rows named \"shipped\" and its columns against the shipped `sft-large` are that "
                     "build's `sft-large` and `rm`; the shipped ones are built at the learning rate that "
                     "`rlhf_env/assets/manifest.json` records (`large_sft_lr`)."] if not on_shipped(sizes) else [])]
    ppo = load(results, "ppo.json")
    if ppo:
        parts += ["## PPO at the full budget",
                  f"`{ppo_command(ppo)}` (JSON in `benchmarks/results/ppo.json`): `rlhf ppo` with the "
                  "defaults (300 iterations of 256 episodes, 2 responses per prompt, 2 passes at lr 1e-4, β = 0.05, "
                  "the bundled `rm` and the token target, weight 10, wherever the reward allows it: not with β = 0, "
                  "`rm-scalar` or `gold`) and the overrides of each row, judged by `rlhf eval --policy RUN/final "
                  "--baseline sft` on 500 held-out prompts, against `sft-large`, and decoded greedily against SFT "
                  "decoded greedily. `black-box` is the default before the token target (no token target, 8 "
                  "responses per prompt, 4 passes at lr 3e-5, 100 iterations), PPO's recipe in the bench above. "
                  "`gold-oracle` trains on the gold grader itself, whose grades `rlhf ppo` normalises by default to "
                  "N(0, 1) on SFT's samples (the bundled RMs' scale, which β and the missing-EOS penalty assume). "
                  "\"RM score\" is each run's own reward (normalised gold for `gold-oracle`). 2 threads, one run at "
                  "a time, with the kernels that `rlhf_env.accel.kernels` chose on this machine and the packed trunk "
                  "(`rlhf_env.accel.trunk`). The script's other variants (GAE with a value head, GRPO, gold's raw "
                  "grades, bf16, ...) run with `--variants`." + (
                      " Its minutes were timed before the token target read the env step's forwards."
                      if timed_before_reuse(ppo) else ""),
                  ppo_table(ppo), *stale(ppo, "ppo.json"), "![PPO curves](../benchmarks/results/ppo.png)"]
    slow = load(results, SLOW_HOST)
    if slow:
        parts += ["### The same runs on a slower machine",
                  f"`{ppo_command(slow, SLOW_HOST)}`, on another 2-core host{on_machine(slow)}"
                  f"{', at commit ' + slow['code'] if 'code' in slow else ''}: a run's minutes "
                  "follow the machine it runs on. These runs are also the PPO series of the over-optimisation plot "
                  "below.", ppo_table(slow), *stale(slow, SLOW_HOST)]
    token = load(results, "ppo_token_target.json")
    if token:
        parts += ["### The token target's first measurement",
                  "`python benchmarks/ppo_runs.py --variants group2 token-target token-target-300 --out "
                  "benchmarks/results/ppo_token_target.json`: the black-box recipe with a per-token KL(π ‖ q) over "
                  "the whole vocabulary added to the loss (`--token_target_coef 3`), q ∝ π_ref · p_rm^(c/β) the "
                  "per-token (myopic) KL-regularised optimum of the bundled likelihood RM (`agents/token_target.py`),"
                  " and 2 responses per prompt (`--group_size 2`: 64 prompts an iteration), for 100 iterations and "
                  "for 300, judged as above. `group2` is the control: the black-box recipe with 2 responses per "
                  "prompt. The default's weight, learning rate and passes came after these, from single-seed runs "
                  "judged on the same held-out prompts.", ppo_table(token), *stale(token, "ppo_token_target.json"),
                  "![PPO curves, token target](../benchmarks/results/ppo_token_target.png)"]
    ceiling = load(results, "token_target_ceiling.json")
    if ceiling:
        parts += ["What the token target aims at: q itself, sampled token by token from both models (`python "
                  f"benchmarks/token_target_ceiling.py {betas_flag(ceiling)}`, "
                  "`benchmarks/results/token_target_ceiling.json`), judged the "
                  f"same way on {ceiling['episodes']} held-out prompts; α = c/β with c = {ceiling['rm_coef']:.4f} "
                  "for the bundled `rm`, and α = 0 is SFT itself. A policy that matched q everywhere would score "
                  "this: the point the token term pulls towards, not a bound (the sampled advantages can pass it).",
                  token_target_ceiling_table(ceiling), *stale(ceiling, "token_target_ceiling.json")]
    greedy = load(results, "token_target_ceiling_greedy.json")
    if greedy:
        parts += ["q decoded greedily (its argmax at every step) against SFT decoded greedily, the table's greedy "
                  f"column (`python benchmarks/token_target_ceiling.py --greedy {betas_flag(greedy)} --out "
                  "benchmarks/results/token_target_ceiling_greedy.json`): what a policy that matched q would score "
                  "there.", token_target_ceiling_table(greedy),
                  *stale(greedy, "token_target_ceiling_greedy.json")]
    frontier = load(results, "greedy_frontier.json")
    if frontier:
        settings = frontier["settings"]
        parts += ["Where the greedy failures are, family by family (`python benchmarks/greedy_frontier.py "
                  f"{' '.join(settings['policies'])}`, after `benchmarks/ppo_runs.py`; "
                  f"`benchmarks/results/greedy_frontier.json`; {settings['episodes']} held-out prompts): greedy task "
                  "success of SFT, of `sft-large` (the LM of the bundled RM) and of the default PPO run, each decoded "
                  "greedily, and the frontier, a policy as good as the best of them on every family, with the win "
                  "rate against greedy SFT that 0.5 + half the gain in success gives it; last, by family, how often "
                  "the bundled RM scores a correct response above an incorrect one (held-out customers' comparisons, "
                  "as `rlhf eval-rm` counts them).",
                  greedy_frontier_table(frontier), *stale(frontier, "greedy_frontier.json")]
    imitation = load(results, "gold_imitation.json")
    if imitation:
        settings = imitation["settings"]
        parts += ["How much of gold's best of n a policy of this size keeps once it must answer alone: rounds of "
                  f"fine-tuning on gold's best of {settings['n']} samples of the current policy, "
                  f"{settings['prompts']} training prompts a round (`python benchmarks/gold_imitation.py`, "
                  "`benchmarks/results/gold_imitation.json`), each round judged as above "
                  f"({settings['episodes']} held-out prompts).", gold_imitation_table(imitation),
                  *stale(imitation, "gold_imitation.json")]
    over = load(results, "over_optimisation.json")
    if over:
        parts += ["Over-optimisation (Gao et al. 2022): gold and RM score against KL from SFT, for the RM's best of n "
                  "SFT samples (KL = log n - (n - 1)/n), for SFT sampled colder (*sharpened*: no reward at all; KL "
                  "measured; temperature 0 is greedy) and along PPO runs (`python benchmarks/over_optimisation.py"
                  + "".join(f" {label}={run}" for label, run in over.get("runs", {}).items()) + "`, after "
                  "`benchmarks/ppo_runs.py` made them; a run against another RM than the bundled one logs its own RM's "
                  f"score; `benchmarks/results/over_optimisation.json`; {over['episodes']} held-out prompts, so a win "
                  "rate moves by a few points with the prompts drawn):", over_optimisation_table(over),
                  *stale(over, "over_optimisation.json"),
                  "![over-optimisation](../benchmarks/results/over_optimisation.png)"]
    return "\n\n".join(parts) + "\n"


def performance_page(results: Path) -> str:
    parts = ["# Performance", NAV, GENERATED,
             "Absolute timings on a shared 2-core machine are noisy; compare the columns of one table, which one run "
             "of one script measured.",
             "**Kernels.** For float32 linears on a CPU, oneDNN beats MKL (PyTorch's default) on some CPUs and loses "
             "on others, so no fixed rule is right. `rlhf_env.accel.kernels` times both on a model's own layer "
             "shapes, once per machine (training layers, and the sampler's packed decode step, separately), caches "
             "the result in `~/.cache/rlhf_env/kernels.json` (`RLHF_ENV_CACHE` moves it), and takes oneDNN only where "
             f"it takes under {1 - kernels.MARGIN:.0%} of MKL's time. The MLP's tanh GELU, the sampler's "
             "decode-step attention, token draw and layers' bias and LayerNorm passes, and the training forwards' "
             "attention over sequences laid end to end (forward and backward) are chosen the same way, between "
             "PyTorch's ops and small C kernels of the "
             "package's (`rlhf_env/accel/cpu.c`, compiled at first use by the system's C compiler and cached per "
             "machine by `rlhf_env.accel.native`; PyTorch's where there is no compiler). A measurement taken "
             "while other processes keep busy the CPUs that the process's threads need (read from Linux's `/proc`) "
             "is skewed far past noise, since multi-threaded PyTorch ops wait on descheduled threads: that choice "
             "serves its process only, is not cached, and the run log says so. Every run prints its "
             "choice and writes it to "
             "`OUT/kernels.json`, and keeps it when resumed. "
             "`RLHF_ENV_KERNELS=stock` forces stock PyTorch's kernels (for bit-identical runs across machines) and "
             "`=onednn` the package's; "
             "`RLHF_ENV_ACCEL=0` (`rlhf --no-accel`) turns every accelerated path off.",
             "**Shared prompts.** The env shows each prompt to a group of sub-envs, so one step scores many responses "
             "to the same prompt. Where rows share prompts, `rlhf_env.sampling.response_log_softmax` runs each distinct"
             " prompt through the model once and lets its responses attend to the cached keys and values (HF models "
             "through their own cache, the envs' torch-only GPT-2 through its `KVCache`), from "
             "`rlhf_env.sampling.SHARE_FROM` rows per prompt: the env's reference and likelihood reward model where a "
             "step shows each prompt that often (not `rlhf ppo`'s default of 2 responses per prompt; its rows run "
             "packed instead), and an update whose minibatch holds whole groups (RLOO's one step on the batch). The "
             "log-probs, hidden states and gradients are the full forward's to float32 rounding (tested on GPT-2, the "
             "torch-only GPT-2 and a Llama). The black-box recipe's PPO minibatch (16 episodes drawn from 16 prompts x "
             "8) holds too few rows per prompt to pay, and is not shared. The rollout's lean decoder (the bundled "
             "GPT-2s on a CPU) prefills each distinct prompt once and copies its keys and values to the group's other "
             "rows. A causal HF classifier RM with a `score` head (such as `rm-scalar`) scores a group's responses on "
             "one forward of their prompt, from the same rows per prompt "
             "(`rlhf_env.rewards.classifier.shared_prompt_logits`); where a text's tokens do not start with its "
             "prompt's, a text would be truncated or holds the PAD token, it scores the whole texts as before.",
             "**Padding skipped.** A batch's responses end at different lengths and its prompts come left-padded "
             "to `max_prompt_tokens`. Behind shared prompts, the responses run in chunks of rows of similar length, "
             "each cut to its own longest (`rlhf_env.sampling.length_chunks`, where the positions saved outweigh "
             "an extra forward's fixed cost): the same log-probs, hidden states and gradients (tested). The sampler "
             "runs without the prompt columns that are padding in every row, and the lean decoder stops running "
             "rows that have ended once half of its rows have (`COMPACT_AT`): the same draws, so the same samples "
             "(tested). Where rows share no prompt (PPO's minibatches of random rows, a batch of one response per "
             "prompt), their forwards run packed: each row's real tokens end to end with other rows', in rows of "
             "the longest one's length, kept apart by a block-diagonal causal mask (`rlhf_env.packing`; the policy, "
             "a value head, a separate critic and the env's reference). A model is packed only after a check "
             "on a small input that its trunk keeps packed rows apart and its logits are its head's: the same "
             "log-probs, values and gradients (tested)."]
    for name, title, command, fn in (
            ("vector_env.json", "The native vector env", "bench_vector_env.py", vector_env_table),
            ("make.json", "Making the env in a fresh process", "bench_make.py", make_table),
            ("cli_errors.json", "A user's mistake on the command line", "bench_cli_errors.py", cli_errors_table),
            ("token_env.json", "The token env", "bench_token_env.py", token_env_table),
            ("sampler.json", "The rollout sampler", "bench_sampler.py", sampler_table),
            ("shared_prompts.json", "Shared prompts", "bench_shared_prompts.py", shared_prompts_table),
            ("padding.json", "Padding skipped", "bench_padding.py", padding_table),
            ("ppo_iteration.json", "One PPO iteration", "bench_ppo_iteration.py", ppo_iteration_table),
            ("vs_trl.json", "Against TRL at equal work", "vs_trl.py", vs_trl_table),
            ("vs_trl_quality.json", "Against TRL: time to quality", "vs_trl_quality.py", vs_trl_quality_table),
            ("vs_trl_quality_same_recipe.json", "Against TRL: time to quality, TRL on our recipe",
             "vs_trl_quality.py --trl-recipe same --out benchmarks/results/vs_trl_quality_same_recipe.json",
             vs_trl_quality_table),
            ("vs_trl_quality_100.json", "Against TRL: one recipe on both sides, without the token target",
             "vs_trl_quality.py --ours-recipe black-box --stop-after 100 "
             "--eval-every 10 --eval-episodes 200 --out benchmarks/results/vs_trl_quality_100.json",
             vs_trl_quality_table),
            ("data_parallel.json", "Data-parallel PPO", "data_parallel.py --full", data_parallel_table),
            ("real_size.json", "PPO at GPT-2 small's size", "real_size.py", real_size_table),
            ("reliability.json", "Reliability", "reliability.py", reliability_table)):
        result = load(results, name)
        if result:
            parts += [f"## {title}", f"`python benchmarks/{command}` (`benchmarks/results/{name}`).", fn(result),
                      *(stale(result, name) if name.startswith("vs_trl_quality") else [])]  # the others: speed
        if name == "vs_trl_quality_100.json" and (ahead := trl_ahead(results)):
            parts += ["## Where TRL is ahead, or closest", "From the four TRL sections above:", ahead]
    return "\n\n".join(parts) + "\n"


def default_run(results: Path) -> list[str]:
    """The README's lines on the default `rlhf ppo` run, from ppo.json (none without it)."""
    ppo = load(results, "ppo.json")
    if not ppo or "default_summary" not in ppo:
        return []
    s, first = ppo["default_summary"], ppo["rows"][0]
    seeds = sum(r["run"] == "default" for r in ppo["rows"])

    def mean(k, digits=3):
        return f"{s[k]['mean']:.{digits}f}"
    return [f"The default `rlhf ppo` (its token target on the bundled RM), over {seeds} seeds: gold win rate "
            f"**{mean('win_rate_vs_sft')} ± {s['win_rate_vs_sft']['std']:.3f}** against SFT (SFT decoded greedily: "
            f"{ppo['greedy_sft']['win_rate_vs_sft']:.3f}; no policy can pass {first['win_rate_ceiling']:.3f}), "
            f"{mean('win_rate_vs_sft_large')} against the larger `sft-large`, task success {mean('success')} "
            f"(SFT: {first['success_sft']:.3f}); decoded greedily, {mean('greedy_win_rate_vs_greedy_sft')} against "
            f"greedy SFT; {mean('minutes', 1)} minutes a run{on_machine(ppo)}{timed_before_reuse(ppo)}"
            f"{slower(results)} "
            f"(`{ppo_command(ppo)}`, every row in [docs/results.md](docs/results.md)). In the bench below, PPO sees "
            "the reward as scores only, like every other algorithm there.", *stale_lines(ppo, "ppo.json"), ""]


def timed_before_reuse(result: dict) -> str:
    """For a PPO JSON timed before the token target read the env step's forwards (the JSONs record the code's commit
    since that change), a note that its minutes are a slower build's ("" otherwise)."""
    return "" if "code" in result else " (timed before the token target read the env step's forwards: faster since)"


def slower(results: Path) -> str:
    """", X minutes on a slower host (its CPU and matmul rate)" from the slow host's default run ("" without it)."""
    slow = load(results, SLOW_HOST)
    rows = [r for r in slow["rows"] if r["run"] == "default"] if slow else []
    if not rows:
        return ""
    return f", {sum(r['minutes'] for r in rows) / len(rows):.1f} on a slower host{on_machine(slow)}"


def machine_of(result: dict) -> str:
    """"CPU, its float32 matmul rate" for a benchmark that recorded its machine ("" before they did)."""
    if "machine" not in result:
        return ""
    return f"{result['machine'].split(' | ')[0]}, {result['matmul_peak_gflops']:.0f} GFLOP/s float32 matmul"


def on_machine(result: dict) -> str:
    machine = machine_of(result)
    return f" ({machine})" if machine else ""


def over_optimisation_lines(results: Path) -> list[str]:
    """The README's lines on over-optimisation: each beta = 0 run's RM score and gold, first and last, and the
    plot (none without over_optimisation.json)."""
    over = load(results, "over_optimisation.json")
    if not over:
        return []
    runs = {label: (over["reward"], points) for label, points in over["ppo"].items()}
    runs.update({label: (run["reward"], run["points"]) for label, run in over.get("ppo_other_reward", {}).items()})
    told = []
    for label, (reward, points) in runs.items():
        if "beta0" not in label:
            continue
        first, last = points[0], points[-1]

        def moves(key, digits, first=first, last=last):
            return (f"{'rises' if last[key] > first[key] else 'falls'} from {first[key]:.{digits}f}"
                    f"{' (SFT)' if key == 'gold' else ''} to {last[key]:.{digits}f}")
        told.append(f"against `{reward}` ({label}, {last['iteration']} iterations), that RM's score "
                    f"{moves('rm_score', 2)} while gold {moves('gold', 3)}, {last['kl']:.1f} nats from SFT")
    if not told:
        return []
    return ["", "Over-optimisation, as Gao et al. (2022) plot it: with no KL penalty (β = 0), " + "; ".join(told)
            + " (every point, and best of n, in [docs/results.md](docs/results.md)):",
            *stale_lines(over, "over_optimisation.json"), "",
            "![over-optimisation](benchmarks/results/over_optimisation.png)"]


def headline(results: Path) -> str:
    """The README's one results table: every algorithm at the bench's budget on the RM, else PPO's seeds."""
    algorithms = load(results, "algorithms.json")
    if algorithms:
        rows = [s for s in algorithms["summary"] if s["reward"] in ("rm", "comparisons")]
        ceiling = algorithms["rows"][0]["win_rate_ceiling"]
        st = algorithms["settings"]
        lines = [f"Every algorithm on the same task from `sft`, with {st['episodes']} episodes each, against the "
                 f"bundled RM, judged on {st['eval_episodes']} held-out customers' prompts "
                 f"(`{algorithms_command(algorithms)}`; every column, the gold-oracle runs and the spreads over "
                 "seeds in [docs/results.md](docs/results.md)):",
                 *stale_lines(algorithms, "algorithms.json"),
                 "", "| algorithm | seeds | gold win rate vs SFT | task success | KL to SFT | episodes/s |",
                 "|---|---|---|---|---|---|"]
        for s in rows:
            eps = s["episodes_per_second"]["mean"]
            bound = "*" if s["algo"].startswith("best-of-") else ""
            lines.append(f"| {s['algo']} | {s['seeds']} | {s['win_rate_vs_start']['mean']:.3f} | "
                         f"{s['success']['mean']:.3f} | {s['kl']['mean']:.2f}{bound} | "
                         f"{'—' if eps != eps else f'{eps:.1f}'} |")
        lines.append(f"\nWin rate: how often the gold grader prefers the policy's response to SFT's (ties half). No "
                     f"policy can pass the ceiling, {ceiling:.3f} here, since many of SFT's answers are already "
                     "perfect and a perfect answer can only tie them. \\* best-of-n's KL is its bound, "
                     "log n − (n − 1)/n.")
        return "\n".join(default_run(results) + lines + over_optimisation_lines(results))
    return "\n".join(default_run(results) + over_optimisation_lines(results)).strip()


MARK_START, MARK_END = "<!-- results: generated by benchmarks/results_tables.py -->", "<!-- /results -->"


def pages(root: Path) -> dict[Path, str]:
    """Each generated file and its content."""
    results = root / "benchmarks" / "results"
    readme = (root / "README.md").read_text()
    if MARK_START in readme:
        before, rest = readme.split(MARK_START, 1)
        readme = f"{before}{MARK_START}\n{headline(results)}\n{MARK_END}{rest.split(MARK_END, 1)[1]}"
    return {root / "docs" / "results.md": results_page(results),
            root / "docs" / "performance.md": performance_page(results), root / "README.md": readme}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated page is not up to date")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    stale = [path for path, text in pages(root).items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(root)} is not up to date: run python benchmarks/results_tables.py")
        raise SystemExit(1 if stale else 0)
    for path, text in pages(root).items():
        path.write_text(text)
    print(f"wrote {len(stale)} page(s): " + ", ".join(str(p.relative_to(root)) for p in stale))


if __name__ == "__main__":
    main()
