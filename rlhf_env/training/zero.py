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

Of a DeepSpeed config, the ``zero_optimization`` settings are DeepSpeed's (bucket sizes it leaves out are capped
at the model's size). The optimizer and the scheduler are the loops' own, and a config may not set them; so are
the batch sizes, gradient accumulation and the clipping, which a config may leave out or set to ``auto``
(``CHECKED``). Anything else is refused, as are fp16/bf16 (``--bf16`` is the package's mixed precision) and
offload.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import warnings
from pathlib import Path

import torch

from rlhf_env.training import distributed

OWN_CLIPPING = "the loops clip at their own maximum norm (--max_grad_norm; grad_clip for the stages)"
CHECKED = {  # a DeepSpeed setting the loops decide themselves: (accelerate's variable, accepted values, why)
    "gradient_accumulation_steps": ("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", ("1", "auto"),
                                    "the loops' batch is the global one"),
    "gradient_clipping": ("ACCELERATE_GRADIENT_CLIPPING", ("auto", "none"), OWN_CLIPPING),
    "offload_optimizer_device": ("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", ("none",), "no offload"),
    "offload_param_device": ("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", ("none",), "no offload"),
    "zero3_init_flag": ("ACCELERATE_DEEPSPEED_ZERO3_INIT", ("false",), "the loops partition the models they load"),
    "mixed_precision": ("ACCELERATE_MIXED_PRECISION", ("no",), "--bf16 is the package's mixed precision"),
    "optimizer": (None, (), "the loops' own AdamW"),  # these four only in a DeepSpeed config file
    "scheduler": (None, (), "the loops' own schedule"),
    "train_batch_size": (None, ("auto",), "the loops' batch is the global one"),
    "train_micro_batch_size_per_gpu": (None, ("auto",), "the loops' batch is the global one"),
}


def requested() -> dict | None:
    """The ZeRO settings the launcher asked for (DeepSpeed's ``zero_optimization``: ``stage`` 1, 2 or 3, and
    those a config file gives), or None without DeepSpeed or with one process. Raises on a setting the loops
    cannot honour (``CHECKED``)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or distributed.world_size() == 1:
        return None
    if importlib.util.find_spec("deepspeed") is None:
        raise ImportError("accelerate's DeepSpeed config needs DeepSpeed: pip install deepspeed (or this package's "
                          "[deepspeed] extra), or launch with examples/accelerate/fsdp.yaml")
    settings = {name: os.environ[var] for name, (var, _, _) in CHECKED.items() if var and var in os.environ}
    zero, source = {"stage": os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")}, "the DeepSpeed config"
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path:  # accelerate's deepspeed_config_file: a DeepSpeed JSON config
        config, source = json.loads(Path(path).read_text()), path
        zero = dict(config.get("zero_optimization", {}))
        settings.update({name: config[name] for name in CHECKED if name in config})
        for key in ("offload_optimizer", "offload_param"):
            settings[f"{key}_device"] = zero.pop(key, {}).get("device", "none")
        enabled = [key for key in ("fp16", "bf16") if config.get(key, {}).get("enabled") not in (None, False, "auto")]
        settings["mixed_precision"] = enabled[0] if enabled else "no"
    for name, value in settings.items():
        _, accepted, why = CHECKED[name]
        if str(value).lower() not in accepted:
            raise ValueError(f"{source}: {name} {json.dumps(value)} is not supported ({why}): "
                             + (f"leave it out or set it to {accepted[0]}" if accepted else "leave it out"))
    stage = zero.get("stage", "missing")
    if str(stage) not in ("1", "2", "3"):
        raise ValueError(f"{source}: ZeRO stage {stage} is not supported: use 1, 2 or 3 (stage 0 is plain data "
                         "parallelism: launch without the DeepSpeed config)")
    return {**zero, "stage": int(stage)}


def partitioned(p: torch.Tensor) -> bool:
    """Whether ``p`` is a ZeRO-3 parameter (each rank holds a partition of it)."""
    return hasattr(p, "ds_id")


def managed(p: torch.Tensor) -> bool:
    """Whether ``p`` is trained by DeepSpeed's engine (any stage)."""
    return partitioned(p) or hasattr(p, "_hp_mapping")


TESTED = (0, 19)  # the DeepSpeed release whose internals the engine's workarounds reach into (setup.py's extra)


def check_version(version: str) -> None:
    """Warn where ``version`` is not the tested DeepSpeed release: the engine reaches into its internals."""
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) != TESTED:
        warnings.warn(f"DeepSpeed {version}: the package's ZeRO path is tested with {TESTED[0]}.{TESTED[1]} only, "
                      "whose internals it works around; pip install -e '.[deepspeed]' installs that", stacklevel=3)


