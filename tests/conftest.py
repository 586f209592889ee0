"""Shared fixtures: a tiny world, tokenizer and GPT-2 built from a config in seconds."""

from __future__ import annotations

import os

import datasets
import pytest
import torch
import transformers

from rlhf_env.models import new_model, save_policy
from rlhf_env.tokenizer import train_tokenizer
from rlhf_env.world.build import WorldConfig, build_world, save_world

datasets.disable_progress_bars()
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
# The package's kernels (oneDNN, the C GELU and decode attention) are what the accel tests check, on any CPU: no
# timing decides them here (subprocesses inherit it). tests/test_accel.py covers the measured choice
# (rlhf_env.accel.kernels) with its own cache.
os.environ["RLHF_ENV_KERNELS"] = "onednn"

TINY_DIMS = dict(n_embd=32, n_layer=2, n_head=2)


def learning_log(path) -> list[dict]:
    """A run's train.csv rows without the process's memory (rss_mb), which differs between processes."""
    import csv

    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "rss_mb"} for row in csv.DictReader(f)]


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run the tests marked slow (as CI does)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def tiny_world_config(seed: int = 0) -> WorldConfig:
    return WorldConfig(seed=seed, n_sft=300, n_valid=40, n_rm=100, n_ppo=100, n_heldout=200, n_documents=300)


@pytest.fixture(scope="session")
def world():
    return build_world(tiny_world_config())


@pytest.fixture(scope="session")
def world_dir(world, tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    save_world(world, path)
    return path


@pytest.fixture(scope="session")
def tokenizer(world):
    demos = world["demonstrations"]["train"]
    return train_tokenizer(list(world["pretrain"]["text"]) + [p + " " + r for p, r in
                                                              zip(demos["prompt"], demos["response"])])


@pytest.fixture
def tiny_model(tokenizer):
    torch.manual_seed(0)
    return new_model(TINY_DIMS, tokenizer).eval()


@pytest.fixture
def tiny_policy_dir(tiny_model, tokenizer, tmp_path):
    """A tiny causal LM saved as a self-contained HF directory."""
    save_policy(tiny_model, tokenizer, tmp_path / "policy")
    return tmp_path / "policy"


@pytest.fixture(scope="session", autouse=True)
def sb3_log_folder(tmp_path_factory):
    """SB3 makes a log folder for every model it trains (an empty /tmp/SB3-* unless told where): here, under
    pytest's own temporary directory."""
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3-logs"))
