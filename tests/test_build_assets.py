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


def test_the_large_model_takes_its_own_epochs_where_given(monkeypatch, tmp_path):
    from rlhf_env.stages import build_assets as module

    seen = []
    monkeypatch.setattr(module, "pretrain", lambda c: seen.append(("base", c.size, c.epochs)))
    monkeypatch.setattr(module, "sft", lambda c: seen.append(("sft", c.base.split("/")[-1], c.epochs, c.lr))
                        or {"best": 0.5, "best_step": 1})
    monkeypatch.setattr(module, "ship", lambda *args, **kwargs: None)
    common = dict(out=str(tmp_path / "assets"), work=str(tmp_path / "work"), steps="base,sft", pretrain_epochs=2,
                  sft_epochs=16)
    build_assets(BuildConfig(**common, large_pretrain_epochs=6, large_sft_epochs=32, large_sft_lr=2e-4))
    assert seen == [("base", "small", 2), ("sft", "base", 16, 1e-3), ("base", "large", 6),
                    ("sft", "base-large", 32, 2e-4)]
    seen.clear()
    build_assets(BuildConfig(**common, large_pretrain_epochs=None, large_sft_lr=None))  # None: the shared settings
    assert seen == [("base", "small", 2), ("sft", "base", 16, 1e-3), ("base", "large", 2),
                    ("sft", "base-large", 16, 1e-3)]


@pytest.mark.parametrize("field, value", [("large_pretrain_epochs", 0.0), ("sft_epochs", -1.0), ("scale", 0.0),
                                          ("large_sft_lr", 0.0)])
def test_build_settings_out_of_range_are_refused(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be > 0"):
        BuildConfig(**{field: value})


def test_the_defaults_are_the_settings_the_shipped_assets_were_built_with():
    """`rlhf build-assets` with no options rebuilds what ships: the manifest records the settings of its build."""
    from rlhf_env.paths import ASSETS

    shipped = json.loads((ASSETS / "manifest.json").read_text())["config"]
    defaults = BuildConfig()
    for field in ("seed", "sizes", "pretrain_epochs", "large_pretrain_epochs", "sft_epochs", "large_sft_epochs",
                  "large_sft_lr", "rm_epochs", "scale"):
        assert shipped[field] == getattr(defaults, field), field
