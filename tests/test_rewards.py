"""The reward protocol and its adapters: float64 (B,) from every adapter, clear errors otherwise."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

from rlhf_env.rewards import CallableReward, EnsembleReward, NormalizedReward, RewardError, check_scores, load_reward
from rlhf_env.rewards.classifier import SequenceClassifierReward
from rlhf_env.rewards.gold import GoldReward
from rlhf_env.world.grader import grade

PROMPTS = ["Q: what is 3 plus 4 ?\nA:", "Q: sort : fig apple .\nA:", "Q: hi\nA:"]
RESPONSES = [" 3 plus 4 is 7 .", " apple fig . i hope this helps .", " hello"]


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def test_check_scores_accepts_numbers_and_returns_float64():
    out = check_scores([1, 2.5, 3], 3)
    assert out.dtype == np.float64 and out.shape == (3,)
    assert check_scores(torch.tensor([1.0, 2.0]), 2).dtype == np.float64


@pytest.mark.parametrize("bad, message", [
    (lambda p, r: [float("nan")] * len(r), "non-finite"),
    (lambda p, r: [[1.0]] * len(r), r"shape \(3, 1\); expected \(3,\)"),
    (lambda p, r: [1.0], r"shape \(1,\)"),
    (lambda p, r: ["good"] * len(r), "non-numeric"),
    (lambda p, r: [[1.0], [1.0, 2.0], []], "not an array of numbers"),
])
def test_a_bad_callable_raises_a_clear_error(bad, message):
    with pytest.raises(RewardError, match=message):
        CallableReward(bad, name="bad")(PROMPTS, RESPONSES)


def test_mismatched_batch_is_an_error():
    with pytest.raises(ValueError, match="3 prompts, 2 responses and 2 eos flags"):
        CallableReward(length)(PROMPTS, RESPONSES[:2])


def test_callable_adapter_returns_float64_batch():
    out = load_reward(length)(PROMPTS, RESPONSES)
    assert out.dtype == np.float64 and out.shape == (3,)
    np.testing.assert_array_equal(out, [len(r) for r in RESPONSES])


def test_ensemble_modes():
    a, b = CallableReward(lambda p, r: [1.0, 4.0, 0.0]), CallableReward(lambda p, r: [3.0, 0.0, 0.0])
    np.testing.assert_allclose(EnsembleReward([a, b], "mean")(PROMPTS, RESPONSES), [2.0, 2.0, 0.0])
    np.testing.assert_allclose(EnsembleReward([a, b], "min")(PROMPTS, RESPONSES), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(EnsembleReward([a, b], "mean_minus_std", k=0.5)(PROMPTS, RESPONSES),
                               [2.0 - 0.5, 2.0 - 1.0, 0.0])
    with pytest.raises(ValueError, match="unknown ensemble mode"):
        EnsembleReward([a], "median")


def test_normalized_reward_scores_its_reference_responses_n01_and_others_on_the_same_scale():
    raw = CallableReward(lambda p, r: [1000.0 * len(x) + 7 for x in r], name="chars")
    norm = NormalizedReward.fit(raw, PROMPTS, RESPONSES)
    scores = norm(PROMPTS, RESPONSES)
    assert scores.mean() == pytest.approx(0, abs=1e-12) and scores.std() == pytest.approx(1)
    lengths = np.array([len(r) for r in RESPONSES])
    # Another response: the same affine map, so one more character is worth 1 / std(lengths).
    assert norm(PROMPTS[:1], [RESPONSES[0] + "x"])[0] - scores[0] == pytest.approx(1 / lengths.std())
    assert norm.name == "normalised(chars)"
    from_callable = NormalizedReward.fit(length, PROMPTS, RESPONSES)  # a plain function works too
    np.testing.assert_allclose(from_callable(PROMPTS, RESPONSES), scores)


def test_normalized_reward_refuses_a_constant_reward_or_a_bad_scale():
    with pytest.raises(ValueError, match="same score"):
        NormalizedReward.fit(CallableReward(lambda p, r: [2.0] * len(r)), PROMPTS, RESPONSES)
    with pytest.raises(ValueError, match="std > 0"):
        NormalizedReward(CallableReward(length), mean=0.0, std=0.0)


def test_gold_adapter_scores_world_prompts_and_rejects_unknown_ones(world, world_dir):
    rows = world["prompts"]["heldout"].select(range(5))
    reward = load_reward("gold", data=str(world_dir))
    responses = [" i do not know ."] * 5
    out = reward(list(rows["prompt"]), responses)
    assert out.dtype == np.float64 and out.shape == (5,)
    np.testing.assert_allclose(out, [grade(t, r).score for t, r in zip(rows["task"], responses)])
    with pytest.raises(KeyError, match="knows no task"):
        GoldReward(str(world_dir))(["Q: not a world prompt\nA:"], [" x"])


@pytest.fixture
def foreign_classifier(tmp_path):
    """A sequence classifier with its own word-level tokenizer, unlike the policy's byte BPE."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(PROMPTS + RESPONSES, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64, num_labels=3,
                        pad_token_id=tokenizer.pad_token_id)
    model = GPT2ForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    return tmp_path / "clf", model, tokenizer


