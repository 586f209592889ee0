"""The README stays a front door, and the results pages are what benchmarks/results_tables.py writes from the
JSON in the repository (numbers are never typed by hand)."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def test_the_generated_pages_are_up_to_date():
    pages = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))["pages"](ROOT)
    assert {p.name for p in pages} == {"results.md", "performance.md", "README.md"}
    for path, text in pages.items():
        assert path.read_text() == text, f"{path.name} is stale: run python benchmarks/results_tables.py"


def test_the_readme_is_short_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to a missing {target}"


@pytest.mark.parametrize("page", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_docs_page_links_back_to_the_readme(page):
    assert "(../README.md)" in page.read_text().split("\n\n", 3)[1]


def test_a_table_made_on_another_build_of_the_assets_is_marked(tmp_path):
    from rlhf_env.paths import assets_digest, check_built_on, finished_on, mark_built_on

    assets = tmp_path / "assets"
    (assets / "models" / "sft").mkdir(parents=True)
    weights = assets / "models" / "sft" / "model.safetensors"
    weights.write_bytes(b"\x00" * 64)
    (assets / "manifest.json").write_text('{"seconds": {"sft:small": 1.0}}')
    digest = assets_digest(assets)
    (assets / "manifest.json").write_text('{"seconds": {"sft:small": 2.0}}')  # timings only: the same build
    assert assets_digest(assets) == digest
    weights.write_bytes(b"\x00" * 63 + b"\x01")  # one byte of a model: another build
    changed = assets_digest(assets)
    assert changed != digest
    (assets / ".DS_Store").write_bytes(b"x")  # hidden files are no part of a build
    assert assets_digest(assets) == changed
    with pytest.raises(FileNotFoundError, match="no assets in"):
        assets_digest(tmp_path / "nowhere")

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="was made on an unrecorded build of the assets"):
        check_built_on(run, digest)  # a run from before runs recorded their build
    mark_built_on(run, digest)
    check_built_on(run, digest)
    mark_built_on(run, digest)  # resumed on the same build
    with pytest.raises(RuntimeError, match=f"was made on {digest} of the assets"):
        mark_built_on(run, digest[::-1])  # resumed on another
    with pytest.raises(RuntimeError, match=f"was made on {digest} of the assets, not the shipped build {digest[::-1]}"):
        check_built_on(run, digest[::-1])
    fresh = tmp_path / "fresh"
    assert not finished_on(fresh, digest, "result.json")  # not finished: its build recorded for the run to come
    check_built_on(fresh, digest)
    (fresh / "result.json").write_text("{}")
    assert finished_on(fresh, digest, "result.json")
    with pytest.raises(RuntimeError, match=f"was made on {digest} of the assets, not the shipped build {digest[::-1]}"):
        finished_on(fresh, digest[::-1], "result.json")  # finished on another build: refused, not reused

    stale = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))["stale"]
    assert stale({"assets": assets_digest(), "rows": []}, "ppo.json") == []
    for result in ({"assets": digest}, {}):  # another build, or none recorded
        (note,) = stale(result, "ppo.json")
        assert "Not rerun on the shipped assets" in note and "`ppo.json`" in note


def test_where_trl_is_ahead_lists_each_lead_it_has_and_says_so_where_it_has_none(tmp_path):
    """The performance page's "where TRL is ahead" section, from vs_trl.json and the time-to-quality JSON: a shorter
    TRL set-up, a smaller TRL peak RSS and a target TRL reached first each get a line; none of them, one line that
    says so."""
    import json

    trl_ahead = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))["trl_ahead"]

    def side(setup, rss):
        return {"setup_s": {"median": setup}, "peak_rss_mib": {"median": rss}}

    def write(trl_setup, trl_rss, trl_time, larger=2.5):
        summary = {p: {"ours-ppo-critic": side(2.0, 600.0), "trl-ppo": side(trl_setup, trl_rss)} for p in ("a", "b")}
        ratios = {"a": {"ours-ppo-critic/trl-ppo": {"episodes_per_s": 3.5}},
                  "b": {"ours-ppo-critic/trl-ppo": {"episodes_per_s": larger}}}
        systems = {"ours-ppo-critic": {"against": "trl-ppo"}, "trl-ppo": {"against": None}}
        (tmp_path / "vs_trl.json").write_text(json.dumps({"settings": {"policies": ["a", "b"]}, "summary": summary,
                                                          "ratios": ratios, "systems": systems}))
        (tmp_path / "vs_trl_quality.json").write_text(json.dumps({"summary": {"targets": [
            {"target": 0.55, "train_s": {"ours": 10.0, "trl": 40.0}},
            {"target": 0.6, "train_s": {"ours": 30.0, "trl": trl_time}}]}}))
        return trl_ahead(tmp_path)

    ahead = write(trl_setup=1.5, trl_rss=500.0, trl_time=20.0)
    assert "**The lead narrows as the model grows** (ours-ppo-critic 3.50× on `a`, 2.50× on `b`)" in ahead
    assert "**The lead by model size** (ours-ppo-critic 3.50× on `a`, 4.00× on `b`)" in write(1.5, 500.0, 20.0, 4.0)
    assert ahead.count("**Set-up**") == 2 and "in 1.50 s, ours in 2.00 s" in ahead
    assert ahead.count("**Memory**") == 2 and "TRL's peak RSS 500 MiB, ours 600 MiB" in ahead
    assert "TRL reached a win rate of 0.600 first, in 20 s against our 30 s" in ahead and "0.550" not in ahead
    behind = write(trl_setup=2.5, trl_rss=700.0, trl_time=None)
    assert "**Set-up**" not in behind and "**Memory**" not in behind and "Time to quality" not in behind
    assert "ours is at or below TRL's in every row" in behind
    assert trl_ahead(tmp_path / "missing") is None


def test_the_greedy_note_computes_each_runs_expected_win_rate_from_its_task_success():
    """Under the PPO table: 0.5 + (greedy success - greedy SFT's) / 2 for each summary row, the ceiling by the same
    rule and the task success that a greedy win rate of 0.55 asks for; nothing without a greedy summary."""
    greedy_decomposition = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))["greedy_decomposition"]
    ppo = {"greedy_sft": {"success": 0.8}, "rows": [{"greedy_win_rate_ceiling": 0.61}],
           "default_summary": {"greedy_success": {"mean": 0.86}, "greedy_win_rate_vs_greedy_sft": {"mean": 0.52}}}
    note = greedy_decomposition(ppo)
    assert "greedy SFT's 0.800" in note and "default 0.860, so 0.530 (measured 0.520)" in note
    assert "is 0.600 by that rule (measured 0.610)" in note and "greedy task success of 0.900." in note
    assert "black-box" not in note
    assert greedy_decomposition({**ppo, "default_summary": {}}) == ""


def test_over_optimisation_keeps_a_run_against_another_rm_apart_and_the_readme_tells_each_beta0_run(tmp_path):
    """A PPO run trained against another RM than the benchmark's logged that RM's score: over_optimisation.py files
    it under ``ppo_other_reward`` (by its checkpoint's reward), the table marks whose score it is, and the README's
    line gives each beta = 0 run's RM score and gold, first and last."""
    import json

    script = runpy.run_path(str(ROOT / "benchmarks" / "over_optimisation.py"))
    run = tmp_path / "scalar"
    (run / "checkpoint").mkdir(parents=True)
    assert script["trained_against"](run) is None  # no checkpoint state: the benchmark's own reward is assumed
    (run / "checkpoint" / "state.json").write_text(json.dumps({"state": {"run": {"reward": "rm-scalar"}}}))
    assert script["trained_against"](run) == "rm-scalar"
    (run / "eval.csv").write_text("step,ref_gold,ref_rm_score,gold,rm_score,kl,win_rate_vs_reference\n"
                                  "25,0.89,-0.02,0.70,1.50,30.25,0.20\n300,0.89,-0.02,0.43,2.83,258.5,0.01\n")
    points = script["ppo_points"](run)
    assert [p["iteration"] for p in points] == [0, 25, 300] and points[2]["sqrt_kl"] == pytest.approx(258.5 ** 0.5)

    tables = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))
    own = [{**p, "rm_score": 0.5 + p["kl"] / 8, "gold": 0.891 + p["kl"] / 200} for p in points[:2]]
    over = {"reward": "rm", "episodes": 200, "best_of_n": [], "sharpened": [],
            "ppo": {"default": own, "beta0": own}, "ppo_other_reward": {"rm-scalar-beta0": {"reward": "rm-scalar",
                                                                                            "points": points}}}
    table = tables["over_optimisation_table"](over)
    assert "| PPO rm-scalar-beta0 (RM score: rm-scalar's) | 300 | 258.50 | 0.430 | 2.83 | 0.010 |" in table
    (tmp_path / "over_optimisation.json").write_text(json.dumps(over))
    text = "\n".join(tables["over_optimisation_lines"](tmp_path))
    assert "against `rm` (beta0, 25 iterations), that RM's score rises from 0.50 to 4.28 while gold rises from " \
           "0.891 (SFT) to 1.042" in text  # the made-up points above: only beta = 0 runs are told, the default not
    assert "against `rm-scalar` (rm-scalar-beta0, 300 iterations), that RM's score rises from -0.02 to 2.83 while " \
           "gold falls from 0.890 (SFT) to 0.430, 258.5 nats from SFT" in text and "(default" not in text
    assert "![over-optimisation](benchmarks/results/over_optimisation.png)" in text


