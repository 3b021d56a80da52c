"""Dense correspondence matching on low-resolution diffusion feature maps.

* :class:`PixelGrid` maps output pixel coordinates to feature-cell coordinates.
* :func:`sample_descriptors` bilinearly samples query descriptors at pixel points.
* :func:`cosine_argmax` is DIFT's upsampled cosine argmax, exact, on the fastest backend
  (``backend="auto"``: the fused Triton kernel on CUDA, else the low-resolution torch method
  :func:`cosine_argmax_lowres`); :func:`cosine_argmax_reference` is the banded ground truth.
* :func:`cosine_argmax_window`: the same score searched within a radius of each query's centre.
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
from cleandift_rt.matching.argmax import cosine_argmax
from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.lowres import cosine_argmax_lowres
from cleandift_rt.matching.reference import cosine_argmax_reference, sample_descriptors
from cleandift_rt.matching.window import cosine_argmax_window

__all__ = [
    "DenseMatches",
    "MapMatches",
    "Matches",
    "PixelGrid",
    "RatioMatches",
    "TopK",
    "cosine_argmax",
    "cosine_argmax_lowres",
    "cosine_argmax_reference",
    "cosine_argmax_window",
    "dense_matches",
    "match_points",
    "mutual_nearest",
    "nearest",
    "ratio_test",
    "sample_descriptors",
    "top_k",
]
