"""The `rlhf` command and the gold-graded evaluation."""

import dataclasses
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from agents.ppo import PPOConfig
from rlhf_env.cli import COMMANDS, build_parser, field_docs, main, parse_config
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
        out = capsys.readouterr().out
        assert all(f"--{field.name}" in out for field in dataclasses.fields(build_parser(name).config_class))


def test_option_help_comes_from_field_docstrings():
    assert field_docs(EvalConfig)["split"].startswith("Prompt split")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_every_command_has_help_and_its_default(command):
    options = [a for a in build_parser(command)._actions if a.option_strings and a.dest != "help"]
    negations = [a for a in options if a.const is False]  # --no_resume: the other form of --resume false
    assert all(a.help == f"The same as --{a.dest} false." for a in negations)
    options = [a for a in options if a not in negations]
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
    (["ppo", "--group_size", "3"], "group_size must divide batch_size (256)"),
    (["ppo", "--minibatch_size", "500"], "minibatch_size (500) must be <= batch_size (256)"),
    (["eval", "--episodess", "3"], "did you mean --episodes?"),
    (["sft", "--lr", "0"], "lr must be > 0, got 0.0"),  # the LM stages' shared settings (TrainConfig)
    (["rm", "--warmup_ratio", "2"], "warmup_ratio must be in [0, 1], got 2.0"),
    (["eval", "--split", "test", "--episodes", "2"], "unknown split 'test' of dataset 'prompts'"),
    (["ppo", "--reward", "/no/such/path"], "no such reward model path: '/no/such/path'"),
    (["ppo", "--reward", "rm-scaler"], "did you mean 'rm-scalar'?"),
    (["ppo", "--json", "maybe"], "argument --json: expected true or false, got 'maybe'"),
    (["ppo", "--iterations", "1.5"], "argument --iterations: invalid int value: '1.5'"),
    (["ppo", "--missing_eos_penalty", "None"], "invalid float value: 'None'"),  # None is only ever the default
    (["ppo", "--no_json"], "unrecognized argument --no_json"),  # only a bool that defaults to true has --no_
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
    for command in ("ppo", "sft", "dpo", "bench"):
        with pytest.raises(SystemExit, match="^2$"):
            main([command, "--out", str(tmp_path / "file")])
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"rlhf {command}: error: --out {tmp_path / 'file'} is a file; pass a directory"
    with pytest.raises(SystemExit, match="^2$"):  # a directory under a file cannot be made either
        main(["ppo", "--out", str(tmp_path / "file" / "run")])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"rlhf ppo: error: --out {tmp_path / 'file' / 'run'} is under a file ({tmp_path / 'file'}); pass a directory")


def test_unknown_command_and_unknown_policy_are_clear_errors(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["eval", "--policy", "sftt", "--episodes", "2"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err


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
    code = ("import sys, rlhf_env, rlhf_env.cli, rlhf_env.configs, agents.configs; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# What each of benchmarks/bench_cli_errors.py's cases (issue 15's table) must say, on its one error line.
ERRORS = {
    "misspelled flag": "rlhf ppo: error: unrecognized argument --klcoef; did you mean --kl_coef?",
    "zero iterations": "rlhf ppo: error: iterations must be a positive integer, got 0",
    "negative iterations": "rlhf ppo: error: iterations must be a positive integer, got -1",
    "--out is a file": "rlhf ppo: error: --out {file} is a file; pass a directory",
    "unknown prompt split": "rlhf eval: error: unknown split 'trainn' of dataset 'prompts'; known splits: "
                            "['heldout', 'ppo', 'rm', 'sft', 'valid']",
    "no such reward path": "rlhf ppo: error: no such reward model path: '/no/such/path'",
    "unknown command": "rlhf: error: unknown command 'frobnicate'",
}
RUN_ALL = """
import contextlib, io, json, sys
from rlhf_env.cli import main
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    print(json.dumps([code, err.getvalue(), sorted(m for m in ("torch", "transformers") if m in sys.modules)]))
"""


def test_every_mistake_is_one_line_from_a_process_that_imports_neither_torch_nor_transformers(tmp_path):
    """Each case of the benchmark, and the help pages, in one fresh process: the heavy imports, not the checks,
    are what made a mistake take seconds to reach the user, so none may happen before the error."""
    cases = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "bench_cli_errors.py"))["CASES"]
    assert set(cases) == set(ERRORS)
    (tmp_path / "file").write_text("")
    argvs = [[a.replace("{file}", str(tmp_path / "file")) for a in argv] for argv in cases.values()]
    argvs += [["--help"], ["ppo", "--help"], ["sft", "--help"]]
    out = subprocess.run([sys.executable, "-c", RUN_ALL, json.dumps(argvs)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert len(out) == len(argvs)
    for label, (code, err, heavy) in zip(cases, map(json.loads, out)):
        errors = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
        assert (code, errors, heavy) == (2, [ERRORS[label].format(file=tmp_path / "file")], []), label
    for argv, (code, err, heavy) in zip(argvs[len(ERRORS):], map(json.loads, out[len(ERRORS):])):
        assert (code, err, heavy) == (0, "", []), argv


@pytest.mark.parametrize("command, argv, expected", [
    ("ppo", ["--json"], {"json": True}),  # a bool alone is true
    ("ppo", ["--json", "false", "--bf16", "TRUE"], {"json": False, "bf16": True}),
    ("ppo", ["--normalize-reward", "y", "--json", "0"], {"normalize_reward": True, "json": False}),
    ("sft", ["--resume"], {"resume": True}),
    ("sft", ["--resume", "f"], {"resume": False}),
    ("sft", ["--no_resume"], {"resume": False}),
    ("dpo", ["--no-resume", "--beta", "0.5"], {"resume": False, "beta": 0.5}),
    ("eval", ["--baseline_temperature", "0.5"], {"baseline_temperature": 0.5}),  # float | None
    ("eval", ["--temperature", "0"], {"temperature": 0.0, "baseline_temperature": None}),
    ("ppo", ["--missing_eos_penalty", "-2"], {"missing_eos_penalty": -2.0}),
    ("ppo", ["--iterations", "7", "--kl-coef", "0.1", "--lr=1e-4"], {"iterations": 7, "kl_coef": 0.1, "lr": 1e-4}),
    ("ppo", ["--device", "cuda:1", "--reward", "org/name"], {"device": "cuda:1", "reward": "org/name"}),
    ("world", ["--noise", "0.1", "--n_prompts", "20"], {"noise": 0.1, "n_prompts": 20}),
])
def test_the_parser_reads_each_form_of_an_option(command, argv, expected):
    config = parse_config(build_parser(command), argv)
    assert dataclasses.asdict(config) == {**dataclasses.asdict(type(config)()), **expected}
    assert {name: type(getattr(config, name)) for name in expected} == {k: type(v) for k, v in expected.items()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_options_give_the_configs_defaults(command):
    config = parse_config(build_parser(command), [])
    assert config == type(config)()


@pytest.mark.parametrize("reward", ["rm", "rm-scalar", "gold", "labelers", "gpt2", "org/name", "http://127.0.0.1:8765",
                                    len])
def test_a_reward_that_may_load_passes_the_configs_check(reward):
    assert PPOConfig(reward=reward).reward == reward


@pytest.mark.parametrize("reward", ["/no/such/path", "./rm", "~/rm", "org/name/extra"])
def test_a_local_reward_path_that_does_not_exist_is_refused_by_the_config(reward):
    with pytest.raises(FileNotFoundError, match=f"^no such reward model path: '{re.escape(reward)}'$"):
        PPOConfig(reward=reward)


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
