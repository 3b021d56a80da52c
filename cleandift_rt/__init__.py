"""cleandift-rt: noise-free Stable Diffusion features (CleanDIFT) in one pass, and fast matching.

    >>> from cleandift_rt import FeatureExtractor
    >>> fx = FeatureExtractor.from_pretrained("sd21", taps=("us6",))
    >>> result = fx.match("a.jpg", "b.jpg", [(120, 80), (300, 210)])

Names are imported on first use, so ``import cleandift_rt`` (and the CLI) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "CleanDIFTError": "errors",
    "FeatureExtractor": "extractor",
    "Features": "extractor",
    "FeatureStore": "store",
    "MatchResult": "extractor",
    "ImageTransform": "imaging",
    "load_image": "imaging",
    "prepare_image": "imaging",
    "PixelGrid": "matching",
    "cosine_argmax": "matching",
    "cosine_argmax_reference": "matching",
    "sample_descriptors": "matching",
    "match_points": "matching",
    "mutual_nearest": "matching",
    "ratio_test": "matching",
    "top_k": "matching",
    "dense_matches": "matching",
    "load_runtime": "runtime",
    "build_extractor": "runtime",
    "load_model": "models",
    "Tracker": "tracking",
}
__all__ = [
    "CleanDIFTError",
    "FeatureExtractor",
    "FeatureStore",
    "Features",
    "ImageTransform",
    "MatchResult",
    "PixelGrid",
    "Tracker",
    "build_extractor",
    "cosine_argmax",
    "cosine_argmax_reference",
    "dense_matches",
    "load_image",
    "load_model",
    "load_runtime",
    "match_points",
    "mutual_nearest",
    "prepare_image",
    "ratio_test",
    "sample_descriptors",
    "top_k",
]

if TYPE_CHECKING:
    from .errors import CleanDIFTError
    from .extractor import FeatureExtractor, Features, MatchResult
    from .imaging import ImageTransform, load_image, prepare_image
    from .matching import (
        PixelGrid,
        cosine_argmax,
        cosine_argmax_reference,
        dense_matches,
        match_points,
        mutual_nearest,
        ratio_test,
        sample_descriptors,
        top_k,
    )
    from .models import load_model
    from .runtime import build_extractor, load_runtime
    from .store import FeatureStore
    from .tracking import Tracker


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
