"""The README's Python examples run as written, and do what their comments say."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

BLOCKS = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(), re.S)


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


CHECKS = {'gym.make("InstructBandit-v0", kl_coef=0.05)': check_quickstart, "PPOAgent(config).train()": check_ppo,
          "from rlhf_env.world import grade": check_models, "EnsembleReward([": check_rewards}


def test_every_block_has_a_check():
    for block in BLOCKS:
        assert sum(marker in block for marker in CHECKS) == 1, block[:200]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_and_does_what_it_says(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write runs/... write them here
    namespace = {}
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    (check,) = [check for marker, check in CHECKS.items() if marker in BLOCKS[index]]
    check(namespace, capsys.readouterr().out)


def test_the_layout_section_names_every_package_and_module():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    root = Path(__file__).parents[1]
    for package in ("rlhf_env", "agents"):
        for path in sorted((root / package).iterdir()):
            if path.name.startswith("_") or path.name == "assets" or path.suffix not in (".py", ""):
                continue
            name = path.name + ("/" if path.is_dir() else "")
            assert name in layout, f"the README's Layout does not mention {package}/{name}"
            if path.is_dir() and path.name != "world":  # the world's modules are listed by what they hold
                for module in sorted(path.glob("[!_]*.py")):
                    assert module.name in layout, f"the README's Layout does not mention {package}/{name}{module.name}"
