"""Best-of-n, and any policy object judged by `evaluate`: a callable, a (model, tokenizer) pair, a path."""

import numpy as np
import pytest

from agents.best_of_n import BestOfN
from rlhf_env.evaluation import EvalConfig, evaluate
from rlhf_env.world.tasks import reference_answer


def brevity(prompts, responses):
    return [-len(r) for r in responses]


def test_best_of_n_answers_with_the_highest_scoring_of_its_samples(tiny_model, tokenizer):
    prompts = ["Q: what is 3 plus 4 ?\nA:", "Q: sort : fig apple .\nA:", "Q: hi\nA:"]
    texts, eos, scores = BestOfN((tiny_model, tokenizer), brevity, n=6, max_new_tokens=12, seed=3).candidates(prompts)
    assert scores.shape == (3, 6) and len({t for row in texts for t in row}) > 6  # real, varied samples
    picked, picked_eos = BestOfN((tiny_model, tokenizer), brevity, n=6, max_new_tokens=12, seed=3)(prompts)
    for row, row_eos, answer, ended in zip(texts, eos, picked, picked_eos):
        j = int(np.argmin([len(t) for t in row]))  # the shortest is what brevity prefers
        assert len(answer) == len(row[j]) and ended == bool(row_eos[[len(t) for t in row].index(len(answer))])
    with pytest.raises(ValueError, match="n must be >= 1"):
        BestOfN((tiny_model, tokenizer), brevity, n=0)


def test_evaluate_takes_a_callable_or_a_model_in_memory(tiny_model, tokenizer, tiny_policy_dir, world_dir):
    """A callable that answers with the world's reference answers wins exactly the ceiling; a (model, tokenizer)
    pair is judged exactly like the same model loaded from its path."""
    from rlhf_env.world.build import load_split

    tasks = dict(zip(*(load_split(world_dir, "prompts", "heldout")[c] for c in ("prompt", "task"))))

    def oracle(prompts):
        return [" " + reference_answer(tasks[p]) for p in prompts]

    config = dict(baseline=str(tiny_policy_dir), data=str(world_dir), episodes=30, max_new_tokens=12)
    perfect = evaluate(EvalConfig(policy=oracle, **config))
    assert perfect["win_rate"] == perfect["win_rate_ceiling"] and perfect["gold_a"] == 1.0
    assert perfect["policy"] == "function"
    in_memory = evaluate(EvalConfig(policy=(tiny_model, tokenizer), **config))
    from_path = evaluate(EvalConfig(policy=str(tiny_policy_dir), **config))
    assert in_memory["win_rate"] == from_path["win_rate"] and in_memory["gold_a"] == from_path["gold_a"]
    with pytest.raises(ValueError, match="returned 1 responses .* for 30 prompts"):
        evaluate(EvalConfig(policy=lambda prompts: ["x"], **config))
    with pytest.raises(TypeError, match="a policy is a name or path"):
        evaluate(EvalConfig(policy=42, **config))


@pytest.mark.slow
def test_best_of_n_against_the_bundled_rm_buys_gold_monotonically_in_n():
    """On the shipped assets the bundled rm checks answers, so picking by it buys gold (no training), the more
    the more samples it picks from."""
    config = dict(baseline="sft", episodes=200)
    results = {n: evaluate(EvalConfig(policy=BestOfN("sft", "rm", n=n), **config)) for n in (1, 2, 4, 8, 16)}
    gold = [r["gold_a"] for r in results.values()]
    assert all(a < b for a, b in zip(gold, gold[1:])), gold
    assert results[8]["win_rate"] > 0.58 and results[8]["win_rate"] > results[1]["win_rate"] + 0.08
    assert results[8]["policy"] == "best-of-8(sft, rm)"
