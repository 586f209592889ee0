"""Gold-graded evaluation of policies on the world's prompts (held-out customers by default).

``rlhf eval --policy A --baseline B`` samples one response per prompt from each policy and lets the
gold grader judge them: ``win_rate`` is the fraction of prompts where A's response scores higher
than B's, ties counted half.

Because ties count half, no policy can reach a win rate of 1: where B's response is already perfect,
the best A can do is tie. ``win_rate_ceiling`` is the win rate that the world's reference answers
(gold 1.0) would get against B's responses on the same prompts, the most any policy A could score.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import asdict

import numpy as np
import torch

from rlhf_env.configs import EvalConfig
from rlhf_env.models import load_policy, load_tokenizer, resolve
from rlhf_env.sampling import sample
from rlhf_env.world.build import load_split
from rlhf_env.world.grader import Grade, grade
from rlhf_env.world.tasks import reference_answer


def eval_prompts(data: str, split: str, episodes: int, seed: int):
    prompts = load_split(data, "prompts", split)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    return prompts.shuffle(seed=seed).select(range(min(episodes, len(prompts))))


def sample_and_grade(model, tokenizer, rows, seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 48,
                     batch_size: int = 125):
    """For each batch of rows: ``(batch, samples, gold grades)``, one sampled response per prompt."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        out = sample(model, tokenizer, list(batch["prompt"]), max_new_tokens, temperature, generator)
        yield batch, out, [grade(task, text, bool(eos)) for task, text, eos in zip(batch["task"], out.texts, out.eos)]


def generate_and_grade(model, tokenizer, rows, seed: int = 0, temperature: float = 1.0,
                       max_new_tokens: int = 48, batch_size: int = 125) -> tuple[list[str], list[Grade], list[int]]:
    """Sample a response to each row's prompt; return texts, gold grades and token lengths."""
    out = sample_and_measure(model, tokenizer, rows, seed, temperature, max_new_tokens, batch_size=batch_size)
    return out["texts"], out["grades"], out["lengths"]


def summarize(grades: list[Grade], lengths: list[int]) -> dict[str, float]:
    parts = {k: float(np.mean([getattr(g, k) for g in grades])) for k in asdict(grades[0])}
    return {"gold": parts.pop("score"), "success": float(np.mean([g.success for g in grades])), **parts,
            "length": float(np.mean(lengths))}


def win_rate(a: list[Grade], b: list[Grade]) -> float:
    sa, sb = np.array([g.score for g in a]), np.array([g.score for g in b])
    return float(np.mean(np.where(np.isclose(sa, sb), 0.5, (sa > sb).astype(float))))  # ties (to rounding) half


def reference_grades(tasks) -> list[Grade]:
    """Gold grades of the world's reference answer to each task (JSON strings or dicts)."""
    return [grade(task, reference_answer(task)) for task in tasks]


def win_rate_ceiling(tasks, b: list[Grade]) -> float:
    """The most any policy can win against grades ``b`` on these tasks: the reference answers' win rate."""
    return win_rate(reference_grades(tasks), b)


