"""`run_tracking`: a Tracker over a source, with video / JSONL / window outputs and a summary.

What the ``track`` command runs. Outputs are closed in ``finally``: a stream that ends or fails
mid-way, an exception or Ctrl-C leave a complete video and JSONL up to the last frame.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .output import LiveWindow, Overlay, TracksWriter, VideoOutput, check_output_path
from .sources import open_source
from .tracker import Tracker

__all__ = ["run_tracking"]


@contextmanager
def graceful_interrupt() -> Iterator[dict[str, bool]]:
    """While active (main thread only), the first Ctrl-C sets ``flag["stop"]`` so the loop can
    finish the frame in hand and stop; a second Ctrl-C raises KeyboardInterrupt at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def on_sigint(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def run_tracking(
    tracker: Tracker,
    source: Any,
    *,
    out: str | Path | None = None,
    tracks: str | Path | None = None,
    show: bool = False,
    max_frames: int | None = None,
    trail: int = 20,
    progress: bool = False,
) -> dict[str, Any]:
    """Track ``source`` to the outputs; returns the summary (``StreamStats.summary`` plus the
    source, mode, point count and output paths). The first Ctrl-C finishes the frame in hand and
    stops cleanly (``ended``: "interrupted"); a second one stops at once, still closing the
    outputs. Neither raises.

    Raises:
        CleanDIFTError: an unopenable source, a bad output path, no GUI for ``show``, bad points.
    """
    if out is not None:  # validate every output before opening anything
        check_output_path(out, (".mp4", ".avi", ".mov", ".mkv"), "--out video")
    if tracks is not None:
        check_output_path(tracks, (".jsonl", ".json", ".ndjson"), "--tracks")
    window = LiveWindow() if show else None
    src = open_source(source)
    video = VideoOutput(out, src.fps or 30.0) if out is not None else None
    writer = TracksWriter(tracks) if tracks is not None else None
    overlay = Overlay(trail=trail)
    bar = None  # opened on the first frame: errors before it leave a clean one-line output
    written: dict[str, str | None] = {}
    stream = tracker.stream(src, max_frames=max_frames)
    stop_reason = None
    try:
        with graceful_interrupt() as interrupt:
            for result in stream:
                stats = tracker.stats
                fps = stats.frames / stats.seconds if stats.seconds > 0 else None
                if writer is not None:
                    writer.write(result)
                if video is not None or window is not None:
                    picture = overlay.draw(result, fps)
                    if video is not None:
                        video.write(picture)
                    if window is not None and not window.show(picture):
                        stop_reason = "window closed"
                        break
                if bar is None:
                    total = max_frames or src.length
                    bar = tqdm(total=total, desc="track", unit="frame", disable=not progress)
                bar.update(1)
                if fps:
                    bar.set_postfix(fps=f"{fps:.1f}", dropped=result.dropped, refresh=False)
                if interrupt["stop"]:  # Ctrl-C: this frame is written, stop here
                    stop_reason = "interrupted"
                    break
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        stream.close()  # stops the capture thread, closes the source
        if stop_reason is not None:
            tracker.stats.ended = stop_reason
        if bar is not None:
            bar.close()
        if video is not None:
            path = video.close()
            written["video"] = str(path) if path else None
        if writer is not None:
            path = writer.close()
            written["tracks"] = str(path) if path else None
        if window is not None:
            window.close()
    return {
        "source": src.name,
        "mode": tracker.mode,
        "tap": tracker.tap,
        "points": tracker.num_points,
        **tracker.stats.summary(),
        **written,
    }
