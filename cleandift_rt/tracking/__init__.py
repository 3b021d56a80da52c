"""Real-time keypoint tracking from a camera, video file, image folder or URL.

>>> from cleandift_rt import FeatureExtractor
>>> from cleandift_rt.tracking import Tracker
>>> tracker = Tracker(FeatureExtractor.from_pretrained("sd21"), grid=16)
>>> for result in tracker.stream(0):          # camera 0
...     result.points, result.scores, result.lost
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "run_tracking": "session",
    "CaptureThread": "sources",
    "Frame": "sources",
    "open_source": "sources",
    "StreamStats": "tracker",
    "Tracker": "tracker",
    "TrackResult": "tracker",
}
__all__ = [
    "CaptureThread",
    "Frame",
    "StreamStats",
    "TrackResult",
    "Tracker",
    "open_source",
    "run_tracking",
]

if TYPE_CHECKING:
    from .session import run_tracking
    from .sources import CaptureThread, Frame, open_source
    from .tracker import StreamStats, Tracker, TrackResult


def __getattr__(name: str) -> Any:  # names imported on first use: sources need no torch
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cleandift_rt.tracking' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
