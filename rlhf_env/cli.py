"""The ``rlhf`` command. Each subcommand's options are generated from its stage's ``@dataclass``
config; the help text of an option is the docstring under the field.

The configs live in ``rlhf_env.configs`` and ``agents.configs``, which import neither torch nor transformers:
a mistake in an option is reported before either loads, and only a command that runs imports them."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import importlib
import inspect
import json
import os
import sys
import textwrap
import typing

from rlhf_env.accel.switch import ENV_VAR

# name -> (module, config class, entry function, table function in rlhf_env.report or None, help). The config
# class is in the configs module of the module's package; the module loads only to run the command.
COMMANDS = {
    "eval": ("rlhf_env.evaluation", "EvalConfig", "evaluate", "eval_table", "compare two policies by the gold grader"),
    "eval-rm": ("rlhf_env.rewards.metrics", "RMEvalConfig", "evaluate_reward", "eval_rm_table",
                "measure a reward model: labeler accuracy, agreement, gold correlation, length bias"),
    "world": ("rlhf_env.stages.comparisons", "WorldStatsConfig", "world_stats", "world_table",
              "describe the embedded world: splits, families, labeler agreement and bias"),
    "pretrain": ("rlhf_env.stages.pretrain", "PretrainConfig", "pretrain", None, "pretrain a base model on web text"),
    "sft": ("rlhf_env.stages.sft", "SFTConfig", "sft", None, "supervised fine-tuning on demonstrations"),
    "rm": ("rlhf_env.stages.reward_model", "RMConfig", "train_reward_model", None,
           "train a reward model on ranked comparisons"),
    "ppo": ("agents.ppo", "PPOConfig", "ppo", "ppo_table",
            "PPO against the reward model with a KL penalty to the SFT policy"),
    "grpo": ("agents.grpo", "GRPOConfig", "grpo", "ppo_table",
             "GRPO: PPO's clipped ratio with group-normalised advantages, no critic"),
    "dpo": ("agents.dpo", "DPOConfig", "dpo", None,
            "DPO on the shipped ranked comparisons: the offline alternative to RL"),
    "rloo": ("agents.rloo", "RLOOConfig", "rloo", "ppo_table",
             "RLOO: REINFORCE with a leave-one-out baseline per prompt, one on-policy step per batch"),
    "reinforce": ("agents.reinforce", "REINFORCEConfig", "reinforce", "ppo_table",
                  "REINFORCE with a batch baseline, one response per prompt"),
    "bench": ("agents.bench", "BenchConfig", "bench", "bench_table",
              "train any RL algorithm (ours, SB3's or module:Class) with a fixed budget and judge it like ours"),
    "serve-reward": ("rlhf_env.rewards.server", "ServeRewardConfig", "serve", None,
                     "serve one reward model over HTTP to many envs, workers and ranks (load_reward(URL))"),
    "build-assets": ("rlhf_env.stages.build_assets", "BuildConfig", "build_assets", None,
                     "regenerate the shipped datasets, tokenizer and models from a seed"),
}


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings (a string literal right under a field) of a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def to_bool(value: str) -> bool:
    """``--flag true`` or ``false``, also yes/no, t/f, y/n, 1/0, in any case."""
    true, false = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")
    if value.lower() not in true + false:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() in true


class ConfigParser(argparse.ArgumentParser):
    """One option per field of a dataclass config: ``--name`` (and ``--a-b`` for ``--a_b``) of the field's type,
    its help the field's docstring and its default. A bool is ``--flag`` alone (true) or ``--flag true/false``,
    and one that defaults to true also ``--no_flag``; ``X | None`` takes an X (None is only ever the default)."""

    def __init__(self, config_class, **kwargs):
        super().__init__(**kwargs)
        self.config_class = config_class
        docs, hints = field_docs(config_class), typing.get_type_hints(config_class)
        for field in dataclasses.fields(config_class):
            name, kind = field.name, hints[field.name]
            if type(None) in typing.get_args(kind):
                (kind,) = (t for t in typing.get_args(kind) if t is not type(None))
            if kind not in (bool, int, float, str):
                raise TypeError(f"{config_class.__name__}.{name}: no command-line form for {kind}")
            text = f"{docs[name]} (default: {field.default})".replace("%", "%%")  # argparse formats help with %
            flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
            if kind is bool:
                self.add_argument(*flags, type=to_bool, nargs="?", const=True, default=field.default, help=text)
                if field.default:
                    self.add_argument(f"--no_{name}", f"--no-{name.replace('_', '-')}", dest=name,
                                      action="store_false", help=f"The same as --{name} false.")
            else:
                self.add_argument(*flags, type=kind, default=field.default, help=text)


def build_parser(name: str) -> ConfigParser:
    module, cls_name, _, _, summary = COMMANDS[name]
    cls = getattr(importlib.import_module(f"{module.split('.')[0]}.configs"), cls_name)
    return ConfigParser(cls, prog=f"rlhf {name}", description=inspect.getdoc(cls) or summary)


def parse_config(parser: ConfigParser, argv: list[str]):
    """The config from ``argv``, or argparse's usage and a one-line error (exit 2) for an unknown option, with
    the closest known one, or for a value the config refuses (its ``__post_init__`` checks)."""
    options, unknown = parser.parse_known_args(argv)
    if unknown:
        known = [o for action in parser._actions for o in action.option_strings]
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        close = difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.6)
        parser.error(f"unrecognized argument {flag}" + (f"; did you mean {close[0]}?" if close else ""))
    try:
        return parser.config_class(**vars(options))
    except (ValueError, FileNotFoundError) as e:  # FileNotFoundError: a model or dataset path that is not there
        parser.error(str(e))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--no-accel" in argv:  # before anything loads a model: stock PyTorch layers everywhere (rlhf_env.accel)
        argv = [a for a in argv if a != "--no-accel"]
        os.environ[ENV_VAR] = "0"
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {n:<14}{c[-1]}" for n, c in COMMANDS.items()]
        print("usage: rlhf [--no-accel] COMMAND [options]   (rlhf COMMAND --help for its options)\n\ncommands:\n"
              + "\n".join(lines) + f"\n\n--no-accel: stock PyTorch layers only, no oneDNN or lean decoder (the same as "
              f"{ENV_VAR}=0)")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nrlhf: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    name = argv[0]
    config = parse_config(build_parser(name), argv[1:])
    _quiet()
    module, _, entry, table, _ = COMMANDS[name]
    try:
        result = getattr(importlib.import_module(module), entry)(config)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"rlhf {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a run's Interrupted says where it saved; a bare Ctrl-C says nothing
        print(f"rlhf {name}: {e or 'interrupted'}", file=sys.stderr)
        return 130
    if table and os.environ.get("RANK", "0") == "0":  # under a launcher (training.distributed): rank 0 prints
        show = getattr(importlib.import_module("rlhf_env.report"), table)
        print(json.dumps(result, indent=1) if getattr(config, "json", False) else show(result))
    return 0


def _quiet() -> None:
    """No per-file progress bars from datasets/transformers; our own bars stay."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
