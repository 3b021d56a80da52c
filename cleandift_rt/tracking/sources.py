"""Frame sources (camera, video file, image folder/glob, URL, Python iterable) and the capture
thread that decouples reading from processing.

Every source yields uint8 ``(H, W, 3)`` RGB frames. :class:`CaptureThread` reads a source on its
own thread into a buffer with one of two policies:

* ``latest``: keep only the newest frame; a frame not taken before the next one arrives is
  dropped (counted). Latency never grows when processing is slower than the source.
* ``all``: keep every frame (bounded queue: the reader waits when it is full), for files.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from ..errors import CleanDIFTError, one_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
BUFFER_POLICIES = ("auto", "latest", "all")


@dataclass
class Frame:
    """One frame handed to the tracker.

    image: uint8 (H, W, 3) RGB; index: 0-based position in the source (gaps = dropped frames);
    timestamp: seconds, the source position for files, time since the stream started for live
    sources; arrival: ``time.perf_counter()`` when the frame had been read (latency origin).
    """

    image: np.ndarray
    index: int
    timestamp: float
    arrival: float


class FrameSource(Protocol):
    """A stream of frames. ``read()`` → (uint8 (H, W, 3) RGB, timestamp s) or None at the end."""

    name: str
    live: bool
    fps: float | None
    length: int | None

    def read(self) -> tuple[np.ndarray, float] | None: ...

    def close(self) -> None: ...


def _to_rgb(frame: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or grey, uint8) → contiguous uint8 (H, W, 3) RGB."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


@contextmanager
def quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's and FFmpeg's own log lines (a failed open is reported as one error
    line by us, not as backend warnings); the user's settings come back afterwards."""
    level = cv2.utils.logging.getLogLevel()
    had = "OPENCV_FFMPEG_LOGLEVEL" in os.environ
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(level)
        if not had:
            os.environ.pop("OPENCV_FFMPEG_LOGLEVEL", None)


class VideoCaptureSource:
    """A camera index, a video file or a stream URL, read with ``cv2.VideoCapture``."""

    def __init__(self, spec: str | int):
        self.name = str(spec)
        self.live = isinstance(spec, int) or "://" in str(spec)
        with quiet_opencv():
            self._cap = cv2.VideoCapture(spec)
        if not self._cap.isOpened():
            self._cap.release()
            what = f"camera {spec}" if isinstance(spec, int) else f"'{spec}'"
            raise CleanDIFTError(f"cannot open video source {what}")
        if isinstance(spec, int):  # keep the driver's own queue short: we want the newest frame
            self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.length = count if count > 0 and not self.live else None
        self._start = time.perf_counter()
        self._count = 0

    def read(self) -> tuple[np.ndarray, float] | None:
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        if self.live:
            stamp = time.perf_counter() - self._start
        else:
            msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
            stamp = (
                msec / 1000.0 if msec > 0 or self._count == 0 else self._count / (self.fps or 30)
            )
        self._count += 1
        return _to_rgb(frame), float(stamp)

    def close(self) -> None:
        self._cap.release()


class ImageFilesSource:
    """Images of a folder (sorted by name) or of a glob pattern, one frame each."""

    def __init__(self, spec: str, paths: list[Path], fps: float = 30.0):
        if not paths:
            raise CleanDIFTError(f"no images found in '{spec}'")
        self.name = spec
        self.live = False
        self.fps = fps
        self.length = len(paths)
        self._paths = iter(paths)
        self._count = 0

    def read(self) -> tuple[np.ndarray, float] | None:
        from ..imaging import load_image

        path = next(self._paths, None)
        if path is None:
            return None
        image = load_image(path)
        stamp = self._count / self.fps
        self._count += 1
        return image, stamp

    def close(self) -> None:
        self._paths = iter(())


class IterableSource:
    """Frames from Python: an iterable of uint8 (H, W, 3) RGB arrays (or (array, timestamp))."""

    def __init__(self, frames: Iterable[Any], fps: float | None = None, live: bool = False):
        self.name = type(frames).__name__
        self.live = live
        self.fps = fps
        self.length = len(frames) if hasattr(frames, "__len__") else None  # type: ignore[arg-type]
        self._it: Iterator[Any] = iter(frames)
        self._start = time.perf_counter()
        self._count = 0

    def read(self) -> tuple[np.ndarray, float] | None:
        item = next(self._it, None)
        if item is None:
            return None
        image, stamp = item if isinstance(item, tuple) else (item, None)
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise CleanDIFTError(
                f"frames must be uint8 (H, W, 3) RGB arrays, got {image.dtype} {image.shape}"
            )
        if stamp is None:
            stamp = self._count / self.fps if self.fps else time.perf_counter() - self._start
        self._count += 1
        return image, float(stamp)

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