class Engine:
    """DeepSpeed's engine over ``modules`` and their ``optimizer`` (an AdamW, made by the loop over the modules'
    parameters), clipping at ``max_grad_norm``: ``backward`` and ``step`` in place of the loop's, and the full
    tensors of its partitions for a checkpoint."""

    def __init__(self, modules: list[torch.nn.Module], optimizer: torch.optim.Optimizer, zero: dict,
                 max_grad_norm: float, device: str):
        cpu = torch.device(device).type == "cpu"
        if cpu:  # else DeepSpeed takes a GPU whenever one is visible, and moves the model there
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed
        import deepspeed.ops
        from deepspeed.accelerator import get_accelerator

        if cpu != (get_accelerator().device_name() == "cpu"):
            raise ValueError(f"DeepSpeed runs on {get_accelerator().device_name()}, the run on {device}: set "
                             "DS_ACCELERATOR to match --device")

        check_version(deepspeed.__version__)
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines would drown the run's log
        for name in ("all_gather_into_tensor", "reduce_scatter_tensor"):  # its calls of them, at every step
            warnings.filterwarnings("ignore", f".*`torch.distributed.{name}` is deprecated", FutureWarning)
        # its shared-memory collectives would be compiled at start-up (seconds, a compiler) for inference only
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.stage = stage = zero["stage"]
        self.optimizer = optimizer  # the loop's AdamW: DeepSpeed steps it over flat partitions
        # the parameters as torch's optimizer numbers them in a checkpoint: through its groups in turn
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        sizes = [len(group["params"]) for group in optimizer.param_groups]
        self.groups = [list(range(sum(sizes[:g]), sum(sizes[:g + 1]))) for g in range(len(sizes))]
        # DeepSpeed's buckets hold up to 5e8 elements (2 GB of float32 each) whatever the model: at most the model's
        size = sum(p.numel() for p in self.params)
        defaults = {"reduce_bucket_size": 5e8, "allgather_bucket_size": 5e8, **(
            {"stage3_prefetch_bucket_size": 5e7} if stage == 3 else {})}
        aligned = {k: int(-(-min(size, default) // 64) * 64) for k, default in defaults.items()}  # DeepSpeed's rule
        zero = {**aligned, **zero}  # the config's own settings win
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                  "gradient_clipping": max_grad_norm, "zero_optimization": zero,
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
        return value.detach().clone()  # (ZeRO-3's is a view of a padded buffer: a checkpoint wants its own)

    def set_full(self, p: torch.Tensor, value: torch.Tensor, key: str | None = None) -> None:
        """Set this rank's partition of parameter ``p`` (``key`` None) or of its optimizer state ``key`` from the
        whole ``value`` (no communication). Before the first forward only (a resume): ZeRO-3 keeps small
        parameters gathered after their first forward, until the next step."""
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

    def whole(self, p: torch.Tensor) -> torch.Tensor:
        """The whole of parameter ``p``: its own under stages 1 and 2, gathered under 3 (every rank must call it)."""
        return self.full(p) if self.stage == 3 else p

    def full_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` with whole parameters (every rank must call it)."""
        state = module.state_dict()  # a tied parameter under each of its names, as in the state dict
        return {**state, **{name: self.full(p) for name, p in module.named_parameters(remove_duplicate=False)}}

    def load_full_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load whole tensors into ``module``'s parameters (each rank its partitions) and buffers (strict: missing
        and unexpected keys raise)."""
        params = dict(module.named_parameters(remove_duplicate=False))  # a tied parameter under each of its names
        own = set(module.state_dict())
        if own != set(state):
            raise ValueError(f"the state does not match the model: missing {sorted(own - set(state))}, unexpected "
                             f"{sorted(set(state) - own)}")
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
        """Set the optimizer's state from ``optimizer_state``'s form, or ``torch.optim.AdamW.state_dict()``'s
        (each rank its partitions). A parameter without state (no gradient yet) starts from zero moments at the
        others' step: DeepSpeed counts one step for all."""
        sizes = [len(group["params"]) for group in saved["param_groups"]]
        if sizes != [len(group) for group in self.groups]:
            raise ValueError(f"the checkpoint's optimizer has groups of {sizes} parameters, this run's of "
                             f"{[len(group) for group in self.groups]}")
        for group, own in zip(self.optimizer.param_groups, saved["param_groups"]):
            group.update({k: v for k, v in own.items() if k != "params"})
        if not saved["state"]:
            return
        step = max(float(s["step"]) for s in saved["state"].values())
        fused = any(group.get("fused") or group.get("capturable") for group in self.optimizer.param_groups)
        zero = self.zero_optimizer  # AdamW's state, made, for the flat fp32 partitions that it steps
        for flat in zero.fp32_partitioned_groups_flat if self.stage == 3 else zero.single_partition_of_fp32_groups:
            self.optimizer.state[flat] = {"step": torch.tensor(step, device=flat.device if fused else "cpu"),
                                          "exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        self._link_state()
        for i, p in enumerate(self.params):
            none = torch.zeros(p.ds_shape if self.stage == 3 else p.shape)
            for key in ("exp_avg", "exp_avg_sq"):
                self.set_full(p, saved["state"][i][key] if i in saved["state"] else none, key)
