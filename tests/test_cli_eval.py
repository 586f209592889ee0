"""The `rlhf` command and the gold-graded evaluation."""

import json
import subprocess
import sys

import pytest

from rlhf_env.cli import COMMANDS, field_docs, main
from rlhf_env.evaluation import EvalConfig, reference_grades, win_rate, win_rate_ceiling
from rlhf_env.world.build import load_split
from rlhf_env.world.grader import Grade


def grades(*scores):
    return [Grade(s, 0, 0, 0, 0, 0) for s in scores]


def test_win_rate_counts_ties_half():
    assert win_rate(grades(1, 0.5, 0.2, 0.3), grades(0, 0.5, 0.9, 0.3)) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_win_rate_treats_rounding_differences_as_ties():
    a, b = 0.1 + 0.05, 0.15  # equal scores reached by different sums of components
    assert a != b
    assert win_rate(grades(a), grades(b)) == 0.5 and win_rate(grades(b), grades(a)) == 0.5


def test_ceiling_is_the_reference_answers_win_rate(world_dir):
    tasks = load_split(world_dir, "prompts", "heldout")["task"][:4]
    assert [g.score for g in reference_grades(tasks)] == pytest.approx([1.0] * 4)
    # Against a perfect response the best is a tie; against anything less, a win.
    assert win_rate_ceiling(tasks, grades(1.0, 0.9, 1.0, 0.0)) == pytest.approx((0.5 + 1 + 0.5 + 1) / 4)


def test_help_lists_commands_and_every_subcommand_has_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit, match="^0$") as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert "--seed" in capsys.readouterr().out


def test_option_help_comes_from_field_docstrings():
    assert field_docs(EvalConfig)["split"].startswith("Prompt split")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_every_command_has_help_and_its_default(command):
    from rlhf_env.cli import build_parser

    options = [a for a in build_parser(command)._actions if a.option_strings and a.dest != "help"]
    assert options
    for action in options:
        assert action.help and action.help.endswith(f"(default: {action.default})"), (command, action.dest)
        assert len(action.help) > len(f"(default: {action.default})") + 5, (command, action.dest)  # a real line
    shown = " ".join(build_parser(command).format_help().split())  # as printed: each default once
    assert shown.count("(default: ") == len(options), command


@pytest.mark.parametrize("argv, message", [
    (["ppo", "--klcoef", "0.1"], "unrecognized argument --klcoef; did you mean --kl_coef?"),
    (["ppo", "--iterations", "0"], "iterations must be a positive integer, got 0"),
    (["ppo", "--iterations", "-1"], "iterations must be a positive integer, got -1"),
    (["ppo", "--group_size", "3"], "group_size must divide batch_size (128)"),
    (["ppo", "--minibatch_size", "500"], "minibatch_size (500) must be <= batch_size (128)"),
    (["eval", "--episodess", "3"], "did you mean --episodes?"),
    (["sft", "--lr", "0"], "lr must be > 0, got 0.0"),  # the LM stages' shared settings (TrainConfig)
    (["rm", "--warmup_ratio", "2"], "warmup_ratio must be in [0, 1], got 2.0"),
])
def test_a_users_mistake_is_one_line_before_anything_loads(argv, message, capsys, monkeypatch):
    import rlhf_env.models as models

    monkeypatch.setattr(models, "load_policy", lambda *a, **k: pytest.fail("a model loaded before the error"))
    with pytest.raises(SystemExit, match="^2$") as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rlhf") and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]


def test_out_pointing_to_a_file_is_refused_before_anything_loads(tmp_path, capsys, monkeypatch):
    import agents.ppo as ppo_module

    monkeypatch.setattr(ppo_module, "load_policy", lambda *a, **k: pytest.fail("a model loaded before the error"))
    (tmp_path / "file").write_text("")
    assert main(["ppo", "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file; pass a directory" in err[0]


def test_unknown_command_and_unknown_policy_are_clear_errors(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["eval", "--policy", "sftt", "--episodes", "2"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err


def test_unknown_split_is_a_clear_error(capsys):
    assert main(["eval", "--split", "test", "--episodes", "2"]) == 2
    assert "unknown split 'test'" in capsys.readouterr().err


def test_eval_json_on_local_checkpoints(tiny_policy_dir, world_dir, capsys):
    args = ["eval", "--policy", str(tiny_policy_dir), "--baseline", str(tiny_policy_dir), "--data", str(world_dir),
            "--episodes", "2", "--max_new_tokens", "8", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("win_rate", "gold_a", "gold_b", "success_a", "success_b", "n"):
        assert key in result
    assert result["n"] == 2
    # Same policy, same seed: identical samples, so every prompt is a tie.
    assert result["win_rate"] == 0.5 and result["gold_a"] == result["gold_b"]
    assert result["win_rate_ceiling"] >= 0.5
    assert main(args[:-1]) == 0 and "win rate" in capsys.readouterr().out


def test_import_rlhf_env_is_light():
    code = "import sys, rlhf_env; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_eval_baseline_temperature_applies_to_the_baseline_only(tiny_policy_dir, world_dir, capsys):
    def run(*temps):
        args = ["eval", "--policy", str(tiny_policy_dir), "--baseline", str(tiny_policy_dir), "--data", str(world_dir),
                "--episodes", "3", "--max_new_tokens", "8", "--json", "--temperature", str(temps[0])]
        assert main(args + (["--baseline_temperature", str(temps[1])] if len(temps) > 1 else [])) == 0
        result = json.loads(capsys.readouterr().out)
        return result, [e["a"] for e in result["examples"]], [e["b"] for e in result["examples"]]

    mixed, greedy_a, sampled_b = run(0, 1)
    assert (mixed["temperature_a"], mixed["temperature_b"]) == (0, 1)
    _, greedy_a_alone, greedy_b_alone = run(0)
    _, sampled_a_alone, sampled_b_alone = run(1)
    assert greedy_a == greedy_a_alone and sampled_b == sampled_b_alone
    assert greedy_b_alone != sampled_b_alone  # the two temperatures do give different answers here


@pytest.mark.parametrize("win, verdict", [(0.586, "better than"), (0.41, "worse than"), (0.5, "tied with")])
def test_the_ppo_table_ends_with_a_one_line_verdict(win, verdict):
    from rlhf_env.report import ppo_table

    result = {"win_rate_vs_reference": win, "win_rate_ceiling": 0.738, "gold": 0.857, "ref_gold": 0.836,
              "success": 0.68, "ref_success": 0.63, "rm_score": 0.59, "ref_rm_score": 0.48, "kl": 0.48,
              "length": 8.6, "ref_length": 9.7, "eos_frac": 1.0, "ref_eos_frac": 1.0}
    last = ppo_table(result).rstrip("\n").splitlines()[-1]
    assert last.startswith(f"verdict: {verdict} the reference on gold, win rate {win:.3f}")
    assert last.endswith("gold +0.021, success 0.680 vs 0.630")
