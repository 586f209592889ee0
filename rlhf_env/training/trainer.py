"""The training loop shared by pretraining, SFT, the scalar reward model and DPO.

AdamW with linear warm-up then cosine decay (the paper's SFT schedule), gradient clipping, a tqdm
progress bar, TensorBoard + CSV logs, periodic atomic checkpoints and exact resume. The data order of
epoch ``e`` is a permutation drawn from ``(seed, e)``, so resuming at step ``s`` replays exactly the
batches a run that was never interrupted would have seen.

Under a launcher (``torchrun`` / ``accelerate launch``, see ``rlhf_env.training.distributed``) the batch is the
global one: each rank takes every N-th example of it, weights its loss by its share of the batch's units
(tokens for the LM loss, examples otherwise), and the ranks' gradients are summed, so N ranks take the step
one process would. Rank 0 evaluates, logs and writes; the data order does not depend on N, so a run resumes
on any number of ranks. Under accelerate's FSDP config, or DeepSpeed's, the ranks train sharded
(``rlhf_env.training.parallel``): they train a copy, and the caller's model stays plain and is refreshed from
the trained copy for every evaluation, checkpoint and at the end. The
collectives of FSDP and DeepSpeed need every rank to make as many forward passes in a step: a rank without
examples in an epoch's last batch runs a stand-in one with zero weight, and a ``batch_loss`` that makes several
passes agrees their number with the other ranks (``sharding.agree``).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from rlhf_env import accel
from rlhf_env.configs import TrainConfig
from rlhf_env.models import load_policy, save_policy
from rlhf_env.training import distributed
from rlhf_env.training.parallel import Training
from rlhf_env.training.run import Run

IGNORE = -100  # label of tokens that carry no loss (padding, prompts)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad (input_ids, labels) pairs into (B, T) tensors plus attention mask."""
    T = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def lm_loss(model, ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labelled tokens."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


def train_causal_lm(model, tokenizer, examples: list[tuple[list[int], list[int]]], config: TrainConfig,
                    evaluate: Callable[[object], dict[str, float]] | None = None, select: str | None = None,
                    desc: str = "train") -> dict:
    """Next-token training on (input_ids, labels) examples; see ``train_loop``."""
    return train_loop(model, tokenizer, examples, config, lm_batch_loss(tokenizer, config), evaluate, select, desc)


def lm_batch_loss(tokenizer, config: TrainConfig) -> Callable:
    """``train_loop``'s ``batch_loss`` for (input_ids, labels) examples: the LM loss, a mean over label tokens."""

    def batch_loss(m, batch):
        ids, labels, mask = (t.to(config.device) for t in collate(batch, tokenizer.pad_token_id))
        return lm_loss(m, ids, labels, mask), {}, int((labels[:, 1:] != IGNORE).sum())

    return batch_loss


def train_loop(
    model,
    tokenizer,
    examples: list,
    config: TrainConfig,
    batch_loss: Callable[[object, list], tuple],
    evaluate: Callable[[object], dict[str, float]] | None = None,
    select: str | None = None,
    desc: str = "train",
    fingerprint: dict | None = None,
    reuse: bool = False,
) -> dict:
    """Train ``model`` on ``examples`` with ``batch_loss(model, batch) -> (loss, metrics[, units])``: ``loss`` is
    a mean over ``units`` (default: the batch's examples), which weights a rank's loss under data parallelism; a
    metric that is a mean over other units is given as ``(mean, its units)``.

    ``evaluate(model)`` returns metrics (logged to ``eval.csv``); if ``select`` names one of them,
    the checkpoint with its highest value is kept in ``OUT/best``. ``fingerprint``: the caller's own settings that a
    checkpoint must agree on to be resumed, beside the loop's. ``reuse``: a run that finished in OUT (its
    ``OUT/trained.json``, written then) is not trained again: with the same fingerprint, ``OUT/final``'s weights are
    loaded into ``model`` and its state returned; with another, it is refused. Returns the final trainer state.
    """
    out = Path(config.out)
    world = distributed.world_size()
    if config.batch_size < world:
        raise ValueError(f"batch_size ({config.batch_size}) is the global batch: it must be >= the {world} ranks")
    config.device = distributed.init(config.device)
    rank = distributed.rank()
    training = Training()
    torch.manual_seed(config.seed)
    model.to(config.device).train()
    distributed.broadcast_parameters(model)
    trained = accel.copy_of(model) if training.lockstep else model  # what the optimizer steps

    def adamw(params):
        decay, no_decay = [], []
        for p in params:
            (no_decay if p.ndim < 2 else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                  {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)

    optimizer = training.setup([trained], adamw, config.grad_clip, config.device, desc)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = max(1, round(config.epochs * steps_per_epoch))
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total), total, min_lr_rate=config.lr_min_ratio)

    # What a checkpoint must agree on to be resumed: anything else would silently mix two runs.
    fingerprint = {"examples": len(examples), "batch_size": config.batch_size, "epochs": config.epochs,
                   "lr": config.lr, "seed": config.seed, **(fingerprint or {})}
    finished = out / "trained.json"
    if reuse and config.resume and finished.exists():
        record = json.loads(finished.read_text())
        differ = sorted(k for k in fingerprint.keys() | record["fingerprint"].keys()
                        if fingerprint.get(k) != record["fingerprint"].get(k))
        if differ:
            raise ValueError(f"{out} holds a finished run of other settings (they differ in {differ}); delete it or "
                             "pass another --out")
        model.load_state_dict(load_policy(str(out / "final"))[0].state_dict())
        model.eval()
        return record["state"]
    run = Run(out, fingerprint, total, desc, resume=config.resume, main=rank == 0)
    state = (training.restore(run, model, trained, scheduler)[0]
             or {"step": 0, "best": -math.inf, "best_step": None})
    run.start(state["step"])

    def refresh():  # the caller's model gets the trained copy's weights, if it has one (every rank gathers)
        training.refresh(trained, model)

    def run_eval(step):
        if evaluate is None or not run.main:  # the ranks hold one model: rank 0 judges it
            return
        model.eval()
        metrics = evaluate(model)
        model.train()
        run.log(step, metrics, kind="eval")
        if select and metrics[select] > state["best"]:
            state.update(best=metrics[select], best_step=step)
            save_policy(model, tokenizer, out / "best")

    window: list[dict[str, float]] = []  # per-step metrics since the last log line
    try:
        while state["step"] < total:
            step = state["step"]
            epoch, offset = divmod(step, steps_per_epoch)
            if world > 1:  # each rank its own dropout, drawn from (seed, rank, step): a resume continues it
                torch.manual_seed(distributed.seed_stream(config.seed, rank, step))
            order = np.random.default_rng([config.seed, epoch]).permutation(len(examples))
            batch = [examples[i] for i in order[offset * config.batch_size:(offset + 1) * config.batch_size]]
            training.zero_grad()
            loss, batch_metrics = _backward(trained, batch, batch_loss, training)
            grad_norm = training.step()
            scheduler.step()
            state["step"] = step = step + 1
            window.append({"loss": loss, **batch_metrics})
            run.bar.update(1)
            if step % config.log_every == 0 or step == total:
                metrics = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                metrics.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm), epoch=step / steps_per_epoch)
                run.log(step, metrics)
                run.bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                window = []
            if config.eval_every and step % config.eval_every == 0 and step < total and evaluate is not None:
                refresh()
                run_eval(step)
            interrupted = distributed.any_rank(run.interrupted)  # every rank stops at the same step
            if interrupted or (config.save_every and step % config.save_every == 0 and step < total):
                refresh()  # full tensors in the checkpoint: it resumes sharded or not
                run.save(model, tokenizer, training.saved_optimizer(), scheduler, state)
            if interrupted:
                distributed.barrier()  # rank 0's checkpoint is written before any rank exits
                run.stop(step)
        refresh()
        run_eval(state["step"])
        model.eval()
        if run.main:
            save_policy(model, tokenizer, out / "final")
    finally:  # also on a crash or Ctrl-C: the bar ends and the logs are flushed
        run.close()
    if run.main:
        for leftover in (run.checkpoint, *(run.checkpoint.with_name(f"checkpoint{x}") for x in (".old", ".tmp"))):
            shutil.rmtree(leftover, ignore_errors=True)
        if reuse:  # strict JSON (no evaluation leaves best at -inf), renamed into place: never half a record
            written = finished.with_suffix(".tmp")
            written.write_text(json.dumps({"fingerprint": fingerprint, "state": {
                k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in state.items()}}, indent=1))
            written.replace(finished)
    return distributed.broadcast_json(state)  # rank 0's, once it has written OUT/final: with its evaluations' best


