"""`track`: follow points through a camera, video, image folder or stream."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import CleanDIFTError
from ..tracking.defaults import TRACK_REFINE
from ..validation import check_output_file
from .common import (
    check_model_options,
    emit,
    log_line,
    model_options,
    output_parent,
    parse_points,
    refine_cli_options,
    refine_options,
    tap_to_use,
)


@click.command()
@click.option(
    "--source", required=True, help="Camera index (0), video file, image folder or glob, URL."
)
@click.option("--artifact", default=None, help="Exported artifact to run (instead of --model).")
@model_options(taps_option=False)
@click.option("--points", default=None, help="Points 'x,y;x,y' in reference-frame pixels.")
@click.option("--points-file", default=None, help="JSON file: [[x, y], ...] or {'points': ...}.")
@click.option("--grid", type=click.IntRange(1, 256), default=None, help="An N×N grid of points.")
@click.option("--reference", default=None, help="Reference image (default: the first frame).")
@click.option("--mode", type=click.Choice(["anchor", "chain"]), default="anchor", show_default=True)
@click.option(
    "--update-rate",
    type=click.FloatRange(0, 1),
    default=1.0,
    show_default=True,
    help="chain: descriptor update per frame (1: previous frame only).",
)
@click.option("--min-score", type=float, default=0.0, show_default=True, help="Lost under it.")
@click.option("--no-mutual", is_flag=True, help="Skip the cycle check (lost flag).")
@click.option(
    "--radius", type=click.FloatRange(0), default=None, help="Search radius (px) around the last "
    "position; default: the whole frame."
)  # fmt: skip
@click.option(
    "--buffer",
    type=click.Choice(["auto", "latest", "all"]),
    default="auto",
    show_default=True,
    help="latest: keep only the newest frame (live); all: every frame (files); auto: by source.",
)
@click.option("--max-frames", type=click.IntRange(1), default=None)
@refine_cli_options(default=TRACK_REFINE)
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Annotated .mp4.")
@click.option("--tracks", default=None, type=click.Path(dir_okay=False), help="JSONL tracks.")
@click.option("--show", is_flag=True, help="Live window (needs a GUI build of OpenCV).")
@click.option("--trail", type=click.IntRange(0), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def track(
    source, artifact, model, base, resolution, policy, device, dtype, timestep, taps, fusion,
    points, points_file, grid, reference, mode, update_rate, min_score, no_mutual, radius, buffer,
    max_frames, refine, refine_window, refine_temperature, warmup, out, tracks, show, trail,
    as_json,
):  # fmt: skip
    """Track points through a camera, video, image folder or URL stream."""
    fused = check_model_options(
        None if artifact else model, base, resolution, policy, device, timestep, taps, True,
        fusion,
    )  # fmt: skip
    if (fused is not None and fused.pca_dim is not None) or "pca" in str(fusion["fuse"]):
        raise CleanDIFTError("track fuses with --fuse concat: a pca:D fitted per pair does not "
                             "keep descriptors comparable across frames")  # fmt: skip
    refine_opts = refine_options(refine, refine_window, refine_temperature)
    if artifact is not None and not Path(artifact).is_file():
        raise CleanDIFTError(f"--artifact '{artifact}' is not a file")
    given = [v is not None for v in (points, points_file, grid)]
    if sum(given) != 1:
        raise CleanDIFTError("give exactly one of --points 'x,y;x,y', --points-file and --grid N")
    if points_file is not None:
        try:
            data = json.loads(Path(points_file).read_text())
        except (OSError, ValueError) as exc:
            raise CleanDIFTError(f"cannot read points file '{points_file}': {exc}") from None
        pts = data.get("points") if isinstance(data, dict) else data
        if not isinstance(pts, list):
            raise CleanDIFTError(
                f"points file '{points_file}' must hold [[x, y], ...] or "
                '{"points": [[x, y], ...]}'
            )
    else:
        pts = parse_points(points) if points is not None else None
    check_output_file(out, "--out video", (".mp4", ".avi", ".mov", ".mkv"))
    check_output_file(tracks, "--tracks", (".jsonl", ".json", ".ndjson"))
    if out is not None and tracks is not None and Path(out).resolve() == Path(tracks).resolve():
        raise CleanDIFTError("--out and --tracks name the same file")
    if reference is not None:
        from ..imaging import check_image_file

        check_image_file(reference)
    from ..tracking.sources import open_source  # no torch yet

    src = open_source(source)  # fail on a bad source before loading a model
    try:
        from ..runtime import build_extractor
        from ..tracking import Tracker, run_tracking

        fx = build_extractor(
            model, taps, artifact=artifact, base=base, resolution=resolution, policy=policy,
            device=device, dtype=dtype, timestep=timestep, **fusion,
        )  # fmt: skip
        tracker = Tracker(
            fx, pts, grid=grid, reference=reference, tap=tap_to_use(fx, taps), mode=mode,
            update_rate=update_rate, min_score=min_score, mutual=not no_mutual, radius=radius,
            buffer=buffer, warmup=warmup, **refine_opts,
        )  # fmt: skip
        for path in (out, tracks):
            if path is not None:
                output_parent(path)
    except BaseException:
        src.close()
        raise
    summary = run_tracking(
        tracker, src, out=out, tracks=tracks, show=show, max_frames=max_frames, trail=trail,
        progress=not as_json,
    )  # fmt: skip
    lat = summary["latency_ms"]
    lines = [
        f"{summary['frames']} frame(s), {summary['dropped']} dropped, {summary['fps']:.1f} FPS, "
        f"{summary['points']} point(s), mode {mode}, tap {summary['tap']} ({summary['ended']})"
    ]
    lines += [
        f"  {s:8s} p50 {v['p50']:8.2f}  p90 {v['p90']:8.2f}  p99 {v['p99']:8.2f} ms"
        for s, v in lat.items()
    ]
    lines += [f"wrote {summary[k]}" for k in ("video", "tracks") if summary.get(k)]
    emit(summary, as_json, "\n".join(lines))
    if summary["ended"] == "interrupted":  # Ctrl-C: outputs closed, then 130 like every command
        log_line(f"interrupted after {summary['frames']} frame(s)")
        click.get_current_context().exit(130)
