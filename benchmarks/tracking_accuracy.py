"""Tracking accuracy against known motion: trained `toy` vs random-weight `tiny` (TRACKING.md).

A 128² window of scikit-image's astronaut (224², never in the toy training photos) moves by
(0, 0), (4, 0), (8, 4), … (24, 12) px over 7 frames; a 4 × 4 grid (20 % margin) is tracked in
anchor mode with full search; errors against the known motion over all (frame, point) pairs.

    python benchmarks/tracking_accuracy.py --json benchmarks/results/tracking_accuracy_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys

import cv2
import numpy as np

from cleandift_rt.extractor import FeatureExtractor
from cleandift_rt.files import write_json
from cleandift_rt.geometry import grid_points
from cleandift_rt.tracking import Tracker

SIZE = 128
PATH = [(0, 0), (4, 0), (8, 4), (12, 4), (16, 8), (20, 8), (24, 12)]  # content motion (x, y) px


def frames() -> list[np.ndarray]:
    from skimage import data

    photo = cv2.resize(data.astronaut(), (224, 224), interpolation=cv2.INTER_AREA)
    return [
        np.ascontiguousarray(photo[48 - dy : 48 - dy + SIZE, 48 - dx : 48 - dx + SIZE])
        for dx, dy in PATH
    ]


def errors(model: str, tap: str, resolution: int, video: list[np.ndarray]) -> np.ndarray:
    """(frames · points,) end-point errors (px) of tracking with ``model`` at ``tap``."""
    fx = FeatureExtractor.from_pretrained(model, taps=(tap,), resolution=resolution, device="cpu")
    points = grid_points((SIZE, SIZE), 4, margin=0.2)
    results = list(Tracker(fx, points, warmup=0).stream(video))
    return np.concatenate(
        [np.linalg.norm(r.points - points - np.array(PATH[r.frame]), axis=1) for r in results]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="toy,tiny")
    ap.add_argument("--taps", default="us6,us8,us9")
    ap.add_argument("--resolutions", default="128,256")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    video = frames()
    rows = []
    for model in args.models.split(","):
        for tap in args.taps.split(","):
            for res in map(int, args.resolutions.split(",")):
                e = errors(model, tap, res, video)
                row = {"model": model, "tap": tap, "resolution": res}
                row |= {"median_px": float(np.median(e)), "p90_px": float(np.percentile(e, 90))}
                row |= {"within_4px": float((e <= 4).mean()), "within_8px": float((e <= 8).mean())}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        record = {
            "command": "python benchmarks/tracking_accuracy.py " + " ".join(argv or sys.argv[1:])
        }
        write_json(args.json, record | {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
