"""Resumable training state as safetensors plus JSON (never pickles).

A checkpoint directory holds the model (HF ``save_pretrained``, safetensors), the optimizer tensors
and RNG states (``optimizer.safetensors``), the caller's own tensors (``extra.safetensors``: a value head,
a sampler's RNG), and everything else as JSON (``state.json``): optimizer hyper-parameters, scheduler, the
caller's state and the numpy/python RNG states.

Writes are crash-safe: the new checkpoint is written to ``DIR.tmp``, the current one moved to ``DIR.old``
(the checkpoint before it is deleted) and the new one renamed into place. ``checkpoints`` lists the complete
ones, newest first, so that a reader can fall back to ``DIR.old`` if ``DIR`` is unreadable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file

from rlhf_env.models import no_progress_bars, usual_file_modes


def save_checkpoint(directory: str | os.PathLike, model, tokenizer, optimizer, scheduler, state: dict,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    directory = Path(directory)
    tmp, old = directory.with_name(directory.name + ".tmp"), directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    with no_progress_bars():
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in opt["state"].items() for k, v in s.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = rng
    save_file(tensors, tmp / "optimizer.safetensors")
    save_file({k: v.contiguous() for k, v in (extra or {}).items()}, tmp / "extra.safetensors")
    usual_file_modes(tmp)
    meta = {
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "state": state,
        "rng": {"numpy": _jsonable(np.random.get_state()), "python": _jsonable(random.getstate())},
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))  # written last: its presence marks completion
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)  # kept: the previous checkpoint, for when this one turns out unreadable
    tmp.rename(directory)


def checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The complete checkpoints (their ``state.json`` written) at ``DIR``, ``DIR.tmp`` (a crash between
    writing and renaming it) and ``DIR.old`` (the previous one), newest first."""
    directory = Path(directory)
    found = [c for c in (directory, directory.with_name(directory.name + ".tmp"),
                         directory.with_name(directory.name + ".old")) if (c / "state.json").exists()]
    return sorted(found, key=lambda c: (c / "state.json").stat().st_mtime, reverse=True)


def find_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (``checkpoints``), or None."""
    found = checkpoints(directory)
    return found[0] if found else None


def load_checkpoint(directory: str | os.PathLike, model, optimizer, scheduler) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore model, optimizer, scheduler and RNGs in place; return the caller's ``(state, tensors)``."""
    directory = Path(directory)
    missing, unexpected = load_model(model, directory / "model.safetensors", strict=False)
    tied = {name for name in missing if name.endswith("lm_head.weight")}  # tied to the input embedding
    if set(missing) - tied or unexpected:
        raise ValueError(f"checkpoint {directory} does not match the model: missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)}")
    tensors = load_file(directory / "optimizer.safetensors")
    meta = json.loads((directory / "state.json").read_text())
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda_states = [tensors.pop(k) for k in cuda_keys]  # by device number: "rng.cuda.10" after "rng.cuda.9"
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    np_state = meta["rng"]["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    py_state = meta["rng"]["python"]
    random.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
    extra = directory / "extra.safetensors"
    return meta["state"], load_file(extra) if extra.exists() else {}


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    return x
