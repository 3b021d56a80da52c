"""CleanDIFT student weights in safetensors: CompVis' `*_unet` files and the project's own.

Two layouts are read and written:

* ``*_unet.safetensors``: a diffusers ``UNet2DConditionModel`` state dict (loads strictly into
  the base config). CompVis' released files carry no metadata: they run at t = 261. Files this
  project writes add metadata ``format=cleandift-rt.unet``, ``timestep`` (the learned one),
  ``base`` (the base model) and ``unet_config`` (JSON).
* full student checkpoints (``format=cleandift-rt.student``): ``unet.<key>`` tensors, the learned
  ``timestep`` as a tensor, ``heads.<key>`` projection heads (unused at inference) and optionally
  the prompt ``context`` (1, L, D), so the file is self-contained.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ModelError, one_line
from ..files import atomic_path
from .presets import BASE_BY_CROSS_DIM, DEFAULT_TIMESTEP

UNET_FORMAT = "cleandift-rt.unet"
STUDENT_FORMAT = "cleandift-rt.student"
_CROSS_KEY = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"


@dataclass
class StudentWeights:
    """U-Net weights read from a single safetensors file, with what the file says about them."""

    unet_state: dict[str, torch.Tensor]
    timestep: float
    base: str | None
    unet_config: dict | None = None
    context: torch.Tensor | None = None
    heads_state: dict[str, torch.Tensor] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def atomic_save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]):
    """save_file to a temp file in the target directory, then rename: never a partial file."""
    with atomic_path(path) as tmp:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = tmp.stat().st_mode  # 0o666 minus the umask; save_file recreates it as 0o600
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata)
        os.chmod(tmp, mode)


def _meta(timestep: float, base: str | None, unet_config: dict, extra: dict | None) -> dict:
    config = json.dumps(dict(unet_config), default=str)  # from_pretrained adds Path values
    meta = {"timestep": repr(float(timestep)), "unet_config": config}
    if base:
        meta["base"] = base
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (extra or {}).items()})
    return meta


def save_unet_file(path, unet, timestep: float, base: str | None, extra: dict | None = None):
    """Write ``*_unet.safetensors``: diffusers keys + learned timestep and base in metadata."""
    meta = {"format": UNET_FORMAT, **_meta(timestep, base, unet.config, extra)}
    atomic_save(unet.state_dict(), path, meta)


def save_student_checkpoint(
    path,
    unet,
    timestep: float | torch.Tensor,
    base: str | None,
    heads_state: dict[str, torch.Tensor] | None = None,
    context: torch.Tensor | None = None,
    extra: dict | None = None,
):
    """Write a full student checkpoint (student U-Net, timestep, heads, optional context)."""
    t = float(timestep)
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    tensors["timestep"] = torch.tensor(t, dtype=torch.float32)
    tensors.update({f"heads.{k}": v for k, v in (heads_state or {}).items()})
    if context is not None:
        tensors["context"] = context
    meta = {"format": STUDENT_FORMAT, **_meta(t, base, unet.config, extra)}
    atomic_save(tensors, path, meta)


def infer_base(unet_state: dict[str, torch.Tensor]) -> str | None:
    """Guess the base preset of a bare SD U-Net state dict from its cross-attention width."""
    weight = unet_state.get(_CROSS_KEY)
    return None if weight is None else BASE_BY_CROSS_DIM.get(int(weight.shape[1]))


def read_student_file(path: str | Path) -> StudentWeights:
    """Read a ``*_unet`` or full student safetensors file (never unpickles anything)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ModelError(f"model file '{path}' does not exist") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"cannot read '{path}' as safetensors: {one_line(exc)}") from None

    full = meta.get("format") == STUDENT_FORMAT or any(k.startswith("unet.") for k in tensors)
    if full:
        unet_state = {k[5:]: v for k, v in tensors.items() if k.startswith("unet.")}
        heads = {k[6:]: v for k, v in tensors.items() if k.startswith("heads.")}
        t = tensors.get("timestep")
        timestep = float(t) if t is not None else float(meta.get("timestep", DEFAULT_TIMESTEP))
        context = tensors.get("context")
    else:
        unet_state, heads, context = tensors, {}, None
        timestep = float(meta.get("timestep", DEFAULT_TIMESTEP))
    config = json.loads(meta["unet_config"]) if "unet_config" in meta else None
    return StudentWeights(
        unet_state=unet_state,
        timestep=timestep,
        base=meta.get("base") or infer_base(unet_state),
        unet_config=config,
        context=context,
        heads_state=heads,
        metadata=meta,
    )
