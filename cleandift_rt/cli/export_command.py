"""`export`: a model's FeatureNet to ONNX, a TensorRT engine or an AOTInductor package."""

from __future__ import annotations

import json

import click

from ..errors import CleanDIFTError
from ..validation import (
    check_export_needs,
    check_input_size,
    check_output_file,
    check_output_folder,
    make_folder,
    remove_empty,
    split_taps,
)
from .common import check_model_options, emit, log_line


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
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp16", show_default=True
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "engine", "aoti"]),
    default="onnx",
    show_default=True,
)
@click.option("--out", default="artifacts", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--opset", type=click.IntRange(17), default=17, show_default=True)
@click.option("--workspace", type=float, default=None, help="TensorRT workspace limit (GiB).")
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=3,
    show_default=True,
    help="TensorRT builder optimisation level.",
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
    from ..models.presets import PRESETS  # a plain table: no torch

    check_model_options(model, base, None, "square", device, None, taps)
    side = resolution or (PRESETS[model].resolution if model in PRESETS else 512)
    check_input_size(height or side, width or side)
    if max_batch is not None and max_batch < batch:
        raise CleanDIFTError(f"--max-batch {max_batch} is smaller than --batch {batch}")
    check_output_folder(out, "--out")
    check_output_file(timing_cache, "--timing-cache")
    check_export_needs(fmt, precision, device, validate=not no_validate)

    from export import ExportOptions, export_model  # lazily: the runtime never imports export

    options = ExportOptions(
        model=model, base=base, taps=split_taps(taps), height=height or side,
        width=width or side, batch=batch, max_batch=max_batch, precision=precision, format=fmt,
        out=out, device=device, opset=opset, workspace_gib=workspace, opt_level=opt_level,
        timing_cache=timing_cache, validate=not no_validate,
    )  # fmt: skip
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
    created = make_folder(out, log_line)
    try:
        path, meta = export_model(options, log=log)
    except BaseException:
        remove_empty(created)
        raise
    payload = json.loads(meta.to_json())
    payload["path"] = str(path)
    lines = [f"{path}  ({meta.format}, {meta.precision}, batch {meta.batch[0]}..{meta.batch[1]})"]
    lines += [f"  {name:5s} {shape}" for name, shape in meta.output_shape().items()]
    emit(payload, as_json, "\n".join(lines))
