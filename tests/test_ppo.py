"""The PPO agent's contract with the env: rewards rebuilt from info, and ratio == 1 before an update."""

import csv
import json
import re
import sys
import zlib

import pytest
import torch

from agents.ppo import PPOAgent, PPOConfig, run_fingerprint
from rlhf_env.rewards import NormalizedReward
from rlhf_env.sampling import trim_padding
from tests.test_bandit_env import n_chars


@pytest.fixture
def agent(tiny_policy_dir, world_dir, tmp_path):
    config = PPOConfig(policy=str(tiny_policy_dir), reward=n_chars, out=str(tmp_path / "ppo"), data=str(world_dir),
                       iterations=2, batch_size=8, group_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=8,
                       kl_coef=0.1, eval_every=0, save_every=0, missing_eos_penalty=None)  # score every response
    agent = PPOAgent(config)
    return agent


def perturb(module: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Seeded noise on every weight: a policy that is no longer its reference (KL > 0), a value head that is
    no longer 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def test_per_token_rewards_sum_to_the_env_reward(agent):
    perturb(agent.policy, 0.05)  # else the KL terms are 0 by construction: the policy is the reference
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    assert batch["kl"].abs().min() > 1e-3
    torch.testing.assert_close(batch["token_rewards"].sum(1), batch["env_rewards"], atol=1e-4, rtol=0)


def test_trimming_padding_columns_changes_no_log_prob_or_value(tiny_policy_dir, world_dir, tmp_path):
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "gae", advantage="gae", group_size=1,
                                 batch_size=8))
    perturb(agent.value, 1.0)  # a zero-initialised head would return 0 with and without the cut
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    R, real = batch["response_mask"].shape[1], batch["response_mask"]
    assert batch["ids"][:, 0].eq(agent.tokenizer.pad_token_id).all()  # prompts are padded to max_prompt_tokens
    ids, mask, r = trim_padding(batch["ids"], batch["mask"], batch["response_mask"])
    assert ids.shape[1] < batch["ids"].shape[1]
    with torch.no_grad():
        full, short = agent.forward(batch["ids"], batch["mask"], R), agent.forward(ids, mask, r)
    assert (full[2][:, :r] * real[:, :r]).abs().max() > 0.1
    for a, b in zip(full, short):  # log-probs (B, R), log-softmax (B, R, V) and values (B, R)
        keep = real[:, :r] if a.dim() == 2 else real[:, :r, None]
        torch.testing.assert_close(a[:, :r] * keep, b * keep, atol=1e-5, rtol=0)


def test_rloo_advantages_are_each_rewards_lead_over_its_siblings(agent):
    """The env shows each prompt to group_size consecutive sub-envs; a response's advantage, at every one of
    its tokens, is its env reward minus the mean of its siblings', divided by the batch's std of those leads
    (per response, not per token, and not re-centred)."""
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    k, mask = agent.config.group_size, batch["response_mask"]
    prompts = batch["ids"][:, :agent.config.max_prompt_tokens].reshape(-1, k, agent.config.max_prompt_tokens)
    assert (prompts == prompts[:, :1]).all() and not (prompts[0, 0] == prompts[1, 0]).all()
    rewards = batch["env_rewards"].reshape(-1, k)
    lead = (rewards - (rewards.sum(1, keepdim=True) - rewards) / (k - 1)).reshape(-1)  # (B,)
    expected = (lead / lead.std())[:, None] * mask
    assert lead.abs().max() > 1e-3
    torch.testing.assert_close(batch["advantages"] * mask, expected * mask, atol=1e-5, rtol=0)


def test_ratio_is_one_before_first_update(agent):
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    batch.pop("next_obs")
    stats = agent.update(batch)
    assert abs(stats["first_minibatch_approx_kl"]) < 1e-6


def scaled_chars(prompts, responses):
    return [1000 * score + 7 for score in n_chars(prompts, responses)]


