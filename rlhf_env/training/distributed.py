"""Data parallelism for the agents and the training loop: the ranks, and the few collectives they need.

Launched by ``accelerate launch --num_processes N`` or ``torchrun --nproc_per_node N`` (``WORLD_SIZE`` > 1),
``init`` joins the launcher's process group through accelerate (gloo on a CPU, NCCL on GPUs). Without a
launcher there is one process, no process group, and every function here returns its input unchanged, so a
plain run computes exactly what it computed before data parallelism existed. The PPO family
(``agents.ppo``) and ``rlhf_env.training.trainer.train_loop`` (pretraining, SFT, the scalar RM, DPO) use it.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os

import numpy as np
import torch
import torch.distributed as dist


def world_size() -> int:
    """The number of ranks: the launcher's ``WORLD_SIZE``, 1 without a launcher (known before ``init``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: str) -> str:
    """Join the launcher's process group (once per process); returns this rank's device (``cuda`` becomes the
    rank's own GPU)."""
    if world_size() == 1:
        return device
    from accelerate import PartialState

    cpu = torch.device(device).type == "cpu"
    state = PartialState(cpu=cpu)  # gloo on CPUs, NCCL on GPUs; a no-op if the group exists
    _leave_at_exit()
    return device if cpu else str(state.device)


@functools.cache  # registered once per process
def _leave_at_exit() -> None:
    atexit.register(_leave)


def _leave() -> None:
    """Leave the process group at exit, while the interpreter is still whole: a group left to the interpreter's
    shutdown can abort the process there ("terminate called without an active exception", gloo's threads), after a
    run that finished."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank: the process group's, or the launcher's ``RANK`` before ``init`` (0 without one)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def seed_stream(seed: int, *keys: int) -> int:
    """A seed of its own for each key (rank, and iteration on a resume with another number of ranks)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def _wire() -> torch.device:
    """Where the collectives' tensors must be: the rank's GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(x: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """The sum of ``x`` over the ranks (or another reduction ``op``), on ``x``'s device."""
    if world_size() == 1:
        return x
    y = x.to(_wire(), copy=True)
    dist.all_reduce(y, op=op)
    return y.to(x.device)


def all_max(x: torch.Tensor) -> torch.Tensor:
    return all_sum(x, dist.ReduceOp.MAX)


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on one (a Ctrl-C that reached only some ranks)."""
    return bool(all_max(torch.tensor(float(flag))).item())


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's ``x``, concatenated along dim 0 in rank order (the ranks' lengths may differ)."""
    if world_size() == 1:
        return x
    return torch.cat(_gather_parts(x)).to(x.device)


def _gather_parts(x: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``x`` (on the wire's device), in rank order."""
    lengths = [torch.zeros((), dtype=torch.long, device=_wire()) for _ in range(world_size())]
    dist.all_gather(lengths, torch.tensor(len(x), device=_wire()))
    padded = x.new_zeros((int(max(lengths)), *x.shape[1:]), device=_wire())
    padded[:len(x)] = x
    parts = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(parts, padded)
    return [part[:n] for part, n in zip(parts, lengths)]


def local(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of ``gather``'s result, when every rank gave as many rows."""
    n = len(x) // world_size()
    return x[rank() * n:(rank() + 1) * n]


def gather_json(obj) -> list:
    """Every rank's ``obj`` (anything JSON holds), in rank order. JSON, not pickle: nothing a rank sends runs as
    code on another."""
    if world_size() == 1:
        return [obj]
    return [json.loads(bytes(part.cpu().numpy())) for part in _gather_parts(_json_bytes(obj))]


def broadcast_json(obj):
    """Rank 0's ``obj`` (anything JSON holds) on every rank."""
    if world_size() == 1:
        return obj
    data = _json_bytes(obj if rank() == 0 else None).to(_wire())
    length = torch.tensor(len(data), device=_wire())
    dist.broadcast(length, src=0)
    buffer = data if rank() == 0 else torch.empty(int(length), dtype=torch.uint8, device=_wire())
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().numpy()))


def _json_bytes(obj) -> torch.Tensor:
    return torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)


def share(counts: torch.Tensor) -> torch.Tensor:
    """This rank's share of the ranks' total of each of ``counts`` (e.g. its tokens; ones in one process), in one
    collective: the weight of its loss or metric. A count that no rank has gives 0."""
    if world_size() == 1:
        return torch.ones(counts.shape, dtype=torch.float64)
    counts = counts.double()
    return counts / all_sum(counts).clamp(min=1e-30)


def weighted_sum(stats: dict[str, float], weight: float, weights: dict[str, float] | None = None
                 ) -> dict[str, float]:
    """Statistics of the global minibatch from each rank's (means over its tokens, weighted by its ``share``,
    or by its share of another count where ``weights`` names one): their weighted sum, and the largest for a
    ``*_max`` key."""
    if world_size() == 1:
        return stats
    weights = weights or {}
    sums = all_sum(torch.tensor([v * weights.get(k, weight) for k, v in stats.items()], dtype=torch.float64))
    maxima = all_max(torch.tensor([v if weight else -math.inf for v in stats.values()], dtype=torch.float64))
    return {k: float(m if k.endswith("_max") else s) for k, s, m in zip(stats, sums, maxima)}


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients over the ranks, in one flat buffer. Each rank's loss is its share of the global
    minibatch's (its tokens over all ranks' tokens), so the sum is the global minibatch's gradient. A parameter
    that no rank has a gradient for keeps ``grad`` None, as in one process (the optimizer then skips it)."""
    if world_size() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([*(g.reshape(-1) for g in grads), has_grad])  # the flags ride along: one collective
    dist.all_reduce(flat)
    *summed, ranks_with_grad = flat.split([p.numel() for p in params] + [len(params)])
    for p, g, n in zip(params, summed, ranks_with_grad.tolist()):
        p.grad = g.view_as(p) if n > 0 else None


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank: the ranks start from one model whatever their seeds."""
    if world_size() == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        wire = tensor.data.to(_wire(), copy=True)
        dist.broadcast(wire, src=0)
        tensor.data.copy_(wire)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
