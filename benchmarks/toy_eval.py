"""The toy-scale reproduction of CleanDIFT's claim on held-out photos (issues 9, 21).

One run, same pairs for every method: seeded random homographies (`cleandift-rt eval
homography`'s) of photos the toy models never trained on — scikit-image's held-out photos by
default, or every image of ``--images DIR`` (e.g. OpenCV's classic matching pairs gathered by
``training.toy_sources`` into ``runs/toy/sources/heldout``). When that folder holds
``pairs.json`` (real image pairs with ground-truth homographies: graf1 → graf3), they are
evaluated too, as a separate ``real`` set.

* CleanDIFT ``toy``: single pass on the clean image at the student's learned timestep;
* ``toy-base`` single pass on the clean image (the base U-Net without distillation);
* DIFT on ``toy-base``: ensemble of ``--ensemble`` noisy copies at each t of ``--ts``
  (the per-t curve), VAE noise and diffusion noise seeded;
* ``tiny`` (random weights) and "no motion" (every point predicted where it was) for comparison.

``--student FILE`` evaluates another student (e.g. a distillation variant); ``--skip`` leaves out
the base / tiny / DIFT rows.

PCK@{0.01, 0.05, 0.1} (fraction of the target's longer side, per point) and the mean
end-point error, per tap, each PCK with its standard error over pairs (points of one pair are
not independent); ``comparisons`` hold paired differences (per pair, then mean ± standard
error) of CleanDIFT against ``tiny`` and against DIFT at its best t. A JSON record and a PNG of
PCK@0.1 against t.

    python benchmarks/toy_eval.py --images runs/toy/sources/heldout \\
        --json benchmarks/results/toy_eval_cpu.json --plot benchmarks/results/toy_eval_cpu.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cleandift_rt.bench import machine_info
from cleandift_rt.evaluation import ExtractorPredictor
from cleandift_rt.evaluation.homography import WarpedPair, load_photos, make_pairs
from cleandift_rt.files import write_json
from cleandift_rt.geometry import apply_homography, grid_points
from cleandift_rt.imaging import load_image
from cleandift_rt.runtime import build_extractor
from cleandift_rt.viz import save_png

ALPHAS = (0.01, 0.05, 0.1)
REAL_PAIRS = "pairs.json"


def real_pairs(folder: str | None, grid: int = 10) -> list[WarpedPair]:
    """The ground-truth pairs of ``folder/pairs.json`` (source, target, 3×3 homography in
    the stored photos' pixels); grid points (margin 10 %) whose image lands inside the target."""
    path = Path(folder or "") / REAL_PAIRS
    if folder is None or not path.is_file():
        return []
    pairs = []
    for item in json.loads(path.read_text()):
        src, tgt = (
            load_image(path.parent / item["source"]),
            load_image(path.parent / item["target"]),
        )
        h = np.asarray(item["homography"], dtype=np.float64)
        points = grid_points(src.shape[:2], grid, margin=0.1)
        truth = apply_homography(h, points)
        th, tw = tgt.shape[:2]
        inside = (truth >= 0).all(1) & (truth[:, 0] <= tw - 1) & (truth[:, 1] <= th - 1)
        name = f"{Path(item['source']).stem}->{Path(item['target']).stem}"
        pairs.append(WarpedPair(name, src, tgt, h, points[inside], truth[inside]))
    return pairs


def pair_errors(predict, pairs: list[WarpedPair]) -> list[np.ndarray]:
    """End-point errors (px) of ``predict`` per pair, in pair order."""
    out = []
    for pair in pairs:
        photo = pair.name.split("#")[0]
        predicted = predict(pair.source, pair.target, pair.source_points, source_key=photo)
        out.append(np.linalg.norm(np.asarray(predicted) - pair.target_points, axis=1))
    return out


def summarise(errors: list[np.ndarray], pairs: list[WarpedPair]) -> dict:
    """{pck@α: per-point PCK, pck@α_se: its standard error over pairs, per_pair: {…}, epe_px}."""
    sides = [float(max(p.target.shape[:2])) for p in pairs]
    counts = np.array([len(e) for e in errors], dtype=np.float64)
    row: dict = {"per_pair": {}}
    for a in ALPHAS:
        hits = np.array([(e <= a * s).sum() for e, s in zip(errors, sides)], dtype=np.float64)
        pck = hits.sum() / counts.sum()
        # ratio estimator's standard error, clustered by pair
        resid = hits - pck * counts
        n = len(pairs)
        se = np.sqrt(n / max(n - 1, 1) * (resid**2).sum()) / counts.sum() if n > 1 else 0.0
        row[f"pck@{a:g}"], row[f"pck@{a:g}_se"] = float(pck), float(se)
        row["per_pair"][f"pck@{a:g}"] = (hits / np.maximum(counts, 1)).round(4).tolist()
    row["epe_px"] = float(np.concatenate(errors).mean())
    row["per_pair"]["points"] = counts.astype(int).tolist()
    return row


def run_case(sets, taps, resolution, **kwargs) -> dict[str, dict[str, dict]]:
    """{set: {tap: summary}} of one extractor over every pair set (``no_motion``: identity)."""
    if kwargs.pop("no_motion", False):
        errs = {name: pair_errors(lambda s, t, p, **_: p, pairs) for name, pairs in sets.items()}
        return {n: {tap: summarise(errs[n], sets[n]) for tap in taps} for n in sets}
    fx = build_extractor(taps=taps, resolution=resolution, **kwargs)
    total = sum(len(p) for p in sets.values())
    cached = ExtractorPredictor(fx, cache_size=2 * total)  # every image extracted once

    def predict(source, target, points, source_key=None):  # targets cached too, by identity
        return cached(source, target, points, source_key=source_key, target_key=str(id(target)))

    out: dict[str, dict[str, dict]] = {name: {} for name in sets}
    for tap in taps:
        cached.tap = tap
        for name, pairs in sets.items():
            began = time.perf_counter()
            row = summarise(pair_errors(predict, pairs), pairs)
            out[name][tap] = row | {"seconds": time.perf_counter() - began}
    return out


def paired(a: dict, b: dict, alpha: float) -> dict:
    """Mean per-point PCK difference a − b with its paired standard error over pairs."""
    key = f"pck@{alpha:g}"
    pa, pb = np.array(a["per_pair"][key]), np.array(b["per_pair"][key])
    w = np.array(a["per_pair"]["points"], dtype=np.float64)
    d = pa - pb
    mean = float((w * d).sum() / w.sum())
    n = len(d)
    se = float(np.sqrt(n / max(n - 1, 1) * ((w * (d - mean)) ** 2).sum()) / w.sum())
    return {"diff": mean, "se": se, "z": mean / se if se > 0 else None}


def comparisons(rows: list[dict], set_name: str, taps: list[str]) -> dict:
    """Per tap: CleanDIFT vs tiny (PCK@0.1 and @0.05) and vs DIFT at its best t (PCK@0.05)."""
    by = {r["method"]: r for r in rows if r["method"] != "dift"}
    dift = [r for r in rows if r["method"] == "dift"]
    out = {}
    if "clean" not in by:
        return out
    for tap in taps:
        clean = by["clean"]["sets"][set_name][tap]
        item: dict = {}
        if "tiny" in by:
            tiny = by["tiny"]["sets"][set_name][tap]
            item["vs_tiny@0.1"] = paired(clean, tiny, 0.1)
            item["ratio_to_tiny@0.05"] = clean["pck@0.05"] / max(tiny["pck@0.05"], 1e-9)
        if "no_motion" in by:
            item["vs_no_motion@0.1"] = paired(clean, by["no_motion"]["sets"][set_name][tap], 0.1)
        if dift:
            best = max(dift, key=lambda r: r["sets"][set_name][tap]["pck@0.05"])
            item["vs_best_dift@0.05"] = paired(clean, best["sets"][set_name][tap], 0.05) | {
                "best_t": best["t"]
            }
        out[tap] = item
    return out


def plot(
    record: dict, path: Path, tap: str, alpha: float = 0.1, size=(520, 820), set_name="warps"
) -> None:
    """PCK@alpha of DIFT against t (blue) with the single-pass methods as horizontal lines."""
    key = f"pck@{alpha:g}"
    h, w = size
    left, right, top, bottom = 70, 230, 50, 60
    canvas = np.full((h, w, 3), 255, np.uint8)
    dift = sorted(
        (r["t"], r["sets"][set_name][tap][key]) for r in record["rows"] if r["method"] == "dift"
    )
    singles = [
        (r["label"], r["sets"][set_name][tap][key]) for r in record["rows"] if r["method"] != "dift"
    ]
    t_max = max([t for t, _ in dift] + [1])

    def xy(t: float, v: float) -> tuple[int, int]:
        x = left + t / t_max * (w - left - right)
        y = top + (1 - v) * (h - top - bottom)
        return int(round(x)), int(round(y))

    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (215, 215, 215)
    for v in np.linspace(0, 1, 6):
        _, y = xy(0, v)
        cv2.line(canvas, (left, y), (w - right, y), grey, 1)
        cv2.putText(canvas, f"{v:.1f}", (25, y + 5), font, 0.45, black, 1, cv2.LINE_AA)
    for t, _ in dift:
        x, _ = xy(t, 0)
        cv2.putText(canvas, f"{t}", (x - 12, h - bottom + 20), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (w - right, h - bottom), black, 1)
    title = f"PCK@{alpha:g} on held-out homographies, tap {tap}"
    cv2.putText(canvas, title, (left, 30), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "DIFT timestep t", (left + 180, h - 15), font, 0.5, black, 1, cv2.LINE_AA)
    blue = (31, 119, 180)
    points = [xy(t, v) for t, v in dift]
    cv2.polylines(canvas, [np.array(points, np.int32)], False, blue, 2, cv2.LINE_AA)
    for p in points:
        cv2.circle(canvas, p, 4, blue, -1, cv2.LINE_AA)
    legend = [(f"DIFT {record.get('base_model', 'toy-base')} (ens {record['ensemble']})", blue)]
    colours = [(214, 39, 40), (44, 160, 44), (127, 127, 127), (148, 103, 189)]
    for (label, v), colour in zip(singles, colours):
        y = xy(0, v)[1]
        cv2.line(canvas, (left, y), (w - right, y), colour, 2, cv2.LINE_AA)
        legend.append((f"{label} {v:.2f}", colour))
    for k, (label, colour) in enumerate(legend):
        y = top + 20 + 24 * k
        cv2.line(canvas, (w - right + 10, y - 4), (w - right + 30, y - 4), colour, 3)
        cv2.putText(canvas, label, (w - right + 35, y), font, 0.42, black, 1, cv2.LINE_AA)
    save_png(path, canvas)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--taps", default="us6,us9")
    ap.add_argument("--ts", default="0,25,50,100,150,200,261,400,600")
    ap.add_argument("--ensemble", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=None, help="Input side (default: model's).")
    ap.add_argument("--pairs-per-image", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--images", default=None, help="Held-out photo folder (default: scikit-image's)."
    )
    ap.add_argument("--student", default="toy", help="CleanDIFT model (a preset or a file).")
    ap.add_argument(
        "--base-model",
        default="toy-base",
        help="Base SD of the single-pass and DIFT rows (a preset or a model folder).",
    )
    ap.add_argument(
        "--skip",
        default="",
        help="Cases to leave out (comma-separated): student, base, tiny, dift.",
    )
    ap.add_argument(
        "--reuse",
        default=None,
        help="A record of the same pairs (JSON): take rows with the same labels from it.",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--plot-alpha", type=float, default=0.1, help="PCK threshold plotted.")
    args = ap.parse_args(argv)
    taps = [t for t in args.taps.split(",") if t]
    ts = [int(t) for t in args.ts.split(",") if t]
    photos = load_photos(folder=args.images) if args.images else load_photos()
    sets = {"warps": make_pairs(photos, args.pairs_per_image, "homography", args.seed)}
    if real := real_pairs(args.images):
        sets["real"] = real
    torch.manual_seed(0)
    skip, ens = {c for c in args.skip.split(",") if c}, args.ensemble
    name = Path(args.student).stem if Path(args.student).is_file() else args.student
    base_name = args.base_model
    cases = [] if "student" in skip else [(f"CleanDIFT {name}", "clean", dict(model=args.student))]
    if "base" not in skip:
        cases.append((f"{base_name} single pass", "base", dict(model=args.base_model)))
    if "tiny" not in skip:
        cases.append(("tiny (random weights)", "tiny", dict(model="tiny")))
    cases.append(("no motion (identity)", "no_motion", dict(no_motion=True)))
    if "dift" not in skip:
        cases += [
            (
                f"DIFT {base_name} t={t}",
                "dift",
                dict(model=args.base_model, dift=True, t=t, ensemble=ens),
            )
            for t in ts
        ]
    set_info = {
        n: {
            "pairs": len(p),
            "points": int(sum(len(q.source_points) for q in p)),
            "photos": sorted({q.name.split("#")[0] for q in p}),
        }
        for n, p in sets.items()
    }
    reused = {}
    if args.reuse:
        old = json.loads(Path(args.reuse).read_text())
        if old.get("sets") != set_info or old.get("ensemble") != ens:
            sys.exit(f"error: --reuse {args.reuse} was measured on other pairs or ensemble")
        reused = {r["label"]: r for r in old["rows"] if set(taps) <= set(r["sets"]["warps"])}
    rows = []
    for label, method, kwargs in cases:
        if label in reused:  # same pairs, same code: deterministic up to the DIFT noise draws
            result = {n: {t: reused[label]["sets"][n][t] for t in taps} for n in sets}
            rows.append(reused[label] | {"sets": result, "reused_from": args.reuse})
            print(f"{label:24s} (from {args.reuse})", file=sys.stderr, flush=True)
            continue
        result = run_case(sets, taps, args.resolution, device="cpu", **kwargs)
        rows.append({"label": label, "method": method, "t": kwargs.get("t"), "sets": result})
        cells = "  ".join(
            f"{set_name}:{tap} {r['pck@0.05']:.3f}/{r['pck@0.1']:.3f}"
            for set_name, by_tap in result.items()
            for tap, r in by_tap.items()
        )
        print(f"{label:24s} PCK@0.05/0.1  {cells}", file=sys.stderr, flush=True)
    record = {
        "command": "python benchmarks/toy_eval.py " + " ".join(argv or sys.argv[1:]),
        "sets": set_info,
        "ensemble": args.ensemble,
        "base_model": args.base_model,
        "resolution": args.resolution,
        "machine": machine_info(),
        "comparisons": {n: comparisons(rows, n, taps) for n in sets},
        "rows": rows,
    }
    for tap, item in record["comparisons"]["warps"].items():
        text = "  ".join(
            f"{k} {v['diff']:+.3f}±{v['se']:.3f}" if isinstance(v, dict) else f"{k} {v:.2f}"
            for k, v in item.items()
        )
        print(f"warps {tap}: {text}", file=sys.stderr)
    if args.json:
        write_json(args.json, record)
    if args.plot and "dift" not in skip:
        plot(record, Path(args.plot), taps[0], args.plot_alpha)
    return 0


if __name__ == "__main__":
    sys.exit(main())