def test_normalize_reward_makes_the_rewards_scale_irrelevant_and_is_checkpointed(tiny_policy_dir, world_dir,
                                                                                   tmp_path):
    """With normalize_reward, 1000 * r + 7 gives the same env rewards as r: under both, the initial policy's
    samples score N(0, 1) before the KL penalty. A resumed run gets the statistics its checkpoint saved."""
    def make(reward, out):
        agent = PPOAgent(PPOConfig(policy=str(tiny_policy_dir), reward=reward, out=str(tmp_path / out),
                                   data=str(world_dir), iterations=2, batch_size=8, group_size=4, minibatch_size=4,
                                   ppo_epochs=1, max_new_tokens=8, kl_coef=0.1, eval_every=0, save_every=0,
                                   normalize_reward=True, missing_eos_penalty=None))  # score every response
        return agent

    plain, scaled = make(n_chars, "plain"), make(scaled_chars, "scaled")
    assert scaled.env.unwrapped.reward.std == pytest.approx(1000 * plain.env.unwrapped.reward.std)
    batches = [agent.rollout(agent.env.reset(seed=0)[0]) for agent in (plain, scaled)]
    assert batches[0]["env_rewards"].std() > 0.1
    torch.testing.assert_close(batches[0]["env_rewards"], batches[1]["env_rewards"], atol=1e-5, rtol=0)

    scaled.save()
    resumed = make(scaled_chars, "scaled")  # a checkpoint exists: no new fit, the saved statistics instead
    assert not isinstance(resumed.env.unwrapped.reward, NormalizedReward)
    resumed.resume()
    saved, restored = scaled.env.unwrapped.reward, resumed.env.unwrapped.reward
    assert (restored.mean, restored.std) == (saved.mean, saved.std)


def test_by_default_the_oracles_are_normalised_and_nothing_else(tiny_policy_dir, world_dir, tmp_path, capsys):
    """normalize_reward=None (the default) turns on for gold and labelers, whose grades lie in [0, 1], and stays
    off for the bundled RMs and rewards of one's own; an explicit value wins. The run fits and says so."""
    assert PPOConfig(reward="gold").normalize_reward is True
    assert PPOConfig(reward="labelers").normalize_reward is True
    assert PPOConfig(reward="rm").normalize_reward is False
    assert PPOConfig(reward=n_chars).normalize_reward is False
    assert PPOConfig(reward="gold", normalize_reward=False).normalize_reward is False
    assert run_fingerprint(PPOConfig(reward="gold"))["normalize_reward"] is True  # the decision, not None
    agent = PPOAgent(PPOConfig(policy=str(tiny_policy_dir), reward="gold", out=str(tmp_path / "gold"),
                               data=str(world_dir), iterations=1, batch_size=8, group_size=4, minibatch_size=4,
                               ppo_epochs=1, max_new_tokens=8, kl_coef=0.1, eval_every=0, save_every=0))
    reward = agent.env.unwrapped.reward
    assert isinstance(reward, NormalizedReward) and 0 <= reward.mean <= 1 and 0 < reward.std < 1
    assert "reward normalised to N(0, 1)" in capsys.readouterr().err


def test_bf16_keeps_the_ratio_at_one_and_the_envs_kl_in_float32(tiny_policy_dir, world_dir, tmp_path):
    """Mixed precision: the ratio's old log-probs are the update's own bfloat16 forward's, so the ratio is 1
    before the first update; the env still gets the sampler's float32 log-probs, so its KL to the reference
    (the same weights at the start) is 0, not bfloat16 rounding."""
    agent = PPOAgent(PPOConfig(policy=str(tiny_policy_dir), reward=n_chars, out=str(tmp_path / "ppo"),
                               data=str(world_dir), iterations=2, batch_size=8, group_size=4, minibatch_size=4,
                               ppo_epochs=1, max_new_tokens=8, kl_coef=0.1, eval_every=0, save_every=0, bf16=True))
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    batch.pop("next_obs")
    assert batch["kl"].abs().max() < 1e-5
    idx = torch.tensor([5, 2, 7])  # any minibatch, cut as the update cuts it
    ids, mask, r = trim_padding(batch["ids"][idx], batch["mask"][idx], batch["response_mask"][idx])
    with torch.no_grad():
        logprobs = agent.forward(ids, mask, r)[0] * batch["response_mask"][idx, :r]
        agent.config.bf16 = False
        float32 = agent.forward(ids, mask, r)[0] * batch["response_mask"][idx, :r]
        agent.config.bf16 = True
    old = batch["old_logprobs"][idx, :r]
    assert old.dtype == torch.float32 and torch.allclose(logprobs, old, rtol=0, atol=1e-6)
    assert (float32 - old).abs().max() > 1e-5  # bfloat16's, not the sampler's float32 log-probs
    before = [p.clone() for p in agent.policy.parameters()]
    stats = agent.update(batch)
    assert abs(stats["first_minibatch_approx_kl"]) < 1e-9  # float32 old log-probs would give about 1e-8
    assert all(p.dtype == torch.float32 for p in agent.policy.parameters())  # float32 master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters()))


