"""Real-time keypoint tracking from a camera, video file, image folder or URL.

>>> from cleandift_rt import FeatureExtractor
>>> from cleandift_rt.tracking import Tracker
>>> tracker = Tracker(FeatureExtractor.from_pretrained("sd21"), grid=16)
>>> for result in tracker.stream(0):          # camera 0
...     result.points, result.scores, result.lost
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
