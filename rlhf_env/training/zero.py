"""DeepSpeed ZeRO for the agents and the stages' training loop, switched on by accelerate's DeepSpeed config.

``accelerate launch --config_file examples/accelerate/deepspeed.yaml $(which rlhf) ppo ...`` tells every rank to
use DeepSpeed (``ACCELERATE_USE_DEEPSPEED``, the ZeRO stage). The loop then hands its models and its AdamW to
DeepSpeed's engine (``deepspeed.initialize``): stage 1 partitions the optimizer state over the ranks, stage 2 the
gradients too, stage 3 the parameters as well. The engine reduces the gradients during the backward, and clips
and steps in its ``step``; the losses, schedules, logs and checkpoints stay the loop's own.

- The engine averages the gradients over the ranks, while each rank's loss is already its share of the global
  minibatch (which plain data parallelism sums), so the engine gets the loss times the number of ranks: N ranks
  take one process's step.
- Clipping is the engine's, at the loop's own maximum norm; the gradient norm logged is the engine's (before
  clipping), as ``clip_grad_norm_``'s is.
- Checkpoints hold full tensors in the package's own files (safetensors and JSON; DeepSpeed's own checkpoints are
  pickles): read from the partitions with ``deepspeed.utils.safe_get_full_*``, and written back into each rank's
  partition on a resume, so a run resumes with DeepSpeed or without, on any number of ranks.
- The engine trains a copy of the loop's model (it flattens the parameters into its buffers, and stage 3
  partitions them), so the sampler, the judge and the saves read the plain model, refreshed after every update
  as under FSDP: from each rank's own whole parameters under stages 1 and 2, gathered under stage 3.
- The engine's reductions are collectives, so every rank makes the same forward and backward passes in a step.

Of a DeepSpeed config, the ZeRO stage is honoured. The optimizer, the scheduler, the batch sizes and the
clipping are the loop's: a config may leave them out or say ``auto``, and anything else is refused, as are
gradient accumulation, fp16/bf16 (``--bf16`` is the package's mixed precision) and offload.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings

import torch

from rlhf_env.training import distributed

REFUSED = {  # what `accelerate launch` sets from a config's deepspeed_config, the loops' values, and why
    "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": ("offload_optimizer_device", ("none",), "no offload"),
    "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": ("offload_param_device", ("none",), "no offload"),
    "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": ("gradient_accumulation_steps", ("1", "auto"),
                                               "the loops' batch is the global one"),
    "ACCELERATE_GRADIENT_CLIPPING": ("gradient_clipping", ("auto", "none"),
                                     "the loops clip at their own maximum norm (--max_grad_norm, grad_clip)"),
    "ACCELERATE_DEEPSPEED_ZERO3_INIT": ("zero3_init_flag", ("false",), "the loops partition the models they load"),
}


def requested() -> dict | None:
    """The ZeRO settings the launcher asked for (``{"stage": 1|2|3}``), or None without DeepSpeed or with one
    process. Raises on a setting the loops cannot honour."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or distributed.world_size() == 1:
        return None
    if importlib.util.find_spec("deepspeed") is None:
        raise ImportError("accelerate's DeepSpeed config needs DeepSpeed: pip install deepspeed (or this package's "
                          "[deepspeed] extra), or launch with examples/accelerate/fsdp.yaml")
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path:
        return _from_file(path)
    for name, (setting, allowed, why) in REFUSED.items():
        value = os.environ.get(name, allowed[0]).lower()
        if value not in allowed:
            raise ValueError(f"the DeepSpeed config's {setting}: {value} is not supported ({why}): leave it out or "
                             f"set it to {allowed[0]}")
    return {"stage": _stage(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))}


def _stage(value) -> int:
    if str(value) not in ("1", "2", "3"):
        raise ValueError(f"ZeRO stage {value} is not supported: use 1, 2 or 3 (stage 0 is plain data parallelism: "
                         "launch without the DeepSpeed config)")
    return int(value)


