"""Resumable training state in safetensors (tensors) + JSON (everything else); no pickle.

One file per checkpoint, ``<out>/checkpoints/step-00000400.safetensors``, written atomically
(temp file + rename, ``cleandift_rt.models.checkpoint.atomic_save``): a crash or kill during the
write leaves the previous checkpoint as the latest loadable one. Contents:

* ``student.<key>``: the trainable module's state (student U-Net, heads, learned timestep);
* ``optim.<param index>.<name>``: optimiser state tensors (Adam: step, exp_avg, exp_avg_sq);
* ``rng.torch`` (uint8), ``rng.cuda.<i>`` (uint8), ``rng.numpy`` (int64 of the MT19937 keys);
* metadata ``state``: JSON with the step, optimiser param groups, LR scheduler state, the
  Python and NumPy RNG scalars, the data-order seed and the run's configuration.
"""

from __future__ import annotations

import json
import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from cleandift_rt.errors import CleanDIFTError, one_line
from cleandift_rt.models.checkpoint import atomic_save

STATE_FORMAT = "cleandift-rt.train-state"
STATE_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.safetensors$")


@dataclass
class TrainState:
    """A loaded checkpoint: tensors by prefix and the JSON state."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: dict
    config: dict
    path: Path


def checkpoint_path(out: Path, step: int) -> Path:
    return out / CHECKPOINT_DIR / f"step-{step:08d}.safetensors"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of the checkpoints under ``out``, oldest first (temp files ignored)."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def rng_snapshot() -> tuple[dict[str, torch.Tensor], dict]:
    """Current torch / CUDA / NumPy / Python RNG states as (tensors, JSON)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss = random.getstate()
    meta = {
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`rng_snapshot` (CUDA states only where a GPU of that index exists)."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted(
        (int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng.cuda.")
    )
    if cuda and torch.cuda.is_available() and len(cuda) <= torch.cuda.device_count():
        torch.cuda.set_rng_state_all([v for _, v in cuda])
    name, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state((name, keys, pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(
    out: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict,
    keep: int,
) -> Path:
    """Write the checkpoint of ``step`` atomically, then keep only the newest ``keep`` ones."""
    tensors = {f"student.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for index, slots in opt["state"].items():
        for name, value in slots.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"optim.{index}.{name}"] = value
    rng_tensors, rng_meta = rng_snapshot()
    tensors.update(rng_tensors)
    state = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": step,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng": rng_meta,
        "config": config,
    }
    path = checkpoint_path(out, step)
    atomic_save(tensors, path, {"format": STATE_FORMAT, "state": json.dumps(state)})
    prune_checkpoints(out, keep)
    return path


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (keep ≤ 0: keep all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(out)[:-keep]:
        path.unlink(missing_ok=True)


def read_state(path: Path) -> TrainState:
    """Load one checkpoint file (raises CleanDIFTError, one line, when it cannot)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = json.loads(meta["state"])
    except Exception as exc:
        raise CleanDIFTError(f"cannot read checkpoint '{path}': {one_line(exc)}") from None
    if state.get("format") != STATE_FORMAT:
        raise CleanDIFTError(f"'{path}' is not a cleandift-rt training checkpoint")
    slots: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    return TrainState(
        step=int(state["step"]),
        model={k[8:]: v for k, v in tensors.items() if k.startswith("student.")},
        optimizer={"state": slots, "param_groups": state["param_groups"]},
        scheduler=state["scheduler"],
        rng={"tensors": {k: v for k, v in tensors.items() if k.startswith("rng.")}, **state["rng"]},
        config=state["config"],
        path=path,
    )


def latest_state(out: Path) -> TrainState | None:
    """The newest loadable checkpoint under ``out`` (unreadable ones are skipped with a warning)."""
    for _, path in reversed(list_checkpoints(out)):
        try:
            return read_state(path)
        except CleanDIFTError as exc:
            warnings.warn(f"skipping {exc}", stacklevel=2)
    return None