def test_foreign_classifier_scores_through_its_own_tokenizer(foreign_classifier, tokenizer):
    path, model, clf_tokenizer = foreign_classifier
    assert len(clf_tokenizer) != len(tokenizer)  # not the policy's tokenizer
    reward = SequenceClassifierReward(str(path), label=2, transform="sigmoid", batch_size=2)
    out = reward(PROMPTS, RESPONSES)
    assert out.dtype == np.float64 and out.shape == (3,)
    with torch.no_grad():  # each text alone, unpadded: the logits at its last token
        want = [torch.sigmoid(model(**clf_tokenizer(p + r, return_tensors="pt")).logits[0, 2]).item()
                for p, r in zip(PROMPTS, RESPONSES)]
    np.testing.assert_allclose(out, want, rtol=1e-5)


def llama_classifier(tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, num_labels=2,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama", model, tokenizer


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("kind", ["gpt2-word-level", "llama-bpe"])
def test_a_classifier_runs_each_prompt_of_a_group_once_with_the_same_scores(foreign_classifier, tokenizer, tmp_path,
                                                                           kind, chunked, monkeypatch):
    """Three responses per prompt, interleaved (texts of different lengths, EOS appended or not): the shared
    forward ran (a spy on the trunk counts its rows; ``chunked``: the rests in chunks of similar lengths) and
    every score is the text's alone. A text whose tokens do not start with its prompt's (the word runs across the
    boundary) goes through one joint forward instead."""
    import rlhf_env.rewards.classifier as classifier
    from rlhf_env import sampling

    monkeypatch.setattr(sampling, "CHUNK_COST", 0 if chunked else 10 ** 6)

    path, model, clf_tokenizer = foreign_classifier if kind == "gpt2-word-level" else llama_classifier(tokenizer,
                                                                                                       tmp_path)
    reward = SequenceClassifierReward(str(path), label=1, append_eos=kind == "llama-bpe")
    prompts, responses = [p for _ in range(3) for p in PROMPTS], [r for r in RESPONSES for _ in range(3)]
    eos = [i % 2 == 0 for i in range(len(prompts))]
    trunk_rows = []
    reward.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: trunk_rows.append(len(kwargs.get("input_ids", args[0] if args else None))),
        with_kwargs=True)
    got = reward(prompts, responses, eos)
    # the distinct prompts, then every text's rest (in chunks)
    assert trunk_rows[0] == len(PROMPTS) and sum(trunk_rows[1:]) == len(prompts)
    assert (len(trunk_rows) > 2) == chunked
    end = clf_tokenizer.eos_token if kind == "llama-bpe" else ""
    with torch.no_grad():  # each text alone, unpadded: the logit at its last token
        want = [model(**clf_tokenizer(p + r + (end if e else ""), return_tensors="pt")).logits[0, 1].item()
                for p, r, e in zip(prompts, responses, eos)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    trunk_rows.clear()
    heads = [p[:5] for p in prompts]  # cut inside the prompt's second word: its tokens are no prefix of the text's
    rests = [p[5:] + r for p, r in zip(prompts, responses)]
    texts = [p + r for p, r in zip(prompts, responses)]
    assert classifier.shared_prompt_logits(reward.model, clf_tokenizer, texts, heads, 64) is None
    got = reward(heads, rests, [False] * len(prompts))
    assert trunk_rows == [len(prompts)]  # one joint forward
    with torch.no_grad():
        want = [model(**clf_tokenizer(t, return_tensors="pt")).logits[0, 1].item() for t in texts]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Nor where a text would be truncated, or holds the PAD token, which HF's pooling skips
    assert classifier.shared_prompt_logits(reward.model, clf_tokenizer, texts, prompts, 64) is not None
    for changed in (texts[0] + " 7" * 64, texts[0] + " " + clf_tokenizer.pad_token + " 7"):
        assert classifier.shared_prompt_logits(reward.model, clf_tokenizer, [changed] + texts[1:], prompts, 64) is None


def test_a_gpt2_classifier_whose_trunk_runs_the_c_attention_shares_prompts_on_the_real_tokens(tokenizer, tmp_path,
                                                                                               monkeypatch):
    """An accelerated GPT-2 classifier (heads of 16): each prompt of a group once, through the package's trunk and
    its C attention with no cache (a spy counts the trunk's own forwards: only the packing check's), and every
    score the text's alone."""
    from unittest import mock

    from transformers import GPT2Config, GPT2ForSequenceClassification

    from rlhf_env.accel import accelerate, native, trunk
    from rlhf_env.packing import packs

    if native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=2,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2ForSequenceClassification(config).eval().save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    reward = SequenceClassifierReward(str(tmp_path / "clf"), label=1)
    accelerate(reward.model, requested=True)
    monkeypatch.setattr(trunk, "c_packed_attention", lambda config: True)
    prompts, responses = [p for _ in range(3) for p in PROMPTS], [r for r in RESPONSES for _ in range(3)]
    assert packs(reward.model)  # (checked once per model, by running its trunk)
    own = []
    reward.model.base_model.register_forward_pre_hook(lambda *args: own.append(1))
    with mock.patch.object(trunk, "hidden_at", wraps=trunk.hidden_at) as spy:
        got = reward(prompts, responses)
    assert spy.call_count == 1 and own == []
    layout = spy.call_args.args[1]
    assert len(layout.groups) == len(PROMPTS) + 1 and layout.index.shape == (len(prompts), 1)
    model = GPT2ForSequenceClassification.from_pretrained(tmp_path / "clf").eval()  # not accelerated
    with torch.no_grad():
        want = [model(**tokenizer(p + r, return_tensors="pt")).logits[0, 1].item() for p, r in zip(prompts, responses)]
    assert np.std(want) > 1e-3  # the texts' scores differ: a mixed-up row would show
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_classifier_rejects_a_bad_label_or_transform(foreign_classifier):
    path = str(foreign_classifier[0])
    with pytest.raises(ValueError, match="label 3 out of range"):
        SequenceClassifierReward(path, label=3)
    with pytest.raises(ValueError, match="unknown transform"):
        SequenceClassifierReward(path, transform="tanh")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rm", "rm-scalar"])
def test_bundled_reward_models_agree_with_held_out_labelers_well_above_chance(name):
    """float64 (B,) batches, and real judgement: on the ~3.5k held-out labeler pairs a random RM scores
    0.50 +- 0.01, the labelers agree with each other about 0.7 of the time, and the bundled `rm` gives up some
    of that agreement so as not to learn their length bias (the shipped ones' accuracy: `rlhf eval-rm`)."""
    from rlhf_env.models import DATA_DIR
    from rlhf_env.rewards.metrics import ranking_accuracy, score_comparisons
    from rlhf_env.world.build import load_split

    rows = load_split(DATA_DIR, "comparisons", "test").to_list()
    reward = load_reward(name)
    scores = score_comparisons(reward, rows)
    assert all(s.dtype == np.float64 and s.shape == (len(r["responses"]),) for s, r in zip(scores, rows))
    accuracy, n_pairs = ranking_accuracy(rows, scores)
    assert n_pairs > 3000 and accuracy > 0.57


def test_correctness_accuracy_tells_a_length_reward_from_a_checking_one():
    """On held-out customers' comparisons: the gold grader orders every correct/incorrect pair right,
    a reward that counts words orders them by length only."""
    from rlhf_env.models import DATA_DIR
    from rlhf_env.rewards.metrics import correctness_accuracy, score_comparisons
    from rlhf_env.world.build import load_split
    from rlhf_env.world.grader import grade, tokenize

    rows = load_split(DATA_DIR, "comparisons", "heldout_customers").to_list()[:300]
    grades = [[grade(row["task"], r, e) for r, e in zip(row["responses"], row["eos"])] for row in rows]
    gold = correctness_accuracy(rows, score_comparisons(load_reward("gold"), rows), grades)
    assert all(n > 50 for _, n in gold.values())
    assert gold["longer"][0] > 0.9 and gold["same_length"][0] > 0.9 and gold["shorter"][0] > 0.9

    def words(prompts, responses, eos=None):
        return [len(tokenize(r)) for r in responses]

    length = correctness_accuracy(rows, score_comparisons(load_reward(words), rows), grades)
    assert length["longer"][0] == 1.0 and length["same_length"][0] == 0.5 and length["shorter"][0] == 0.0


@pytest.mark.slow
def test_the_bundled_rm_ranks_correct_over_incorrect_where_length_cannot_tell():
    """On held-out customers' comparisons, at equal length (where a length-only reward ties, 0.5) and where
    the correct answer is shorter (where it scores 0), the bundled RM must check the answer."""
    from rlhf_env.models import DATA_DIR
    from rlhf_env.rewards.metrics import correctness_accuracy, score_comparisons
    from rlhf_env.world.build import load_split
    from rlhf_env.world.grader import grade

    rows = load_split(DATA_DIR, "comparisons", "heldout_customers").to_list()
    grades = [[grade(row["task"], r, e) for r, e in zip(row["responses"], row["eos"])] for row in rows]
    accuracy = correctness_accuracy(rows, score_comparisons(load_reward("rm"), rows), grades)
    assert accuracy["same_length"][1] > 200 and accuracy["shorter"][1] > 200
    assert accuracy["same_length"][0] > 0.75 and accuracy["shorter"][0] > 0.7


@pytest.mark.slow
def test_the_bundled_rm_does_not_pay_for_an_appended_pleasantry():
    """A policy can append a predictable pleasantry to any answer. A mean log-prob rises with it (the hack
    PPO found against the mean-and-sum RM); the bundled RM, a weighted sum of log-probs, must not: it
    prefers the padded SFT sample only where the padding also makes the EOS much likelier."""
    from rlhf_env.models import DATA_DIR
    from rlhf_env.world import lexicon as lx
    from rlhf_env.world.build import load_split

    rows = [row for row in load_split(DATA_DIR, "comparisons", "heldout_customers").to_list()[:200]]
    prompts = [row["prompt"] for row in rows]
    answers = [row["responses"][0] for row in rows]
    rng = np.random.default_rng(0)
    padded = [a + " " + lx.FILLERS[int(rng.integers(len(lx.FILLERS)))] for a in answers]
    rm = load_reward("rm")
    assert np.mean(rm(prompts, padded) > rm(prompts, answers)) < 0.02
    plain, pad = (rm.model.features(prompts, r, [True] * len(r)) for r in (answers, padded))
    mean_log_prob = (pad[:, 0] / pad[:, 1] > plain[:, 0] / plain[:, 1]).float().mean().item()
    assert mean_log_prob > 0.1  # the failure this guards against is real on these answers


def test_the_likelihood_rm_round_trips_and_drops_its_length_term(tiny_policy_dir, tmp_path):
    """Saved as safetensors + JSON and loaded back: the same rewards; the length weight fitted with the
    labelers' rankings does not reach the reward."""
    from rlhf_env.models import load_policy, save_policy
    from rlhf_env.rewards.likelihood import LikelihoodReward, LikelihoodRewardModel

    lm, tokenizer = load_policy(str(tiny_policy_dir))
    model = LikelihoodRewardModel(lm, tokenizer)
    with torch.no_grad():
        model.weight.fill_(0.7)
        model.length_weight.fill_(5.0)
    model.gain, model.bias = 2.0, 0.5
    save_policy(model, tokenizer, tmp_path / "rm")
    prompts, responses = ["Q: what is 1 plus 2 ?\nA:"] * 2, [" 1 plus 2 is 3 .", " 1 plus 2 is 3 . i hope this helps ."]
    loaded = load_reward(str(tmp_path / "rm"))
    assert isinstance(loaded, LikelihoodReward)
    expected = LikelihoodReward(model)(prompts, responses)
    np.testing.assert_allclose(loaded(prompts, responses), expected, rtol=1e-5)
    features = model.features(prompts, responses, [True, True])
    np.testing.assert_allclose(expected, 2.0 * 0.7 * features[:, 0].numpy() + 0.5, rtol=1e-5)
    plain, fitted = loaded.score_with_length_term(prompts, responses, [True, True])  # one forward, both ways
    np.testing.assert_allclose(fitted, 2.0 * (0.7 * features[:, 0].numpy() + 5.0 * features[:, 1].numpy()) + 0.5,
                               rtol=1e-5)  # the model of the labelers keeps the length term
    np.testing.assert_allclose(plain, expected, rtol=1e-5)  # and the reward still drops it


@pytest.mark.slow
def test_eval_rm_measures_the_bundled_rm_with_and_without_its_length_term():
    """The labelers prefer longer answers; the bundled RM's fitted length term models that preference and its
    reward drops it. So its accuracy against the labelers is higher with the term, on both held-out sets; a
    reward with no such term (gold) reports none."""
    from rlhf_env.rewards.metrics import RMEvalConfig, evaluate_reward

    rm = evaluate_reward(RMEvalConfig(rm="rm", best_of_n=""))
    assert rm["n_pairs"] > 3000 and 0.65 < rm["labeler_agreement"] < 0.76
    assert rm["accuracy_with_length_term"] > rm["accuracy"] + 0.03
    assert rm["accuracy_heldout_labelers_with_length_term"] > rm["accuracy_heldout_labelers"] + 0.01
    assert "accuracy_with_length_term" not in evaluate_reward(RMEvalConfig(rm="gold", best_of_n=""))
    for suffix, accuracy in (("", rm["accuracy"]), ("_with_length_term", rm["accuracy_with_length_term"])):
        low, high = rm[f"agreement_gap_interval{suffix}"]
        assert low < rm["labeler_agreement"] - accuracy < high and high - low < 0.1


def test_the_gap_interval_resamples_whole_comparisons():
    """Identical rows leave nothing to resample: the interval is the gap itself. Rows that differ give an interval
    around the pooled gap (pairs summed over the drawn rows, not a mean of per-row gaps)."""
    from rlhf_env.rewards.metrics import gap_interval

    same = np.full(50, 3.0), np.full(50, 2.0), np.full(50, 5.0)
    assert gap_interval(*same) == pytest.approx((0.2, 0.2))
    assert gap_interval(same[0], same[0], same[2]) == (0.0, 0.0)
    rng = np.random.default_rng(0)
    pairs = rng.integers(6, 36, 200).astype(float)
    labelers, reward = np.floor(0.7 * pairs), np.floor(rng.uniform(0.4, 0.8, 200) * pairs)
    low, high = gap_interval(labelers, reward, pairs, seed=1)
    pooled = (labelers.sum() - reward.sum()) / pairs.sum()
    assert low < pooled < high and 0.01 < high - low < 0.1
    assert gap_interval(labelers, reward, pairs, seed=1) == (low, high)  # seeded


def test_a_missing_reward_path_names_a_reward_model():
    from rlhf_env.rewards import load_reward

    with pytest.raises(FileNotFoundError, match="no such reward model path: '/no/such/path'"):
        load_reward("/no/such/path")


@pytest.mark.parametrize("spec, kwargs, message", [
    ("rm", {"label": 1}, r"^reward 'rm' loads as LikelihoodReward, which takes no label \(label and transform are a "
                         r"sequence-classifier RM's: --reward_label, --reward_transform\)$"),
    ("gold", {"transform": "logit"}, r"^reward 'gold' loads as GoldReward, which takes no transform \(label"),
    (len, {"timeout": 3.0}, r"^reward 'len' loads as CallableReward, which takes no timeout$"),
])
def test_settings_a_reward_adapter_does_not_take_are_refused_by_name(spec, kwargs, message):
    from rlhf_env.rewards import load_reward

    with pytest.raises(ValueError, match=message):
        load_reward(spec, **kwargs)


def test_ppo_takes_a_classifiers_label_and_transform_from_its_config(foreign_classifier, tiny_policy_dir, world_dir,
                                                                    tmp_path):
    """`rlhf ppo --reward PATH --reward_label 2 --reward_transform log_softmax`: the env scores with that output."""
    from agents.ppo import PPOAgent, PPOConfig
    from rlhf_env.cli import build_parser, parse_config

    path, _, _ = foreign_classifier
    argv = ["--policy", str(tiny_policy_dir), "--reward", str(path), "--reward_label", "2", "--reward_transform",
            "log_softmax", "--data", str(world_dir), "--out", str(tmp_path / "ppo"), "--batch_size", "8",
            "--minibatch_size", "8", "--group_size", "4"]
    agent = PPOAgent(parse_config(build_parser("ppo"), argv))
    reward = agent.env.unwrapped.reward
    assert (reward.label, reward.transform) == (2, "log_softmax")
    scores = reward(PROMPTS, RESPONSES)
    assert (scores < 0).all()  # log-probabilities of label 2
    assert PPOAgent(PPOConfig(policy=str(tiny_policy_dir), reward=str(path), data=str(world_dir),
                              out=str(tmp_path / "plain"), batch_size=8, minibatch_size=8,
                              group_size=4)).env.unwrapped.reward.label == 0


@pytest.mark.parametrize("trunk", [True, False])
@pytest.mark.parametrize("copies", [1, 3])
def test_the_likelihood_rm_features_are_the_response_log_probs_of_a_full_forward(tiny_policy_dir, copies, trunk,
                                                                                monkeypatch):
    """The features keep only the response end's logits: the same sums as a full forward and a per-row
    log-prob of every response token, for responses of different lengths, with and without EOS, and empty;
    rows left-padded whole, and (prompts shared) in a prompt and a response block: through HF's cache from each
    prompt 3 times, through the package's trunk and its C attention (``trunk``) from one prompt twice."""
    from rlhf_env.accel import native
    from rlhf_env.accel import trunk as packed_trunk
    from rlhf_env.models import load_policy
    from rlhf_env.rewards.likelihood import LikelihoodRewardModel

    if trunk and native.library() is None:
        pytest.skip("no C compiler to build the kernels")
    monkeypatch.setattr(packed_trunk, "c_packed_attention", lambda config: trunk)
    lm, tokenizer = load_policy(str(tiny_policy_dir))
    model = LikelihoodRewardModel(lm, tokenizer)
    prompts = ["Q: what is 1 plus 2 ?\nA:", "Q: sort : pear apple .\nA:", "Q: hi\nA:", "Q: hi\nA:"] * copies
    responses = [" 1 plus 2 is 3 . i hope this helps .", " apple pear .", "", " hello"] * copies
    eos = [True, False, False, True] * copies
    whole_rows = bool(model.encode(prompts, responses, eos)[1][:, -1].all())  # every row ends at the right edge
    assert whole_rows == (copies == 1 and not trunk)
    features = model.features(prompts, responses, eos)
    for i, (p, r, e) in enumerate(zip(prompts, responses, eos)):
        prompt = tokenizer(p)["input_ids"]
        response = tokenizer(r)["input_ids"] + ([tokenizer.eos_token_id] if e else [])
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1].float(), -1)
        want = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(response))
        assert features[i, 1].item() == len(response)
        assert features[i, 0].item() == pytest.approx(want, abs=1e-4)
