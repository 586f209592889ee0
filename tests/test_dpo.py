"""DPO (agents/dpo.py): the loss against a hand computation, ties at init, the response log-probs (prompt
masked, EOS only where emitted), the frozen reference computed once, learning, resume and refusals."""

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

import agents.dpo as dpo_module
from agents.dpo import (
    TIE,
    DPOConfig,
    batched_logprobs,
    chunked_logprobs,
    completion_logprobs,
    dpo,
    dpo_loss,
    encode_comparisons,
    example_pairs,
)
from rlhf_env.cli import main
from rlhf_env.models import load_policy
from rlhf_env.stages.reward_model import ranking_pairs
from rlhf_env.stages.sft import demonstration_examples
from rlhf_env.world import lexicon as lx
from rlhf_env.world.build import save_world
from rlhf_env.world.labelers import make_mistake, make_panel, rank
from rlhf_env.world.tasks import FAMILIES
from tests.conftest import learning_log


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def test_dpo_loss_matches_a_hand_computation():
    gen = torch.Generator().manual_seed(0)
    policy = -10 * torch.rand(5, generator=gen, dtype=torch.float64)
    reference = -10 * torch.rand(5, generator=gen, dtype=torch.float64)
    rankings = [[2, 0, 1], [1, 0]]  # prompt 0: K=3, 2 > 0 > 1; prompt 1: K=2 (completions 3, 4), 4 > 3
    beta = 0.3
    loss, metrics = dpo_loss(policy, reference, ranking_pairs(rankings), beta)
    p, r = policy.tolist(), reference.tolist()

    def term(w, lo):  # -log sigmoid(beta * difference of the log-ratios)
        return -log_sigmoid(beta * ((p[w] - r[w]) - (p[lo] - r[lo])))

    prompt0 = (term(2, 0) + term(2, 1) + term(0, 1)) / 3
    prompt1 = term(4, 3)
    assert loss.item() == pytest.approx((prompt0 + prompt1) / 2, rel=1e-12)
    reward = [beta * (a - b) for a, b in zip(p, r)]
    pairs = [(2, 0), (2, 1), (0, 1), (4, 3)]
    assert metrics["chosen_reward"].item() == pytest.approx(np.mean([reward[w] for w, _ in pairs]), rel=1e-12)
    assert metrics["rejected_reward"].item() == pytest.approx(np.mean([reward[lo] for _, lo in pairs]), rel=1e-12)
    assert metrics["margin"].item() == pytest.approx(np.mean([reward[w] - reward[lo] for w, lo in pairs]), rel=1e-12)
    assert metrics["accuracy"].item() == np.mean([reward[w] > reward[lo] for w, lo in pairs])


def test_the_loss_at_init_is_log_2_and_ties_count_half():
    gen = torch.Generator().manual_seed(1)
    logps = -20 * torch.rand(7, generator=gen)
    pairs = ranking_pairs([[0, 1, 2, 3], [2, 0, 1]])
    loss, metrics = dpo_loss(logps, logps.clone(), pairs, beta=0.1)  # policy == reference
    assert loss.item() == torch.nn.functional.logsigmoid(torch.tensor(0.0)).neg().item()
    assert loss.item() == pytest.approx(math.log(2), rel=1e-7)
    assert metrics["accuracy"].item() == 0.5 and metrics["margin"].item() == 0.0
    # Rounding-sized differences are still ties; one right, one wrong and one tie make 0.5 too.
    noisy = logps + TIE / 4 * torch.randn(7, generator=gen)
    assert dpo_loss(noisy, logps, pairs, beta=0.1)[1]["accuracy"].item() == 0.5
    reference = torch.tensor([-1.0, -2.0, -4.0, -3.0])
    policy = reference + torch.tensor([0.0, -1.0, -1.0, 2.0])  # log-ratios 0, -1, -1, 2
    # pairs (0,1) (0,2) right, (1,2) a tie, (0,3) (1,3) (2,3) wrong
    accuracy = dpo_loss(policy, reference, ranking_pairs([[0, 1, 2, 3]]), beta=1.0)[1]["accuracy"].item()
    assert accuracy == pytest.approx((1 + 1 + 0.5) / 6)


