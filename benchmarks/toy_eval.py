"""The toy-scale reproduction of CleanDIFT's claim on held-out photos (issue 9).

One run, same pairs for every method (`cleandift-rt eval homography`'s seeded random
homographies of scikit-image photos the toy models never trained on):

* CleanDIFT ``toy``: single pass on the clean image at the student's learned timestep;
* ``toy-base`` single pass on the clean image (the base U-Net without distillation);
* DIFT on ``toy-base``: ensemble of ``--ensemble`` noisy copies at each t of ``--ts``
  (the per-t curve), VAE noise and diffusion noise seeded;
* ``tiny`` (random weights) for comparison.

``--student FILE`` evaluates another student (e.g. a distillation variant); ``--skip`` leaves out
the base / tiny / DIFT rows.

PCK@{0.01, 0.05, 0.1} (fraction of the target's longer side, per point) and the mean
end-point error, per tap; a JSON record and a PNG of PCK@0.1 against t.

    python benchmarks/toy_eval.py --json benchmarks/results/toy_eval_cpu.json \\
        --plot benchmarks/results/toy_eval_cpu.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from cleandift_rt.bench import machine_info
from cleandift_rt.evaluation import ExtractorPredictor
from cleandift_rt.evaluation.homography import evaluate_homography, load_photos, make_pairs
from cleandift_rt.files import write_json
from cleandift_rt.runtime import build_extractor
from cleandift_rt.viz import save_png

ALPHAS = (0.01, 0.05, 0.1)


def run_case(pairs, taps, resolution, **kwargs) -> dict[str, dict]:
    """{tap: {pck@α: per-point PCK, epe_px, seconds}} of one extractor over ``pairs``."""
    fx = build_extractor(taps=taps, resolution=resolution, **kwargs)
    cached = ExtractorPredictor(fx, cache_size=2 * len(pairs))  # every image extracted once

    def predict(source, target, points, source_key=None):  # targets cached too, by identity
        return cached(source, target, points, source_key=source_key, target_key=str(id(target)))

    out = {}
    for tap in taps:
        began = time.perf_counter()
        cached.tap = tap
        summary = evaluate_homography(predict, pairs, ALPHAS)
        overall = summary["overall"]
        row = {f"pck@{a:g}": overall["per_point"][f"img@{a:g}"] for a in ALPHAS}
        row |= {"epe_px": overall["mean_epe_px"], "seconds": time.perf_counter() - began}
        out[tap] = row
    return out


def plot(record: dict, path: Path, tap: str, size=(520, 820)) -> None:
    """PCK@0.1 of DIFT against t (blue) with the single-pass methods as horizontal lines."""
    h, w = size
    left, right, top, bottom = 70, 230, 50, 60
    canvas = np.full((h, w, 3), 255, np.uint8)
    dift = sorted(
        (r["t"], r["taps"][tap]["pck@0.1"]) for r in record["rows"] if r["method"] == "dift"
    )
    singles = [
        (r["label"], r["taps"][tap]["pck@0.1"]) for r in record["rows"] if r["method"] != "dift"
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
    title = f"PCK@0.1 on held-out homographies, tap {tap}"
    cv2.putText(canvas, title, (left, 30), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "DIFT timestep t", (left + 180, h - 15), font, 0.5, black, 1, cv2.LINE_AA)
    blue = (31, 119, 180)
    points = [xy(t, v) for t, v in dift]
    cv2.polylines(canvas, [np.array(points, np.int32)], False, blue, 2, cv2.LINE_AA)
    for p in points:
        cv2.circle(canvas, p, 4, blue, -1, cv2.LINE_AA)
    legend = [(f"DIFT toy-base (ens {record['ensemble']})", blue)]
    colours = [(214, 39, 40), (44, 160, 44), (127, 127, 127)]
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
    ap.add_argument("--student", default="toy", help="CleanDIFT model (a preset or a file).")
    ap.add_argument(
        "--skip", default="", help="Cases to leave out (comma-separated): base, tiny, dift."
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args(argv)
    taps = [t for t in args.taps.split(",") if t]
    ts = [int(t) for t in args.ts.split(",") if t]
    pairs = make_pairs(load_photos(), args.pairs_per_image, "homography", args.seed)
    torch.manual_seed(0)
    skip, ens = {c for c in args.skip.split(",") if c}, args.ensemble
    name = Path(args.student).stem if Path(args.student).is_file() else args.student
    cases = [(f"CleanDIFT {name}", "clean", dict(model=args.student))]
    if "base" not in skip:
        cases.append(("toy-base single pass", "clean", dict(model="toy-base")))
    if "tiny" not in skip:
        cases.append(("tiny (random weights)", "clean", dict(model="tiny")))
    if "dift" not in skip:
        cases += [
            (f"DIFT toy-base t={t}", "dift", dict(model="toy-base", dift=True, t=t, ensemble=ens))
            for t in ts
        ]
    rows = []
    for label, method, kwargs in cases:
        result = run_case(pairs, taps, args.resolution, device="cpu", **kwargs)
        row = {"label": label, "method": method, "t": kwargs.get("t"), "taps": result}
        rows.append(row)
        cells = "  ".join(
            f"{tap} {r['pck@0.05']:.3f}/{r['pck@0.1']:.3f}" for tap, r in result.items()
        )
        print(f"{label:28s} PCK@0.05/0.1  {cells}", file=sys.stderr, flush=True)
    record = {
        "command": "python benchmarks/toy_eval.py " + " ".join(argv or sys.argv[1:]),
        "pairs": len(pairs),
        "points": int(sum(len(p.source_points) for p in pairs)),
        "photos": sorted({p.name.split("#")[0] for p in pairs}),
        "ensemble": args.ensemble,
        "resolution": args.resolution,
        "machine": machine_info(),
        "rows": rows,
    }
    if args.json:
        write_json(args.json, record)
    if args.plot and "dift" not in skip:
        plot(record, Path(args.plot), taps[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
