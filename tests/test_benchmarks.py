"""Every benchmark script still parses its arguments and imports what it uses, so that none rots unseen."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(script.parent))  # as `python benchmarks/NAME.py` does
    with pytest.raises(SystemExit, match="^0$") as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.slow
def test_the_algorithms_benchmark_quick_mode_runs_a_user_algorithm_and_best_of_n(tmp_path):
    """The CI smoke run of benchmarks/algorithms.py: real `rlhf bench` subprocesses on the bundled assets."""
    import json
    import subprocess

    out = tmp_path / "algorithms.json"
    subprocess.run([sys.executable, "benchmarks/algorithms.py", "--quick", "--runs-dir", str(tmp_path / "runs"),
                    "--out", str(out)], check=True, cwd=Path(__file__).parents[1], capture_output=True)
    result = json.loads(out.read_text())
    rows = {r["algo"]: r for r in result["rows"]}
    assert set(rows) == {"examples.reinforce:Reinforce", "best-of-2"}
    assert rows["examples.reinforce:Reinforce"]["episodes"] == 128  # two steps of its 64 envs
    assert rows["best-of-2"]["episodes"] == 0 and not rows["best-of-2"]["kl_measured"]
    assert rows["best-of-2"]["kl"] == pytest.approx(np.log(2) - 1 / 2)  # the bound, said to be one
    assert rows["examples.reinforce:Reinforce"]["kl_measured"]
    assert rows["best-of-2"]["rm_score"] > rows["best-of-2"]["start_rm_score"]  # picking by the RM raises it
    assert out.with_suffix(".png").stat().st_size > 10_000


def _vs_trl():
    return runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "vs_trl.py"))  # not as __main__


def test_vs_trl_worker_protocol_is_checked_json(tmp_path):
    """benchmarks/vs_trl.py's workers (ours and TRL's, in their own venvs) take a JSON spec and answer JSON."""
    vs_trl = _vs_trl()
    with pytest.raises(ValueError, match="unknown system 'trl-grpo'"):
        vs_trl["worker_spec"]("trl-grpo", "sft", 3, 1, 1, "prompts.json")
    spec = vs_trl["worker_spec"]("trl-rloo", "sft", 2, 1, 1, "prompts.json")
    assert (spec["batch_size"], spec["max_new_tokens"], spec["group_size"], spec["reward"]) == (64, 48, 4, "rm-scalar")
    assert json.loads(json.dumps(spec)) == spec
    result = {"system": "trl-rloo", "policy": "sft", "step_seconds": [2.0, 4.0], "response_tokens": [640, 320],
              "episodes_per_step": 64, "setup_seconds": 9.0, "versions": {"trl": "1.16.0"}, "threads": 1}
    path = tmp_path / "result.json"
    path.write_text(json.dumps(result))
    assert vs_trl["read_worker_result"](path, spec)["step_seconds"] == [2.0, 4.0]
    path.write_text(json.dumps({**result, "step_seconds": [2.0]}))
    with pytest.raises(ValueError, match="has 1 step_seconds, expected 2"):
        vs_trl["read_worker_result"](path, spec)
    path.write_text(json.dumps({k: v for k, v in result.items() if k != "versions"}))
    with pytest.raises(ValueError, match="lacks versions"):
        vs_trl["read_worker_result"](path, spec)


def test_vs_trl_summary_and_ratios():
    vs_trl = _vs_trl()
    run = {"step_seconds": [1.0, 2.0, 4.0], "response_tokens": [640, 640, 640], "episodes_per_step": 64,
           "peak_rss_mib": 500.0, "setup_seconds": 5.0}
    ours = vs_trl["summarize"]([run])
    assert ours["episodes_per_s"] == {"median": 32.0, "min": 16.0, "max": 64.0}
    assert ours["tokens_per_s"]["median"] == 320.0 and ours["mean_response_tokens"] == 10.0
    theirs = vs_trl["summarize"]([{**run, "step_seconds": [4.0, 4.0, 4.0]}])
    ratios = vs_trl["ratios"]({"sft": {"ours-rloo": ours, "trl-rloo": theirs}})
    assert ratios == {"sft": {"ours-rloo/trl-rloo": {"episodes_per_s": 2.0, "tokens_per_s": 2.0}}}


def test_vs_trl_bound_says_what_a_3x_step_leaves_for_the_update():
    """TRL's step takes 6 s, so 3x needs 2 s; ours spends 0.5 s outside its update, which leaves 1.5 s for the
    update's 30 GFLOP: 20 GFLOP/s, a fifth of a 100 GFLOP/s peak (medians over the runs' steps)."""
    vs_trl = _vs_trl()
    phases = [{"sample": 0.3, "env": 0.2, "update": u} for u in (2.0, 2.5, 3.0)]
    ours = {"system": "ours-ppo-critic", "policy": "sft", "step_seconds": [2.5, 3.0, 3.5], "response_tokens": [640] * 3,
            "episodes_per_step": 64, "peak_rss_mib": 500.0, "setup_seconds": 5.0, "phase_seconds": phases,
            "update_gflop": 30.0, "matmul_peak_gflops": 100.0}
    theirs = {**ours, "system": "trl-ppo", "step_seconds": [6.0, 6.0, 6.0]}
    for key in ("phase_seconds", "update_gflop", "matmul_peak_gflops"):
        del theirs[key]
    summary = {"sft": {"ours-ppo-critic": vs_trl["summarize"]([ours]), "trl-ppo": vs_trl["summarize"]([theirs])}}
    bound = vs_trl["bounds"](summary, [ours, theirs])["sft"]["ours-ppo-critic"]
    assert bound["target_step_s"] == 2.0 and bound["rest_s"] == pytest.approx(0.5)
    assert bound["update_s"] == 2.5 and bound["update_gflops"] == 12.0
    assert bound["update_s_needed"] == pytest.approx(1.5) and bound["gflops_needed"] == pytest.approx(20.0)
    assert bound["needed_share_of_peak"] == pytest.approx(0.2)
    assert bound["phases_s"] == {"sample": 0.3, "env": pytest.approx(0.2), "update": 2.5}
    assert "20 GFLOP/s, 20% of this machine's fastest" in vs_trl["bound_line"]("sft", "ours-ppo-critic", bound)
    slow = {**ours, "step_seconds": [7.0, 8.0, 9.0]}  # 5.5 s outside the update: no room at all
    none_left = vs_trl["bounds"](summary, [slow, theirs])["sft"]["ours-ppo-critic"]
    assert none_left["gflops_needed"] is None and none_left["needed_share_of_peak"] is None
    line = vs_trl["bound_line"]("sft", "ours-ppo-critic", none_left)
    assert line.endswith("the rest alone takes longer than that step")
    table = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "results_tables.py"))["bounds_table"](
        {"sft": {"ours-ppo-critic": bound, "ours-rloo": none_left}})
    assert ("| ours-ppo-critic | `sft` | 2.00 s | 3.00 s | 2.50 s (12) | 0.50 s | 1.50 s | 20 GFLOP/s | "
            "20% of 100 GFLOP/s |") in table
    assert "| ours-rloo | `sft` | 2.00 s | 3.00 s | 2.50 s (12) | 5.50 s | none left | — | — |" in table
    # The peak is the fastest any run measured; no bound without a TRL row or without our measurements
    faster = {**ours, "matmul_peak_gflops": 150.0}
    assert vs_trl["bounds"](summary, [ours, faster, theirs])["sft"]["ours-ppo-critic"]["matmul_peak_gflops"] == 150.0
    assert vs_trl["bounds"]({"sft": {"ours-ppo-critic": summary["sft"]["ours-ppo-critic"]}}, [ours]) == {}
    unmeasured = {k: v for k, v in ours.items() if k != "update_gflop"}
    assert vs_trl["bounds"](summary, [unmeasured, theirs]) == {}


def _vs_trl_quality(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # it imports vs_trl beside it
    return runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "vs_trl_quality.py"))


def test_time_to_quality_takes_the_first_judgement_at_the_target_and_the_best_both_reach(monkeypatch):
    quality = _vs_trl_quality(monkeypatch)
    ours = [{"generation": g, "train_s": 10.0 * g, "win_rate": w} for g, w in ((1, 0.52), (2, 0.61), (3, 0.58))]
    trl = [{"generation": g, "train_s": 15.0 * g, "win_rate": w} for g, w in ((1, 0.50), (2, 0.55), (3, 0.57))]
    assert quality["time_to"](ours, 0.6) == 20.0 and quality["time_to"](trl, 0.6) is None
    summary = quality["summarize"]({"ours": ours, "trl": trl})
    assert summary["best_win_rate"] == {"ours": 0.61, "trl": 0.57}
    assert summary["seconds_per_generation"] == {"ours": 10.0, "trl": 15.0}
    assert summary["seconds_per_generation_trl_over_ours"] == 1.5
    assert summary["targets"] == [  # TRL never reaches 0.6: compared also at 0.57, the best both reach
        {"target": 0.55, "train_s": {"ours": 20.0, "trl": 30.0}, "trl_over_ours": 1.5},
        {"target": 0.57, "train_s": {"ours": 20.0, "trl": 45.0}, "trl_over_ours": 2.25},
        {"target": 0.58, "train_s": {"ours": 20.0, "trl": None}, "trl_over_ours": None},
        {"target": 0.6, "train_s": {"ours": 20.0, "trl": None}, "trl_over_ours": None}]


def test_the_time_to_quality_recipe_is_rlhf_ppos_default(monkeypatch):
    """benchmarks/vs_trl_quality.py gives TRL the recipe of `rlhf ppo`'s defaults: a changed default must change it."""
    from agents.configs import PPOConfig

    recipe, config = _vs_trl_quality(monkeypatch)["RECIPE"], PPOConfig()
    assert {k: getattr(config, k) for k in recipe} == recipe


