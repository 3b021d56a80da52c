"""Dense correspondence matching on low-resolution diffusion feature maps.

* :class:`PixelGrid` maps output pixel coordinates to feature-cell coordinates.
* :func:`sample_descriptors` bilinearly samples query descriptors at pixel points.
* :func:`cosine_argmax` is the exact, memory-bounded DIFT argmax reference.
"""

from cleandift_rt.matching.grid import PixelGrid
from cleandift_rt.matching.reference import cosine_argmax, sample_descriptors

__all__ = ["PixelGrid", "cosine_argmax", "sample_descriptors"]
