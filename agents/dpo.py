"""DPO (Rafailov et al. 2023): the policy learns from the ranked comparisons directly, with no reward model
and no sampling: the offline alternative to the RM + PPO stages.

DPO's policy defines an implicit reward ``r(x, y) = beta * (log pi(y | x) - log pi_ref(y | x))`` and fits it to
the labelers' preferences with the RM stage's loss: for a preferred response y_w and a worse one y_l,

    loss = -log sigmoid(r(x, y_w) - r(x, y_l))
         = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))]),

whose minimiser is the optimum of the KL-regularised RL objective (KL coefficient beta) for the reward that
the same loss would fit (the paper's section 4).

The data is the world's ``comparisons/train`` split: K = 4..9 responses per prompt, ranked best first by one
labeler. As in the RM stage (``rlhf_env.stages.reward_model``), every one of the C(K, 2) pairs of a ranking is
a preference, **one prompt is one batch element** (each of its K responses takes one forward pass), and the
loss averages the pairs of a prompt and then the prompts. A response's log-probability is the sum of its
tokens' log-probs given the prompt, the EOS token included only where the labelled sample emitted it (a
response cut off at the length limit gets none); prompt tokens are masked. Responses are stored as the policy
wrote them, with their leading space, so ``prompt ids + tokenizer(response) ids (+ EOS)`` are the ids the
SFT stage trains on (``prompt``, ``" " + demonstration``, EOS) and the env's policy samples.

The reference is frozen: its log-probs are computed once, before the first step, and cached with the
examples. Dropout is off in the policy, so before the first update the policy's log-probs equal the
reference's, every implicit reward is 0 and the loss is log 2 per pair. Training runs through the shared
``train_loop`` (progress bar, TensorBoard + CSV logs, checkpoints, exact resume, ``OUT/final``), and the
evaluations report the pair accuracy of the implicit reward on the held-out ``comparisons/test`` split (ties,
where the policy has not moved, count half). The result is an ordinary policy; its gold quality is for
``rlhf eval``::

    rlhf dpo --out runs/dpo
    rlhf eval --policy runs/dpo/final --baseline sft

The comparisons were labelled by simulated labelers with a spurious length bias (``rlhf world``), and DPO fits
their preferences, bias included: ``rlhf eval`` reports the policy's mean response length.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from agents.configs import DPOConfig
from rlhf_env import paths
from rlhf_env.models import context_length, load_policy
from rlhf_env.stages.reward_model import ranking_pairs
from rlhf_env.training import distributed, sharding
from rlhf_env.training.checkpoint import checkpoints
from rlhf_env.training.run import prepare
from rlhf_env.training.trainer import IGNORE, train_loop
from rlhf_env.world.build import load_split

TIE = 1e-4  # |log-ratio difference| (nats) under which a pair counts as a tie: float rounding, not a preference
RESULT = "result.json"  # written when a run finishes; its presence makes a rerun into the same --out refuse
TRAIN_CHUNK = 24  # completions per forward pass in a training step (a step's are sorted by length and chunked)
SETTINGS = "dpo.json"  # the settings a resumed run must share that the trainer's fingerprint does not cover


def encode_comparisons(rows: list[dict], tokenizer, max_prompt_tokens: int = 64, max_new_tokens: int = 48
                       ) -> tuple[list[dict], int]:
    """Token ids of comparison rows: one example per prompt, ``{"prompt": ids, "responses": [ids, ...],
    "ranking": [...]}``, each response's ids followed by EOS only if its ``eos`` flag is set.

    A completion over the limits (prompt over ``max_prompt_tokens``, response with its EOS over
    ``max_new_tokens``, or an empty one) is left out with its pairs, and a row left with fewer than two
    responses is dropped. Returns the examples and the number of completions left out.
    """
    eos_id = tokenizer.eos_token_id
    prompts = tokenizer([row["prompt"] for row in rows])["input_ids"] if rows else []
    flat = tokenizer([r for row in rows for r in row["responses"]])["input_ids"] if rows else []
    examples, left_out, start = [], 0, 0
    for row, prompt in zip(rows, prompts):
        K = len(row["responses"])
        responses = [ids + [eos_id] if eos else ids for ids, eos in zip(flat[start:start + K], row["eos"])]
        start += K
        fits = 1 <= len(prompt) <= max_prompt_tokens
        keep = [i for i, r in enumerate(responses) if fits and 1 <= len(r) <= max_new_tokens]
        left_out += K - len(keep)
        if len(keep) < 2:
            left_out += len(keep)
            continue
        index = {old: new for new, old in enumerate(keep)}
        examples.append({"prompt": prompt, "responses": [responses[i] for i in keep],
                         "ranking": [index[i] for i in row["ranking"] if i in index]})
    return examples, left_out


def completion_logprobs(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> torch.Tensor:
    """``log pi(response | prompt)``, (N,): the sum of the response tokens' log-probs, prompt masked.

    Sequences are right-padded (positions start at 0 on every row, as for a row alone); the response ids are
    scored exactly as given (EOS included if it is there). Gradients flow unless called under no_grad.
    """
    device = next(model.parameters()).device
    T = max(len(p) + len(r) for p, r in zip(prompts, responses))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    labels = torch.full((len(prompts), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        labels[i, len(p):len(p) + len(r)] = torch.tensor(r)
        mask[i, :len(p) + len(r)] = 1
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (N, T-1, V): position t predicts t+1
    targets = labels[:, 1:]
    token_logps = -torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                     targets.reshape(-1), ignore_index=IGNORE, reduction="none")
    return token_logps.view(targets.shape).sum(1)  # ignored (prompt, padding) positions contribute 0


def flatten(examples: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """Every completion of ``examples``, in example order: (prompt ids, response ids)."""
    return ([ex["prompt"] for ex in examples for _ in ex["responses"]],
            [r for ex in examples for r in ex["responses"]])


def chunked_logprobs(model, prompts: list[list[int]], responses: list[list[int]], pad_id: int, chunk: int
                     ) -> torch.Tensor:
    """``completion_logprobs`` in forward passes of at most ``chunk`` completions of similar lengths (far less
    padding than one pass: the bundled comparisons' batches are about 40% padding), in the input order. A sharded
    model makes as many passes as the rank that needs the most (``sharding.agree``): the extra ones score the
    shortest completion again, with zero weight."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(responses[i]))
    starts = list(range(0, len(order), chunk))
    passes = sharding.agree(len(starts), model)  # before any pass: the ranks' collectives come in one order
    parts = [completion_logprobs(model, [prompts[i] for i in order[s:s + chunk]],
                                 [responses[i] for i in order[s:s + chunk]], pad_id) for s in starts]
    for _ in range(passes - len(starts)):
        parts[0] = parts[0] + 0.0 * completion_logprobs(model, [prompts[order[0]]], [responses[order[0]]], pad_id)
    flat = torch.cat(parts)
    inverse = torch.empty(len(order), dtype=torch.long, device=flat.device)
    inverse[torch.tensor(order, device=flat.device)] = torch.arange(len(order), device=flat.device)
    return flat[inverse]


@torch.no_grad()
def batched_logprobs(model, examples: list[dict], pad_id: int, batch_size: int = 256) -> list[list[float]]:
    """``completion_logprobs`` of every response of every example (a list per example), in chunks of
    ``batch_size`` completions of similar lengths, in eval mode."""
    was_training = model.training
    model.eval()
    flat = chunked_logprobs(model, *flatten(examples), pad_id, batch_size).double().cpu()
    model.train(was_training)
    out, start = [], 0
    for ex in examples:
        out.append(flat[start:start + len(ex["responses"])].tolist())
        start += len(ex["responses"])
    return out


def dpo_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, pairs: tuple[torch.Tensor, ...],
             beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss over ranked pairs, averaged over each prompt's pairs and then over prompts, and metrics.

    ``policy_logps`` and ``reference_logps`` (N,) hold every completion's log-prob, prompts' completions
    concatenated; ``pairs = ranking_pairs(rankings)``: (winners, losers, group) indices. Metrics, means over
    pairs: ``accuracy`` (the implicit reward prefers the winner; ties, |difference of log-ratios| <= TIE
    nats, count half), ``chosen_reward`` and ``rejected_reward`` (beta * log-ratio of winners and losers) and
    ``margin`` (their difference).
    """
    winners, losers, group = (t.to(policy_logps.device) for t in pairs)
    log_ratio = policy_logps - reference_logps.to(policy_logps)  # (N,) nats
    rewards = beta * log_ratio  # the implicit rewards
    delta = log_ratio[winners] - log_ratio[losers]  # (P,) nats
    nll = -torch.nn.functional.logsigmoid(beta * delta)
    n_groups = int(group.max()) + 1
    per_group = torch.zeros(n_groups, dtype=nll.dtype, device=nll.device).index_add_(0, group, nll)
    pairs_per_group = torch.zeros_like(per_group).index_add_(0, group, torch.ones_like(nll))
    loss = (per_group / pairs_per_group).mean()
    with torch.no_grad():
        accuracy = torch.where(delta.abs() <= TIE, 0.5, (delta > 0).to(delta.dtype)).mean()
        metrics = {"accuracy": accuracy, "chosen_reward": rewards[winners].mean(),
                   "rejected_reward": rewards[losers].mean(), "margin": (rewards[winners] - rewards[losers]).mean()}
    return loss, metrics


def example_pairs(examples: list[dict]) -> tuple[torch.Tensor, ...]:
    return ranking_pairs([ex["ranking"] for ex in examples])


def cached_reference(examples: list[dict]) -> torch.Tensor:
    return torch.tensor([lp for ex in examples for lp in ex["reference"]], dtype=torch.float64)


@torch.no_grad()
def evaluate_pairs(model, examples: list[dict], beta: float, pad_id: int, batch_size: int = 256
                   ) -> dict[str, float]:
    """The DPO loss and metrics of ``model`` on examples carrying their cached ``reference`` log-probs, plus
    ``logratio``: the mean of log pi - log pi_ref over their completions (how far the policy moved)."""
    policy = torch.tensor([lp for lps in batched_logprobs(model, examples, pad_id, batch_size) for lp in lps],
                          dtype=torch.float64)
    reference = cached_reference(examples)
    loss, metrics = dpo_loss(policy, reference, example_pairs(examples), beta)
    return {"loss": loss.item(), **{k: v.item() for k, v in metrics.items()},
            "logratio": (policy - reference).mean().item()}


def load_reference(config: DPOConfig, model, tokenizer):
    """The initial policy itself (no copy: its log-probs are taken before the first update), or the
    ``reference`` policy, which must read the same token ids."""
    if not config.reference:
        return model
    reference, ref_tokenizer = load_policy(config.reference, config.device)
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab() or ref_tokenizer.eos_token_id != tokenizer.eos_token_id:
        raise ValueError(f"reference {config.reference!r} does not share the policy's tokenizer: its log-probs "
                         "would be of other token ids")
    return reference.requires_grad_(False)


def check_out(config: DPOConfig) -> Path:
    """Refuse a file, a finished run, or a checkpoint of a run with other DPO settings; record this run's."""
    out = paths.check_out(config.out)
    if (out / RESULT).exists():
        raise ValueError(f"{out} holds a finished DPO run ({RESULT}); pass another --out, or delete it to rerun")
    settings = {k: getattr(config, k) for k in ("policy", "reference", "beta", "data", "max_prompt_tokens",
                                                "max_new_tokens", "warmup_ratio", "lr_min_ratio", "weight_decay")}
    saved = out / SETTINGS
    if config.resume and checkpoints(out / "checkpoint") and saved.exists():
        previous = json.loads(saved.read_text())
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out / 'checkpoint'} was written by a different run (it differs in "
                             f"{', '.join(changed)}); use another --out, or delete the checkpoint to start over")
    if distributed.rank() == 0:  # under a launcher: rank 0 writes
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(settings, indent=1))
    return out


