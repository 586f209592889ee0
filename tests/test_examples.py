"""Every script in examples/ runs as written and does what its comments say; the README's and docs' Python
blocks are verbatim parts of these scripts, so they are tested too."""

import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def check_quickstart(ns, out):
    assert ns["rewards"].shape == (16,) and np.isfinite(ns["rewards"]).all()
    assert np.abs(ns["step_info"]["final_info"]["kl"]).max() < 1e-2  # SFT is the reference: KL 0 up to rounding
    assert ns["info"]["eos"] and ns["info"]["score"] == -len(ns["info"]["response"].split())  # brevity, not a penalty
    assert re.search(r"custom reward: -\d+ for ", out)


def check_ppo(ns, out):
    result = ns["result"]
    assert 0 <= result["win_rate_vs_reference"] <= result["win_rate_ceiling"] <= 1
    out_dir = Path(ns["config"].out)
    assert json.loads((out_dir / "result.json").read_text())["gold"] == pytest.approx(result["gold"])
    assert (out_dir / "final" / "config.json").exists()


def check_models(ns, out):
    samples = ns["out"]
    assert len(samples.texts) == 1 and (samples.logprobs <= 0).all() and samples.lengths[0] > 0
    assert "Grade(" in out


def check_rewards(ns, out):
    assert ns["brevity"](ns["prompts"], ns["responses"]).tolist() == [-6.0, -8.0]  # minus the word counts
    assert ns["rm"](ns["prompts"], ns["responses"]).shape == (2,)
    assert out.strip().splitlines()[-1] == "[ 1. -1.]"  # the normalised brevity of the two responses
    assert re.search(r"^\[1\. 1\.\] \[0\.\d+ 0\.\d+\]$", out, re.M)  # gold: the world's answers, then wrong ones


def check_own_reward(ns, out):
    assert ns["scores"].shape == (2,) and ns["scores"][0] > ns["scores"][1]
    assert ns["env"].unwrapped.reward is ns["reward"]  # the env pays exactly this reward
    assert len(ns["reward"].members) == 2


# scripts run here as `python examples/NAME.py` would run them; the others are tested where they are used
RUN = {"quickstart.py": check_quickstart, "ppo_python.py": check_ppo, "models.py": check_models,
       "custom_reward.py": check_rewards, "own_reward.py": check_own_reward}
TESTED_ELSEWHERE = {"reinforce.py": "tests/test_bench.py", "sb3_bandit.py": "tests/test_sb3.py",
                    "sb3_token.py": "tests/test_sb3.py"}


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES} == set(RUN) | set(TESTED_ELSEWHERE)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUN))
def test_example_runs_and_does_what_it_says(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write runs/... write them here
    namespace = runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    RUN[name](namespace, capsys.readouterr().out)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_python_block_of_the_docs_is_part_of_an_example(page):
    scripts = [p.read_text() for p in EXAMPLES]
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
        assert any(block in script for script in scripts), f"{page.name}: a block is in no examples/ script:\n{block}"