def test_the_time_to_quality_black_box_recipe_is_one_recipe_on_both_sides(monkeypatch):
    """--ours-recipe black-box is the bench's black-box PPO, and TRL then runs the same recipe but for the token target
    (which it does not have): a drift of either would compare two recipes where the table says one."""
    from agents.bench import BLACK_BOX_PPO

    quality = _vs_trl_quality(monkeypatch)
    assert quality["OURS_RECIPES"]["black-box"] == BLACK_BOX_PPO and BLACK_BOX_PPO["token_target_coef"] == 0
    assert quality["BLACK_BOX"] == {k: v for k, v in BLACK_BOX_PPO.items() if k != "token_target_coef"}
    assert quality["BLACK_BOX"]["batch_size"] == 128 and quality["RECIPE"]["batch_size"] != 128


def test_the_greedy_frontier_takes_the_best_policy_on_each_family_and_weighs_families_by_their_prompts(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))  # it imports results_tables beside it
    frontier = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "greedy_frontier.py"))["frontier"]
    counts, sft = {"add": 30, "copy": 10}, {"add": 0.4, "copy": 0.9}
    best = frontier({"large": {"add": 0.8, "copy": 0.5}, "ppo": {"add": 0.6, "copy": 0.8}}, counts, sft)
    assert best["success"] == {"add": 0.8, "copy": 0.9}  # greedy SFT's own 0.9 on copy is the best there
    assert best["task_success"] == pytest.approx((30 * 0.8 + 10 * 0.9) / 40)
    assert best["sft_task_success"] == pytest.approx((30 * 0.4 + 10 * 0.9) / 40)
    assert best["expected_win_rate"] == pytest.approx(0.5 + (0.825 - 0.525) / 2)