def _backward(model, global_batch: list, batch_loss, training: Training) -> tuple[float, dict[str, float]]:
    """Backward this rank's part of a step's batch, its loss weighted by its share of the batch's units (1 in one
    process); the gradients summed over the ranks. Returns the batch's loss and metrics (the ranks' weighted
    means)."""
    world = distributed.world_size()
    batch = global_batch[distributed.rank()::world]
    some_rank_idle = len(global_batch) < world  # an epoch's last batch, of fewer examples than ranks
    loss, metrics, units, stand_in = 0.0, {}, 0, None
    if batch:
        loss, metrics, *counted = batch_loss(model, batch)
        units = counted[0] if counted else len(batch)
    elif training.lockstep:  # the forward's and backward's collectives need this rank too: a stand-in, weighing 0
        stand_in = batch_loss(model, global_batch[:1])[0]
    if some_rank_idle:  # an idle rank adds nothing, but takes part in the collectives with rank 0's metric names
        names = distributed.broadcast_json({k: isinstance(v, tuple) for k, v in metrics.items()})  # rank 0 has some
        metrics = metrics if batch else {k: (0.0, 0) if own else 0.0 for k, own in names.items()}
    # A metric given as (mean, units) is a mean over its own units (e.g. pairs, where the loss counts prompts).
    own_units = {k: float(v[1]) for k, v in metrics.items() if isinstance(v, tuple)}
    metrics = {k: v[0] if isinstance(v, tuple) else v for k, v in metrics.items()}
    weight, *own_weights = distributed.share(torch.tensor([float(units), *own_units.values()])).tolist()
    # an idle rank's weight is 0; its stand-in goes at the same point as the others' backward: collectives in order
    training.backward(loss if batch else stand_in, weight)
    loss = loss.item() if batch else loss
    stats = distributed.weighted_sum({"loss": loss, **metrics}, weight, dict(zip(own_units, own_weights)))
    return stats.pop("loss"), stats
