"""How a loop's models train over the ranks: plain data parallelism, FSDP2 or DeepSpeed ZeRO, as the launcher asked.

The PPO family (``agents.ppo``) and the stages' training loop (``rlhf_env.training.trainer``) each make one
``Training`` and take every step through it: ``backward`` of this rank's share of the global minibatch's loss,
``step`` (clip, then step; the gradient norm), ``refresh`` of the plain copy that the sampler, the judge and the
saves read, and a checkpoint's full tensors. Plain data parallelism (and one process) all-reduces the gradients
here (``distributed``); FSDP2 is ``sharding``, DeepSpeed ZeRO is ``zero``. Either way a step is one process's
step on the global batch, and a checkpoint holds full tensors that resume under any of them, on any number of
ranks.
"""

from __future__ import annotations

import sys
from typing import Callable

import torch

from rlhf_env.training import distributed, sharding, zero


class Training:
    """The launcher's choice for the models a loop trains (read from the environment when made)."""

    def __init__(self):
        self.reshard = sharding.requested()  # FSDP's reshard_after_forward, or None: not sharded
        self.zero = zero.requested()  # DeepSpeed's zero_optimization settings, or None: no DeepSpeed
        if self.reshard is not None and self.zero is not None:
            raise ValueError("the launcher asks for both FSDP and DeepSpeed: use one accelerate config")
        self.engine: zero.Engine | None = None

    @property
    def lockstep(self) -> bool:
        """Whether the ranks train sharded (FSDP, DeepSpeed): then every rank must make the same forward and
        backward passes in a step (their reductions are collectives inside them), whatever its examples, and the
        loop trains a copy of its model, while the sampler, the judge and the saves read the plain model, which
        ``refresh`` updates."""
        return self.reshard is not None or self.zero is not None

    @property
    def partitioned(self) -> bool:
        """Whether no rank holds whole parameters (FSDP, ZeRO-3)."""
        return self.reshard is not None or self.zero is not None and self.zero["stage"] == 3

    def setup(self, modules: list[torch.nn.Module],
              make_optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
              max_grad_norm: float, device: str, desc: str) -> torch.optim.Optimizer:
        """Shard (FSDP) the ``modules`` the loop trains, make their optimizer over their parameters
        (``make_optimizer(params)``), and hand both to DeepSpeed's engine (ZeRO); returns the optimizer (for the
        loop's scheduler)."""
        self.max_grad_norm = max_grad_norm
        if self.reshard is not None:
            for module in modules:
                sharding.shard(module, self.reshard, device)
        self.params = [p for module in modules for p in module.parameters()]  # what is clipped and all-reduced
        self.optimizer = make_optimizer(self.params)
        if self.zero is not None:
            self.engine = zero.Engine(modules, self.optimizer, self.zero, max_grad_norm, device)
        if self.lockstep and distributed.rank() == 0:
            how = (f"FSDP2, reshard_after_forward={self.reshard}" if self.engine is None
                   else f"DeepSpeed ZeRO-{self.zero['stage']}")
            print(f"{desc}: sharded over {distributed.world_size()} ranks ({how})", file=sys.stderr, flush=True)
        return self.optimizer

    def zero_grad(self) -> None:
        if self.engine is None:  # the engine zeroes its own after each step
            self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor | None, weight: float) -> None:
        """The backward of ``loss * weight`` (``weight``: this rank's share of the global minibatch; 1 in one
        process), then the gradients summed over the ranks. ``loss`` None: this rank has no example in the step
        (then it still joins the all-reduce; a ``lockstep`` loop passes a stand-in of weight 0 instead)."""
        if loss is None and self.lockstep:
            raise RuntimeError("a sharded step needs every rank's backward: pass a stand-in of weight 0")
        if loss is not None:
            if self.engine is not None:
                self.engine.backward(loss * weight)
            else:
                (loss * weight).backward()
        if not self.lockstep:  # FSDP and the engine have reduced them during the backward
            distributed.all_reduce_grads(self.params)

    def step(self, check: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        """Clip the gradients at ``max_grad_norm`` and step; returns their norm before clipping. ``check(norm)``
        may raise to stop the run: before the step, or under DeepSpeed (whose step clips) after it."""
        if self.engine is not None:
            norm = self.engine.step()
        elif not self.lockstep and all(p.device.type == "cpu" for p in self.params):
            norm = clip_cpu_grads(self.params, self.max_grad_norm)
        else:
            norm = sharding.full(torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
        if check is not None:
            check(norm)
        if self.engine is None:
            self.optimizer.step()
        return norm

    # -- the plain copy and checkpoints ---------------------------------------------------------------------------
    def refresh(self, trained: torch.nn.Module, plain: torch.nn.Module) -> None:
        """Copy the ``trained`` module's weights into its ``plain`` copy, if they are two (every rank must call
        it)."""
        if trained is not plain:
            sharding.gather_into(trained, plain, sharding.full if self.engine is None else self.engine.whole)

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """A trained module's state with whole tensors (every rank must call it)."""
        if self.engine is not None:
            return self.engine.full_state_dict(module)
        return sharding.full_state_dict(module)

    def load_full_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load whole tensors into a trained module: each rank takes its partitions."""
        if self.engine is not None:
            self.engine.load_full_state_dict(module, state)
        else:
            sharding.load_full_state_dict(module, state)

    def saved_optimizer(self):
        """The optimizer as a checkpoint holds it: its state as whole tensors (every rank must call it)."""
        return self._checkpointed_optimizer(gather=True)

    def _checkpointed_optimizer(self, gather: bool):
        """The optimizer for ``Run.save`` (``gather``: its state gathered now) or ``Run.restore``."""
        if self.engine is not None:
            return _EngineOptimizer(self.engine, self.engine.optimizer_state() if gather else None)
        return sharding.FullOptimizer(self.optimizer, gather) if self.reshard is not None else self.optimizer

    def restore(self, run, plain: torch.nn.Module, trained: torch.nn.Module, scheduler, older_defaults=None):
        """``run.restore`` (``rlhf_env.training.run.Run``) for a model that trains as ``trained`` (``plain`` itself,
        or its copy): the checkpoint's whole tensors load into ``plain``, the optimizer's into each rank's
        partitions, and ``trained`` then takes its partitions of the weights. Returns ``(state, tensors)``."""
        state, tensors = run.restore(plain, self._checkpointed_optimizer(gather=False), scheduler, older_defaults)
        if state is not None and trained is not plain:
            self.load_full_state_dict(trained, plain.state_dict())
        return state, tensors


class _EngineOptimizer:
    """The engine's optimizer for ``Run.save`` and ``Run.restore``: ``state_dict`` and ``load_state_dict`` of
    whole tensors."""

    def __init__(self, engine: zero.Engine, saved: dict | None = None):
        self.engine, self.saved = engine, saved

    def state_dict(self) -> dict:
        return self.saved

    def load_state_dict(self, state: dict) -> None:
        self.engine.load_optimizer_state(state)


def clip_cpu_grads(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for plain CPU tensors, bit for bit, without its multiplication by 1 where
    the norm is within ``max_norm`` (which saves a pass over every gradient on a CPU, where the check costs no
    device sync). Returns the gradients' total 2-norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    coefficient = max_norm / (norm + 1e-6)  # clip_grad_norm_'s
    if not coefficient >= 1:  # (a NaN norm too: clip_grad_norm_ then multiplies by NaN)
        torch._foreach_mul_(grads, coefficient.clamp(max=1.0))
    return norm
