"""Tracking jitter with and without sub-pixel refinement (issue 17 item 1): does refinement make
tracks steadier on a held-out photo?

Two sequences of scikit-image's astronaut (never in the toy training photos) at ``--size``²:

* ``static``: the same frame every time plus independent Gaussian sensor noise (σ =
  ``--noise`` grey levels, seeded), so any motion of a track is jitter;
* ``pan``: the content translated by ``--pan`` px per frame along x and half that along y
  (``cv2.warpAffine``, bilinear, reflected borders), so the truth moves in sub-pixel steps.

An n×n grid (20 % margin) is tracked in anchor mode (full search) with the bundled ``toy`` model
for each refinement. Per point, the residual r_t = track_t − truth_t over the frames; jitter =
sqrt(var_x(r) + var_y(r)) (px), averaged over points; also the mean frame-to-frame step
|r_t − r_{t−1}| and the mean end-point error |r_t|.

    OMP_NUM_THREADS=1 python benchmarks/tracking_jitter.py \\
        --json benchmarks/results/tracking_jitter_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np

from cleandift_rt.bench import machine_info
from cleandift_rt.extractor import FeatureExtractor
from cleandift_rt.files import write_json
from cleandift_rt.geometry import grid_points
from cleandift_rt.tracking import Tracker

REFINES = ("none", "softargmax", "quadratic")


def sequences(size: int, frames: int, noise: float, pan: float, seed: int) -> dict:
    """{name: (frames [uint8 (H, W, 3)], truth offsets (T, 2) px)}."""
    from skimage import data

    photo = cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    static = []
    for _ in range(frames):
        noisy = photo.astype(np.float64) + rng.normal(0.0, noise, photo.shape)
        static.append(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
    offsets = np.stack([np.arange(frames) * pan, np.arange(frames) * pan / 2], axis=1)
    panned = [
        cv2.warpAffine(photo, np.array([[1.0, 0, dx], [0, 1.0, dy]]), (size, size),
                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        for dx, dy in offsets
    ]  # fmt: skip
    return {"static": (static, np.zeros((frames, 2))), "pan": (panned, offsets)}


def jitter(fx, video, truth, points, refine: str) -> dict:
    tracker = Tracker(fx, points, reference=video[0], warmup=0, refine=refine, mutual=False)
    results = list(tracker.stream(video))
    tracks = np.stack([r.points for r in results])  # (T, K, 2)
    resid = tracks - points[None] - truth[[r.frame for r in results]][:, None]
    per_point = np.sqrt(resid.var(axis=0).sum(-1))  # (K,)
    steps = np.linalg.norm(np.diff(resid, axis=0), axis=-1)
    return {
        "jitter_px": float(per_point.mean()),
        "step_px": float(steps.mean()),
        "epe_px": float(np.linalg.norm(resid, axis=-1).mean()),
        "frames": len(results),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--taps", default="us6,us9")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--noise", type=float, default=3.0, help="sensor noise σ (grey levels)")
    ap.add_argument("--pan", type=float, default=0.25, help="px per frame along x")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    seqs = sequences(args.size, args.frames, args.noise, args.pan, args.seed)
    points = grid_points((args.size, args.size), args.grid, margin=0.2)
    rows = []
    for tap in args.taps.split(","):
        fx = FeatureExtractor.from_pretrained(args.model, taps=(tap,), resolution=args.size,
                                              device="cpu")  # fmt: skip
        for name, (video, truth) in seqs.items():
            for refine in REFINES:
                row = {"tap": tap, "sequence": name, "refine": refine}
                row |= jitter(fx, video, truth, points, refine)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    lines = [f"{'tap':5s} {'sequence':8s} {'refine':11s} {'jitter px':>9s} {'step px':>8s} "
             f"{'EPE px':>7s}"]  # fmt: skip
    lines += [
        f"{r['tap']:5s} {r['sequence']:8s} {r['refine']:11s} {r['jitter_px']:9.3f} "
        f"{r['step_px']:8.3f} {r['epe_px']:7.3f}"
        for r in rows
    ]
    print("\n".join(lines))
    record = {
        "command": "python benchmarks/tracking_jitter.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "setup": vars(args) | {"points": len(points)},
        "rows": rows,
        "table": lines,
    }
    if args.json:
        write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
