"""Every benchmark script still parses its arguments and imports what it uses, so that none rots unseen."""

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
