"""Sharded data parallelism (ZeRO-3 style) for the agents and the stages' training loop
(``rlhf_env.training.trainer``), through torch's FSDP2 (``fully_shard``), switched on by accelerate's FSDP config.

``accelerate launch --config_file examples/accelerate/fsdp.yaml $(which rlhf) ppo ...`` tells every rank to
shard (``ACCELERATE_USE_FSDP``). The agent then shards each transformer block of its policy (the classes HF
lists in ``_no_split_modules``), the rest of the policy as the root, and its value model: each rank keeps
1/N of the parameters, gradients and optimizer state, and FSDP gathers a block's parameters for its forward
and backward. The gradients are **summed** over the ranks (each rank's loss is already its share of the
global minibatch, as in plain data parallelism), so N sharded ranks compute one process's update.

The rollout sampler and the held-out judge read a plain copy of the policy, refreshed from the shards after
every update (``gather_into``): the lean decoder reads plain weights, and sampling needs every weight at
every token anyway. The training loop's evaluations and saves read a plain copy the same way. Checkpoints hold
full tensors in the same files as an unsharded run's, so a checkpoint resumes with or without sharding, on any
number of ranks. FSDP needs every rank to make as many forward passes per step; ``agree`` settles their number.

Of accelerate's FSDP settings, ``fsdp_reshard_after_forward`` (or v1's ``fsdp_sharding_strategy``) is
honoured; parameter offload and activation checkpointing are refused; the wrapping policy and the state-dict
type are ours (per block; full tensors). accelerate itself does not shard on a CPU, which is why the agent
applies FSDP2 itself: the same config then runs on CPUs (gloo) and GPUs (NCCL).
"""

from __future__ import annotations

import os
import sys

import torch

from rlhf_env.training import distributed, zero

STRATEGIES = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False, "NO_SHARD": None, "3": None}


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def requested() -> bool | None:
    """What the launcher asked for: None (no sharding), or FSDP's ``reshard_after_forward`` (True: gather each
    block's parameters again for the backward, ZeRO-3; False: keep them from the forward to the backward).
    Raises on a setting the agents cannot honour."""
    if not _flag("ACCELERATE_USE_FSDP") or distributed.world_size() == 1:
        return None
    for name, what in (("FSDP_OFFLOAD_PARAMS", "parameter offload"),
                       ("FSDP_ACTIVATION_CHECKPOINTING", "activation checkpointing")):
        if _flag(name):
            raise ValueError(f"the agents' FSDP does not support {what} ({name.lower()}); turn it off in the "
                             "accelerate config")
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true")
    if os.environ.get("FSDP_VERSION", "1") == "2":
        return reshard.lower() == "true"
    # FSDP1: `accelerate config` writes the strategy under fsdp_reshard_after_forward, an older config under
    # fsdp_sharding_strategy
    named = reshard.lower() not in ("true", "false")
    strategy = (reshard if named else os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD")).upper()
    if strategy not in STRATEGIES:
        raise ValueError(f"fsdp_sharding_strategy {strategy} is not supported by the agents; use FULL_SHARD, "
                         "SHARD_GRAD_OP or NO_SHARD")
    return STRATEGIES[strategy]


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: the submodules of the classes that HF models in it keep whole
    (``_no_split_modules``)."""
    names = {name for m in model.modules() for name in getattr(m, "_no_split_modules", None) or ()}
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(module: torch.nn.Module, reshard_after_forward: bool, device: str) -> None:
    """Shard ``module`` in place (each block its own unit, the rest the root) over all ranks, on ``device``'s
    type (not the machine's default accelerator: a CPU run stays on the CPU where a GPU is visible); its
    gradients are summed over the ranks, not averaged."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(torch.device(device).type, (distributed.world_size(),))
    for block in blocks(module):
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for unit in module.modules():
        if isinstance(unit, FSDPModule):
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)  # gloo has no pre-multiplied sum


def sharded(x) -> bool:
    """Whether ``x`` is a shard (a DTensor). Unsharded runs never import DTensor's module (over a second)."""
    if "torch.distributed.tensor" not in sys.modules:
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def full(x):
    """A plain tensor of the whole value (an all-gather for a shard: every rank must call it)."""
    return x.full_tensor() if sharded(x) else x


def local(value: torch.Tensor, like) -> torch.Tensor:
    """This rank's shard of the full ``value``, shaped like the sharded tensor ``like`` (or ``value`` itself if
    ``like`` is not sharded); no communication."""
    if not sharded(like):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements, src_data_rank=None)


def agree(count: int, module: torch.nn.Module) -> int:
    """How many forward passes through ``module`` this rank makes in a step where it needs ``count``: under FSDP
    or DeepSpeed, the most that any rank needs (every rank must call it; their collectives need the ranks in step,
    so a rank with fewer makes stand-in passes), else ``count``."""
    p = next(module.parameters())
    if not (sharded(p) or zero.managed(p)):
        return count
    return int(distributed.all_max(torch.tensor(float(count))).item())


@torch.no_grad()
def gather_into(trained: torch.nn.Module, plain: torch.nn.Module, whole=full) -> None:
    """Copy the trained module's parameters, each ``whole(p)`` (default: gathered from FSDP's shards), into the
    plain copy of the same module (every rank must call it)."""
    target = dict(plain.named_parameters())
    for name, p in trained.named_parameters():
        target[name].copy_(whole(p))


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: full(v) for k, v in module.state_dict().items()}


def load_full_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors into a module, sharded or not: each rank takes its shards, with no communication
    (strict: missing and unexpected keys raise)."""
    own = module.state_dict()
    module.load_state_dict({k: local(v, own[k]) if k in own else v for k, v in state.items()})


class FullOptimizer:
    """An optimizer's state as full tensors, for a checkpoint: ``state_dict`` is gathered when this is made
    (every rank must make it), ``load_state_dict`` takes each rank's shards of a full state."""

    def __init__(self, optimizer: torch.optim.Optimizer, gather: bool = True):
        self.optimizer = optimizer
        if gather:
            saved = optimizer.state_dict()
            self.saved = {**saved, "state": {i: {k: full(v) for k, v in s.items()} for i, s in saved["state"].items()}}

    def state_dict(self) -> dict:
        return self.saved

    def load_state_dict(self, state: dict) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        per_param = {i: {k: v if k == "step" else local(v, params[i]) for k, v in s.items()}
                     for i, s in state["state"].items()}
        self.optimizer.load_state_dict({**state, "state": per_param})
