"""Human-readable tables for the CLI's results (``--json`` prints the raw dicts instead)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

CEILING = ("ceiling: the win rate of the world's reference answers against the same samples, the most any "
           "policy can score (where the baseline is already perfect, the best is a tie, which counts half)")


def _render(*items) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=100)
    for item in items:
        console.print(item)
    return buffer.getvalue()


def eval_table(r: dict) -> str:
    a, b = r["policy"], r["baseline"]
    table = Table(title=f"{a} vs {b} on {r['split']} prompts (n={r['n']}, seed={r['seed']})")
    table.add_column("metric")
    table.add_column(a, justify="right")
    table.add_column(b, justify="right")
    for key in ("gold", "success", "correct", "truthful", "harmless", "concise", "ending", "length"):
        table.add_row(key, f"{r[f'{key}_a']:.3f}", f"{r[f'{key}_b']:.3f}")
    families = Table(title=f"win rate of {a} over {b}: {r['win_rate']:.3f} (ceiling {r['win_rate_ceiling']:.3f}), "
                           "by family")
    for column in ("family", "n", "win_rate", f"success {a}", f"success {b}"):
        families.add_column(column, justify="left" if column == "family" else "right")
    for family, f in r["families"].items():
        families.add_row(family, str(f["n"]), f"{f['win_rate']:.3f}", f"{f['success_a']:.3f}", f"{f['success_b']:.3f}")
    return _render(table, families, CEILING)


def world_table(r: dict) -> str:
    table = Table(title="the embedded world")
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("customers (held out)", f"{r['customers']} ({len(r['heldout_customers'])}: "
                  f"{r['heldout_customers'][0]}..{r['heldout_customers'][-1]})")
    for split, n in r["splits"].items():
        table.add_row(f"prompts: {split}", f"{n} ({r['labeler_written_fraction'][split]:.0%} labeler-written)")
    table.add_row("held-out families", ", ".join(f"{k} {v}" for k, v in r["families"].items()))
    table.add_row("labelers", str(r["labelers"]))
    table.add_row("inter-labeler agreement", f"{r['labeler_agreement']:.3f} ({r['agreement_pool']})")
    table.add_row("labelers prefer padded answer", f"{r['prefer_padded']:.3f} (gold: 0.000)")
    table.add_row("labelers rank correct over incorrect", f"{r['correct_first']:.3f} (gold: 1.000)")
    return _render(table)


def eval_rm_table(r: dict) -> str:
    table = Table(title=f"reward model {r['rm']} ({r['n']} held-out comparisons, {r['n_pairs']} pairs)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    def gap(accuracy: float, interval: list[float]) -> tuple[str, float]:
        return (f"  labeler agreement minus it (95% interval, comparisons resampled: {interval[0]:.3f} to "
                f"{interval[1]:.3f})", r["labeler_agreement"] - accuracy)

    rows = [("accuracy on held-out comparisons", r["accuracy"]), gap(r["accuracy"], r["agreement_gap_interval"]),
            ("accuracy on held-out labelers' comparisons", r["accuracy_heldout_labelers"])]
    if "accuracy_with_length_term" in r:
        rows += [("with the length term it was fitted with (not in the reward)", r["accuracy_with_length_term"]),
                 gap(r["accuracy_with_length_term"], r["agreement_gap_interval_with_length_term"]),
                 ("  the same, held-out labelers' comparisons", r["accuracy_heldout_labelers_with_length_term"])]
    rows += [
        ("inter-labeler agreement, same pairs", r["labeler_agreement"]),
        (f"Spearman with gold, held-out customers (n={r['n_gold']})", r["gold_spearman"]),
        ("Pearson with gold, held-out customers", r["gold_pearson"]),
        ("Spearman with gold within a prompt, mean over held-out customers' prompts",
         r["spearman_within_prompt"]),
        ("prefers a padded answer, held-out customers (gold: 0.000)", r["prefer_padded"])]
    rows += [(f"held-out customers: correct over incorrect, correct one {k.replace('_', ' ')} "
              f"(n={r[f'n_correct_pairs_{k}']} pairs)", r[f"correct_over_incorrect_{k}"])
             for k in ("longer", "same_length", "shorter")]
    for n in sorted(int(k.split("_")[2]) for k in r if k.startswith("best_of_") and k.endswith("win_rate")):
        rows.append((f"best of {n} SFT samples by this reward: gold win rate vs SFT (gold picking: "
                     f"{r[f'gold_best_of_{n}_win_rate']:.3f})", r[f"best_of_{n}_win_rate"]))
    for name, value in rows:
        table.add_row(name, f"{value:.3f}")
    return _render(table)


def ppo_table(r: dict) -> str:
    table = Table(title="the trained policy vs its reference, held-out customers' prompts")
    for column in ("metric", "policy", "reference"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row("gold win rate (ties half)", f"{r['win_rate_vs_reference']:.3f}", "0.500")
    table.add_row("  ceiling (see below)", f"{r['win_rate_ceiling']:.3f}", "")
    for key in ("gold", "success", "rm_score", "kl", "length", "eos_frac"):
        ref = r.get(f"ref_{key}", 0.0 if key == "kl" else None)
        table.add_row(key, f"{r[key]:.3f}", "" if ref is None else f"{ref:.3f}")
    return _render(table, CEILING) + ppo_verdict(r)  # the verdict unwrapped: one line


def ppo_verdict(r: dict) -> str:
    """One line: did the policy beat its reference on gold, by how much, and against the ceiling."""
    win, ceiling, gain = r["win_rate_vs_reference"], r["win_rate_ceiling"], r["gold"] - r["ref_gold"]
    verdict = "better than" if win > 0.5 else "worse than" if win < 0.5 else "tied with"
    return (f"verdict: {verdict} the reference on gold, win rate {win:.3f} (0.5 ties, {ceiling:.3f} the most), "
            f"gold {gain:+.3f}, success {r['success']:.3f} vs {r['ref_success']:.3f}")


def bench_table(r: dict) -> str:
    table = Table(title=f"{r['algo']} vs its start, held-out customers")
    for column in ("metric", "learned", "start"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    table.add_row("gold win rate (ties half)", f"{r['win_rate_vs_start']:.3f}", "0.500")
    table.add_row("  ceiling", f"{r['win_rate_ceiling']:.3f}", "")
    for key in ("success", "gold", "rm_score"):
        table.add_row(key, f"{r[key]:.3f}", f"{r['start_' + key]:.3f}")
    table.add_row("kl to the start", f"{r['kl']:.3f}", "0.000")
    table.add_row("length", f"{r['length']:.1f}", "")
    for key, fmt in (("episodes", "{:d}"), ("learn_seconds", "{:.1f}"), ("episodes_per_second", "{:.1f}"),
                     ("peak_rss_mb", "{:.0f}")):
        table.add_row(key.replace("_", " "), fmt.format(r[key]), "")
    return _render(table) + (f"reward {r['reward']}, beta {r['kl_coef']}, seed {r['seed']}, budget {r['budget']} "
                             "episodes")
