"""Resumable training state as safetensors plus JSON (never pickles).

A checkpoint directory holds the model (HF ``save_pretrained``, safetensors), the optimizer tensors
(``optimizer.safetensors``), and everything else as JSON (``state.json``): optimizer hyper-parameters,
scheduler, step counters, the caller's state and the RNG states.
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


def save_checkpoint(directory: str | os.PathLike, model, tokenizer, optimizer, scheduler, state: dict) -> None:
    """Write atomically: into ``DIR.tmp`` first, then rename, so a crash never leaves half a checkpoint."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    opt = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, s in opt["state"].items() for k, v in s.items()}
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, tmp / "optimizer.safetensors")
    meta = {
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "state": state,
        "rng": {"numpy": _jsonable(np.random.get_state()), "python": _jsonable(random.getstate())},
    }
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def load_checkpoint(directory: str | os.PathLike, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNGs in place; return the caller's ``state``."""
    directory = Path(directory)
    load_model(model, directory / "model.safetensors", strict=False)
    tensors = load_file(directory / "optimizer.safetensors")
    meta = json.loads((directory / "state.json").read_text())
    torch.set_rng_state(tensors.pop("rng.torch"))
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
    return meta["state"]


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    return x