def test_responses_are_tokenised_as_sft_and_the_env_do_with_eos_only_where_emitted(world, tokenizer):
    demos = world["demonstrations"]["train"].select(range(3))
    rows = [{"prompt": d["prompt"], "responses": [" " + d["response"], " " + d["response"] + " and"],
             "eos": [True, False], "ranking": [1, 0]} for d in demos]
    examples, left_out = encode_comparisons(rows, tokenizer)
    assert left_out == 0 and [ex["ranking"] for ex in examples] == [[1, 0]] * 3
    for ex, (ids, _), row in zip(examples, demonstration_examples(demos, tokenizer), rows):
        assert ex["prompt"] + ex["responses"][0] == ids  # the SFT example: prompt, " " + response, EOS
        assert ex["responses"][0][-1] == tokenizer.eos_token_id
        assert ex["responses"][1] == tokenizer(row["responses"][1])["input_ids"]  # no EOS: it was not emitted
        assert tokenizer.eos_token_id not in ex["responses"][1]


def test_completions_over_the_limits_are_left_out_and_the_ranking_follows(tokenizer):
    short, long = " yes .", " " + "word " * 60
    rows = [{"prompt": "Q: a ?\nA:", "responses": [long, short, " no ."], "eos": [True] * 3, "ranking": [0, 2, 1]},
            {"prompt": "Q: b ?\nA:", "responses": [long, short], "eos": [True, True], "ranking": [1, 0]}]
    examples, left_out = encode_comparisons(rows, tokenizer, max_prompt_tokens=64, max_new_tokens=48)
    assert left_out == 3 and len(examples) == 1  # the long ones, and the second row's lone survivor
    assert examples[0]["ranking"] == [1, 0]  # " no ." (now 1) above " yes ." (now 0)
    assert encode_comparisons(rows, tokenizer, max_prompt_tokens=2)[0] == []


def test_response_logprob_masks_the_prompt_and_counts_eos_only_where_emitted(tiny_model, tokenizer):
    rows = [{"prompt": "Q: what is 2 plus 3 ?\nA:", "responses": [" 2 plus 3 is 5 .", " 5"], "eos": [True, False],
             "ranking": [0, 1]},
            {"prompt": "Q: hi ! reverse : door jam oven .\nA:", "responses": [" oven jam door .", " door"],
             "eos": [False, True], "ranking": [0, 1]}]
    examples, _ = encode_comparisons(rows, tokenizer)
    prompts = [ex["prompt"] for ex in examples for _ in ex["responses"]]
    responses = [r for ex in examples for r in ex["responses"]]
    with torch.no_grad():
        batched = completion_logprobs(tiny_model, prompts, responses, tokenizer.pad_token_id)

        def alone(p, r):  # one unpadded sequence; sum over the response's positions only
            logp = torch.log_softmax(tiny_model(input_ids=torch.tensor([p + r])).logits[0, :-1], -1)
            return sum(logp[len(p) - 1 + t, tok].item() for t, tok in enumerate(r)), logp

        for i, (p, r) in enumerate(zip(prompts, responses)):
            expected, logp = alone(p, r)
            assert batched[i].item() == pytest.approx(expected, abs=1e-4)
            whole = sum(logp[t, tok].item() for t, tok in enumerate((p + r)[1:]))  # prompt not masked
            assert abs(whole - expected) > 1e-2
        for chunk in (1, 3):  # sorted by length, chunked, and put back in the input order
            torch.testing.assert_close(chunked_logprobs(tiny_model, prompts, responses, tokenizer.pad_token_id, chunk),
                                       batched, rtol=0, atol=1e-4)
        # The eos=False response scores without EOS: adding it subtracts exactly -log p(EOS | prompt, response).
        p, r = prompts[1], responses[1]
        with_eos = completion_logprobs(tiny_model, [p], [r + [tokenizer.eos_token_id]], tokenizer.pad_token_id)
        eos_logp = alone(p, r + [tokenizer.eos_token_id])[1][len(p) + len(r) - 1, tokenizer.eos_token_id].item()
        assert with_eos.item() == pytest.approx(batched[1].item() + eos_logp, abs=1e-4)