def _from_file(path: str) -> dict:
    """The settings of a DeepSpeed JSON config (``deepspeed_config_file`` in accelerate's config)."""
    config = json.loads(open(path).read())
    zero = config.get("zero_optimization", {})
    theirs = {  # what the loops set themselves: (whose it is, the values a config may give it)
        "optimizer": ("the loops' AdamW", ()), "scheduler": ("the loops' schedule", ()),
        "gradient_accumulation_steps": ("the loops' global batch", ("auto", 1)),
        "gradient_clipping": ("--max_grad_norm (grad_clip)", ("auto",)),
        "train_batch_size": ("the loops' global batch", ("auto",)),
        "train_micro_batch_size_per_gpu": ("the loops' global batch", ("auto",)),
    }
    for key, (whose, allowed) in theirs.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"{path}: {key} is set by {whose}, not by the DeepSpeed config: remove it"
                             + (f" or set it to {allowed[0]}" if allowed else ""))
    for key in ("fp16", "bf16"):
        if config.get(key, {}).get("enabled") not in (False, None, "auto"):
            raise ValueError(f"{path}: {key} is not supported; --bf16 is the package's mixed precision")
    for key in ("offload_optimizer", "offload_param"):
        if zero.get(key, {}).get("device", "none") != "none":
            raise ValueError(f"{path}: zero_optimization.{key} is not supported: set its device to none")
    return {"stage": _stage(zero.get("stage", 0))}


def partitioned(p: torch.Tensor) -> bool:
    """Whether ``p`` is a ZeRO-3 parameter (each rank holds a partition of it)."""
    return hasattr(p, "ds_id")


