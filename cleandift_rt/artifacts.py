"""Exported artifacts' metadata sidecar (``<artifact>.json``): the contract between export and
the runtime loaders.

The sidecar says what the artifact computes (model, weights hash, taps with channels and
strides), what it takes (uint8 NHWC input, fixed height/width, batch range), how it was built
(precision, producer versions, target GPU for engines, build options) and how it validated.
Loaders refuse a mismatch with a one-line reason and the command that rebuilds the artifact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backends import registry
from .errors import CleanDIFTError, one_line
from .files import write_text

FORMAT_VERSION = 1
INPUT_NAME = "images"


class ArtifactError(CleanDIFTError):
    """An artifact or its sidecar is missing, corrupt, or does not fit this runtime/GPU."""


@dataclass
class TapOutput:
    """One output of the graph: tap name, channels C and stride (input px per cell)."""

    name: str
    channels: int
    stride: int


@dataclass
class ArtifactMetadata:
    """Everything a loader needs to know about an exported FeatureNet.

    height/width: the fixed input size (px); batch: (min, max) batch size the artifact takes.
    hub_files: {repo, file, commit} of every Hugging Face Hub file the weights came from
    (commit: the resolved 40-hex revision sha), so a result names the exact weights.
    fusion: what the one output ``fused`` of a fusing graph is made of
    (``FeatureNet.fusion_info``: SD taps with channels, strides and weights; the DINOv2 branch,
    its input size and alpha); {} for a graph whose outputs are plain taps.
    """

    format: str
    artifact: str  # file name, relative to the sidecar
    model: str
    weights_sha256: str
    timestep: float
    taps: list[TapOutput]
    height: int
    width: int
    batch: tuple[int, int]
    precision: str
    producer: dict[str, str | None] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)  # gpu name, compute capability
    build: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    rebuild: str = ""  # the command that rebuilds this artifact
    hub_files: list[dict[str, str]] = field(default_factory=list)
    fusion: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    input_name: str = INPUT_NAME
    input_layout: str = "NHWC"
    input_dtype: str = "uint8"

    def output_shape(self, batch: int | str = "batch") -> dict[str, list]:
        """{tap: [B, C, H/stride, W/stride]}."""
        return {
            t.name: [batch, t.channels, self.height // t.stride, self.width // t.stride]
            for t in self.taps
        }

    def to_json(self) -> str:
        data = asdict(self)
        data["batch"] = list(self.batch)
        data["outputs"] = self.output_shape()
        return json.dumps(data, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactMetadata:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        data["taps"] = [TapOutput(**t) for t in data["taps"]]
        data["batch"] = tuple(data["batch"])
        return cls(**data)


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}.json")


def write_sidecar(artifact: str | Path, meta: ArtifactMetadata) -> Path:
    """Write ``<artifact>.json`` atomically."""
    return write_text(sidecar_path(artifact), meta.to_json())


def read_sidecar(artifact: str | Path) -> ArtifactMetadata:
    """The metadata of ``artifact`` (its sidecar), or ArtifactError with one line."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise ArtifactError(f"artifact '{artifact}' does not exist")
    path = sidecar_path(artifact)
    if not path.is_file():
        raise ArtifactError(f"'{artifact}' has no metadata sidecar '{path.name}': re-export it")
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')} != {FORMAT_VERSION}")
        meta = ArtifactMetadata.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"bad metadata sidecar '{path}': {one_line(exc)}") from None
    if meta.format not in registry.names(exportable=True):
        raise ArtifactError(f"'{path}': unknown artifact format '{meta.format}'")
    fused = meta.fusion
    if fused and [(t.name, t.channels, t.stride) for t in meta.taps] != [
        (fused.get("output"), fused.get("channels"), fused.get("stride"))
    ]:
        raise ArtifactError(
            f"bad metadata sidecar '{path}': its fusion describes the output "
            f"{fused.get('output')} ({fused.get('channels')} channels, stride "
            f"{fused.get('stride')}), its taps are {', '.join(t.name for t in meta.taps)}"
            + (f"; rebuild: {meta.rebuild}" if meta.rebuild else "")
        )
    if meta.artifact != artifact.name:
        raise ArtifactError(
            f"sidecar '{path.name}' describes '{meta.artifact}', not '{artifact.name}'"
            + (f"; rebuild: {meta.rebuild}" if meta.rebuild else "")
        )
    return meta


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