def test_the_default_runs_minutes_say_which_machine_where_the_json_records_it(tmp_path):
    """ppo_runs records its machine and matmul rate; the README's minutes name them, and the slower host's runs
    (ppo_slow_host.json) add their own minutes: a mean over its default rows."""
    import json

    tables = runpy.run_path(str(ROOT / "benchmarks" / "results_tables.py"))
    assert tables["machine_of"]({"rows": []}) == "" and tables["slower"](tmp_path) == ""  # before they recorded it
    slow = {"machine": "Some CPU | 2 cpus | 2 threads | torch 2.13.0+cpu | C kernels abc", "matmul_peak_gflops": 199.6,
            "variants": ["default", "beta0"], "seeds": [0, 1],
            "rows": [{"run": "default", "minutes": 14.0}, {"run": "default", "minutes": 15.0},
                     {"run": "beta0", "minutes": 99.0}]}
    (tmp_path / "ppo_slow_host.json").write_text(json.dumps(slow))
    assert tables["slower"](tmp_path) == ", 14.5 on a slower host (Some CPU, 200 GFLOP/s float32 matmul)"
    assert tables["ppo_command"](slow, "ppo_slow_host.json") == (
        "python benchmarks/ppo_runs.py --variants default beta0 --seeds 0 1 "
        "--out benchmarks/results/ppo_slow_host.json")
