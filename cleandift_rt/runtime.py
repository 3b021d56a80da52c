"""`load_runtime(path)`: any exported artifact as a FeatureExtractor, runner picked by metadata."""

from __future__ import annotations

from pathlib import Path

import torch

from .artifacts import ArtifactError, read_sidecar
from .extractor import FeatureExtractor, resolve_device


def load_runner(path: str | Path, device: str | torch.device | None = None, provider=None):
    """The runner of the artifact at ``path`` (format from its sidecar)."""
    path = Path(path)
    meta = read_sidecar(path)
    dev = resolve_device(device)
    if meta.format == "onnx":
        from .backends.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, meta, dev, provider)
    if meta.format == "aoti":
        from .backends.aoti_runner import AOTIRunner

        return AOTIRunner(path, meta, dev)
    if meta.format == "engine":
        from .backends.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(path, meta, dev)
    raise ArtifactError(f"'{path}': no runner for format '{meta.format}'")


def load_runtime(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    provider: str | None = None,
    policy: str = "square",
    resize_filter: str = "area",
) -> FeatureExtractor:
    """A FeatureExtractor over an exported artifact (ONNX, TensorRT engine, AOTInductor).

    Same call shape and results as ``FeatureExtractor.from_pretrained``; images are resized
    (``policy``) to the artifact's fixed input size. ``provider`` picks onnxruntime's
    execution provider (cpu, cuda, tensorrt); ``resize_filter`` as for ``prepare_image``.
    """
    runner = load_runner(path, device, provider)
    meta = runner.meta
    return FeatureExtractor(
        runner,
        policy=policy,
        model_name=meta.model,
        description=f"{meta.format} artifact {Path(path).name} ({meta.precision})",
        resize_filter=resize_filter,
        hub_files=meta.hub_files,
    )
