"""Runners: one interface over every engine that executes a FeatureNet, and the one registry
of backends and artifact formats (``registry``, importable without torch).

A runner maps a uint8 batch (B, H, W, 3) to ``{tap: (B, C, H/stride, W/stride)}`` and
describes itself (taps, strides, channels, fixed input size or None, batch range, device).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

__all__ = ["Runner", "TorchRunner"]
_EXPORTS = {"Runner": "base", "TorchRunner": "torch_runner"}

if TYPE_CHECKING:
    from .base import Runner
    from .torch_runner import TorchRunner


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
