"""The training loop shared by pretraining, SFT and the reward model.

AdamW with linear warm-up then cosine decay (the paper's SFT schedule), gradient clipping, a tqdm
progress bar, TensorBoard + CSV logs, periodic atomic checkpoints and exact resume. The data order of
epoch ``e`` is a permutation drawn from ``(seed, e)``, so resuming at step ``s`` replays exactly the
batches a run that was never interrupted would have seen.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from rlhf_env.configs import TrainConfig
from rlhf_env.models import save_policy
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

    def batch_loss(m, batch):
        ids, labels, mask = (t.to(config.device) for t in collate(batch, tokenizer.pad_token_id))
        return lm_loss(m, ids, labels, mask), {}

    return train_loop(model, tokenizer, examples, config, batch_loss, evaluate, select, desc)


def train_loop(
    model,
    tokenizer,
    examples: list,
    config: TrainConfig,
    batch_loss: Callable[[object, list], tuple[torch.Tensor, dict[str, float]]],
    evaluate: Callable[[object], dict[str, float]] | None = None,
    select: str | None = None,
    desc: str = "train",
) -> dict:
    """Train ``model`` on ``examples`` with ``batch_loss(model, batch) -> (loss, metrics)``.

    ``evaluate(model)`` returns metrics (logged to ``eval.csv``); if ``select`` names one of them,
    the checkpoint with its highest value is kept in ``OUT/best``. Returns the final trainer state.
    """
    out = Path(config.out)
    torch.manual_seed(config.seed)
    model.to(config.device).train()
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total = max(1, round(config.epochs * steps_per_epoch))
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * total), total, min_lr_rate=config.lr_min_ratio)

    # What a checkpoint must agree on to be resumed: anything else would silently mix two runs.
    fingerprint = {"examples": len(examples), "batch_size": config.batch_size, "epochs": config.epochs,
                   "lr": config.lr, "seed": config.seed}
    run = Run(out, fingerprint, total, desc, resume=config.resume)
    state = run.restore(model, optimizer, scheduler)[0] or {"step": 0, "best": -math.inf, "best_step": None}
    run.start(state["step"])

    def run_eval(step):
        if evaluate is None:
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
            order = np.random.default_rng([config.seed, epoch]).permutation(len(examples))
            batch = [examples[i] for i in order[offset * config.batch_size:(offset + 1) * config.batch_size]]
            loss, batch_metrics = batch_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            scheduler.step()
            state["step"] = step = step + 1
            window.append({"loss": loss.item(), **batch_metrics})
            run.bar.update(1)
            if step % config.log_every == 0 or step == total:
                metrics = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                metrics.update(lr=scheduler.get_last_lr()[0], grad_norm=float(grad_norm), epoch=step / steps_per_epoch)
                run.log(step, metrics)
                run.bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                window = []
            if config.eval_every and step % config.eval_every == 0 and step < total:
                run_eval(step)
            if run.interrupted or (config.save_every and step % config.save_every == 0 and step < total):
                run.save(model, tokenizer, optimizer, scheduler, state)
            if run.interrupted:
                run.stop(step)
        run_eval(state["step"])
        model.eval()
        save_policy(model, tokenizer, out / "final")
    finally:  # also on a crash or Ctrl-C: the bar ends and the logs are flushed
        run.close()
    for leftover in (run.checkpoint, *(run.checkpoint.with_name(f"checkpoint{x}") for x in (".old", ".tmp"))):
        shutil.rmtree(leftover, ignore_errors=True)
    return state

