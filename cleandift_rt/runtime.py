"""Open an extractor: ``load_runtime(path)`` for any exported artifact (runner picked by the
backend registry from its sidecar), ``build_extractor(...)`` for what a command runs (an
artifact, CleanDIFT's single pass, or the DIFT baseline)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .artifacts import ArtifactError, read_sidecar
from .backends import registry
from .errors import CleanDIFTError
from .extractor import FeatureExtractor, resolve_device, resolve_dtype
from .protocol import DIFT_ENSEMBLE, DIFT_TIMESTEP


def load_runner(path: str | Path, device: str | torch.device | None = None, provider=None):
    """The runner of the artifact at ``path`` (format from its sidecar, class from the
    registry). ``provider``: onnxruntime's execution provider (the ``onnx`` format only)."""
    path = Path(path)
    meta = read_sidecar(path)
    dev = resolve_device(device)
    try:
        spec = registry.get(meta.format)
    except registry.BackendError:
        raise ArtifactError(f"'{path}': no runner for format '{meta.format}'") from None
    registry.check_options(spec, {"provider": provider}, kind="runtime")
    options = {"provider": provider} if provider is not None else {}
    return spec.runner_class()(path, meta, dev, **options)


def load_runtime(
    path: str | Path,
    *,
    device: str | torch.device | None = None,
    provider: str | None = None,
    policy: str = "square",
    resize_filter: str = "area",
    pca_dim: int | None = None,
) -> FeatureExtractor:
    """A FeatureExtractor over an exported artifact (ONNX, TensorRT engine, AOTInductor).

    Same call shape and results as ``FeatureExtractor.from_pretrained``; images are resized
    (``policy``) to the artifact's fixed input size. ``provider`` picks onnxruntime's
    execution provider (cpu, cuda, tensorrt); ``resize_filter`` as for ``prepare_image``. A
    fused artifact returns its one map ``fused`` (the sidecar's ``fusion`` says what it holds:
    ``extractor.fusion``); ``pca_dim`` reduces each matched pair with a PCA fitted on it.
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
        fusion=meta.fusion,
        pca_dim=pca_dim,
    )


def _artifact_fusion(fuse: str | None, tap_weights, fusion_alpha) -> int | None:
    """The PCA dimension an artifact is matched with: fusion is baked into its graph, so only
    ``pca:D`` (applied after it) and a plain ``concat`` (checked against it) apply."""
    from .fusion import fusion_for, parse_fuse

    fusion_for(None, (), fuse=fuse, tap_weights=tap_weights, fusion_alpha=fusion_alpha)
    return parse_fuse(fuse)[1]


def build_extractor(
    model: str = "toy",
    taps: str | Sequence[str] = ("us6",),
    *,
    artifact: str | None = None,
    dift: bool = False,
    t: int = DIFT_TIMESTEP,
    ensemble: int = DIFT_ENSEMBLE,
    device: str | None = None,
    dtype: str | None = None,
    resolution: int | None = None,
    policy: str = "square",
    base: str | None = None,
    timestep: float | None = None,
    resize_filter: str = "area",
    fuse: str | None = None,
    tap_weights: str | Sequence[float] | None = None,
    fusion_alpha: float | None = None,
) -> FeatureExtractor:
    """The extractor a command runs: an exported ``artifact`` (``load_runtime``), the DIFT
    baseline of ``model`` (``dift``: noisy ensemble at ``t``; fp32 unless ``dtype``), or
    CleanDIFT's single pass (``FeatureExtractor.from_pretrained``). ``base`` replaces the base
    of a hub preset (or names that of a .safetensors file); ``resize_filter``: see
    ``imaging.RESIZE_FILTERS``; ``fuse``, ``tap_weights``, ``fusion_alpha``: fusion, as in
    ``from_pretrained``."""
    if artifact is not None:
        if base is not None:
            raise CleanDIFTError("--base does not apply to an exported artifact: its weights are "
                                 "baked in (re-export with --base)")  # fmt: skip
        pca_dim = _artifact_fusion(fuse, tap_weights, fusion_alpha)
        fx = load_runtime(artifact, device=device, policy=policy, resize_filter=resize_filter,
                          pca_dim=pca_dim)  # fmt: skip
        if fuse is not None and not fx.fusion:
            raise CleanDIFTError(f"--fuse {fuse}: the artifact '{artifact}' holds plain taps "
                                 f"({', '.join(fx.taps)}): export it with --fuse")  # fmt: skip
        return fx
    if dift and (fuse is not None or tap_weights is not None or fusion_alpha is not None):
        raise CleanDIFTError("the DIFT baseline takes one plain tap: no --fuse, --tap-weights "
                             "or --fusion-alpha")  # fmt: skip
    if not dift:
        return FeatureExtractor.from_pretrained(
            model,
            taps,
            device=device,
            dtype=dtype,
            resolution=resolution,
            policy=policy,
            base=base,
            timestep=timestep,
            resize_filter=resize_filter,
            fuse=fuse,
            tap_weights=tap_weights,
            fusion_alpha=fusion_alpha,
        )
    from .backends.dift_runner import DIFTRunner
    from .models import load_model

    dev = resolve_device(device)
    dt = resolve_dtype(dtype or "fp32", dev)
    loaded = load_model(model, base=base).to(dev, dt)
    runner = DIFTRunner(loaded.dift(taps, t=t, ensemble=ensemble))
    return FeatureExtractor(
        runner,
        resolution=resolution if resolution is not None else loaded.resolution,
        policy=policy,
        model_name=loaded.name,
        description=f"DIFT baseline of {loaded.name} (t={t}, ensemble {ensemble})",
        resize_filter=resize_filter,
        hub_files=loaded.hub_files,
        prompt_encoder=loaded.prompt_encoder,
    )
