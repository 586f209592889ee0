"""The ``rlhf`` command. Each subcommand's options are generated from its stage's ``@dataclass``
config; the help text of an option is the docstring under the field."""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib
import inspect
import json
import os
import sys
import textwrap

from rlhf_env.accel.switch import ENV_VAR

# name -> (module, config class, entry function, table function in rlhf_env.report or None, help).
# Modules load lazily: `rlhf --help` must not import torch.
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


def build_parser(name: str):
    from transformers import HfArgumentParser

    module, cls_name, _, _, summary = COMMANDS[name]
    cls = getattr(importlib.import_module(module), cls_name)
    parser = HfArgumentParser(cls, prog=f"rlhf {name}", description=inspect.getdoc(cls) or summary,
                              formatter_class=argparse.HelpFormatter)  # the defaults are written below, once
    docs = field_docs(cls)
    for action in parser._actions:
        if action.dest in docs:  # every option: its docstring and its default (argparse formats help with %)
            action.help = f"{docs[action.dest]} (default: {action.default})".replace("%", "%%")
    return parser


def parse_config(parser, argv: list[str]):
    """The config from ``argv``, or argparse's usage and a one-line error (exit 2) for an unknown option, with
    the closest known one, or for a value the config refuses."""
    config, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        known = [o for action in parser._actions for o in action.option_strings]
        flag = next((u for u in unknown if u.startswith("-")), unknown[0])
        close = difflib.get_close_matches(flag.split("=")[0], known, n=1, cutoff=0.6)
        parser.error(f"unrecognized argument {flag}" + (f"; did you mean {close[0]}?" if close else ""))
    return config


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
    parser = build_parser(name)
    try:
        config = parse_config(parser, argv[1:])
    except ValueError as e:  # the config's own checks (__post_init__): before anything loads
        parser.error(str(e))
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
    if table and os.environ.get("RANK", "0") == "0":  # with a launcher's ranks (agents.distributed), rank 0's
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
