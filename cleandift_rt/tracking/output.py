"""Tracking outputs: the annotated overlay, an mp4 video, JSONL tracks and a live window.

Writers open lazily on the first frame (bad input never leaves a file behind) and ``close()``
always leaves a complete, readable file with every frame written so far: the video goes to a
hidden temporary file in the same folder and replaces the destination when closed; JSONL lines
are flushed one by one.
"""

from __future__ import annotations

import json
import os
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from ..errors import CleanDIFTError, one_line
from ..files import temporary_sibling
from ..viz import point_colors
from .tracker import TrackResult

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
LOST_COLOR = (128, 128, 128)


class Overlay:
    """Draws points (coloured by their reference position), trails, ids, and an FPS / latency
    line on frames. ``draw(result, fps)`` → uint8 (H, W, 3) RGB copy of the frame."""

    def __init__(self, trail: int = 20, ids: bool = True):
        self.trail = max(0, int(trail))
        self.ids = ids
        self._colors: np.ndarray | None = None
        self._trails: list[deque] = []

    def draw(self, result: TrackResult, fps: float | None = None) -> np.ndarray:
        canvas = np.ascontiguousarray(result.image.copy())
        h, w = canvas.shape[:2]
        k = len(result.points)
        if self._colors is None or len(self._colors) != k:
            self._colors = point_colors(result.points, canvas.shape)
            self._trails = [deque(maxlen=self.trail + 1) for _ in range(k)]
        radius = max(2, round(min(h, w) / 160))
        font = max(0.3, min(h, w) / 900)
        for i, ((x, y), lost) in enumerate(zip(result.points, result.lost)):
            color = tuple(int(c) for c in self._colors[i])
            if not lost:
                self._trails[i].append((round(x), round(y)))
            if self.trail and len(self._trails[i]) > 1:
                cv2.polylines(canvas, [np.array(self._trails[i], np.int32)], False, color, 1,
                              cv2.LINE_AA)  # fmt: skip
            c = (round(x), round(y))
            if lost:
                cv2.drawMarker(canvas, c, LOST_COLOR, cv2.MARKER_TILTED_CROSS, 2 * radius + 2, 1)
            else:
                cv2.circle(canvas, c, radius, color, -1, cv2.LINE_AA)
                cv2.circle(canvas, c, radius, (0, 0, 0), 1, cv2.LINE_AA)
            if self.ids:
                cv2.putText(canvas, str(i), (c[0] + radius + 1, c[1] - radius - 1),
                            cv2.FONT_HERSHEY_SIMPLEX, font, color, 1, cv2.LINE_AA)  # fmt: skip
        lat = result.latency_ms.get("total", 0.0)
        text = f"{lat:.1f} ms  lost {int(np.sum(result.lost))}/{k}"
        if fps:
            text = f"{fps:.1f} FPS  " + text
        if result.dropped:
            text += f"  dropped {result.dropped}"
        org = (6, 6 + round(20 * font / 0.5))
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, text, org, cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), 1,
                    cv2.LINE_AA)  # fmt: skip
        return canvas


def check_output_path(path: str | os.PathLike[str], suffixes: tuple[str, ...], what: str) -> Path:
    """The output path, or CleanDIFTError (wrong suffix, missing folder, a folder in the way)."""
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise CleanDIFTError(f"{what} must end in {', '.join(suffixes)}, got '{out}'")
    if out.is_dir():
        raise CleanDIFTError(f"cannot write {what} '{out}': it is a directory")
    if not out.parent.is_dir():
        raise CleanDIFTError(f"cannot write {what} '{out}': no folder '{out.parent}'")
    return out


class VideoOutput:
    """mp4v video of RGB frames; the first frame fixes the size. ``close()`` finalises it."""

    def __init__(self, path: str | os.PathLike[str], fps: float = 30.0):
        self.path = check_output_path(path, VIDEO_SUFFIXES, "--out video")
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self._tmp = temporary_sibling(self.path, keep_suffix=True)  # OpenCV reads the suffix
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        if self._writer is None:
            h, w = rgb.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                self._tmp.unlink(missing_ok=True)
                raise CleanDIFTError(f"cannot write video '{self.path}' (mp4v via OpenCV)")
            self.size = (h, w)
        if rgb.shape[:2] != self.size:  # a source that changes resolution mid-stream
            rgb = cv2.resize(rgb, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Path | None:
        """Finalise and move into place; None when no frame was written (no file is left)."""
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        os.replace(self._tmp, self.path)
        return self.path


class TracksWriter:
    """JSONL tracks: one line per frame (``TrackResult.to_dict``), flushed as written."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = check_output_path(path, (".jsonl", ".json", ".ndjson"), "--tracks")
        self._fh = None
        self.frames = 0

    def write(self, result: TrackResult) -> None:
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._fh.write(json.dumps(result.to_dict(), separators=(",", ":")) + "\n")
        self._fh.flush()
        self.frames += 1

    def close(self) -> Path | None:
        if self._fh is None:
            return None
        self._fh.close()
        self._fh = None
        return self.path


def _has_gui() -> bool:
    """Whether this OpenCV build has a GUI backend (headless wheels report ``GUI: NONE``)."""
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GUI:"):
            return line.split(":", 1)[1].strip().upper() != "NONE"
    return True


class LiveWindow:
    """An OpenCV window; needs a GUI build of OpenCV (not opencv-python-headless)."""

    def __init__(self, title: str = "cleandift-rt track"):
        self.title = title
        if not _has_gui():
            raise CleanDIFTError(
                "--show needs an OpenCV build with GUI support: pip install opencv-python "
                "(this one is headless)"
            )
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise CleanDIFTError(f"--show cannot open a window: {one_line(exc)}") from None

    def show(self, rgb: np.ndarray) -> bool:
        """Display a frame; False once the user pressed q / Esc or closed the window."""
        cv2.imshow(self.title, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        return key not in (ord("q"), 27) and visible

    def close(self) -> None:
        cv2.destroyWindow(self.title)
