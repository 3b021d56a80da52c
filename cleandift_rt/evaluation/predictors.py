"""The evaluators' predictor over a FeatureExtractor (any backend, or the DIFT baseline: see
``cleandift_rt.runtime.build_extractor``)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from ..extractor import FeatureExtractor, Features
from ..matching import cosine_argmax, sample_descriptors


class ExtractorPredictor:
    """``predict(source, target, points, source_key=, target_key=) → (N, 2) target points``.

    Each image's features are extracted once and kept (up to ``cache_size`` images, keyed by
    the caller's image keys), as DIFT's SPair evaluation does; matching is the exact cosine
    argmax over the target map upsampled to the target's original size (both maps reduced
    by a PCA fitted on the pair first when the extractor has ``pca_dim``).
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
        src_map, tgt_map = self.extractor.pair_maps(src[self.tap][0], tgt[self.tap][0])
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64), device=src_map.device)
        queries = sample_descriptors(src_map, pts, src.grid(0, self.tap))
        coords, _ = cosine_argmax(queries, tgt_map, grid=tgt.grid(0, self.tap))
        return coords.cpu().numpy().astype(np.float64)