def open_source(source: Any) -> FrameSource:
    """A :class:`FrameSource` for a camera index (``0`` or ``"0"``), a video file, a folder or
    glob of images, a URL (``rtsp://``, ``http://``, ...), an iterable of frames, or an
    already open source.

    Raises:
        CleanDIFTError: the source does not exist or cannot be opened.
    """
    if hasattr(source, "read") and hasattr(source, "close"):
        return source
    if isinstance(source, int) or (isinstance(source, str) and source.strip().isdigit()):
        return VideoCaptureSource(int(source))
    if isinstance(source, (str, Path)):
        spec = str(source)
        if "://" in spec:
            return VideoCaptureSource(spec)
        if any(ch in spec for ch in "*?["):
            paths = [Path(p) for p in sorted(glob.glob(spec))]
            return ImageFilesSource(spec, [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES])
        path = Path(spec)
        if path.is_dir():
            paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            return ImageFilesSource(spec, paths)
        if not path.exists():
            raise CleanDIFTError(f"cannot open video source '{spec}': no such file or directory")
        return VideoCaptureSource(spec)
    if isinstance(source, Iterable):
        return IterableSource(source)
    raise CleanDIFTError(f"cannot use {type(source).__name__} as a frame source")


def resolve_buffer(policy: str, source: FrameSource) -> str:
    """``auto`` → ``latest`` for live sources (camera, URL), ``all`` for files and folders."""
    if policy not in BUFFER_POLICIES:
        raise CleanDIFTError(f"unknown buffer policy '{policy}' (use {', '.join(BUFFER_POLICIES)})")
    if policy == "auto":
        return "latest" if source.live else "all"
    return policy


class CaptureThread:
    """Reads ``source`` on a daemon thread into a ``latest`` or ``all`` buffer.

    ``get()`` blocks for the next frame and returns None once the source has ended (or failed:
    ``error`` then holds a one-line reason) and the buffer is empty. ``dropped`` counts frames
    replaced in the ``latest`` buffer before the consumer took them.
    """

    def __init__(self, source: FrameSource, policy: str = "latest", queue_size: int = 8):
        if policy not in ("latest", "all"):
            raise CleanDIFTError(f"unknown buffer policy '{policy}' (use latest or all)")
        self.source = source
        self.policy = policy
        self.dropped = 0
        self.read_count = 0
        self.error: str | None = None
        self._queue: deque[Frame] = deque()
        self._queue_size = 1 if policy == "latest" else max(1, queue_size)
        self._cond = threading.Condition()
        self._finished = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cleandift-capture", daemon=True)

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def read_now(self) -> Frame | None:
        """One frame read on the calling thread before ``start()`` (the reference / warm-up
        frame), or None when the source is empty or fails (``error`` says why)."""
        try:
            return self._read()
        except Exception as exc:
            self.error = f"source failed after {self.read_count} frame(s): {one_line(exc)}"
            return None

    def _read(self) -> Frame | None:
        item = self.source.read()
        if item is None:
            return None
        image, stamp = item
        frame = Frame(image, self.read_count, stamp, time.perf_counter())
        self.read_count += 1
        return frame

    def _run(self) -> None:
        try:
            while not self._stop:
                frame = self._read()
                if frame is None:
                    break
                with self._cond:
                    if self.policy == "latest":
                        if self._queue:
                            self._queue.popleft()
                            self.dropped += 1
                    else:
                        while len(self._queue) >= self._queue_size and not self._stop:
                            self._cond.wait(0.1)
                    self._queue.append(frame)
                    self._cond.notify_all()
        except Exception as exc:  # a source failing mid-way ends the stream cleanly
            self.error = f"source failed after {self.read_count} frame(s): {one_line(exc)}"
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame (oldest for ``all``, newest for ``latest``), or None at the end."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while not self._queue and not self._finished:
                wait = None if deadline is None else deadline - time.perf_counter()
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(0.1 if wait is None else min(wait, 0.1))
            if not self._queue:
                return None
            frame = self._queue.popleft()
            self._cond.notify_all()
            return frame

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the reader to stop, wait for it briefly, then close the source."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self.source.close()
