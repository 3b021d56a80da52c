"""`bench`: latency, throughput, FLOPs and MFU of CleanDIFT against the DIFT baseline."""

from __future__ import annotations

from pathlib import Path

import click

from ..backends import registry
from ..errors import CleanDIFTError
from ..protocol import DIFT_ENSEMBLE, DIFT_TIMESTEP
from ..validation import (
    check_device,
    check_export_needs,
    check_input_size,
    check_model_name,
    check_onnx_runs_here,
    check_output_file,
    check_output_folder,
    split_taps,
)
from .common import command_line, emit, export_api, int_list, output_parent, write_report


@click.command()
@click.option(
    "--model",
    default="toy",
    show_default=True,
    help="toy, tiny, random:sd21, random:sd15, or any model `extract` takes.",
)
@click.option("--taps", default="us6", show_default=True, help="Comma-separated taps.")
@click.option("--resolutions", default="256", show_default=True, help="Square sides, e.g. 512,768.")
@click.option("--batches", default="1", show_default=True, help="Batch sizes, e.g. 1,8.")
@click.option(
    "--backends",
    default="torch",
    show_default=True,
    help=f"BACKEND[-PRECISION],...: {', '.join(registry.names())} (or an alias such as trt) "
    "× fp32, fp16, bf16 (bare: fp16 on CUDA, fp32 on the CPU).",
)
@click.option("--device", default="auto", show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=2, show_default=True)
@click.option(
    "--reps",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="At least this many timed runs per case.",
)
@click.option(
    "--min-time",
    type=click.FloatRange(0),
    default=2.0,
    show_default=True,
    help="At least this many seconds of timed runs per case.",
)
@click.option(
    "--dift/--no-dift",
    default=True,
    show_default=True,
    help="Time the DIFT baseline (fp32 eager, batch 1) in the same run.",
)
@click.option("--dift-t", type=click.IntRange(0, 999), default=DIFT_TIMESTEP, show_default=True)
@click.option("--dift-ensemble", type=click.IntRange(1), default=DIFT_ENSEMBLE, show_default=True)
@click.option(
    "--matcher/--no-matcher",
    default=True,
    show_default=True,
    help="Time the exact upsampled cosine argmax.",
)
@click.option("--matcher-points", type=click.IntRange(1), default=1024, show_default=True)
@click.option(
    "--peak-seconds",
    type=click.FloatRange(0),
    default=1.0,
    show_default=True,
    help="Seconds of matmul / copy runs measuring the hardware peak (before and after).",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="CPU threads of torch (default: torch's; on a shared machine 1 is steadier).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--artifacts",
    default=None,
    type=click.Path(file_okay=False),
    help="Where exported backends are built (default: a temporary folder).",
)
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the JSON here.")
@click.option(
    "--plot",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write a PNG: ms per image per case and backend, DIFT beside.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(
    model,
    taps,
    resolutions,
    batches,
    backends,
    device,
    warmup,
    reps,
    min_time,
    dift,
    dift_t,
    dift_ensemble,
    matcher,
    matcher_points,
    peak_seconds,
    threads,
    seed,
    artifacts,
    out,
    plot,
    as_json,
):
    """Latency, throughput, memory, FLOPs and MFU of CleanDIFT vs the DIFT baseline."""
    import shutil
    import tempfile

    check_model_name(model)
    check_device(device)
    tap_names = split_taps(taps)
    sides = int_list(resolutions, "--resolutions")
    for side in sides:
        check_input_size(side, side)
    backend_names = tuple(b.strip() for b in backends.split(",") if b.strip())
    for name in backend_names:  # what each backend needs, before anything is measured
        backend, _, precision = name.partition("-")
        spec = registry.get(backend)  # unknown names: one line suggesting the nearest
        if spec.exportable:
            check_export_needs(spec.name, precision, device, validate=False)
        if spec.name == "onnx":
            check_onnx_runs_here(precision, device, "the onnx backend")
    check_output_file(out, "--out", (".json",))
    check_output_file(plot, "--plot", (".png",))
    check_output_folder(artifacts, "--artifacts")

    from ..bench import BenchSettings, format_table, plot_report, run_bench

    settings = BenchSettings(
        model=model,
        taps=tap_names,
        device=device,
        resolutions=sides,
        batches=int_list(batches, "--batches"),
        backends=backend_names,
        warmup=warmup,
        reps=reps,
        min_time=min_time,
        dift=dift,
        dift_t=dift_t,
        dift_ensemble=dift_ensemble,
        matcher=matcher,
        matcher_points=matcher_points,
        peak_seconds=peak_seconds,
        threads=threads,
        seed=seed,
    )
    settings.check()
    workdir = Path(artifacts) if artifacts else Path(tempfile.mkdtemp(prefix="cleandift-bench-"))
    built: dict[tuple, Path] = {}

    def build_artifact(backend: str, precision: str, res: int, batch: int) -> Path:
        exporter = export_api()  # lazily: the runtime never imports export
        key = (backend, precision, res, batch)
        if key not in built:
            fmt = registry.get(backend, exportable=True).name
            options = exporter.ExportOptions(
                model=model,
                taps=settings.taps,
                height=res,
                width=res,
                batch=batch,
                precision=precision,
                format=fmt,
                out=str(workdir),
                device=device,
                validate=False,
            )
            built[key] = exporter.export_model(options, log=lambda _line: None)[0]
        return built[key]

    command = command_line(click.get_current_context())
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
    try:
        report = run_bench(settings, build_artifact, progress=not as_json, log=log)
    finally:
        if not artifacts:
            shutil.rmtree(workdir, ignore_errors=True)
    report.command = command
    payload = report.to_dict()
    text = format_table(report)
    if plot is not None:
        output_parent(plot)
        try:
            payload["plot"] = str(plot_report(report, plot))
        except OSError as exc:
            raise CleanDIFTError(f"cannot write '{plot}': {exc.strerror or exc}") from None
        text += f"\nwrote {plot}"
    if out is not None:
        output_parent(out)
        payload["out"] = write_report(out, payload)
        text += f"\nwrote {out}"
    emit(payload, as_json, text)