def test_bf16_runs_every_policy_matmul_in_bfloat16_and_attention_in_float32(tiny_policy_dir, world_dir, tmp_path,
                                                                           monkeypatch):
    """Rollout, update and PPO-ptx forwards all run under autocast, and attention in float32."""
    import rlhf_env.models as models
    from rlhf_env import packing

    seen = {"mlp": set(), "attention": set()}
    real = models.sdpa_attention_forward

    def spy(module, query, *args, **kwargs):
        seen["attention"].add(query.dtype)
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(models, "sdpa_attention_forward", spy)
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", bf16=True, ptx_coef=0.1,
                                 iterations=1, ppo_epochs=1))
    packing.packs(agent.policy, lm_head=True)  # the one-time packing check runs in float32 by design: before the hook
    agent.policy.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, i, out: seen["mlp"].add(out.dtype))
    agent.train()
    assert seen == {"mlp": {torch.bfloat16}, "attention": {torch.float32}}


def brevity(prompts, responses):
    return [-len(r) / 20 for r in responses]


def tiny_config(tiny_policy_dir, world_dir, out, **overrides):
    settings = dict(policy=str(tiny_policy_dir), reward=brevity, out=str(out), data=str(world_dir), iterations=30,
                    batch_size=32, group_size=4, minibatch_size=8, ppo_epochs=4, lr=3e-3, kl_coef=0.0, max_new_tokens=8,
                    missing_eos_penalty=None, eval_every=0, eval_episodes=8, final_eval_episodes=8,
                    save_every=0)
    return PPOConfig(**{**settings, **overrides})


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_ppo_learns_a_trivially_learnable_reward(tiny_policy_dir, world_dir, tmp_path, bf16):
    """Shorter is better: a random tiny policy scores about -1.2; PPO (default advantages: leave-one-out over
    4 responses per prompt) must get above -0.4 in 30 iterations; an agent that never updates stays near -1.2."""
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", bf16=bf16, lr=1e-2))
    agent.train()
    scores = [float(line.split(",")[header_index(tmp_path / "ppo" / "train.csv", "score")])
              for line in (tmp_path / "ppo" / "train.csv").read_text().split()[1:]]
    assert scores[0] < -0.9 and max(scores[-5:]) > -0.4
    assert (tmp_path / "ppo" / "final" / "model.safetensors").exists()


class BrevityBehindPromptOffsets:
    """Brevity, plus a large offset per prompt that no response can change: the signal is only within prompts.
    Records the mean brevity of every call (one per iteration), which the offsets would hide in the score."""

    __name__ = "brevity_behind_prompt_offsets"  # names the reward in the run fingerprint

    def __init__(self):
        self.brevity: list[float] = []

    def __call__(self, prompts, responses):
        brevity = [-len(r) / 20 for r in responses]
        self.brevity.append(sum(brevity) / len(brevity))
        return [4.0 * (zlib.crc32(p.encode()) % 5 - 2) + b for p, b in zip(prompts, brevity)]


@pytest.mark.slow
def test_rloo_learns_a_within_prompt_signal_that_gae_loses_in_prompt_offsets(tiny_policy_dir, world_dir, tmp_path):
    """The per-prompt baseline removes the offsets exactly; GAE's value head starts at 0 and must learn them
    first, so its advantages are mostly offset noise. Same seed, budget and learning rate for both."""
    brevity = {}
    for advantage in ("rloo", "gae"):
        reward = BrevityBehindPromptOffsets()
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / advantage, reward=reward, iterations=16, lr=1e-2,
                             advantage=advantage, final_eval_episodes=1)).train()
        brevity[advantage] = reward.brevity[:16]  # the training iterations' (the final evaluation's come after)
    start = brevity["rloo"][0]
    assert brevity["gae"][0] == start  # the same initial policy and prompts
    rloo, gae = (sum(v[-3:]) / 3 for v in (brevity["rloo"], brevity["gae"]))
    assert rloo > start + 0.5 and rloo > gae + 0.4  # an agent that never updates stays at start


def header_index(path, column):
    return path.read_text().split()[0].split(",").index(column)