def dpo(config: DPOConfig) -> dict:
    """Train ``config.policy`` with DPO on the comparisons. Returns the steps made, the final metrics on the test
    comparisons (``test_accuracy``, ``test_loss``, ...) and the data's size, also written to ``OUT/result.json``;
    the policy is in ``OUT/final``."""
    prepare(config)  # under a launcher: the rank's device; a resumed run's kernels; before anything loads
    out = check_out(config)
    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(config.policy, config.device)
    for module in model.modules():  # dropout off: at step 0 the policy's log-probs are the reference's
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    longest = config.max_prompt_tokens + config.max_new_tokens
    if longest > context_length(model, default=longest):
        raise ValueError(f"max_prompt_tokens + max_new_tokens = {longest} exceeds the policy's context of "
                         f"{context_length(model)} tokens")
    limits = (config.max_prompt_tokens, config.max_new_tokens)
    train, left_out = encode_comparisons(load_split(config.data, "comparisons", "train").to_list(), tokenizer, *limits)
    test, test_left_out = encode_comparisons(load_split(config.data, "comparisons", "test").to_list(), tokenizer,
                                             *limits)
    if not train or not test:
        raise ValueError(f"no comparison within the limits in {config.data} (train: {len(train)} prompts, test: "
                         f"{len(test)}); check max_prompt_tokens and max_new_tokens")
    pad_id = tokenizer.pad_token_id
    reference = load_reference(config, model, tokenizer)
    for examples in (train, test):  # once: the reference is frozen
        for ex, lps in zip(examples, batched_logprobs(reference, examples, pad_id, config.forward_batch_size)):
            ex["reference"] = lps
    del reference
    if config.evals and not config.eval_every:
        total = config.epochs * math.ceil(len(train) / config.batch_size)
        config.eval_every = max(1, round(total / config.evals))

    def batch_loss(m, batch):
        prompts, responses = flatten(batch)
        policy = chunked_logprobs(m, prompts, responses, pad_id, TRAIN_CHUNK)
        pairs = example_pairs(batch)
        loss, metrics = dpo_loss(policy, cached_reference(batch), pairs, config.beta)
        return loss, {k: (v.item(), len(pairs[0])) for k, v in metrics.items()}  # the loss: prompts; these: pairs

    final: dict[str, float] = {}

    def evaluate(m) -> dict[str, float]:
        metrics = evaluate_pairs(m, test, config.beta, pad_id, config.forward_batch_size)
        final.clear()
        final.update(metrics)
        return {f"test_{k}": v for k, v in metrics.items()}

    state = train_loop(model, tokenizer, train, config, batch_loss, evaluate, desc="dpo")
    result = {"steps": state["step"], **{f"test_{k}": v for k, v in final.items()},
              "train_prompts": len(train), "train_pairs": len(example_pairs(train)[0]),
              "test_prompts": len(test), "test_pairs": len(example_pairs(test)[0]),
              "left_out": left_out + test_left_out}
    if distributed.rank() == 0:
        (out / RESULT).write_text(json.dumps(result, indent=1))
    return distributed.broadcast_json(result)  # rank 0 evaluated: its test metrics
