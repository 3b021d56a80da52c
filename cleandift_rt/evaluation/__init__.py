"""Correspondence accuracy: PCK bookkeeping, SPair-71k (DIFT protocol), offline homographies.

Every evaluator takes a *predictor*: ``predict(source, target, points) -> target points``
(uint8 ``(H, W, 3)`` images, ``(N, 2)`` float64 ``(x, y)`` pixels in, ``(N, 2)`` pixels out), so
any model, backend or baseline can be scored, and tests can inject an exact one.
"""

from .pck import PCKTally, end_point_errors, format_summary
from .predictors import ExtractorPredictor

__all__ = [
    "ExtractorPredictor",
    "PCKTally",
    "end_point_errors",
    "format_summary",
]
