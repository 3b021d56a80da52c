"""`export`: a model's FeatureNet to ONNX, a TensorRT engine or an AOTInductor package."""

from __future__ import annotations

import json

import click

from ..backends import registry
from ..dtypes import PRECISIONS
from .common import emit, export_api


@click.command("export")
@click.option("--model", default="toy", show_default=True, help="Model to export (see `extract`).")
@click.option("--base", default=None, help="Base model of a bare *_unet.safetensors.")
@click.option("--taps", default="us6", show_default=True, help="Comma-separated taps.")
@click.option("--resolution", type=click.IntRange(1), default=None, help="Square input size.")
@click.option("--height", type=click.IntRange(1), default=None, help="Input height (px).")
@click.option("--width", type=click.IntRange(1), default=None, help="Input width (px).")
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Batch size (the smallest, with --max-batch).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1),
    default=None,
    help="Largest batch: exports a dynamic batch axis.",
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp16", show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(registry.accepted_names(exportable=True), case_sensitive=False),
    default="onnx",
    show_default=True,
    help="Artifact format (aliases: trt = tensorrt = engine, pt2 = aoti).",
)
@click.option("--out", default="artifacts", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--opset", type=click.IntRange(17), default=None, help="ONNX opset (default 17).")
@click.option("--workspace", type=float, default=None, help="TensorRT workspace limit (GiB).")
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=None,
    help="TensorRT builder optimisation level (default 3).",
)
@click.option(
    "--timing-cache",
    default=None,
    type=click.Path(dir_okay=False),
    help="TensorRT timing cache file (reused and updated).",
)
@click.option("--no-validate", is_flag=True, help="Skip the comparison with PyTorch fp32.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export_command(
    model,
    base,
    taps,
    resolution,
    height,
    width,
    batch,
    max_batch,
    precision,
    fmt,
    out,
    device,
    opset,
    workspace,
    opt_level,
    timing_cache,
    no_validate,
    as_json,
):
    """Export a model's FeatureNet to ONNX, a TensorRT engine or an AOTInductor package."""
    from ..models import PRESETS

    exporter = export_api()  # lazily: the runtime never imports export

    native = PRESETS[model].resolution if model in PRESETS else 512
    side = resolution or native
    options = exporter.ExportOptions(
        model=model, base=base, taps=tuple(t for t in taps.split(",")), height=height or side,
        width=width or side, batch=batch, max_batch=max_batch, precision=precision, format=fmt,
        out=out, device=device, opset=opset, workspace_gib=workspace, opt_level=opt_level,
        timing_cache=timing_cache, validate=not no_validate,
    )  # fmt: skip
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
    path, meta = exporter.export_model(options, log=log)
    payload = json.loads(meta.to_json())
    payload["path"] = str(path)
    lines = [f"{path}  ({meta.format}, {meta.precision}, batch {meta.batch[0]}..{meta.batch[1]})"]
    lines += [f"  {name:5s} {shape}" for name, shape in meta.output_shape().items()]
    emit(payload, as_json, "\n".join(lines))
