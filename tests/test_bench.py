"""The bench: any algorithm gets the same env, budget and judgement; a 30-line user REINFORCE learns on it."""

import tempfile

import pytest

from agents.bench import BUILT_INS, BenchConfig, EnvFactory, algorithm_class, bench
from agents.configs import BUILT_IN_ALGORITHMS
from rlhf_env.models import load_policy
from tests.test_ppo import brevity


class RecordedBrevity:
    """Shorter is better; records each call's mean score (one call per env step)."""

    __name__ = "recorded_brevity"

    def __init__(self):
        self.means: list[float] = []

    def __call__(self, prompts, responses):
        scores = brevity(prompts, responses)
        self.means.append(sum(scores) / len(scores))
        return scores


def tiny_bench(tiny_policy_dir, world_dir, tmp_path, **overrides):
    settings = dict(policy=str(tiny_policy_dir), data=str(world_dir), out=str(tmp_path / "bench"), episodes=64,
                    eval_episodes=16, max_new_tokens=8)
    return BenchConfig(**{**settings, **overrides})


def test_bad_algorithms_and_budgets_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown algorithm 'ppp'"):
        BenchConfig(algo="ppp")
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        BenchConfig(episodes=0)
    with pytest.raises(ValueError, match="algo_kwargs must be a JSON object"):
        BenchConfig(algo_kwargs="[1]")
    with pytest.raises(ValueError, match="cannot load algorithm 'examples.reinforce:Nope'"):
        algorithm_class("examples.reinforce:Nope")
    assert BUILT_IN_ALGORITHMS == tuple(BUILT_INS)  # what BenchConfig checks --algo against, before they load


def test_the_env_factory_fixes_the_task_and_counts_episodes(tiny_policy_dir, world_dir, tmp_path):
    make_env = EnvFactory(tiny_bench(tiny_policy_dir, world_dir, tmp_path, kl_coef=0.3))
    with pytest.raises(ValueError, match="the bench fixes kl_coef, reward"):
        make_env(4, reward="gold", kl_coef=0.0)
    env = make_env(4, group_size=2)
    assert env.unwrapped.kl_coef == 0.3
    obs, _ = env.reset(seed=0)
    action = {"response_ids": obs["input_ids"][:, :8] * 0 + env.unwrapped.scorer.eos_id,
              "logprobs": obs["input_ids"][:, :8] * 0.0}
    env.step(action)
    env.step(action)
    assert make_env.episodes == 8


def test_a_built_in_agent_runs_on_the_bench_settings(tiny_policy_dir, world_dir, tmp_path):
    config = tiny_bench(tiny_policy_dir, world_dir, tmp_path, algo="rloo", reward=brevity, kl_coef=0.2,
                        algo_kwargs='{"batch_size": 16, "group_size": 4}', episodes=40)
    result = bench(config)
    assert result["episodes"] == 32  # two whole iterations of 16 fit the budget of 40
    trained = (tmp_path / "bench" / "run" / "train.csv").read_text().split()
    assert len(trained) == 3  # the header and two iterations
    assert result["kl"] != 0 and result["algo"] == "rloo"  # the start's own samples would have KL exactly 0


@pytest.mark.slow
def test_a_user_reinforce_learns_on_the_bench_and_is_judged(tiny_policy_dir, world_dir, tmp_path):
    """examples/reinforce.py with shorter-is-better: the policy gets shorter, in training and on held-out
    prompts; one that does not learn keeps its start's length (all 8 tokens: no EOS yet)."""
    reward = RecordedBrevity()
    config = tiny_bench(tiny_policy_dir, world_dir, tmp_path, algo="examples.reinforce:Reinforce", reward=reward,
                        episodes=64 * 25, kl_coef=0.0, algo_kwargs='{"lr": 1e-2}')
    result = bench(config)
    start, end = reward.means[0], sum(reward.means[-3:]) / 3
    assert end > start + 0.5
    assert result["episodes"] == 64 * 25 and result["budget"] == 64 * 25
    assert result["kl"] > 0.05 and result["kl_measured"]  # it moved away from the start, and the judge measured it
    assert 0.0 <= result["win_rate_vs_start"] <= result["win_rate_ceiling"] <= 1.0
    assert result["length"] < result["start_length"] - 1  # brevity, judged on held-out prompts


@pytest.mark.parametrize("algo, episodes, kwargs", [
    ("sb3-ppo", 16, {"num_envs": 8, "n_steps": 1, "batch_size": 8}),
    ("sb3-maskable-ppo-token", 6, {"num_envs": 2, "n_steps": 8, "batch_size": 8})])
def test_sb3_runs_on_the_bench_within_its_budget(tiny_policy_dir, world_dir, tmp_path, algo, episodes, kwargs,
                                                   monkeypatch):
    """SB3's own algorithms with our LM policies: the rollout that reaches the budget is the last one, and it is
    trained on; no advantage is normalised (that would rescale the policy gradient against ent_coef = beta)."""
    import json

    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    models, updates = [], []
    for cls in (PPO, MaskablePPO):
        def train(model, original=cls.train):
            models.append(model)
            updates.append(model.num_timesteps)
            return original(model)
        monkeypatch.setattr(cls, "train", train)
    start = {k: v.clone() for k, v in load_policy(str(tiny_policy_dir))[0].state_dict().items()}
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where SB3's default logger makes a folder
    (tmp_path / "tmp").mkdir()
    result = bench(tiny_bench(tiny_policy_dir, world_dir, tmp_path, algo=algo, reward=brevity, kl_coef=0.1,
                              episodes=episodes, algo_kwargs=json.dumps(kwargs)))
    model = models[-1]
    assert episodes <= result["episodes"] < episodes + kwargs["num_envs"] * kwargs["n_steps"]
    if algo == "sb3-ppo":  # one step per rollout, each env finishing one episode: every counted episode trained
        assert len(updates) * kwargs["num_envs"] == result["episodes"]
    assert model.normalize_advantage is False and model.ent_coef == 0.1
    moved = max((v - start[k]).abs().max().item() for k, v in model.policy.lm.state_dict().items() if k in start)
    assert moved > 0  # it trained: the judged policy is not the start
    assert not list((tmp_path / "tmp").glob("SB3-*"))  # no empty log folder left in the temp directory
