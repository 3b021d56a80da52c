"""Runners: one interface over every engine that executes a FeatureNet, and the one registry
of backends and artifact formats (``registry``, importable without torch).

A runner maps a uint8 batch (B, H, W, 3) to ``{tap: (B, C, H/stride, W/stride)}`` and
describes itself (taps, strides, channels, fixed input size or None, batch range, device).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Runner", "TorchRunner"]
_EXPORTS = {"Runner": "base", "TorchRunner": "torch_runner"}

if TYPE_CHECKING:
    from .base import Runner
    from .torch_runner import TorchRunner


def __getattr__(name: str) -> Any:  # lazily: `backends.registry` must not import torch
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
