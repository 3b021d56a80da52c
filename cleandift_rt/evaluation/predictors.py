"""Predictors for the evaluators: a FeatureExtractor (any backend) or the DIFT baseline.

``DIFTRunner`` wraps the noisy-ensemble DIFT extractor in the runner interface, so the baseline
goes through exactly the same resizing, coordinate transforms and matching as CleanDIFT.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from ..backends.base import check_batch
from ..extractor import FeatureExtractor, Features, resolve_device, resolve_dtype
from ..matching import cosine_argmax_fast, sample_descriptors
from ..models import DIFT_ENSEMBLE, DIFT_TIMESTEP, DIFTExtractor


class DIFTRunner:
    """Runner of the DIFT baseline: uint8 (B, H, W, 3) → {tap: ensemble-averaged (B, C, h, w)}.

    Noise comes from ``seed`` on every call, so the same images give the same features.
    """

    name = "dift"

    def __init__(self, dift: DIFTExtractor, seed: int = 0):
        param = next(dift.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.dift = dift.eval()
        self.seed = seed
        self.taps = dift.taps
        self.strides = {s.name: s.stride for s in dift.unet.specs}
        self.channels = {s.name: s.channels for s in dift.unet.specs}
        self.input_size = None

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        check_batch(images, None)
        x = torch.as_tensor(images).to(self.device)
        with torch.inference_mode():
            return dict(zip(self.taps, self.dift(x, seed=self.seed)))


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
) -> FeatureExtractor:
    """The extractor an evaluation runs: an exported ``artifact`` (``load_runtime``), the DIFT
    baseline of ``model`` (``dift``: noisy ensemble at ``t``; fp32 unless ``dtype``), or
    CleanDIFT's single pass (``FeatureExtractor.from_pretrained``). ``base`` replaces the base
    of a hub preset (or names that of a .safetensors file); ``resize_filter``: see
    ``imaging.RESIZE_FILTERS``."""
    if artifact is not None:
        from ..runtime import load_runtime

        return load_runtime(artifact, device=device, policy=policy, resize_filter=resize_filter)
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
        )
    from ..models import load_model

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


class ExtractorPredictor:
    """``predict(source, target, points, source_key=, target_key=) → (N, 2) target points``.

    Each image's features are extracted once and kept (up to ``cache_size`` images, keyed by
    the caller's image keys), as DIFT's SPair evaluation does; matching is the exact cosine
    argmax over the target map upsampled to the target's original size.
    """

    def __init__(self, extractor: FeatureExtractor, tap: str | None = None, cache_size: int = 32):
        self.extractor = extractor
        self.tap = tap or extractor.taps[0]
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Features] = OrderedDict()

    def features(self, image: np.ndarray, key: str | None = None) -> Features:
        """Features of one image (cached under ``key`` when given)."""
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        feats = self.extractor(image)
        if key is not None and self.cache_size > 0:
            self._cache[key] = feats
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return feats

    def __call__(
        self,
        source: np.ndarray,
        target: np.ndarray,
        points: np.ndarray,
        source_key: str | None = None,
        target_key: str | None = None,
        prompt: str | None = None,
    ) -> np.ndarray:
        """``prompt``: condition both images on it (DIFT's per-category prompt); cache keys
        then include it."""
        if prompt is not None:
            self.extractor.set_prompt(prompt)
            source_key, target_key = (
                None if k is None else f"{prompt}\0{k}" for k in (source_key, target_key)
            )
        src, tgt = self.features(source, source_key), self.features(target, target_key)
        fmap = src[self.tap]
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64), device=fmap.device)
        queries = sample_descriptors(fmap[0], pts, src.grid(0, self.tap))
        coords, _ = cosine_argmax_fast(queries, tgt[self.tap][0], grid=tgt.grid(0, self.tap))
        return coords.cpu().numpy().astype(np.float64)
