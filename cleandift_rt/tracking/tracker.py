"""Keypoint tracking with CleanDIFT features: :class:`Tracker` and its per-frame results.

Per frame: one extraction, one matcher call for all points (the exact upsampled cosine argmax,
optionally restricted to a search radius around each point's last position), and an optional
cycle check (the found pixel's descriptor matched back into the source map must land within a
tolerance of where the point came from). Modes:

* ``anchor``: queries are the reference descriptors; the cycle check goes back to the reference.
* ``chain``: queries follow the points, ``q ← (1 - rate) · q + rate · f(new position)`` after
  each frame (rate 1: pure frame-to-frame); the cycle check goes back to the previous frame.

A point is ``lost`` when its score is under ``min_score`` or the cycle check fails; a lost point
keeps its last good position as search centre (and, in chain mode, its descriptor).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import CleanDIFTError, TapError
from ..extractor import FeatureExtractor
from ..imaging import load_image
from ..matching import PixelGrid, cosine_argmax, cosine_argmax_window, sample_descriptors
from ..matching.refine import DEFAULT_TEMPERATURE, DEFAULT_WINDOW, check_refine, refine_matches
from .defaults import TRACK_REFINE
from .sources import CaptureThread, Frame, FrameSource, open_source, resolve_buffer
from .upload import FrameUploader, synchronize

MODES = ("anchor", "chain")
STAGES = ("capture", "upload", "extract", "match", "total")


@dataclass
class TrackResult:
    """Tracked points in one frame, in ORIGINAL frame pixels (x, y), pixel centres at integers.

    frame: source frame index; timestamp: seconds (see ``Frame``); image: the frame, uint8
    (H, W, 3) RGB; points: (K, 2) float64; scores: (K,) float32 cosine in [-1, 1]; lost: (K,)
    bool; latency_ms: per stage (capture, upload, extract, match, total) in milliseconds;
    dropped: frames dropped by the capture buffer so far.
    """

    frame: int
    timestamp: float
    image: np.ndarray
    points: np.ndarray
    scores: np.ndarray
    lost: np.ndarray
    latency_ms: dict[str, float]
    dropped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSONL record: frame, timestamp and per point id, x, y, score, lost."""
        return {
            "frame": self.frame,
            "timestamp": round(self.timestamp, 6),
            "points": [
                {"id": i, "x": float(x), "y": float(y), "score": round(float(s), 6),
                 "lost": bool(lo)}
                for i, ((x, y), s, lo) in enumerate(zip(self.points, self.scores, self.lost))
            ],
        }  # fmt: skip


@dataclass
class StreamStats:
    """Counters and per-stage latencies (ms) of one stream."""

    frames: int = 0
    dropped: int = 0
    read: int = 0
    seconds: float = 0.0
    ended: str = "not started"
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})

    def summary(self) -> dict[str, Any]:
        """frames, dropped, fps, and p50/p90/p99 per stage (ms)."""
        stages = {
            s: {f"p{q}": round(float(np.percentile(v, q)), 3) for q in (50, 90, 99)}
            for s, v in self.latency_ms.items()
            if v
        }
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        return {
            "frames": self.frames,
            "read": self.read,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "fps": round(fps, 2),
            "latency_ms": stages,
            "ended": self.ended,
        }


def _as_points(points: Any) -> np.ndarray:
    """(K, 2) float64 pixel points, or CleanDIFTError."""
    try:
        pts = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise CleanDIFTError("points must be a list of [x, y] pixel pairs") from None
    if pts.size == 0:
        raise CleanDIFTError("no points to track: give points or a grid")
    if pts.ndim != 2 or pts.shape[1] != 2 or not np.isfinite(pts).all():
        raise CleanDIFTError(
            f"points must be finite (N, 2) pixel coordinates (x, y), got {pts.shape}"
        )
    return pts


