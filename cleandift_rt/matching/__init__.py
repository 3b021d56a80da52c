"""Dense correspondence matching on low-resolution diffusion feature maps.

* :class:`PixelGrid` maps output pixel coordinates to feature-cell coordinates.
* :func:`sample_descriptors` bilinearly samples query descriptors at pixel points.
* :func:`cosine_argmax` is the exact, memory-bounded DIFT argmax reference.
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
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.reference import cosine_argmax, sample_descriptors

__all__ = [
    "DenseMatches",
    "MapMatches",
    "Matches",
    "PixelGrid",
    "RatioMatches",
    "TopK",
    "cosine_argmax",
    "dense_matches",
    "match_points",
    "mutual_nearest",
    "nearest",
    "ratio_test",
    "sample_descriptors",
    "top_k",
]
