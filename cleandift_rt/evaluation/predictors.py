"""The evaluators' predictor over a FeatureExtractor (any backend, or the DIFT baseline: see
``cleandift_rt.runtime.build_extractor``)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ..extractor import FeatureExtractor, Features, MatchResult
from ..matching.refine import DEFAULT_TEMPERATURE, DEFAULT_WINDOW, check_refine

#: The cache key suffix of a target's horizontal mirror (flip alignment).
FLIP_KEY = "\0flip"


class ExtractorPredictor:
    """``predict(source, target, points, source_key=, target_key=) → (N, 2) target points``;
    ``predict.match(...)`` gives the whole ``MatchResult`` (scores, ``flipped``).

    Each image's features are extracted once and kept (up to ``cache_size`` images, keyed by
    the caller's image keys), as DIFT's SPair evaluation does; with ``flip_align`` a target's
    horizontal mirror is extracted and cached too (under the target's key + ``FLIP_KEY``).
    Matching is ``FeatureExtractor.match_pair``, the code path of ``FeatureExtractor.match``:
    the exact cosine argmax over the target map upsampled to the target's original size (both
    maps reduced by a PCA fitted on the pair first when the extractor has ``pca_dim``), then
    ``refine`` and flip alignment exactly as ``match(..., refine=..., flip_align=True)``.
    ``match`` extracts a pair in one batch, this predictor one image at a time (so that it can
    cache them): with policy ``square`` the features agree to float rounding (~1e-6); with
    ``fit`` a batch is padded to its largest image, a lone image is not.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        tap: str | None = None,
        cache_size: int = 32,
        *,
        refine: str = "none",
        refine_window: int = DEFAULT_WINDOW,
        refine_temperature: float = DEFAULT_TEMPERATURE,
        flip_align: bool = False,
    ):
        check_refine(refine, refine_window, refine_temperature)
        self.extractor = extractor
        self.tap = tap or extractor.taps[0]
        self.cache_size = cache_size
        self.refine = refine
        self.refine_window = refine_window
        self.refine_temperature = refine_temperature
        self.flip_align = bool(flip_align)
        self._cache: OrderedDict[str, Features] = OrderedDict()

    @property
    def options(self) -> dict[str, Any]:
        """The matching options, as ``FeatureExtractor.match`` keywords (and the eval reports)."""
        return {
            "refine": self.refine,
            "refine_window": self.refine_window,
            "refine_temperature": self.refine_temperature,
            "flip_align": self.flip_align,
        }

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

    def match(
        self,
        source: np.ndarray,
        target: np.ndarray,
        points: np.ndarray,
        source_key: str | None = None,
        target_key: str | None = None,
        prompt: str | None = None,
    ) -> MatchResult:
        """The pair's ``MatchResult`` (target points in the target's original pixels, also when
        the flip was used). ``prompt``: condition both images on it (DIFT's per-category
        prompt); cache keys then include it."""
        if prompt is not None:
            self.extractor.set_prompt(prompt)
            source_key, target_key = (
                None if k is None else f"{prompt}\0{k}" for k in (source_key, target_key)
            )
        pts = np.asarray(points, dtype=np.float64)
        if pts.size == 0:  # nothing to match (a warp that leaves no grid point inside)
            empty = pts.reshape(0, 2)
            return MatchResult(empty, empty.copy(), np.zeros(0, np.float32), self.tap, self.refine)
        src, tgt = self.features(source, source_key), self.features(target, target_key)
        mirror = None
        if self.flip_align:
            mirror_key = None if target_key is None else target_key + FLIP_KEY
            mirror = self.features(np.ascontiguousarray(np.asarray(target)[:, ::-1]), mirror_key)
        return self.extractor.match_pair(
            src, tgt, pts, flipped=mirror, tap=self.tap,
            refine=self.refine, refine_window=self.refine_window,
            refine_temperature=self.refine_temperature,
        )  # fmt: skip

    def __call__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """``match(...).target_points``: (N, 2) float64 in the target's original pixels."""
        return self.match(*args, **kwargs).target_points