@torch.no_grad()
def sample_and_measure(model, tokenizer, rows, seed: int, temperature: float, max_new_tokens: int, reward=None,
                       reference=None, batch_size: int = 125) -> dict:
    """``model`` sampled on ``rows`` as ``rlhf eval --seed SEED`` samples it (the same batches), graded by gold;
    with ``reward``, its mean score; with a ``reference`` policy, its mean KL to it (nats per response, at
    ``temperature``). Returns the texts, grades and lengths, and the means (``gold``, ``success``, ``length``,
    ``eos_frac``, ``rm_score``, ``kl``)."""
    from rlhf_env.sampling import response_logprobs

    texts, grades, lengths, kls, scores, eos = [], [], [], [], [], []
    for batch, s, batch_grades in sample_and_grade(model, tokenizer, rows, seed, temperature, max_new_tokens,
                                                    batch_size):
        if reference is not None:
            ids = torch.cat([s.prompt_ids, s.response_ids], 1)
            mask = torch.cat([s.prompt_mask, s.response_mask], 1)
            ref_logprobs = response_logprobs(reference, ids, mask, s.response_ids.shape[1], temperature)[0]
            kls += ((s.logprobs - ref_logprobs) * s.response_mask).sum(1).tolist()
        if reward is not None:
            scores += reward(list(batch["prompt"]), s.texts, s.eos.cpu().numpy()).tolist()
        texts += s.texts
        grades += batch_grades
        lengths += s.lengths.tolist()
        eos += s.eos.tolist()
    summary = summarize(grades, lengths)
    return {"texts": texts, "lengths": lengths, "grades": grades, "gold": summary["gold"],
            "success": summary["success"], "length": summary["length"],
            "rm_score": float(np.mean(scores)) if scores else float("nan"), "kl": float(np.mean(kls)) if kls else 0.0,
            "eos_frac": float(np.mean(eos))}


class HeldOutJudge:
    """A policy in training against its frozen reference on held-out customers' prompts: gold win rate (and
    ``win_rate_ceiling``, the most any policy could get), and gold, task success, reward, KL to the reference,
    length and EOS fraction of both (``ref_*``: the reference's). The reference is sampled and graded once
    per number of episodes; both are sampled as ``rlhf eval --seed SEED`` would, so a final table matches
    ``rlhf eval --policy OUT/final --baseline REFERENCE``."""

    METRICS = ("gold", "success", "rm_score", "kl", "length", "eos_frac")

    def __init__(self, reference, tokenizer, data: str, seed: int = 0, temperature: float = 1.0,
                 max_new_tokens: int = 48, split: str = "heldout"):
        self.reference, self.tokenizer, self.data, self.seed = reference, tokenizer, data, seed
        self.temperature, self.max_new_tokens, self.split = temperature, max_new_tokens, split
        self._reference: dict[int, dict] = {}

    def __call__(self, policy, episodes: int, reward) -> dict[str, float]:
        rows = eval_prompts(self.data, self.split, episodes, self.seed)
        args = (self.tokenizer, rows, self.seed, self.temperature, self.max_new_tokens, reward)
        ours = sample_and_measure(policy, *args, reference=self.reference)
        if len(rows) not in self._reference:  # the reference is frozen: its KL to itself is 0
            ref = sample_and_measure(self.reference, *args)
            self._reference[len(rows)] = {**ref, "ceiling": win_rate_ceiling(rows["task"], ref["grades"])}
        ref = self._reference[len(rows)]
        return {"win_rate_vs_reference": win_rate(ours["grades"], ref["grades"]), "win_rate_ceiling": ref["ceiling"],
                **{k: ours[k] for k in self.METRICS}, **{f"ref_{k}": ref[k] for k in self.METRICS if k != "kl"}}


def respond(policy, rows, seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 48, batch_size: int = 125,
            device: str = "cpu") -> tuple[list[str], list[Grade], list[int]]:
    """Responses of any policy to ``rows``' prompts, gold grades and lengths in tokens (EOS included), whatever
    the policy is: a bundled name, path or hub id; an in-memory ``(model, tokenizer)``; an SB3 model (or policy)
    of ``agents.sb3``, judged by its LM; or a callable ``fn(prompts) -> responses`` (an agent of your own,
    best-of-n). A callable may return ``(responses, eos)`` to say which responses ended; plain responses count
    as ended. Its lengths are counted with the bundled tokenizer."""
    if isinstance(policy, (str, os.PathLike)):
        policy = load_policy(policy, device)
    for holder in (policy, getattr(policy, "policy", None)):  # an SB3 model holds its policy in .policy
        if hasattr(holder, "lm") and hasattr(holder, "tokenizer"):
            policy = (holder.lm, holder.tokenizer)
            break
    if isinstance(policy, tuple):
        model, tokenizer = policy
        return generate_and_grade(model, tokenizer, rows, seed, temperature, max_new_tokens, batch_size)
    texts, eos = call_policy(policy, list(rows["prompt"]))
    return texts, *grade_responses(rows, texts, eos)


