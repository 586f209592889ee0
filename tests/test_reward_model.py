"""The RM stage: the paper's ranking loss, one batch element per prompt, normalisation, learning."""

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from safetensors.torch import load_file

from rlhf_env.rewards import load_reward
from rlhf_env.rewards.classifier import classifier_logits
from rlhf_env.rewards.metrics import ranking_accuracy, score_comparisons, spearman
from rlhf_env.stages.reward_model import (
    RMConfig,
    new_reward_model,
    normalization,
    ranking_loss,
    ranking_pairs,
    raw_scores,
    rm_texts,
    same_length_pairs,
    train_reward_model,
)
from rlhf_env.world import lexicon as lx
from rlhf_env.world.build import save_world
from rlhf_env.world.labelers import make_mistake, make_panel, rank
from rlhf_env.world.tasks import FAMILIES


def log_sigmoid(x):
    return -math.log1p(math.exp(-x))


def test_ranking_loss_matches_a_hand_computation():
    # prompt 0: K=3, ranked 2 > 0 > 1; prompt 1: K=2, ranked 0 > 1
    rewards = torch.tensor([0.5, -1.0, 2.0, 0.3, 0.1])
    loss, accuracy = ranking_loss(rewards, [[2, 0, 1], [0, 1]])
    prompt0 = -(log_sigmoid(2.0 - 0.5) + log_sigmoid(2.0 + 1.0) + log_sigmoid(0.5 + 1.0)) / 3  # C(3,2) = 3
    prompt1 = -log_sigmoid(0.3 - 0.1)
    assert loss.item() == pytest.approx((prompt0 + prompt1) / 2, rel=1e-6)
    assert accuracy.item() == 1.0
    assert ranking_loss(-rewards, [[2, 0, 1], [0, 1]])[1].item() == 0.0


def test_ranking_pairs_are_all_pairs_of_each_prompt():
    winners, losers, group = ranking_pairs([[1, 0, 3, 2], [0, 1]])
    assert len(winners) == math.comb(4, 2) + 1
    assert (winners[:6].tolist(), losers[:6].tolist()) == ([1, 1, 1, 0, 0, 3], [0, 3, 2, 3, 2, 2])
    assert (winners[6].item(), losers[6].item(), group.tolist()) == (4, 5, [0] * 6 + [1])


