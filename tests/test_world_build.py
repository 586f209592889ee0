"""The world's datasets: deterministic per seed, held-out customers kept out of all training data."""

import numpy as np
import pytest

from rlhf_env.world.build import SPLITS, build_world, load_split
from rlhf_env.world.customers import HELDOUT_CUSTOMERS, N_CUSTOMERS
from tests.conftest import tiny_world_config

TRAINING = ("sft", "valid", "rm", "ppo")


def test_generation_is_deterministic_per_seed(world):
    again = build_world(tiny_world_config(seed=0))
    other = build_world(tiny_world_config(seed=1))
    for split in SPLITS:
        assert again["prompts"][split].to_list() == world["prompts"][split].to_list()
    assert again["demonstrations"]["train"].to_list() == world["demonstrations"]["train"].to_list()
    assert again["pretrain"]["text"] == world["pretrain"]["text"]
    assert other["prompts"]["sft"]["prompt"] != world["prompts"]["sft"]["prompt"]


def test_heldout_prompts_never_appear_in_training_data(world):
    heldout = set(world["prompts"]["heldout"]["prompt"])
    heldout_ids = {f"customer-{i:02d}" for i in HELDOUT_CUSTOMERS}
    assert set(world["prompts"]["heldout"]["customer_id"]) <= heldout_ids
    for split in TRAINING:
        rows = world["prompts"][split]
        assert not heldout & set(rows["prompt"]), split
        assert not heldout_ids & set(rows["customer_id"]), split
    for split in ("train", "valid"):
        assert not heldout & set(world["demonstrations"][split]["prompt"])
    assert not set(world["prompts"]["valid"]["prompt"]) & set(world["prompts"]["sft"]["prompt"])


def test_customers_and_labeler_written_prompts():
    assert N_CUSTOMERS >= 50
    world = build_world(tiny_world_config())
    sft = world["prompts"]["sft"]
    sources = np.array(sft["source"])
    assert 0.03 < np.mean(sources == "labeler") < 0.2
    assert (np.array(world["prompts"]["heldout"]["source"]) == "customer").all()
    assert len(set(sft["customer_id"])) > 40


def test_demonstrations_are_mostly_but_not_always_right(world):
    from rlhf_env.world.grader import grade

    demos = world["demonstrations"]["train"]
    success = np.mean([grade(t, r).success for t, r in zip(demos["task"], demos["response"])])
    assert 0.75 < success < 0.99


def test_datasets_round_trip_through_the_datasets_api(world, world_dir):
    for name, split in (("prompts", "heldout"), ("demonstrations", "train"), ("pretrain", "train")):
        data = world[name][split] if name != "pretrain" else world[name]
        assert load_split(world_dir, name, split).to_list() == data.to_list()


def test_unknown_split_is_a_clear_error(world_dir):
    with pytest.raises(ValueError, match="unknown split 'test'.*heldout"):
        load_split(world_dir, "prompts", "test")


def test_corpus_states_facts_but_no_instructions(world):
    text = " ".join(world["pretrain"]["text"])
    assert "lives in" in text and "plus" in text
    assert "Q:" not in text and "A:" not in text
    from rlhf_env.world.lexicon import UNKNOWN_NAMES

    assert not set(text.split()) & set(UNKNOWN_NAMES)
