"""Dataset sources for feature stores: image files, folders, globs, ``@list.txt`` files and videos.

``expand_sources`` turns what a user typed into one ordered list of :class:`SourceItem` (an image
file, or one frame of a video); ``decode_items`` turns a run of items into network-ready images
or one-line reasons to skip them. Both engines (local and Ray) call exactly these two functions,
so they see the same items in the same order and the same pixels.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import CleanDIFTError, ImageError, one_line
from ..imaging import ImageTransform, load_image, prepare_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
MIN_SIDE = 8  # images with a side under this many pixels are skipped as "tiny"


class SourceError(CleanDIFTError):
    """A source that does not exist, matches nothing, or cannot be listed."""


@dataclass(frozen=True)
class SourceItem:
    """One image to extract: a file, or frame ``frame`` (0-based) of the video ``source`` at
    ``timestamp`` seconds (``frame / fps``)."""

    source: str
    frame: int | None = None
    timestamp: float | None = None

    @property
    def key(self) -> tuple[str, int]:
        """Identity of the item in a store: (absolute normalised path, frame or -1)."""
        return (os.path.abspath(self.source), -1 if self.frame is None else self.frame)


@dataclass
class DecodedItem:
    """An item after decoding: ``array`` uint8 (H_in, W_in, 3) at the network input size and its
    ``transform``, or ``reason`` (one line) why it is skipped. ``original_size`` is (H, W)."""

    item: SourceItem
    array: np.ndarray | None = None
    transform: ImageTransform | None = None
    original_size: tuple[int, int] | None = None
    reason: str | None = None


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _listed(path: Path) -> bool:
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES


def _folder_files(folder: Path) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files) if _listed(Path(f))]
    return found


def _list_file(spec: str) -> list[str]:
    """Paths of ``@list.txt``: one per line, blank lines and ``#`` comments ignored; relative
    paths are relative to the list file's folder."""
    path = Path(spec[1:])
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise SourceError(f"cannot read list '{path}': {exc.strerror or one_line(exc)}") from None
    except UnicodeDecodeError:
        raise SourceError(f"cannot read list '{path}': not a text file") from None
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line if os.path.isabs(line) else os.path.join(path.parent, line))
    if not out:
        raise SourceError(f"list '{path}' names no file")
    return out


def _paths(spec: str) -> list[str]:
    """Files one SOURCE stands for, in a stable order (sorted within folders and globs)."""
    if spec.startswith("@"):
        files = []
        for entry in _list_file(spec):
            if not os.path.exists(entry):
                raise SourceError(f"source '{entry}' (listed in '{spec[1:]}') does not exist")
            files += _folder_files(Path(entry)) if os.path.isdir(entry) else [entry]
        return files
    if os.path.exists(spec):
        return _folder_files(Path(spec)) if os.path.isdir(spec) else [spec]
    if any(ch in spec for ch in "*?["):
        matches = sorted(glob.glob(spec, recursive=True))
        files = []
        for m in matches:
            files += _folder_files(Path(m)) if os.path.isdir(m) else [m] if _listed(Path(m)) else []
        if not files:
            raise SourceError(f"no image or video matches '{spec}'")
        return files
    raise SourceError(f"source '{spec}' does not exist")


def video_frames(path: str, every: int = 1) -> list[SourceItem]:
    """Every ``every``-th frame of a video (frames counted by reading, not from the header)."""
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise SourceError(f"cannot open video '{path}'")
        fps = cap.get(cv2.CAP_PROP_FPS)
        fps = float(fps) if fps and 0 < fps < 1000 else 30.0
        items, frame = [], 0
        while cap.grab():
            if frame % every == 0:
                items.append(SourceItem(path, frame, round(frame / fps, 6)))
            frame += 1
    finally:
        cap.release()
    if not items:
        raise SourceError(f"video '{path}' has no readable frame")
    return items


def expand_sources(specs: list[str] | tuple[str, ...], every: int = 1) -> list[SourceItem]:
    """SOURCES → ordered, de-duplicated items.

    Accepts image files, folders (recursive, sorted, hidden folders skipped), globs (``**``
    allowed), ``@list.txt`` (one path per line) and video files (every ``every``-th frame).
    A file named explicitly is taken whatever its suffix (an unreadable one is skipped later).

    Raises:
        SourceError: a source that does not exist, a glob or list that matches nothing, a video
            that cannot be opened. Found before any model loads.
    """
    if every < 1:
        raise SourceError(f"--every must be at least 1, got {every}")
    if not specs:
        raise SourceError("no source given")
    items: list[SourceItem] = []
    seen: set[tuple[str, int]] = set()
    for spec in specs:
        for path in _paths(str(spec)):
            found = video_frames(path, every) if is_video(path) else [SourceItem(path)]
            for item in found:
                if item.key not in seen:
                    seen.add(item.key)
                    items.append(item)
    if not items:
        raise SourceError("the sources hold no image or video")
    return items


def item_runs(items: list[SourceItem], max_run: int) -> list[list[SourceItem]]:
    """Split items into decode jobs: one per image, consecutive frames of one video together
    (up to ``max_run``) so a job seeks once and reads forward."""
    runs: list[list[SourceItem]] = []
    for item in items:
        last = runs[-1] if runs else None
        if (
            item.frame is not None
            and last
            and last[-1].frame is not None
            and last[-1].source == item.source
            and len(last) < max_run
        ):
            last.append(item)
        else:
            runs.append([item])
    return runs


def _prepared(item: SourceItem, rgb: np.ndarray, size, policy: str, min_side: int) -> DecodedItem:
    h, w = rgb.shape[:2]
    if min(h, w) < min_side:
        return DecodedItem(item, original_size=(h, w), reason=f"tiny image {w}x{h} px "
                           f"(smaller than {min_side} px)")  # fmt: skip
    prepared = prepare_image(rgb, size, policy)
    return DecodedItem(item, prepared.array, prepared.transform, (h, w))


def _decode_video_run(run: list[SourceItem], size, policy: str, min_side: int):
    path = run[0].source
    cap = cv2.VideoCapture(path)
    out = []
    try:
        if not cap.isOpened():
            return [DecodedItem(i, reason=f"cannot open video '{path}'") for i in run]
        cap.set(cv2.CAP_PROP_POS_FRAMES, run[0].frame)
        position = run[0].frame
        for item in run:
            while position < item.frame and cap.grab():
                position += 1
            ok, frame = cap.read() if position == item.frame else (False, None)
            position += 1 if ok else 0
            if not ok or frame is None:
                out.append(DecodedItem(item, reason=f"cannot read frame {item.frame} of '{path}'"))
                continue
            rgb = np.ascontiguousarray(frame[:, :, ::-1])
            out.append(_prepared(item, rgb, size, policy, min_side))
    finally:
        cap.release()
    return out


def decode_items(
    run: list[SourceItem], size: int | tuple[int, int], policy: str, min_side: int = MIN_SIDE
) -> list[DecodedItem]:
    """Decode one job from ``item_runs`` and resize/pad it to ``size`` (``prepare_image``).

    Unreadable, corrupt or tiny images are not errors: they come back with a one-line reason.
    """
    if run[0].frame is not None:
        return _decode_video_run(run, size, policy, min_side)
    out = []
    for item in run:
        try:
            rgb = load_image(item.source)
        except ImageError as exc:
            out.append(DecodedItem(item, reason=one_line(exc)))
            continue
        except MemoryError:
            out.append(DecodedItem(item, reason="image too large to decode"))
            continue
        out.append(_prepared(item, rgb, size, policy, min_side))
    return out
