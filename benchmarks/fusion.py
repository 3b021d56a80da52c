"""Fusion modes (issue 17 items 2-3): cost relative to plain matching, and accuracy on held-out
photos under known warps, all measured side by side in one process.

Modes (``--modes``), each a FeatureExtractor of the bundled ``toy`` model at ``--resolution``²:

* ``plain``: tap us6 (the baseline every ratio is against);
* ``concat``: us3 + us6 + us9 fused in the graph (``--fuse concat``, equal weights);
* ``pca64``: the same, reduced to 64 channels by a PCA fitted on each pair (``--fuse pca:64``);
* ``dino-tiny``: ``toy+dinov2-tiny`` (SD us6 + the random tiny DINOv2, α = 0.5);
* ``dino-b-random`` (cost only): ``toy+DIR`` with DIR a DINOv2-base architecture (transformers'
  default ``Dinov2Config``) with random weights saved to a temporary folder: the real cost of a
  ViT-B/14 branch without a download.

Cost: per pair of images, the extraction (one batch of 2) and the matching of ``--points``²
queries (sampling, the PCA fit and projection for pca, the exact ``cosine_argmax``), medians of
``--repeats`` interleaved runs (one warm-up each); ratios to ``plain`` measured in the same run.
Accuracy: `cleandift-rt eval homography`'s seeded warps of the four bundled photos (all held out
from the toy training), PCK at 1 / 2 / 5 / 10 % of the longer side and mean end-point error.
Random-weight DINOv2 rows measure plumbing, not accuracy.

    OMP_NUM_THREADS=1 python benchmarks/fusion.py --json benchmarks/results/fusion_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch

from cleandift_rt.bench import interleaved_medians, machine_info
from cleandift_rt.evaluation import ExtractorPredictor
from cleandift_rt.evaluation.homography import evaluate_homography, load_photos, make_pairs
from cleandift_rt.files import write_json
from cleandift_rt.geometry import grid_points
from cleandift_rt.runtime import build_extractor

ALPHAS = (0.01, 0.02, 0.05, 0.1)
TAPS3 = ("us3", "us6", "us9")
MODES = {
    "plain": dict(taps=("us6",)),
    "concat": dict(taps=TAPS3, fuse="concat"),
    "pca64": dict(taps=TAPS3, fuse="pca:64"),
    "dino-tiny": dict(taps=("us6",), dino="dinov2-tiny"),
    "dino-b-random": dict(taps=("us6",), dino="<random dinov2-base folder>", cost_only=True),
}


def random_dino_base(folder: str) -> str:
    """Save a DINOv2-base architecture with random (seed 0) weights to ``folder``."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config()).save_pretrained(folder, safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--points", type=int, default=16, help="N×N queries per pair (cost)")
    ap.add_argument("--pairs-per-image", type=int, default=4, help="warps per photo (accuracy)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    photos = load_photos()
    pairs = make_pairs(photos, args.pairs_per_image, "homography", args.seed)
    src = cv_resize(photos[0][1], args.resolution)
    tgt = cv_resize(pairs[1].target, args.resolution)
    batch = np.stack([src, tgt])
    points = grid_points(src.shape[:2], args.points, margin=0.1)

    tmp = tempfile.TemporaryDirectory()
    extractors, rows = {}, []
    for name in args.modes.split(","):
        spec = MODES[name]
        dino = spec.get("dino")
        if name == "dino-b-random":
            dino = random_dino_base(tmp.name)
        model = f"{args.model}+{dino}" if dino else args.model
        fx = build_extractor(model, spec["taps"], resolution=args.resolution, device="cpu",
                             fuse=spec.get("fuse"))  # fmt: skip
        extractors[name] = fx
        feats = fx.extract_prepared(batch)
        tap = fx.taps[0]
        row = {"mode": name, "model": model if name != "dino-b-random" else "toy+dinov2-b(random)",
               "taps": list(spec["taps"]), "fuse": spec.get("fuse"), "output": tap,
               "map": list(feats[tap].shape[1:]), "pca_dim": fx.pca_dim,
               "matched_channels": fx.pca_dim or int(feats[tap].shape[1])}  # fmt: skip
        if not spec.get("cost_only"):
            t0 = time.perf_counter()
            summary = evaluate_homography(ExtractorPredictor(fx, tap), pairs, ALPHAS)
            overall = summary["overall"]
            row["accuracy"] = dict(overall["per_point"], mean_epe_px=overall["mean_epe_px"])
            row["accuracy_seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    features = {n: fx.extract_prepared(batch) for n, fx in extractors.items()}
    extract = interleaved_medians(
        {n: (lambda fx=fx: fx.extract_prepared(batch)) for n, fx in extractors.items()},
        args.repeats,
    )
    match = interleaved_medians(
        {n: (lambda fx=fx, f=features[n]: fx.match_features(f, points))
         for n, fx in extractors.items()},
        args.repeats,
    )  # fmt: skip
    base = "plain" if "plain" in extractors else rows[0]["mode"]
    for r in rows:
        n = r["mode"]
        r["extract_ms_per_pair"] = 1e3 * extract[n]
        r["match_ms_per_pair"] = 1e3 * match[n]
        r["total_ms_per_pair"] = 1e3 * (extract[n] + match[n])
        r["extract_vs_plain"] = extract[n] / extract[base]
        r["match_vs_plain"] = match[n] / match[base]
        r["total_vs_plain"] = (extract[n] + match[n]) / (extract[base] + match[base])
    tmp.cleanup()

    head = (f"{'mode':14s} {'map (C,h,w)':>14s} {'C matched':>9s} {'extract ms':>10s} "
            f"{'match ms':>9s} {'x plain':>8s} {'match x':>8s} {'EPE px':>7s} "
            + " ".join(f"{'PCK@' + format(a, 'g'):>8s}" for a in ALPHAS))  # fmt: skip
    lines = [head]
    for r in rows:
        acc = r.get("accuracy")
        pck = " ".join(f"{acc[f'img@{a:g}']:8.3f}" for a in ALPHAS) if acc else ""
        tail = f"{acc['mean_epe_px']:7.2f} {pck}" if acc else "   (cost only)"
        lines.append(
            f"{r['mode']:14s} {str(tuple(r['map'])):>14s} {r['matched_channels']:9d} "
            f"{r['extract_ms_per_pair']:10.1f} "
            f"{r['match_ms_per_pair']:9.2f} {r['total_vs_plain']:8.2f} {r['match_vs_plain']:8.2f} "
            + tail
        )
    lines.append(f"{len(points)} queries per pair, {len(pairs)} warped pairs for accuracy; "
                 f"x plain = (extract + match) / plain's")  # fmt: skip
    print("\n".join(lines))
    record = {
        "command": "python benchmarks/fusion.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "threads": torch.get_num_threads(),
        "setup": {"model": args.model, "resolution": args.resolution, "queries": len(points),
                  "pairs": len(pairs), "repeats": args.repeats, "photos": [p[0] for p in photos]},
        "rows": rows,
        "table": lines,
    }  # fmt: skip
    if args.json:
        write_json(args.json, record)
    return record


def cv_resize(image: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


if __name__ == "__main__":
    main()
