"""Runners: one interface over every engine that executes a FeatureNet.

A runner maps a uint8 batch (B, H, W, 3) to ``{tap: (B, C, H/stride, W/stride)}`` and
describes itself (taps, strides, channels, fixed input size or None, device).
"""

from .base import Runner
from .torch_runner import TorchRunner

__all__ = ["Runner", "TorchRunner"]