class CountingModel(torch.nn.Module):
    """Counts forward calls and rows, to prove each completion takes exactly one forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls, self.rows = model, model.config, 0, 0

    def forward(self, **kwargs):
        self.calls += 1
        self.rows += kwargs["input_ids"].shape[0]
        return self.model(**kwargs)


def naive_pairwise_loss(model, tokenizer, rows):
    """The slow way: every pair is its own example with two forwards, averaged per prompt."""
    per_prompt = []
    for row in rows:
        terms = []
        for winner, loser in itertools.combinations(row["ranking"], 2):
            texts = [row["prompt"] + row["responses"][i] + tokenizer.eos_token for i in (winner, loser)]
            r_w, r_l = (classifier_logits(model, tokenizer, [text])[0, 0] for text in texts)
            terms.append(-torch.nn.functional.logsigmoid(r_w - r_l))
        per_prompt.append(torch.stack(terms).mean())
    return torch.stack(per_prompt).mean()


@pytest.fixture
def comparisons(world):
    """Ranked comparisons over world-made candidates: reference, mistaken, padded, truncated."""
    rng = np.random.default_rng(0)
    panel = make_panel(0)
    rows = []
    for row in world["prompts"]["rm"]:
        spec = json.loads(row["task"])
        ref = FAMILIES[spec["family"]].reference(spec["spec"])
        responses = list(dict.fromkeys(" " + r for r in
                                       (ref, make_mistake(rng, ref), ref + " " + lx.FILLERS[1], "sorry")))
        rows.append({"prompt": row["prompt"], "task": row["task"], "customer_id": row["customer_id"],
                     "responses": responses, "eos": [True] * len(responses),
                     "ranking": rank(rng, panel[0], row["task"], responses), "labeler_id": 0})
    return rows


def test_each_completion_takes_one_forward_and_the_loss_equals_the_naive_pairwise_one(
        comparisons, tiny_policy_dir):
    model, tokenizer = new_reward_model(str(tiny_policy_dir))
    model.eval()
    batch = comparisons[:3]
    counting = CountingModel(model)
    rewards = classifier_logits(counting, tokenizer, rm_texts(batch, tokenizer.eos_token))[:, 0]
    loss, _ = ranking_loss(rewards, [row["ranking"] for row in batch])
    assert counting.calls == 1 and counting.rows == sum(len(row["responses"]) for row in batch)
    torch.testing.assert_close(loss, naive_pairwise_loss(model, tokenizer, batch), rtol=1e-5, atol=1e-6)


def test_score_is_read_at_the_last_token_whatever_the_padding(tiny_policy_dir):
    model, tokenizer = new_reward_model(str(tiny_policy_dir))
    model.eval()
    eos = tokenizer.eos_token
    texts = ["Q: hi\nA: yes" + eos, "Q: a much longer prompt than the first\nA: no" + eos]
    with torch.no_grad():
        batched = classifier_logits(model, tokenizer, texts)[:, 0]
        alone = torch.cat([classifier_logits(model, tokenizer, [t])[:, 0] for t in texts])
        ids = tokenizer(texts[0], return_tensors="pt")["input_ids"]
        at_eos = model.score(model.transformer(ids).last_hidden_state[0, -1])  # the EOS position
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone[0], at_eos[0], rtol=1e-5, atol=1e-5)


def test_normalisation_gives_mean_zero_std_one_on_its_reference_set(comparisons, tiny_policy_dir):
    model, tokenizer = new_reward_model(str(tiny_policy_dir))
    texts = rm_texts(comparisons[:20], tokenizer.eos_token)
    raw = raw_scores(model, tokenizer, texts)
    gain, bias = normalization(raw)
    scores = gain * raw + bias
    assert abs(scores.mean()) < 1e-6 and scores.std() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.slow
def test_a_few_rm_epochs_raise_held_out_accuracy(comparisons, world_dir, tiny_policy_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(world_dir, data)

    save_world({"comparisons": DatasetDict({"train": Dataset.from_list(comparisons[:80]),
                                            "test": Dataset.from_list(comparisons[80:])})}, data)
    model, tokenizer = new_reward_model(str(tiny_policy_dir))

    def accuracy(m, rows):
        scores = raw_scores(m, tokenizer, rm_texts(rows, tokenizer.eos_token))
        bounds = np.cumsum([0] + [len(r["responses"]) for r in rows])
        return ranking_accuracy(rows, [scores[a:b] for a, b in zip(bounds, bounds[1:])])[0]

    held_out = comparisons[80:]  # comparisons the RM never trained on
    before = accuracy(model, held_out), accuracy(model, comparisons[:80])
    state = train_reward_model(RMConfig(policy=str(tiny_policy_dir), kind="scalar", data=str(data),
                                        out=str(tmp_path / "rm"), epochs=8, lr=3e-3, batch_size=8))
    trained = load_reward(str(tmp_path / "rm" / "final"))
    after = accuracy(trained.model, held_out), accuracy(trained.model, comparisons[:80])
    print(len(held_out), before, after, state.get("test_accuracy"))
    assert set(state["normalization"]) == {"reward_gain", "reward_bias"}
    assert trained.append_eos and trained.gain == pytest.approx(state["normalization"]["reward_gain"])


@pytest.mark.slow
def test_the_likelihood_rm_fit_learns_the_rankings_and_normalises_on_the_test_set(comparisons, world_dir,
                                                                                   tiny_policy_dir, tmp_path):
    """The weights are fitted to the training rankings (the loss ends below a constant reward's, log 2 per
    pair), held-out accuracy beats chance, and the shipped reward scores the test completions N(0, 1)."""
    data = tmp_path / "data"
    shutil.copytree(world_dir, data)
    save_world({"comparisons": DatasetDict({"train": Dataset.from_list(comparisons[:80]),
                                            "test": Dataset.from_list(comparisons[80:])})}, data)
    state = train_reward_model(RMConfig(policy=str(tiny_policy_dir), kind="likelihood", data=str(data),
                                        out=str(tmp_path / "rm")))
    assert state["train_loss"] < math.log(2) - 0.05 and state["test_accuracy"] > 0.6
    reward = load_reward(str(tmp_path / "rm" / "final"))
    scores = np.concatenate(score_comparisons(reward, comparisons[80:]))
    assert abs(scores.mean()) < 1e-4 and scores.std() == pytest.approx(1.0, rel=1e-3)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([0.5, 0.5, 2], [0, 1, 2])[0, 1])


def test_same_length_pairs_keeps_the_pairs_of_responses_of_equal_length():
    pairs = ranking_pairs([[1, 0, 3, 2], [0, 1]])  # prompt 0: four responses; prompt 1: two
    lengths = torch.tensor([5.0, 9.0, 4.0, 5.0, 3.0, 3.0])
    winners, losers, group = same_length_pairs(pairs, lengths)
    # prompt 0's pairs (1,0) (1,3) (1,2) (0,3) (0,2) (3,2): only (0,3) is of equal lengths; the winner is longer
    # in each of the other five
    assert (winners.tolist(), losers.tolist(), group.tolist()) == ([0, 4], [3, 5], [0, 1])


def lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, rows, name, **kwargs):
    data = tmp_path / f"data-{name}"
    shutil.copytree(world_dir, data, dirs_exist_ok=True)
    save_world({"comparisons": DatasetDict({"train": Dataset.from_list(rows[:80]),
                                            "test": Dataset.from_list(rows[80:])})}, data)
    config = RMConfig(policy=str(tiny_policy_dir), kind="likelihood", data=str(data), out=str(tmp_path / name),
                      weight_decay=0.0, **kwargs)
    return train_reward_model(config), load_file(tmp_path / name / "final" / "model.safetensors")


def test_training_the_likelihood_rms_lm_fits_the_rankings_better_than_its_weights_alone(
        comparisons, world_dir, tiny_policy_dir, tmp_path):
    """--lm_epochs trains the LM through the ranking loss: the training loss ends well below the frozen LM's
    best fit, and the LM's weights move; its run keeps the trainer's logs under OUT/lm."""
    frozen, before = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "frozen")
    trained, after = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "trained", lm_epochs=4.0,
                                   lm_lr=1e-3, lm_pairs="all")
    assert trained["train_loss"] < frozen["train_loss"] - 0.1
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert (tmp_path / "trained" / "lm" / "train.csv").exists()
    reward = load_reward(str(tmp_path / "trained" / "final"))  # the shipped form: normalised on the test set
    scores = np.concatenate(score_comparisons(reward, comparisons[80:]))
    assert abs(scores.mean()) < 1e-4 and scores.std() == pytest.approx(1.0, rel=1e-3)


def test_same_length_pairs_give_the_lm_nothing_to_learn_where_every_pair_differs_in_length(
        world, world_dir, tiny_policy_dir, tmp_path):
    """With --lm_pairs same_length, comparisons whose responses all differ in length leave the LM as it was
    (no weight decay here); with all pairs, the same training moves it."""
    rng = np.random.default_rng(0)
    panel = make_panel(0)
    rows = []
    for row in world["prompts"]["rm"]:
        ref = " " + FAMILIES[json.loads(row["task"])["family"]].reference(json.loads(row["task"])["spec"])
        responses = [ref, ref + " " + lx.FILLERS[1], ref + " " + lx.FILLERS[1] + " " + lx.FILLERS[2]]
        rows.append({"prompt": row["prompt"], "task": row["task"], "customer_id": row["customer_id"],
                     "responses": responses, "eos": [True] * 3,
                     "ranking": rank(rng, panel[0], row["task"], responses), "labeler_id": 0})
    policy = load_file(tiny_policy_dir / "model.safetensors")
    _, same = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, rows, "same", lm_epochs=1.0, lm_lr=1e-3,
                            lm_pairs="same_length")
    _, every = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, rows, "all", lm_epochs=1.0, lm_lr=1e-3,
                             lm_pairs="all")
    assert all(torch.equal(policy[k], same[k]) for k in policy)
    assert any(not torch.equal(policy[k], every[k]) for k in policy)


def test_same_length_pairs_train_the_lm_where_some_pairs_are_of_equal_length(comparisons, world_dir,
                                                                              tiny_policy_dir, tmp_path):
    """The comparisons' reference and mistaken answers are mostly of one length: --lm_pairs same_length learns
    from those pairs, its training loss falling below the frozen LM's on the same pairs."""
    equal = sum(len(same_length_pairs(ranking_pairs([row["ranking"]]),
                                      torch.tensor([len(r.split()) for r in row["responses"]]).float())[0])
                for row in comparisons[:80])
    assert equal >= 20  # enough equal-length pairs to learn from (counted in words, a proxy for tokens)
    _, policy = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "frozen")
    state, trained = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "same", lm_epochs=4.0,
                                   lm_lr=1e-3)  # same_length: the default
    assert any(not torch.equal(policy[k], trained[k]) for k in policy)
    log = (tmp_path / "same" / "lm" / "train.csv").read_text().splitlines()
    header, first, last = log[0].split(","), log[1].split(","), log[-1].split(",")
    loss = header.index("loss")
    assert float(last[loss]) < float(first[loss]) - 0.05