@pytest.mark.slow
@pytest.mark.parametrize("advantage", ["rloo", "gae"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tiny_policy_dir, world_dir, tmp_path, advantage):
    full = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "full", iterations=4, save_every=2,
                                advantage=advantage))
    full.train()
    with pytest.raises(ValueError, match="finished run"):  # a second `rlhf ppo` with the same --out
        full.train()

    class Crash(Exception):
        pass

    killed = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "killed", iterations=4, save_every=2,
                                  eval_every=3, advantage=advantage))
    killed.evaluate = lambda: (_ for _ in ()).throw(Crash("killed at iteration 3"))  # after the checkpoint at 2
    with pytest.raises(Crash, match="killed at iteration 3"):
        killed.train()
    resumed = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "killed", iterations=4, save_every=2,
                                   advantage=advantage))
    resumed.train()
    for (name, a), b in zip(full.policy.state_dict().items(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    if advantage == "gae":
        assert full.value.linear.weight.abs().sum() > 0  # the value head trained, so comparing it means something
        for a, b in zip(full.value.state_dict().values(), resumed.value.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    full_log, resumed_log = (list(csv.DictReader(open(tmp_path / run / "train.csv"))) for run in ("full", "killed"))
    assert len(full_log) == 4 and len(resumed_log) == 4
    for a, b in zip(full_log, resumed_log):  # every learning metric exactly; wall-clock times and memory differ
        assert {k: v for k, v in a.items() if not k.startswith("time_") and k != "rss_mb"} == {
            k: v for k, v in b.items() if not k.startswith("time_") and k != "rss_mb"}


def test_ctrl_c_finishes_the_iteration_saves_and_says_how_to_resume(tiny_policy_dir, world_dir, tmp_path, capsys):
    """A first Ctrl-C (SIGINT, here sent from inside the reward during iteration 2) lets iteration 2 finish, saves
    it, and stops with a message; the same command resumes from there and finishes the run."""
    import os
    import signal

    from rlhf_env.training.run import Interrupted

    def reward(prompts, responses):
        reward.calls += 1
        if reward.calls == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return brevity(prompts, responses)

    reward.calls, reward.__name__ = 0, "brevity"  # the name: the same run's fingerprint on resume
    before = signal.getsignal(signal.SIGINT)
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=4, reward=reward))
    with pytest.raises(Interrupted, match=r"interrupted at step 2; saved in .*checkpoint\. Rerun the same command"):
        agent.train()
    assert signal.getsignal(signal.SIGINT) is before  # the run's handler is gone
    assert "stopping after this step" in capsys.readouterr().err
    assert json.loads((tmp_path / "ppo" / "checkpoint" / "state.json").read_text())["state"]["iteration"] == 2
    resumed = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=4, reward=brevity))
    resumed.train()
    err = capsys.readouterr().err
    assert "resuming" in err and resumed.iteration == 4
    assert (tmp_path / "ppo" / "result.json").exists()
    # The run log says which linear kernels it chose (conftest forces oneDNN), there and in kernels.json.
    assert re.search(r"ppo: kernels for 2 layers, width 32, 2 heads, inner 128, vocab \d+: layers oneDNN, decode "
                     r"oneDNN, GELU (C kernel|aten), decode attention (C kernel|torch), packed attention "
                     r"(C kernel|SDPA), draw (C kernel|torch), bias and LayerNorm passes (C kernel|torch); "
                     r"RLHF_ENV_KERNELS=onednn", err)
    report = json.loads((tmp_path / "ppo" / "kernels.json").read_text())
    tiny = [c for c in report["choices"] if c["shape"].startswith("2 layers, width 32, 2 heads, inner 128, vocab ")]
    assert [(c["layers"], c["decode"], c["source"]) for c in tiny] == [(True, True, "onednn")] and report["machine"]


