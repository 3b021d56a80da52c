"""CleanDIFT student weights in safetensors: CompVis' `*_unet` files and the project's own.

Two layouts are read and written:

* ``*_unet.safetensors``: a diffusers ``UNet2DConditionModel`` state dict (loads strictly into
  the base config). CompVis' released files carry no metadata: they run at t = 261. Files this
  project writes add metadata ``format=cleandift-rt.unet``, ``timestep`` (the learned one),
  ``base`` (the base model) and ``unet_config`` (JSON).
* full student checkpoints (``format=cleandift-rt.student``): ``unet.<key>`` tensors, the learned
  ``timestep`` as a tensor, ``heads.<key>`` projection heads (unused at inference) and optionally
  the prompt ``context`` (1, L, D), so the file is self-contained.

And one is read: CompVis' ``*_full.safetensors``, the state dict of the reference training module
(``StableFeatureAligner`` in CompVis/cleandift ``src/sd_feature_extraction.py``):
``unet_feature_extractor_cleandift.<diffusers U-Net key>`` (the student),
``unet_feature_extractor_base.*`` (the frozen teacher, not read), ``ae.ae.<diffusers VAE key>``
(its VAE wrapper holds the diffusers ``AutoencoderKL`` as ``ae``), ``timestep`` (the learned
scalar), and the heads: ``time_emb.weight`` (Fourier features), ``time_in_proj.weight``,
``mapping.*`` (the mapping network) and ``adapters.<tap>.layers.<i>.*`` (one FFN stack per tap).
The heads are renamed to the project's ``FeatureHeads`` keys (``compvis_head_key``).
"""

from __future__ import annotations

import json
import os
import re
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
COMPVIS_STUDENT = "unet_feature_extractor_cleandift."
COMPVIS_TEACHER = "unet_feature_extractor_base."
COMPVIS_VAE = "ae."
COMPVIS_HEAD_PREFIXES = ("time_emb.", "time_in_proj.", "mapping.", "adapters.")
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
    vae_state: dict[str, torch.Tensor] = field(default_factory=dict)
    layout: str = "unet"  # "unet", "student" (this project's full file) or "compvis-full"


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


# CompVis head names (src/layers.py, src/sd_feature_extraction.py) → FeatureHeads names
# (training/heads.py); the two modules compute the same function with these weights.
_COMPVIS_HEAD_RULES = [
    (r"time_emb\.weight", r"conditioner.fourier.weight"),
    (r"time_in_proj\.weight", r"conditioner.proj.weight"),
    (r"mapping\.in_norm\.scale", r"conditioner.norm_in.scale"),
    (r"mapping\.out_norm\.scale", r"conditioner.norm_out.scale"),
    (r"mapping\.blocks\.(\d+)\.norm\.scale", r"conditioner.blocks.\1.norm.scale"),
    (r"mapping\.blocks\.(\d+)\.up_proj\.(weight|bias)", r"conditioner.blocks.\1.up.\2"),
    (r"mapping\.blocks\.(\d+)\.down_proj\.(weight|bias)", r"conditioner.blocks.\1.down.\2"),
    (r"adapters\.([^.]+)\.layers\.(\d+)\.norm\.linear\.(weight|bias)",
     r"heads.\1.blocks.\2.modulation.\3"),
    (r"adapters\.([^.]+)\.layers\.(\d+)\.up_proj\.(weight|bias)", r"heads.\1.blocks.\2.up.\3"),
    (r"adapters\.([^.]+)\.layers\.(\d+)\.down_proj\.(weight|bias)",
     r"heads.\1.blocks.\2.down.\3"),
]  # fmt: skip


def compvis_head_key(key: str) -> str | None:
    """The FeatureHeads key of a CompVis head key (``mapping.blocks.0.up_proj.weight`` →
    ``conditioner.blocks.0.up.weight``), or None when the reference has no such layer."""
    for pattern, replacement in _COMPVIS_HEAD_RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _compvis_heads(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    heads = {}
    for key, value in tensors.items():
        mapped = compvis_head_key(key)
        if mapped is None:
            raise ModelError(f"'{path}': unknown CompVis head tensor '{key}'")
        heads[mapped] = value
    return heads


def _strip(keys: list[str], prefix: str) -> dict[str, str]:
    """{key without prefix: key} of the keys starting with ``prefix``."""
    return {k[len(prefix) :]: k for k in keys if k.startswith(prefix)}


def read_student_file(path: str | Path) -> StudentWeights:
    """Read a ``*_unet``, a full student or a CompVis ``*_full`` safetensors file (never
    unpickles anything; the CompVis file's frozen teacher U-Net is not read)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            keys = list(f.keys())
            if any(k.startswith(COMPVIS_STUDENT) for k in keys):
                return _read_compvis_full(f, keys, meta, path)
            tensors = {k: f.get_tensor(k) for k in keys}
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
        layout="student" if full else "unet",
    )


def _read_compvis_full(f, keys: list[str], meta: dict, path: Path) -> StudentWeights:
    """CompVis' full training-module state dict (see the module docstring)."""
    unet_state = {k: f.get_tensor(full) for k, full in _strip(keys, COMPVIS_STUDENT).items()}
    vae_keys = _strip(keys, COMPVIS_VAE)
    if vae_keys and all(k.startswith("ae.") for k in vae_keys):  # the wrapper's inner module
        vae_keys = {k[3:]: full for k, full in vae_keys.items()}
    vae_state = {k: f.get_tensor(full) for k, full in vae_keys.items()}
    head_keys = [k for k in keys if k.startswith(COMPVIS_HEAD_PREFIXES)]
    heads = _compvis_heads({k: f.get_tensor(k) for k in head_keys}, path)
    if "timestep" not in keys:
        raise ModelError(f"'{path}' is a CompVis full file without its learned 'timestep'")
    timestep = float(f.get_tensor("timestep").float())
    return StudentWeights(
        unet_state=unet_state,
        timestep=timestep,
        base=meta.get("base") or infer_base(unet_state),
        heads_state=heads,
        metadata=meta,
        vae_state=vae_state,
        layout="compvis-full",
    )