def make_comparisons(world) -> list[dict]:
    """Ranked comparisons over world-made candidates: reference, mistaken, padded, refusal, and the reference
    cut off without EOS; ranked by one labeler (who knows the gold answers)."""
    rng = np.random.default_rng(0)
    labeler = make_panel(0)[0]
    rows = []
    for row in world["prompts"]["rm"]:
        spec = json.loads(row["task"])
        ref = FAMILIES[spec["family"]].reference(spec["spec"])
        candidates = {" " + ref: True, " " + make_mistake(rng, ref): True, " " + ref + " " + lx.FILLERS[1]: True,
                      " sorry": True, " " + " ".join(ref.split()[:2]): False}
        responses, eos = list(candidates), list(candidates.values())
        rows.append({"prompt": row["prompt"], "task": row["task"], "customer_id": row["customer_id"],
                     "responses": responses, "eos": eos, "ranking": rank(rng, labeler, row["task"], responses, eos),
                     "labeler_id": 0})
    return rows


def make_data_dir(world_dir, comparisons, data):
    """A copy of the world whose comparisons are ``comparisons``: the first 80 to train on, the rest to test."""
    shutil.copytree(world_dir, data)
    save_world({"comparisons": DatasetDict({"train": Dataset.from_list(comparisons[:80]),
                                            "test": Dataset.from_list(comparisons[80:])})}, data)
    return data


@pytest.fixture
def comparisons(world):
    return make_comparisons(world)


@pytest.fixture
def data_dir(world_dir, comparisons, tmp_path):
    return make_data_dir(world_dir, comparisons, tmp_path / "data")


def held_in_accuracy(policy, reference, comparisons) -> float:
    """The fraction of the training rankings' pairs whose winner has the higher log pi - log pi_ref (ties half),
    counted here pair by pair, apart from ``dpo_loss``."""
    model, tokenizer = load_policy(str(policy))
    ref, _ = load_policy(str(reference))
    examples, _ = encode_comparisons(comparisons[:80], tokenizer)
    scores = []
    for ex, lp, lr in zip(examples, batched_logprobs(model, examples, tokenizer.pad_token_id),
                          batched_logprobs(ref, examples, tokenizer.pad_token_id)):
        ratio = np.array(lp) - np.array(lr)
        scores += [0.5 if ratio[w] == ratio[lo] else float(ratio[w] > ratio[lo])
                   for w, lo in itertools.combinations(ex["ranking"], 2)]
    return float(np.mean(scores))


@pytest.mark.slow
def test_dpo_learns_the_held_in_preferences(data_dir, comparisons, tiny_policy_dir, tmp_path):
    """At init every implicit reward is 0 (accuracy exactly 0.5); a short run ranks most held-in pairs right, and
    the test split's metrics are in result.json."""
    assert held_in_accuracy(tiny_policy_dir, tiny_policy_dir, comparisons) == 0.5  # every implicit reward is 0
    config = DPOConfig(policy=str(tiny_policy_dir), data=str(data_dir), out=str(tmp_path / "dpo"), beta=0.5,
                       epochs=8, batch_size=8, lr=3e-3, evals=2)
    result = dpo(config)
    after = held_in_accuracy(tmp_path / "dpo" / "final", tiny_policy_dir, comparisons)
    print(after, result)
    assert after > 0.8
    assert result["train_prompts"] == 80 and result["steps"] == 80
    assert json.loads((tmp_path / "dpo" / "result.json").read_text()) == result
    assert 0 <= result["test_accuracy"] <= 1 and math.isfinite(result["test_loss"])


def test_the_reference_is_a_frozen_model_whose_logprobs_are_computed_once(data_dir, comparisons, tiny_policy_dir,
                                                                           tmp_path, monkeypatch):
    """With a separate reference, its forward passes are those of one pass over the train and test completions,
    whatever the number of steps; the policy takes the steps' and the evaluations'."""
    models = {}
    real_load = dpo_module.load_policy

    def counting_load(name, *args, **kwargs):
        model, tokenizer = real_load(name, *args, **kwargs)
        forward = model.forward

        def counted(*a, **k):
            models[name]["calls"] += 1
            return forward(*a, **k)

        model.forward = counted
        models[name] = {"model": model, "calls": 0}
        return model, tokenizer

    monkeypatch.setattr(dpo_module, "load_policy", counting_load)
    reference = tmp_path / "reference"
    shutil.copytree(tiny_policy_dir, reference)
    config = DPOConfig(policy=str(tiny_policy_dir), reference=str(reference), data=str(data_dir),
                       out=str(tmp_path / "o"), epochs=2, batch_size=16, evals=2, forward_batch_size=128)
    result = dpo(config)
    n_train, n_test = (sum(len(row["responses"]) for row in rows) for rows in (comparisons[:80], comparisons[80:]))
    assert models[str(reference)]["calls"] == math.ceil(n_train / 128) + math.ceil(n_test / 128)
    assert not any(p.requires_grad for p in models[str(reference)]["model"].parameters())
    assert result["steps"] == 10  # 2 epochs of 80 prompts, 16 per step
    assert models[str(tiny_policy_dir)]["calls"] >= 10 + 2 * math.ceil(n_test / 128)  # the steps, 2 evaluations