def test_a_reference_with_another_tokenizer_is_refused(tiny_policy_dir, world, world_dir, tmp_path):
    from rlhf_env.models import new_model, save_policy
    from rlhf_env.tokenizer import train_tokenizer

    demos = world["demonstrations"]["train"]
    other = train_tokenizer(list(world["pretrain"]["text"]) + [p + " " + r for p, r in
                                                             zip(demos["prompt"], demos["response"])], vocab_size=700)
    save_policy(new_model(dict(n_embd=16, n_layer=1, n_head=2), other), other, tmp_path / "other")
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", reference=str(tmp_path / "other")))


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tiny_policy_dir, world_dir,
                                                                                  tmp_path):
    from safetensors.torch import load_file

    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=3, save_every=1))
    rollout = agent.rollout

    def diverging_rollout(obs):  # the weights go bad during iteration 2, after the checkpoint of iteration 1
        batch = rollout(obs)
        if agent.iteration == 1:
            with torch.no_grad():
                agent.policy.lm_head.weight[0, 0] = float("nan")
        return batch

    agent.rollout = diverging_rollout
    with pytest.raises(ValueError, match="non-finite loss.*iteration 2.*last good checkpoint"):
        agent.train()
    checkpoint = tmp_path / "ppo" / "checkpoint"
    assert '"iteration": 1' in (checkpoint / "state.json").read_text()
    assert all(torch.isfinite(v).all() for v in load_file(checkpoint / "model.safetensors").values())
    assert not (tmp_path / "ppo" / "final").exists()


def test_resuming_into_a_directory_of_another_run_is_refused(tiny_policy_dir, world_dir, tmp_path):
    killed = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=3, save_every=1,
                                  eval_every=2))
    killed.evaluate = lambda: 1 / 0  # dies at iteration 2, after the checkpoint at 1
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        killed.train()
    with pytest.raises(ValueError, match="different run .it differs in lr."):
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=3, lr=1e-4)).train()


def test_a_finished_run_is_refused_unless_asked_for_more_iterations(tiny_policy_dir, world_dir, tmp_path):
    done = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=2, save_every=1))
    done.train()
    with pytest.raises(ValueError, match="finished run .result.json.; ask for more than its 2 steps to extend it"):
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=2, save_every=1))
    more = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=4, save_every=1))
    more.train()  # continues from the finished run's last iteration
    assert more.iteration == 4
    log = list(csv.DictReader(open(tmp_path / "ppo" / "train.csv")))
    assert [row["step"] for row in log] == ["1", "2", "3", "4"]
    assert json.loads((tmp_path / "ppo" / "result.json").read_text())["total_steps"] == 4
    changed = [not torch.equal(a, b) for a, b in zip(done.policy.parameters(), more.policy.parameters())]
    assert any(changed)  # two more iterations of updates
    PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "no-checkpoint", iterations=1)).train()
    with pytest.raises(ValueError, match="kept no checkpoint to extend from"):
        PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "no-checkpoint", iterations=2))


@pytest.mark.parametrize("bf16", [False, True])
def test_an_rm_initialised_critic_trains_and_starts_at_ratio_one(tiny_policy_dir, tokenizer, world_dir, tmp_path,
                                                                 bf16):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=128, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", reward=str(tmp_path / "rm"),
                                 advantage="gae", value_model="rm", iterations=1, ppo_epochs=1, bf16=bf16))
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    batch.pop("next_obs")
    assert batch["old_values"].abs().sum() > 0  # the critic's own forward, not a zero-initialised head
    before = [p.clone() for p in agent.value.parameters()]
    stats = agent.update(batch)
    assert abs(stats["first_minibatch_approx_kl"]) < 1e-6
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.value.parameters()))  # the critic learns