def test_an_rm_run_refuses_the_lm_run_of_another_rm_in_its_directory(comparisons, world_dir, tiny_policy_dir,
                                                                     tmp_path, monkeypatch):
    """An LM run that crashed at its third step left a checkpoint: the same RM resumes it, another RM (here
    other pairs) is refused by the checkpoint's fingerprint."""
    from rlhf_env.rewards.likelihood import LikelihoodRewardModel

    features, calls = LikelihoodRewardModel.features, []

    def crashing(self, *args, grad=False):
        calls.append(grad)
        if calls.count(True) == 3:
            raise KeyboardInterrupt("a crash at the LM's third step")
        return features(self, *args, grad=grad)

    monkeypatch.setattr(LikelihoodRewardModel, "features", crashing)
    with pytest.raises(KeyboardInterrupt, match="third step"):
        lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "rm", lm_epochs=1.0, lm_lr=1e-3,
                      save_every=1)
    monkeypatch.setattr(LikelihoodRewardModel, "features", features)
    with pytest.raises(ValueError, match="differs in lm_pairs"):
        lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "rm", lm_epochs=1.0, lm_lr=1e-3,
                      save_every=1, lm_pairs="all")
    state, _ = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "rm", lm_epochs=1.0, lm_lr=1e-3,
                             save_every=1)
    assert state["lm_pairs"] == "same_length"