def test_a_killed_run_resumes_to_the_uninterrupted_result_and_a_finished_one_is_refused(
        data_dir, tiny_policy_dir, tmp_path, monkeypatch, capsys):
    settings = dict(policy=str(tiny_policy_dir), data=str(data_dir), epochs=2, batch_size=16, lr=3e-3, beta=0.5,
                    save_every=4, log_every=1, evals=0)
    dpo(DPOConfig(out=str(tmp_path / "full"), **settings))
    full, _ = load_policy(str(tmp_path / "full" / "final"))

    class Crash(Exception):
        pass

    def crash(*args, **kwargs):
        raise Crash("killed at the evaluation")

    with monkeypatch.context() as patch:  # crash at the step-7 evaluation, after the step-4 checkpoint
        patch.setattr(dpo_module, "evaluate_pairs", crash)
        with pytest.raises(Crash, match="killed at the evaluation"):
            dpo(DPOConfig(out=str(tmp_path / "killed"), eval_every=7, **settings))
    assert (tmp_path / "killed" / "checkpoint" / "state.json").exists()
    assert not (tmp_path / "killed" / "result.json").exists()
    with pytest.raises(ValueError, match="different run .*differs in beta"):
        dpo(DPOConfig(out=str(tmp_path / "killed"), **{**settings, "beta": 0.1}))
    capsys.readouterr()
    result = dpo(DPOConfig(out=str(tmp_path / "killed"), **settings))
    assert "resuming" in (err := capsys.readouterr().err) and "from step 4 of 10" in err  # not a restart
    resumed, _ = load_policy(str(tmp_path / "killed" / "final"))
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    log, full_log = (learning_log(tmp_path / run / "train.csv") for run in ("killed", "full"))
    assert [int(row["step"]) for row in log] == list(range(1, 11))  # no step lost or logged twice
    assert log == full_log
    assert result == json.loads((tmp_path / "full" / "result.json").read_text())
    with pytest.raises(ValueError, match="holds a finished DPO run"):
        dpo(DPOConfig(out=str(tmp_path / "killed"), **settings))


@pytest.mark.parametrize("option, value, message", [
    ("beta", "0", "beta must be > 0, got 0.0"),
    ("lr", "-1", "lr must be > 0, got -1.0"),
    ("batch_size", "0", "batch_size must be a positive integer, got 0"),
    ("max_new_tokens", "0", "max_new_tokens must be a positive integer, got 0"),
    ("warmup_ratio", "2", "warmup_ratio must be in [0, 1], got 2.0"),
])
def test_a_bad_setting_is_one_line_before_anything_loads(option, value, message, capsys, monkeypatch):
    monkeypatch.setattr(dpo_module, "load_policy", lambda *a, **k: pytest.fail("a model loaded before the error"))
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DPOConfig(**{option: type(getattr(DPOConfig(), option))(value)})
    with pytest.raises(SystemExit, match="2"):
        main(["dpo", f"--{option}", value])
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(message)


def test_out_pointing_to_a_file_is_refused_before_anything_loads(tmp_path, monkeypatch):
    monkeypatch.setattr(dpo_module, "load_policy", lambda *a, **k: pytest.fail("a model loaded before the error"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        dpo(DPOConfig(out=str(tmp_path / "file")))


def test_example_pairs_are_every_pair_of_every_ranking():
    examples = [{"ranking": [2, 0, 1, 3]}, {"ranking": [1, 0]}]
    winners, losers, group = example_pairs(examples)
    assert len(winners) == math.comb(4, 2) + 1 and group.tolist() == [0] * 6 + [1]
    assert (winners[-1].item(), losers[-1].item()) == (5, 4)