class Tracker:
    """Follows points through a stream of frames.

    Args:
        extractor: any FeatureExtractor (``from_pretrained`` or ``load_runtime``).
        points: (K, 2) (x, y) pixels in the reference frame; or ``grid`` = n for an n×n grid.
        reference: reference image (anything ``load_image`` takes); default: the first frame.
        tap: feature tap to match on (default: the extractor's first).
        mode: ``anchor`` or ``chain``; update_rate: chain-mode descriptor update in [0, 1].
        min_score: cosine under which a point is lost.
        mutual: run the cycle check; cycle_tolerance: its radius in source pixels (default one
            feature stride).
        radius: search radius around the last position in frame pixels (None: whole frame).
        refine, refine_window, refine_temperature: sub-pixel refinement of each found position
            (``"none"``, ``"softargmax"``, ``"quadratic"``; see ``matching.cosine_argmax``);
            ``"quadratic"`` by default: it lowered the jitter of tracks on a held-out photo in
            every case measured (benchmarks/results/TRACKING.md).
        buffer: ``auto`` (latest for live sources, all for files), ``latest`` or ``all``.
        warmup: extractor runs before the first timed frame.
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        points: Any = None,
        *,
        grid: int | None = None,
        reference: Any = None,
        tap: str | None = None,
        mode: str = "anchor",
        update_rate: float = 1.0,
        min_score: float = 0.0,
        mutual: bool = True,
        cycle_tolerance: float | None = None,
        radius: float | None = None,
        refine: str = TRACK_REFINE,
        refine_window: int = DEFAULT_WINDOW,
        refine_temperature: float = DEFAULT_TEMPERATURE,
        buffer: str = "auto",
        warmup: int = 1,
    ):
        check_refine(refine, refine_window, refine_temperature)
        if (points is None) == (grid is None):
            raise CleanDIFTError("give exactly one of points and grid")
        if mode not in MODES:
            raise CleanDIFTError(f"unknown tracking mode '{mode}' (use anchor or chain)")
        if not 0.0 <= update_rate <= 1.0:
            raise CleanDIFTError(f"update rate must be in [0, 1], got {update_rate}")
        if radius is not None and not (np.isfinite(radius) and radius >= 0):
            raise CleanDIFTError(f"search radius must be >= 0 pixels, got {radius}")
        self.extractor = extractor
        self.tap = tap or extractor.taps[0]
        if self.tap not in extractor.taps:
            raise TapError(f"tap '{self.tap}' is not extracted (have: {', '.join(extractor.taps)})")
        self.initial_points = None if points is None else _as_points(points)
        self.grid = grid
        self.reference = None if reference is None else load_image(reference)
        self.mode, self.update_rate = mode, float(update_rate)
        self.min_score, self.mutual = float(min_score), bool(mutual)
        self.cycle_tolerance, self.radius = cycle_tolerance, radius
        self.refine = (refine, int(refine_window), float(refine_temperature))
        self.buffer, self.warmup = buffer, int(warmup)
        self.device = extractor.runner.device
        self.uploader = FrameUploader(self.device)
        self.stats = StreamStats()
        self._state: dict[str, Any] | None = None

    @property
    def num_points(self) -> int:
        """Points being tracked (0 before the reference frame has been seen)."""
        return 0 if self._state is None else int(self._state["queries"].shape[0])

    # ------------------------------------------------------------------ per frame

    def _extract(self, image: np.ndarray) -> tuple[torch.Tensor, PixelGrid, dict[str, float]]:
        """(C, h, w) map of ``self.tap``, its grid over ORIGINAL pixels, stage times (ms)."""
        t0 = time.perf_counter()
        prepared = self.extractor.prepare(image)[0]
        t1 = time.perf_counter()
        batch = self.uploader(prepared.array)
        synchronize(self.device)
        t2 = time.perf_counter()
        feats = self.extractor.extract_prepared(batch, [prepared.transform])
        self.uploader.consumed()
        synchronize(self.device)
        t3 = time.perf_counter()
        ms = {"prepare": (t1 - t0) * 1e3, "upload": (t2 - t1) * 1e3, "extract": (t3 - t2) * 1e3}
        return feats[self.tap][0], feats.grid(0, self.tap), ms

    def _init_reference(self, fmap: torch.Tensor, grid: PixelGrid) -> None:
        h, w = grid.size
        if self.initial_points is None:
            from ..geometry import grid_points

            pts = grid_points((h, w), int(self.grid))
        else:
            pts = self.initial_points
            inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5)
            inside &= (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5)
            if not inside.all():
                x, y = pts[np.argmin(inside)]
                raise CleanDIFTError(f"point ({x:g}, {y:g}) is outside the {w}x{h} reference frame")
        src = torch.as_tensor(pts, dtype=torch.float32, device=fmap.device)
        queries = sample_descriptors(fmap, src, grid).to(torch.float32)
        stride = max(1.0 / abs(grid.scale[0]), 1.0 / abs(grid.scale[1]))
        self._state = {
            "queries": queries,  # (K, C) float32
            "centers": src.clone(),  # (K, 2) last good positions (frame pixels)
            "source_map": fmap,
            "source_grid": grid,
            "source_points": src.clone(),  # (K, 2) where each query came from
            "tolerance": stride if self.cycle_tolerance is None else float(self.cycle_tolerance),
        }

    def _match(self, fmap: torch.Tensor, grid: PixelGrid) -> tuple[np.ndarray, ...]:
        """(points (K, 2) float64, scores (K,) float32, lost (K,) bool) in this frame."""
        st = self._state
        assert st is not None
        q = st["queries"]
        if self.radius is None:
            coords, scores = cosine_argmax(q, fmap, grid=grid)
        else:
            coords, scores = cosine_argmax_window(q, fmap, grid, st["centers"], self.radius)
        if self.refine[0] != "none":
            coords = refine_matches(q, fmap, grid, coords, *self.refine)
        found = coords.to(torch.float32)
        lost = scores < self.min_score
        here = None
        if self.mutual or self.mode == "chain":
            here = sample_descriptors(fmap, found, grid).to(torch.float32)  # (K, C)
        if self.mutual:
            back, _ = cosine_argmax(here, st["source_map"], grid=st["source_grid"])
            dist = torch.linalg.vector_norm(back.to(torch.float32) - st["source_points"], dim=1)
            lost |= dist > st["tolerance"]
        good = ~lost
        st["centers"][good] = found[good]
        if self.mode == "chain":
            rate = self.update_rate
            q[good] = (1.0 - rate) * q[good] + rate * here[good]
            st["source_map"], st["source_grid"] = fmap, grid
            st["source_points"] = st["centers"].clone()
        return (
            coords.cpu().numpy().astype(np.float64),
            scores.cpu().numpy().astype(np.float32),
            lost.cpu().numpy(),
        )

    # ------------------------------------------------------------------ streaming

    def _warm_up(self, image: np.ndarray) -> None:
        for _ in range(self.warmup):
            self._extract(image)

    def stream(self, source: Any, *, max_frames: int | None = None) -> Iterator[TrackResult]:
        """Track through ``source`` (see ``open_source``: camera index, file, folder, glob, URL,
        iterable of frames); yields one :class:`TrackResult` per processed frame.

        The source is read on a capture thread (``buffer`` policy). The stream ends at the end of
        the source, when it fails (``stats.ended`` says why), after ``max_frames`` or when the
        consumer stops iterating; the source is closed in every case.

        Raises:
            CleanDIFTError: the source cannot be opened or gives no frame; bad points.
        """
        src: FrameSource = open_source(source)
        capture = CaptureThread(src, resolve_buffer(self.buffer, src))
        self.stats = stats = StreamStats(ended="running")
        start = None
        try:
            self._state = None  # every stream starts from the reference
            first = capture.read_now()  # warm up on a real frame before the reader starts
            if first is None:
                raise CleanDIFTError(capture.error or f"video source '{src.name}' gave no frames")
            if self.reference is not None:
                self._warm_up(self.reference)
                fmap, grid, _ = self._extract(self.reference)
                self._init_reference(fmap, grid)
            else:
                self._warm_up(first.image)
            pending: Frame | None = first
            if capture.policy == "latest" and src.live:  # stale after the warm-up: skip it
                capture.dropped += 1
                pending = None
            else:
                first.arrival = time.perf_counter()  # the warm-up is not frame latency
            capture.start()
            while max_frames is None or stats.frames < max_frames:
                if pending is not None:
                    frame, pending = pending, None
                else:
                    frame = capture.get()
                if frame is None:
                    break
                if start is None:
                    start = frame.arrival
                t_pick = time.perf_counter()
                fmap, grid, ms = self._extract(frame.image)
                if self._state is None:
                    self._init_reference(fmap, grid)
                t_match = time.perf_counter()
                points, scores, lost = self._match(fmap, grid)
                t_done = time.perf_counter()
                latency = {
                    "capture": (t_pick - frame.arrival) * 1e3 + ms["prepare"],
                    "upload": ms["upload"],
                    "extract": ms["extract"],
                    "match": (t_done - t_match) * 1e3,
                    "total": (t_done - frame.arrival) * 1e3,
                }
                for stage, value in latency.items():
                    stats.latency_ms[stage].append(value)
                stats.frames += 1
                stats.dropped, stats.read = capture.dropped, capture.read_count
                stats.seconds = t_done - start
                yield TrackResult(
                    frame.index, frame.timestamp, frame.image, points, scores, lost, latency,
                    capture.dropped,
                )  # fmt: skip
            if stats.frames == 0:
                raise CleanDIFTError(capture.error or f"video source '{src.name}' gave no frames")
            stats.ended = capture.error or (
                "max frames" if max_frames is not None and stats.frames >= max_frames else "end"
            )
        except GeneratorExit:
            stats.ended = "stopped"
            raise
        except KeyboardInterrupt:
            stats.ended = "interrupted"
            raise
        finally:
            capture.stop()
            stats.dropped, stats.read = capture.dropped, capture.read_count
