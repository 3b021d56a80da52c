"""DINOv2 backbones for SD + DINOv2 fusion: transformers' ``Dinov2Model`` (or
``Dinov2WithRegistersModel``) from a preset name, a local folder or a hub id.

``transformers`` is an extra (``pip install "cleandift-rt[dino]"``), imported here only.
Hub weights go through ``models.hub`` (short timeout, ``HF_HUB_OFFLINE`` honoured, one-line
errors); weights are read from safetensors only. ``dinov2-tiny`` is built offline from a small
``Dinov2Config`` with fixed-seed random weights (tests and plumbing only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, one_line
from .hub import snapshot
from .presets import DINO_PRESETS

TINY_DINO_SEED = 0
# small and fast, with a position grid (4 × 4 at 56 px) that the input size never matches, so
# the tests exercise DINOv2's position-embedding interpolation
TINY_DINO_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                        patch_size=14, image_size=56)  # fmt: skip
HUB_FILES = ["config.json", "model.safetensors"]
DINO_HINT = "or pass a local DINOv2 folder (config.json, model.safetensors): --model SD+DIR"


@dataclass
class LoadedDino:
    """A DINOv2 backbone: ``model`` (a transformers Dinov2Model, eval mode, float32 on the CPU);
    name: as given; hub_files: {repo, file, commit} of the hub files used."""

    name: str
    model: nn.Module
    hub_files: list[dict[str, str]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.model.config.hidden_size)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "DINOv2 fusion needs transformers, which is not installed: "
            'pip install "cleandift-rt[dino]"'
        ) from None
    return transformers


def _model_class(config):
    tf = _transformers()
    kind = getattr(config, "model_type", "dinov2")
    if kind == "dinov2":
        return tf.Dinov2Model
    if kind == "dinov2_with_registers":
        return tf.Dinov2WithRegistersModel
    raise ModelError(f"not a DINOv2 model: model_type '{kind}' (dinov2, dinov2_with_registers)")


def build_tiny_dino(seed: int = TINY_DINO_SEED) -> nn.Module:
    """A tiny Dinov2Model (hidden 32, 2 layers, patch 14) with weights drawn from ``seed``;
    the global RNG is left untouched."""
    tf = _transformers()
    config = tf.Dinov2Config(**TINY_DINO_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = tf.Dinov2Model(config)
    return model.eval()


def _load_folder(folder: Path) -> nn.Module:
    tf = _transformers()
    if not (folder / "model.safetensors").is_file():
        raise ModelError(f"DINOv2 folder '{folder}' has no model.safetensors (no pickles are read)")
    bars = tf.utils.logging
    quiet = not bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # no "Loading weights" bar on stderr (it breaks one-line output)
    try:
        config = tf.AutoConfig.from_pretrained(folder)
        cls = _model_class(config)
        return cls.from_pretrained(folder, use_safetensors=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load the DINOv2 model in '{folder}': {one_line(exc)}") from None
    finally:
        if not quiet:
            bars.enable_progress_bar()


def load_dino(name: str) -> LoadedDino:
    """The DINOv2 backbone ``name``: a preset (``dinov2-s``/``-b``/``-l``/``-g`` = the
    facebook/dinov2-* hub models, ``dinov2-tiny``), a local folder or a hub id. ModelError (one
    line) on any failure, including a hub model that is not cached while offline."""
    if name in DINO_PRESETS and DINO_PRESETS[name] is None:
        return LoadedDino(name, build_tiny_dino())
    folder = Path(name).expanduser()
    if folder.is_dir():
        return LoadedDino(name, _load_folder(folder), sources=[str(folder)])
    repo = DINO_PRESETS.get(name, name)
    _transformers()  # the extra is named before any download
    snap = snapshot(repo, HUB_FILES, role=f"DINOv2 model of '{name}'", hint=DINO_HINT)
    model = _load_folder(snap.folder)
    return LoadedDino(name, model, snap.files(HUB_FILES), [str(snap.folder)])