class Engine:
    """DeepSpeed's engine over ``modules`` and their ``optimizer`` (an AdamW, made by the loop over the modules'
    parameters), clipping at ``max_grad_norm``: ``backward`` and ``step`` in place of the loop's, and the full
    tensors of its partitions for a checkpoint."""

    def __init__(self, modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer, stage: int,
                 max_grad_norm: float):
        import deepspeed
        import deepspeed.ops

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines would drown the run's log
        for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):  # its calls of them, at every step
            warnings.filterwarnings("ignore", f".*`torch.distributed.{name}` is deprecated", FutureWarning)
        # its shared-memory collectives would be compiled at start-up (seconds, a compiler) for inference only
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.stage = stage
        self.optimizer = optimizer  # the loop's AdamW: DeepSpeed steps it over flat partitions
        # the parameters as torch's optimizer numbers them in a checkpoint: through its groups in turn
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        self.groups = [list(range(sum(sizes[:g]), sum(sizes[:g + 1]))) for g in range(len(sizes))]
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                  "gradient_clipping": max_grad_norm, "zero_optimization": {"stage": stage},
                  "zero_allow_untested_optimizer": True, "steps_per_print": 2 ** 62, "wall_clock_breakdown": False}
        model = modules[0] if len(modules) == 1 else torch.nn.ModuleList(modules)
        self.engine, self.zero_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def backward(self, loss: torch.Tensor) -> None:
        """The backward of this rank's loss (its share of the global minibatch's); the engine reduces the
        gradients."""
        self.engine.backward(loss * distributed.world_size())  # the engine averages over the ranks: a sum

    def step(self) -> torch.Tensor:
        """Clip and step; returns the gradient norm before clipping."""
        self.engine.step()
        return torch.as_tensor(self.engine.get_global_grad_norm(), dtype=torch.float32)

    # -- full tensors ------------------------------------------------------------------------------------------
    def full(self, p: torch.Tensor, key: str | None = None) -> torch.Tensor:
        """The whole of parameter ``p`` (``key`` None) or of its optimizer state ``key`` (every rank must call it)."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        value = safe_get_full_fp32_param(p) if key is None else safe_get_full_optimizer_state(p, key)
        return value.detach().clone()

    def set_full(self, p: torch.Tensor, value: torch.Tensor, key: str | None = None) -> None:
        """Set this rank's partition of parameter ``p`` (``key`` None) or of its optimizer state ``key`` from the
        whole ``value`` (no communication)."""
        from deepspeed import utils

        value = value.detach().to(torch.float32)
        if self.stage < 3:  # whole parameters on every rank, and a partition of their fp32 copy
            if key is None:
                utils.safe_set_full_fp32_param(p, value)
                p.data.copy_(value.to(p.dtype))
            else:
                utils.safe_set_full_optimizer_state(p, value, key)
            return
        # stage 3: this rank's slice of the flat, zero-padded value (DeepSpeed's own setter of a full value mis-slices
        # a parameter smaller than the ranks)
        size = p.ds_tensor.numel()
        flat = torch.nn.functional.pad(value.flatten(), (0, size * distributed.world_size() - value.numel()))
        mine = flat[distributed.rank() * size:(distributed.rank() + 1) * size]
        if key is None:
            utils.safe_set_local_fp32_param(p, mine)
            p.ds_tensor.data.copy_(mine.to(p.ds_tensor.dtype))
        else:
            utils.safe_set_local_optimizer_state(p, mine, key)

    def _link_state(self) -> None:
        """Point each parameter's fragment at AdamW's state (stages 1 and 2). DeepSpeed links them once, after its
        first step of the first parameter group, so the fragments of a second group (the loop's parameters without
        weight decay) find no state: link them all again."""
        if self.stage < 3:
            self.zero_optimizer._hp_optimizer_states_linked = False
            self.zero_optimizer._lazy_init_hp_params_optimizer_state()

    def gather_into(self, modules: list[torch.nn.Module], plain: list[torch.nn.Module]) -> None:
        """Copy the trained ``modules``' parameters into their ``plain`` copies (every rank must call it)."""
        for module, copy in zip(modules, plain):
            target = dict(copy.named_parameters())
            with torch.no_grad():
                for name, p in module.named_parameters():  # stages 1 and 2: every rank's parameters are whole
                    target[name].copy_(self.full(p) if self.stage == 3 else p)

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` with whole parameters (every rank must call it)."""
        state = module.state_dict()  # a tied parameter under each of its names, as in the state dict
        return {**state, **{name: self.full(p) for name, p in module.named_parameters(remove_duplicate=False)}}

    def load_full_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load whole tensors into ``module``'s parameters (each rank its partitions) and buffers."""
        params = dict(module.named_parameters(remove_duplicate=False))  # a tied parameter under each of its names
        for name, value in state.items():
            if name in params:
                self.set_full(params[name], value)
            else:
                module.get_buffer(name).copy_(value)

    def optimizer_state(self) -> dict:
        """The optimizer's state as ``torch.optim.AdamW.state_dict()`` holds it for the unpartitioned parameters
        (every rank must call it)."""
        step = next((s["step"] for s in self.optimizer.state.values() if "step" in s), None)
        state = {}
        if step is not None:
            self._link_state()
            for i, p in enumerate(self.params):
                state[i] = {"step": step.clone(), **{k: self.full(p, k) for k in ("exp_avg", "exp_avg_sq")}}
        groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": indices}
                  for group, indices in zip(self.optimizer.param_groups, self.groups)]
        return {"state": state, "param_groups": groups}

    def load_optimizer_state(self, saved: dict) -> None:
        """Set the optimizer's state from ``optimizer_state``'s form (each rank its partitions)."""
        for group, own in zip(self.optimizer.param_groups, saved["param_groups"]):
            group.update({k: v for k, v in own.items() if k != "params"})
        if not saved["state"]:
            return
        step = next(iter(saved["state"].values()))["step"]
        zero = self.zero_optimizer  # AdamW's state, made, for the flat fp32 partitions that it steps
        for flat in zero.fp32_partitioned_groups_flat if self.stage == 3 else zero.single_partition_of_fp32_groups:
            self.optimizer.state[flat] = {"step": torch.tensor(float(step), device=flat.device),  # one each
                                          "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        self._link_state()
        for i, p in enumerate(self.params):
            for key in ("exp_avg", "exp_avg_sq"):
                self.set_full(p, saved["state"][i][key], key)
