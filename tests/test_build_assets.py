"""`rlhf build-assets`: every step at a tiny scale, assets that the env loads, and steps it does not know."""

import json

import gymnasium as gym
import numpy as np
import pytest

from rlhf_env.configs import BuildConfig
from rlhf_env.stages.build_assets import build_assets


@pytest.mark.parametrize("steps", ["base:foo", "sft:large", "rm:gold", "pretrain"])
def test_steps_it_does_not_know_are_refused_before_anything_runs(tmp_path, steps):
    with pytest.raises(ValueError, match=rf"^unknown build steps \['{steps}'\]; choose from .*'rm:scalar'"):
        build_assets(BuildConfig(out=str(tmp_path / "assets"), work=str(tmp_path / "work"), steps=steps,
                                 sizes="small"))
    assert not (tmp_path / "assets").exists()


@pytest.mark.slow
def test_a_tiny_build_makes_every_asset_and_the_env_runs_on_them(tmp_path):
    out = tmp_path / "assets"
    config = BuildConfig(out=str(out), work=str(tmp_path / "work"), sizes="small", scale=0.005, pretrain_epochs=0.5,
                         sft_epochs=1, rm_epochs=1)
    manifest = build_assets(config)
    assert list(manifest["seconds"]) == ["world", "tokenizer", "base:small", "sft:small", "comparisons",
                                         "rm:likelihood", "rm:scalar", "total"]
    assert json.loads((out / "manifest.json").read_text()) == manifest  # written as it went
    for model in ("base", "sft", "rm", "rm-scalar"):
        files = {f.name for f in (out / "models" / model).iterdir()}
        assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    ranked = (out / "data" / "comparisons")
    assert any(ranked.glob("train*.parquet")) and any(ranked.glob("test*.parquet"))

    models = out / "models"
    for reward in ("rm", "rm-scalar"):  # the env on the build's world, reference and reward models
        env = gym.make("InstructBandit-v0", reference=str(models / "sft"), reward=str(models / reward),
                       data=str(out / "data"))
        obs, _ = env.reset(seed=0)
        env.action_space.seed(0)
        action = env.action_space.sample()
        action["logprobs"][:] = 0.0
        _, reward_value, terminated, _, info = env.step(action)
        assert terminated and np.isfinite(reward_value) and np.isfinite(info["score"])

    world = {f.relative_to(out): f.read_bytes() for f in sorted((out / "data").rglob("*.parquet"))
             if "comparisons" not in f.parts}
    build_assets(BuildConfig(**{**vars(config), "steps": "world"}))  # the same seed: the same files
    assert {f.relative_to(out): f.read_bytes() for f in sorted((out / "data").rglob("*.parquet"))
            if "comparisons" not in f.parts} == world