def test_packing_changes_no_metric_or_weight_of_a_run_with_a_critic(tiny_policy_dir, tokenizer, world_dir,
                                                                     tmp_path):
    """Minibatches of random rows share no prompts, so their forwards pack (``rlhf_env.packing``): the policy's,
    and the separate critic's, in the rollout and the update. Two iterations end where the padded forwards
    end, to float32 rounding; a spy checks that both models were packed."""
    from unittest import mock

    from transformers import GPT2Config, GPT2ForSequenceClassification

    from rlhf_env import packing

    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=128, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, resid_pdrop=0,
                        embd_pdrop=0, attn_pdrop=0)
    torch.manual_seed(0)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    runs, packed = [], []
    plain_hidden = packing.packed_hidden

    def spy(model, *args, **kwargs):
        out = plain_hidden(model, *args, **kwargs)
        packed.append((type(model).__name__, out is not None))
        return out

    for below in (packing.PACK_BELOW, 0.0):
        with mock.patch.object(packing, "PACK_BELOW", below), mock.patch.object(packing, "packed_hidden", spy), \
                mock.patch("rlhf_env.sampling.packed_hidden", spy):
            agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / str(below), reward=str(tmp_path / "rm"),
                                         advantage="gae", value_model="rm", group_size=1, max_new_tokens=12,
                                         kl_coef=0.1, ppo_epochs=2))
            runs.append(two_iterations(agent))
    (with_packing, packed_weights), (padded, padded_weights) = runs
    assert {("GPT2LMHeadModel", True), ("GPT2ForSequenceClassification", True)} <= set(packed)
    assert padded[1]["kl"] > 0.01 and padded[0]["approx_kl"] > 1e-4  # the policy moved, the reference term is live
    for a, b in zip(with_packing, padded):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for name, value in padded_weights.items():
        torch.testing.assert_close(packed_weights[name], value, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_non_gpt2_policy_trains_through_the_generic_path(tokenizer, world_dir, tmp_path, bf16):
    """Any HF causal LM: a tiny Llama (rotary positions, grouped-query attention, no GPT-2 fast decoder)
    samples through its own forward and cache, starts at ratio 1, and its final checkpoint reloads; also
    under bf16, with its attention switched to float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlhf_env.accel.decoder import GPT2Decoder
    from rlhf_env.models import load_policy, save_policy

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    llama = LlamaForCausalLM(config)
    assert not GPT2Decoder.supports(llama)
    save_policy(llama, tokenizer, tmp_path / "llama")
    agent = PPOAgent(PPOConfig(policy=str(tmp_path / "llama"), reward=n_chars, out=str(tmp_path / "ppo"),
                               data=str(world_dir), iterations=2, batch_size=8, group_size=4, minibatch_size=4,
                               ppo_epochs=1, max_new_tokens=8, eval_every=0, eval_episodes=4, final_eval_episodes=4,
                               save_every=0, bf16=bf16))
    assert (agent.policy.config._attn_implementation == "rlhf_sdpa_float32") == bf16
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    batch.pop("next_obs")
    assert abs(agent.update(batch)["first_minibatch_approx_kl"]) < 1e-9
    agent.train()
    model, _ = load_policy(tmp_path / "ppo" / "final")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, llama.model.layers[0].mlp.up_proj.weight)


def zero(prompts, responses):
    return [0.0] * len(responses)


def column(path, name):
    lines = path.read_text().split()
    i = lines[0].split(",").index(name)
    return [float(line.split(",")[i]) for line in lines[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_the_ptx_term_alone_lowers_the_pretraining_loss(tiny_policy_dir, world_dir, tmp_path, bf16):
    """A constant reward and no KL penalty make every advantage 0, so only PPO-ptx moves the policy: its
    web-text loss must fall (measured: 5.7 to 3.2 in 6 iterations; nothing else trains the policy here)."""
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", reward=zero, ptx_coef=1.0,
                                 iterations=6, bf16=bf16))
    agent.train()
    ptx = column(tmp_path / "ppo" / "train.csv", "ptx_loss")
    assert all(abs(a) < 1e-6 for a in column(tmp_path / "ppo" / "train.csv", "pg_loss"))
    assert sum(ptx[-2:]) / 2 < sum(ptx[:2]) / 2 - 1.0


def optimizer_steps(agent) -> int:
    return int(agent.optimizer.state[agent.training.params[0]]["step"])


@pytest.mark.parametrize("early_stop_kl", [0.0, 1e-12])
def test_an_iteration_stops_early_once_approx_kl_passes_the_limit(tiny_policy_dir, world_dir, tmp_path,
                                                                  early_stop_kl):
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", early_stop_kl=early_stop_kl))
    batch = agent.rollout(agent.env.reset(seed=0)[0])
    batch.pop("next_obs")
    stats = agent.update(batch)
    if early_stop_kl:  # the first step moves the policy, so the second minibatch is past any positive limit
        assert stats["early_stopped"] == 1.0 and optimizer_steps(agent) <= 2
    else:
        assert stats["early_stopped"] == 0.0 and optimizer_steps(agent) == 4 * 32 // 8  # epochs x minibatches


def test_the_adaptive_kl_coefficient_follows_the_measured_kl(tiny_policy_dir, world_dir, tmp_path):
    """Iteration 1 samples the reference itself (KL 0 < target: beta falls by the clipped 20% rate); once
    the policy has moved past the target, beta rises, and the env penalises with the current beta."""
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", kl_coef=0.1, target_kl=1e-3,
                                 iterations=3))
    agent.train()
    kl, coef = column(tmp_path / "ppo" / "train.csv", "kl"), column(tmp_path / "ppo" / "train.csv", "kl_coef")
    rate = 0.2 * 32 / 10_000  # clip * batch_size / kl_horizon
    assert kl[0] < 1e-3 and coef[0] == pytest.approx(0.1 * (1 - rate))
    assert kl[2] > 1.2e-3 and coef[2] == pytest.approx(coef[1] * (1 + rate))
    assert agent.env.unwrapped.kl_coef == pytest.approx(coef[1])  # the last rollout's beta


def test_an_unreadable_checkpoint_falls_back_to_the_one_before_it(tiny_policy_dir, world_dir, tmp_path):
    class Crash(Exception):
        pass

    killed = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=4, save_every=1,
                                  eval_every=3))
    killed.evaluate = lambda: (_ for _ in ()).throw(Crash("killed at iteration 3"))  # after checkpoints 1 and 2
    with pytest.raises(Crash, match="killed at iteration 3"):
        killed.train()
    checkpoint = tmp_path / "ppo" / "checkpoint"
    (checkpoint / "model.safetensors").write_bytes(b"not a safetensors file")  # e.g. a disk error
    resumed = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=4, save_every=1))
    with pytest.warns(RuntimeWarning, match="checkpoint .*checkpoint is unreadable .*trying the one before it"):
        resumed.train()
    rows = list(csv.DictReader(open(tmp_path / "ppo" / "train.csv")))
    assert [row["step"] for row in rows] == ["1", "2", "3", "4"]  # iteration 2 redone from checkpoint 1


def test_a_second_process_into_the_same_out_is_refused(tiny_policy_dir, world_dir, tmp_path):
    import subprocess

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "ppo").mkdir()
        (tmp_path / "ppo" / "run.lock").write_text(str(other.pid))  # as a live `rlhf ppo` leaves it
        with pytest.raises(ValueError, match=f"another process .pid {other.pid}. is running in"):
            PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=1))
    finally:
        other.kill()
        other.wait()
    agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / "ppo", iterations=1))  # a stale lock
    agent.train()
    assert not (tmp_path / "ppo" / "run.lock").exists()  # released


def two_iterations(agent) -> tuple[list[dict], dict]:
    """Two iterations from seed 0: their metrics (less the timings) and the weights after them (the policy's, and
    a value model's as ``value.*``)."""
    obs = agent.env.reset(seed=0)[0]
    metrics = []
    for _ in range(2):
        step, obs = agent.iterate(obs)
        metrics.append({k: v for k, v in step.items() if not k.startswith("time_")})
    value = {} if agent.value is None else {f"value.{k}": v for k, v in agent.value.state_dict().items()}
    return metrics, {k: v.clone() for k, v in {**agent.policy.state_dict(), **value}.items()}


def test_sharing_prompts_changes_no_metric_or_weight_of_a_run(tiny_policy_dir, world_dir, tmp_path):
    """A whole-batch step on groups of 4 (rows per prompt over ``SHARE_FROM``: the update shares each prompt,
    as do the env's reference forwards) ends where recomputing every prompt ends, to float32 rounding."""
    import math
    from unittest import mock

    from rlhf_env import sampling

    runs, shared_calls = [], []
    plain_forward = sampling.shared_prompt_forward

    def spy(*args, **kwargs):
        out = plain_forward(*args, **kwargs)
        shared_calls.append((args[0].training, out is not None))  # (the policy's update, shared)
        return out

    for share_from in (sampling.SHARE_FROM, math.inf):
        shares = sampling.shares if share_from < math.inf else lambda *args, **kwargs: False  # (the trunk's too)
        with mock.patch.object(sampling, "SHARE_FROM", share_from), mock.patch.object(sampling, "shares", shares), \
                mock.patch.object(sampling, "shared_prompt_forward", spy):
            agent = PPOAgent(tiny_config(tiny_policy_dir, world_dir, tmp_path / str(share_from), kl_coef=0.1,
                                         minibatch_size=32, ppo_epochs=2))
            runs.append(two_iterations(agent))
    (shared, shared_weights), (full, full_weights) = runs
    assert {(True, True), (False, True), (True, False)} <= set(shared_calls)  # update and env shared, then not
    assert full[1]["kl"] > 0.01 and full[0]["approx_kl"] > 1e-4  # the policy moved, the reference term is live
    for a, b in zip(shared, full):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
    for name, value in full_weights.items():
        torch.testing.assert_close(shared_weights[name], value, rtol=1e-5, atol=1e-5, msg=name)
