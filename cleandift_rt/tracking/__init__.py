"""Real-time keypoint tracking from a camera, video file, image folder or URL.

>>> from cleandift_rt import FeatureExtractor
>>> from cleandift_rt.tracking import Tracker
>>> tracker = Tracker(FeatureExtractor.from_pretrained("sd21"), grid=16)
>>> for result in tracker.stream(0):          # camera 0
...     result.points, result.scores, result.lost
"""

from .session import run_tracking
from .sources import CaptureThread, Frame, open_source
from .tracker import StreamStats, Tracker, TrackResult

__all__ = [
    "CaptureThread",
    "Frame",
    "StreamStats",
    "TrackResult",
    "Tracker",
    "open_source",
    "run_tracking",
]