def call_policy(policy, prompts: list[str]) -> tuple[list[str], list[bool]]:
    """A callable policy's responses to ``prompts`` and whether each ended (plain responses count as ended),
    checked: one string per prompt."""
    if not callable(policy):
        raise TypeError(f"a policy is a name or path, a (model, tokenizer) pair or a callable prompts -> responses; "
                        f"got {type(policy).__name__}")
    out = policy(prompts)
    texts, eos = out if isinstance(out, tuple) else (out, [True] * len(prompts))
    texts, eos = list(texts), [bool(e) for e in eos]
    if len(texts) != len(prompts) or len(eos) != len(prompts) or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"the policy returned {len(texts)} responses (and {len(eos)} EOS flags) for {len(prompts)} "
                         "prompts; it must return one string per prompt")
    return texts, eos


def grade_responses(rows, texts: list[str], eos: list[bool]) -> tuple[list[Grade], list[int]]:
    """Gold grades of responses to ``rows``' tasks, and their lengths in bundled-tokenizer tokens (EOS included)."""
    tokenizer = load_tokenizer("sft")
    lengths = [len(tokenizer(t)["input_ids"]) + int(e) for t, e in zip(texts, eos)]
    return [grade(task, t, e) for task, t, e in zip(rows["task"], texts, eos)], lengths


def policy_name(policy) -> str:
    if isinstance(policy, (str, os.PathLike)):
        return str(policy)
    lm_name = getattr(getattr(policy, "policy", None), "lm_name", None)  # an SB3 model of agents.sb3
    return f"{type(policy).__name__}({lm_name})" if lm_name else getattr(policy, "name", type(policy).__name__)


def evaluate(config: EvalConfig) -> dict:
    for policy in (config.policy, config.baseline):  # fail fast on a bad name, before anything loads
        if isinstance(policy, (str, os.PathLike)):
            resolve(policy)
    rows = eval_prompts(config.data, config.split, config.episodes, config.seed)
    temperatures = {"a": config.temperature,
                    "b": config.temperature if config.baseline_temperature is None else config.baseline_temperature}
    results = {side: respond(policy, rows, config.seed, temperatures[side], config.max_new_tokens, config.batch_size,
                             config.device)
               for side, policy in (("a", config.policy), ("b", config.baseline))}
    (texts_a, grades_a, len_a), (texts_b, grades_b, len_b) = results["a"], results["b"]
    summary_a, summary_b = summarize(grades_a, len_a), summarize(grades_b, len_b)
    by_family = defaultdict(list)
    for i, family in enumerate(rows["family"]):
        by_family[family].append(i)
    families = {
        f: {"n": len(ix), "win_rate": win_rate([grades_a[i] for i in ix], [grades_b[i] for i in ix]),
            "success_a": float(np.mean([grades_a[i].success for i in ix])),
            "success_b": float(np.mean([grades_b[i].success for i in ix]))}
        for f, ix in sorted(by_family.items())
    }
    return {
        "policy": policy_name(config.policy), "baseline": policy_name(config.baseline), "split": config.split,
        "seed": config.seed,
        "temperature_a": temperatures["a"], "temperature_b": temperatures["b"],
        "n": len(rows), "win_rate": win_rate(grades_a, grades_b),
        "win_rate_ceiling": win_rate_ceiling(rows["task"], grades_b),
        **{f"{k}_a": v for k, v in summary_a.items()}, **{f"{k}_b": v for k, v in summary_b.items()},
        "families": families,
        "examples": [{"prompt": rows[i]["prompt"], "a": texts_a[i], "b": texts_b[i]} for i in range(min(3, len(rows)))],
    }
