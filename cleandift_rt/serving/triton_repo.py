"""An exported artifact as a Triton Inference Server model repository.

    REPOSITORY/NAME/config.pbtxt
    REPOSITORY/NAME/1/model.onnx   (+ model.onnx.json, the sidecar; + external data if any)
    REPOSITORY/NAME/1/model.plan   (+ model.plan.json) for a TensorRT engine

The config says what the sidecar says: platform ``onnxruntime_onnx`` or ``tensorrt_plan``;
``max_batch_size`` = the artifact's largest batch (0 for a fixed batch > 1, whose input then
carries the batch dimension); ``dynamic_batching`` with preferred sizes and a queue delay; one
UINT8 NHWC input ``images`` of dims [H, W, 3]; one output per tap of dims [C, H/stride,
W/stride] in the artifact's precision. The sidecar beside the model names ``model.onnx`` /
``model.plan``, so ``load_runtime`` opens the repository's copy too. Written without any
Triton package; ``tritonclient``'s ModelConfig protobuf parses it (see the tests).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..artifacts import ArtifactError, ArtifactMetadata, read_sidecar, write_sidecar
from ..files import atomic_path

PLATFORMS = {"onnx": ("onnxruntime_onnx", "model.onnx"), "engine": ("tensorrt_plan", "model.plan")}
TRITON_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "bf16": "TYPE_BF16"}
DEFAULT_QUEUE_DELAY_US = 5000


@dataclass
class TritonModel:
    """One model of a repository. ``dims`` exclude the batch axis when max_batch_size > 0."""

    name: str
    platform: str
    max_batch_size: int
    input_name: str
    input_dims: list[int]
    outputs: dict[str, tuple[str, list[int]]]  # tap → (Triton data type, dims)
    preferred_batch_sizes: list[int] = field(default_factory=list)
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    gpu_instances: int | None = None  # KIND_GPU instance count (engines), None: Triton's default

    @classmethod
    def from_metadata(
        cls, meta: ArtifactMetadata, name: str, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    ) -> TritonModel:
        """The Triton model of an artifact; ArtifactError when Triton cannot serve it."""
        if meta.format not in PLATFORMS:
            raise ArtifactError(
                f"a {meta.format} artifact cannot be served by Triton: export --format onnx "
                "or --format engine"
            )
        if meta.precision not in TRITON_TYPES:
            raise ArtifactError(f"no Triton data type for precision '{meta.precision}'")
        if queue_delay_us < 0:
            raise ArtifactError(f"the queue delay must be >= 0 us, got {queue_delay_us}")
        lo, hi = meta.batch
        frame = [meta.height, meta.width, 3]
        outputs = {t.name: [t.channels, meta.height // t.stride, meta.width // t.stride]
                   for t in meta.taps}  # fmt: skip
        if lo == 1:  # Triton batches 1..hi along axis 0
            max_batch, in_dims, batch_dims = hi, frame, []
        elif lo == hi:  # a fixed batch > 1: the client sends whole batches, Triton does not batch
            max_batch, in_dims, batch_dims = 0, [lo, *frame], [lo]
        else:
            raise ArtifactError(
                f"the artifact takes batches {lo}..{hi}, but Triton sends batches from 1: "
                f"re-export with --batch 1 --max-batch {hi}"
                + (f" (was: {meta.rebuild})" if meta.rebuild else "")
            )
        dtype = TRITON_TYPES[meta.precision]
        preferred = sorted({b for b in (2, 4, 8, 16, 32, 64, 128) if b < max_batch} | {max_batch})
        return cls(
            name=name,
            platform=PLATFORMS[meta.format][0],
            max_batch_size=max_batch,
            input_name=meta.input_name,
            input_dims=in_dims,
            outputs={t: (dtype, batch_dims + dims) for t, dims in outputs.items()},
            preferred_batch_sizes=preferred if max_batch > 1 else [],
            queue_delay_us=int(queue_delay_us),
            gpu_instances=1 if meta.format == "engine" else None,
        )

    def to_pbtxt(self) -> str:
        """The ``config.pbtxt`` text (protobuf text format of Triton's ModelConfig)."""

        def dims(values: list[int]) -> str:
            return "[ " + ", ".join(str(v) for v in values) + " ]"

        fmt = "\n    format: FORMAT_NHWC" if self.max_batch_size > 0 else ""
        lines = [
            f'name: "{self.name}"',
            f'platform: "{self.platform}"',
            f"max_batch_size: {self.max_batch_size}",
            "input [",
            "  {",
            f'    name: "{self.input_name}"',
            f"    data_type: TYPE_UINT8{fmt}",
            f"    dims: {dims(self.input_dims)}",
            "  }",
            "]",
            "output [",
        ]
        outs = [
            f'  {{\n    name: "{tap}"\n    data_type: {dtype}\n    dims: {dims(d)}\n  }}'
            for tap, (dtype, d) in self.outputs.items()
        ]
        lines += [",\n".join(outs), "]"]
        if self.preferred_batch_sizes:
            lines += [
                "dynamic_batching {",
                f"  preferred_batch_size: {dims(self.preferred_batch_sizes)}",
                f"  max_queue_delay_microseconds: {self.queue_delay_us}",
                "}",
            ]
        if self.gpu_instances:
            lines += ["instance_group [", f"  {{ kind: KIND_GPU, count: {self.gpu_instances} }}",
                      "]"]  # fmt: skip
        return "\n".join(lines) + "\n"


def model_name(meta: ArtifactMetadata, artifact: Path) -> str:
    """A Triton model name from the artifact's file name (letters, digits, ``_ . -``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", artifact.stem).strip("._") or "cleandift"


def write_triton_repository(
    artifact: str | Path,
    repository: str | Path,
    *,
    name: str | None = None,
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    rebuild: str | None = None,
) -> Path:
    """Write ``repository/NAME/`` (config.pbtxt, version 1 with the model and its sidecar) for
    an exported ONNX or TensorRT artifact; an existing ``NAME/`` is replaced only once the new
    one is complete. Returns the model directory. ArtifactError on an artifact Triton cannot
    serve or a bad name. ``rebuild``: the command that rebuilds the repository (recorded in the
    sidecar; default: the artifact's own)."""
    artifact = Path(artifact)
    meta = read_sidecar(artifact)
    name = name or model_name(meta, artifact)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ArtifactError(f"bad Triton model name '{name}' (letters, digits, _ . -)")
    config = TritonModel.from_metadata(meta, name, queue_delay_us)
    file_name = PLATFORMS[meta.format][1]
    final = Path(repository) / name
    with atomic_path(final) as staging:  # a complete repository entry or none
        version = staging / "1"
        version.mkdir(parents=True)
        _link_or_copy(artifact, version / file_name)
        for extra in _external_data(artifact):  # ONNX weights over 2 GB: same file name
            _link_or_copy(extra, version / extra.name)
        build = {**meta.build, "triton": {"model": name, "platform": config.platform,
                                          "source": artifact.name}}  # fmt: skip
        write_sidecar(
            version / file_name,
            replace(meta, artifact=file_name, build=build, rebuild=rebuild or meta.rebuild),
        )
        (staging / "config.pbtxt").write_text(config.to_pbtxt())
    return final


def _external_data(artifact: Path) -> list[Path]:
    """ONNX external-data files the export wrote beside ``artifact`` (``<name>.data``)."""
    data = artifact.with_name(artifact.name + ".data")
    return [data] if data.is_file() else []


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
