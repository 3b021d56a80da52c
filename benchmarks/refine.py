"""Sub-pixel refinement (issue 17 item 1): accuracy on sub-pixel translations and cost per query.

A held-out photo (scikit-image's ``astronaut`` by default; the toy models never trained on it)
is translated by seeded random fractional shifts with ``cv2.warpAffine`` (bilinear, reflected
borders). A grid of interior points is matched from the photo into each shifted copy with the
bundled ``toy`` model, with and without refinement; the truth is ``p + (dx, dy)``. Reported per
mode: mean end-point error (px), PCK at 1 / 2 / 5 % of the longer side, and the matching time
per query of ``cosine_argmax`` (+ refinement) on the extracted maps, median of ``--repeats``
runs measured side by side in one process, with the cost of refinement relative to plain
matching.

    python benchmarks/refine.py --json benchmarks/results/refine_cpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import cv2
import numpy as np
import torch

from cleandift_rt.bench import interleaved_medians, machine_info
from cleandift_rt.evaluation.homography import load_photos
from cleandift_rt.matching import cosine_argmax, sample_descriptors
from cleandift_rt.matching.refine import DEFAULT_TEMPERATURE, DEFAULT_WINDOW, refine_matches
from cleandift_rt.runtime import build_extractor

PCK_FRACTIONS = (0.01, 0.02, 0.05)


def shifted_copies(photo: np.ndarray, n: int, max_shift: float, seed: int):
    """``[(dx, dy, warped uint8 (H, W, 3))]``: fractional translations of ``photo``."""
    rng = np.random.default_rng(seed)
    out = []
    for dx, dy in rng.uniform(-max_shift, max_shift, size=(n, 2)):
        m = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        h, w = photo.shape[:2]
        warped = cv2.warpAffine(
            photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        out.append((float(dx), float(dy), warped))
    return out


def interior_points(size: tuple[int, int], n: int, margin: int) -> np.ndarray:
    """``(n², 2)`` float64 ``(x, y)`` grid points at least ``margin`` px from the borders."""
    h, w = size
    xs = np.linspace(margin, w - 1 - margin, n)
    ys = np.linspace(margin, h - 1 - margin, n)
    gx, gy = np.meshgrid(xs, ys)
    return np.round(np.stack([gx.ravel(), gy.ravel()], axis=1))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy")
    ap.add_argument("--tap", default="us6")
    ap.add_argument("--photo", default="astronaut")
    ap.add_argument("--size", type=int, default=256, help="photo resized to SIZE² (px)")
    ap.add_argument("--resolution", type=int, default=256, help="network input size")
    ap.add_argument("--shifts", type=int, default=8)
    ap.add_argument("--max-shift", type=float, default=4.0, help="px, each axis")
    ap.add_argument("--points", type=int, default=16, help="N×N query grid")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--modes",
        default="none;softargmax:2:0.01;softargmax:4:0.01;softargmax:4:0.02;"
        "softargmax:4:0.005;softargmax:8:0.01;quadratic",
        help="';'-separated mode[:window:temperature]",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)

    photo = load_photos((args.photo,))[0][1]
    photo = cv2.resize(photo, (args.size, args.size), interpolation=cv2.INTER_AREA)
    copies = shifted_copies(photo, args.shifts, args.max_shift, args.seed)
    margin = int(np.ceil(args.max_shift)) + 8
    pts = interior_points(photo.shape[:2], args.points, margin)
    fx = build_extractor(args.model, (args.tap,), resolution=args.resolution, device="cpu")
    feats = fx([photo, *[c[2] for c in copies]])
    fmap = feats[args.tap]
    queries = sample_descriptors(
        fmap[0], torch.as_tensor(pts, dtype=torch.float32), feats.grid(0, args.tap)
    )
    longer = max(photo.shape[:2])

    rows, options = [], {}
    for spec in args.modes.split(";"):
        mode, *rest = spec.split(":")
        opts = {"refine": mode}
        if rest:
            opts |= {"refine_window": int(rest[0]), "refine_temperature": float(rest[1])}
        options[spec] = opts
        errors = []
        for i, (dx, dy, _) in enumerate(copies, start=1):
            found, _ = cosine_argmax(queries, fmap[i], grid=feats.grid(i, args.tap), **opts)
            truth = pts + np.array([dx, dy])
            errors.append(np.linalg.norm(found.double().numpy() - truth, axis=1))
        err = np.concatenate(errors)
        row = {"mode": spec, "epe_px": float(err.mean()), "median_err_px": float(np.median(err))}
        row |= {f"pck@{f:g}": float((err <= f * longer).mean()) for f in PCK_FRACTIONS}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    # Cost: plain matching, and the refinement step alone, side by side on the first copy.
    grid1 = feats.grid(1, args.tap)
    found, _ = cosine_argmax(queries, fmap[1], grid=grid1)
    fns = {"none": lambda: cosine_argmax(queries, fmap[1], grid=grid1)}
    for spec, opts in options.items():
        if opts["refine"] != "none":
            fns[spec] = functools.partial(
                refine_matches, queries, fmap[1], grid1, found, opts["refine"],
                opts.get("refine_window", DEFAULT_WINDOW),
                opts.get("refine_temperature", DEFAULT_TEMPERATURE),
            )  # fmt: skip
    seconds = interleaved_medians(fns, args.repeats)
    plain_us = 1e6 * seconds["none"] / len(pts)
    for r in rows:
        extra = 0.0 if r["mode"] == "none" else 1e6 * seconds[r["mode"]] / len(pts)
        r |= {"match_us_per_query": plain_us, "refine_us_per_query": extra}
        r["cost_vs_plain"] = (plain_us + extra) / plain_us

    record = {
        "command": "python benchmarks/refine.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "setup": {
            "model": args.model,
            "tap": args.tap,
            "photo": args.photo,
            "size": args.size,
            "resolution": args.resolution,
            "shifts": [[c[0], c[1]] for c in copies],
            "queries": len(pts),
            "feature_map": list(fmap.shape[1:]),
        },
        "rows": rows,
    }
    head = f"{'mode':24s} {'EPE px':>8s} {'median':>8s} " + " ".join(
        f"{'PCK@' + format(f, 'g'):>9s}" for f in PCK_FRACTIONS
    )
    lines = [head + f" {'refine us/q':>11s} {'x plain':>8s}"]
    for r in rows:
        pck = " ".join(f"{r[f'pck@{f:g}']:9.3f}" for f in PCK_FRACTIONS)
        lines.append(
            f"{r['mode']:24s} {r['epe_px']:8.3f} {r['median_err_px']:8.3f} {pck} "
            f"{r['refine_us_per_query']:11.1f} {r['cost_vs_plain']:8.2f}"
        )
    lines.append(f"plain matching: {plain_us:.1f} us per query ({len(pts)} queries)")
    print("\n".join(lines))
    record["table"] = lines
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return record


if __name__ == "__main__":
    main()