def test_a_crash_after_the_lm_run_reuses_its_trained_lm(comparisons, world_dir, tiny_policy_dir, tmp_path,
                                                        monkeypatch):
    """A crash in the refit that follows the LM's training: the rerun takes OUT/lm's trained LM instead of training
    it again, and ends with the RM of a run that never crashed; an RM of other settings is refused it."""
    from rlhf_env.stages import reward_model as module

    whole, expected = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path / "whole", comparisons, "rm", lm_epochs=1.0,
                                    lm_lr=1e-3)
    fit, loops, fits = module.fit_weights, [], []

    def crashing_fit(*args, **kwargs):
        fits.append(1)
        if len(fits) == 2:
            raise KeyboardInterrupt("a crash in the refit")
        return fit(*args, **kwargs)

    from rlhf_env.training import trainer

    started = trainer.Run  # a run that trains: a reused or refused one returns or raises before it starts
    monkeypatch.setattr(trainer, "Run", lambda *args, **kwargs: loops.append(1) or started(*args, **kwargs))
    monkeypatch.setattr(module, "fit_weights", crashing_fit)
    with pytest.raises(KeyboardInterrupt, match="in the refit"):
        lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "rm", lm_epochs=1.0, lm_lr=1e-3)
    monkeypatch.setattr(module, "fit_weights", fit)
    with pytest.raises(ValueError, match=r"holds a finished run of other settings \(they differ in \['lr'\]\)"):
        lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "rm", lm_epochs=1.0, lm_lr=2e-3)
    state, resumed = lm_trained_rm(world_dir, tiny_policy_dir, tmp_path, comparisons, "rm", lm_epochs=1.0,
                                   lm_lr=1e-3)
    assert len(loops) == 1  # the LM trained once, before the crash
    assert state["weight"] == whole["weight"] and state["length_weight"] == whole["length_weight"]
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)


@pytest.mark.parametrize("kwargs, message", [
    ({"lm_pairs": "equal"}, "lm_pairs must be one of"),
    ({"kind": "dpo"}, "kind must be one of"),
    ({"kind": "scalar", "lm_epochs": 1.0}, "needs --kind likelihood"),
    ({"lm_epochs": -1.0}, "lm_epochs must be >= 0"),
    ({"lm_lr": 0.0}, "lm_lr must be > 0"),
])
def test_rm_config_refuses_bad_lm_training_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RMConfig(**kwargs)
