"""Dense correspondence matching on low-resolution diffusion feature maps.

* :class:`PixelGrid` maps output pixel coordinates to feature-cell coordinates.
* :func:`sample_descriptors` bilinearly samples query descriptors at pixel points.
* :func:`cosine_argmax` is the exact, memory-bounded DIFT argmax reference;
  :func:`cosine_argmax_fast` is the same match on the fastest exact backend (fused Triton
  kernel on CUDA, else the low-resolution torch method :func:`cosine_argmax_lowres`).
* Descriptor sets (kornia-like index pairs): :func:`nearest`, :func:`mutual_nearest`,
  :func:`ratio_test`, :func:`top_k`.
* Feature maps (pixel coordinates): :func:`match_points` (optional cycle check),
  :func:`dense_matches`.
"""

from cleandift_rt.matching.api import (
    DenseMatches,
    MapMatches,
    Matches,
    RatioMatches,
    TopK,
    dense_matches,
    match_points,
    mutual_nearest,
    nearest,
    ratio_test,
    top_k,
)
from cleandift_rt.matching.dispatch import cosine_argmax_fast
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.lowres import cosine_argmax_lowres
from cleandift_rt.matching.reference import cosine_argmax, sample_descriptors

__all__ = [
    "DenseMatches",
    "MapMatches",
    "Matches",
    "PixelGrid",
    "RatioMatches",
    "TopK",
    "cosine_argmax",
    "cosine_argmax_fast",
    "cosine_argmax_lowres",
    "dense_matches",
    "match_points",
    "mutual_nearest",
    "nearest",
    "ratio_test",
    "sample_descriptors",
    "top_k",
]
