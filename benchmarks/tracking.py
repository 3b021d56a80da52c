"""Benchmark real-time tracking: per-stage latency and end-to-end FPS of `Tracker.stream`.

A simulated camera (a daemon-thread source) plays frames of a real photo under a known
translation at ``--source-fps`` into the tracker's ``latest`` buffer, exactly as a live camera
would: frames that arrive while one is processed replace each other (counted as dropped), so
the latency is capture-to-result (frame read → points ready), never queueing behind old frames.
An n×n grid of points (default 16×16 = 256) is tracked at ``--resolution``² after ``--warmup``
extractor runs. Stages (ms, p50/p90/p99): capture (buffer wait + resize), upload (uint8 to the
device), extract (FeatureNet), match (one argmax call for all points + cycle check), total.

    python benchmarks/tracking.py --model tiny --resolution 512 --frames 8 --threads 1 \\
        --json benchmarks/results/tracking_cpu_tiny.json                     # CPU here
    python benchmarks/tracking.py --model random:sd21 --resolution 512 --dtype fp16 \\
        --frames 300 --source-fps 240 --json benchmarks/results/tracking_h200_sd21.json   # on a GPU
    python benchmarks/tracking.py --artifact artifacts/sd21-us6-512.engine ...   # any backend

Target (issue 7, H200-class GPU, SD 2.1 architecture, 512², 256 points): >= 100 FPS end to
end and total latency p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cleandift_rt import FeatureExtractor
from cleandift_rt.files import write_json
from cleandift_rt.geometry import grid_points
from cleandift_rt.tracking import Tracker
from cleandift_rt.tracking.sources import IterableSource


def moving_frames(size: int, count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` size×size RGB crops of scikit-image's astronaut whose content moves by (1, 0.5)
    px per frame, back and forth; and the (count, 2) integer content offsets (x, y)."""
    from skimage import data

    margin = 64
    photo = cv2.resize(data.astronaut(), (size + 2 * margin,) * 2, interpolation=cv2.INTER_AREA)
    frames, offsets = [], []
    for i in range(count):
        t = abs(i % 64 - 32) - 16  # a triangle wave, -16..16
        dx, dy = t, t // 2
        top, left = margin - dy, margin - dx
        frames.append(np.ascontiguousarray(photo[top : top + size, left : left + size]))
        offsets.append((dx, dy))
    return frames, np.array(offsets, dtype=np.float64)


def paced(frames: list[np.ndarray], fps: float, seconds: float):
    """Yield frames in a loop at ``fps`` for ``seconds`` (a camera that never waits)."""
    period, start, i = 1.0 / fps, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        due = start + i * period
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield frames[i % len(frames)]
        i += 1


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--artifact", default=None, help="exported artifact (instead of --model)")
    p.add_argument("--tap", default="us6")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default=None)
    p.add_argument("--grid", type=int, default=16, help="n×n points (16: 256 points)")
    p.add_argument("--frames", type=int, default=8, help="timed frames")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--source-fps", type=float, default=30.0)
    p.add_argument("--mode", default="anchor", choices=["anchor", "chain"])
    p.add_argument("--radius", type=float, default=None)
    p.add_argument("--no-mutual", action="store_true")
    p.add_argument("--compile", default=None, help="torch.compile mode for the torch backend")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.artifact:
        from cleandift_rt.runtime import load_runtime

        fx = load_runtime(args.artifact, device=args.device)
        name = Path(args.artifact).name
    else:
        fx = FeatureExtractor.from_pretrained(
            args.model, taps=(args.tap,), device=args.device, dtype=args.dtype,
            resolution=args.resolution, compile=args.compile,
        )  # fmt: skip
        name = args.model
    size = fx.size if isinstance(fx.size, int) else fx.size[0]
    frames, offsets = moving_frames(size, 64)
    tracker = Tracker(
        fx, grid=args.grid, tap=args.tap if args.tap in fx.taps else None, mode=args.mode,
        radius=args.radius, mutual=not args.no_mutual, buffer="latest", warmup=args.warmup,
    )  # fmt: skip
    camera = IterableSource(paced(frames, args.source_fps, 3600.0), live=True)
    errors: list[np.ndarray] = []
    static: list[np.ndarray] = []  # the error of answering "the points did not move"
    start = grid_points((size, size), args.grid)  # what Tracker(grid=n) tracks
    first = None
    for r in tracker.stream(camera, max_frames=args.frames):
        # Accuracy against the known motion (content offset of this frame minus the first's).
        off = offsets[r.frame % len(frames)]
        if first is None:
            first = off  # the first processed frame is the reference
        truth = start + (off - first)
        inside = ((truth >= 0) & (truth <= size - 1)).all(axis=1)
        errors.append(np.linalg.norm(r.points - truth, axis=1)[inside])
        static.append(np.linalg.norm(start - truth, axis=1)[inside])
    summary = tracker.stats.summary()
    err = np.concatenate(errors)
    stride = fx.strides[tracker.tap]  # frames are already at the network size
    accuracy = {
        "median_error_px": round(float(np.median(err)), 2),
        "within_one_stride": round(float(np.mean(err <= stride)), 3),
        "stride_px": stride,
        "static_baseline_median_error_px": round(float(np.median(np.concatenate(static))), 2),
    }
    device = fx.runner.device
    result = {
        "model": name,
        "tap": tracker.tap,
        "resolution": size,
        "points": args.grid**2,
        "mode": args.mode,
        "radius": args.radius,
        "mutual": not args.no_mutual,
        "source_fps": args.source_fps,
        "dtype": str(getattr(fx.runner, "dtype", "")).removeprefix("torch."),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "command": "python benchmarks/tracking.py " + " ".join(argv or sys.argv[1:]),
        **summary,
        "accuracy_vs_known_motion": accuracy,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
