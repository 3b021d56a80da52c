"""`export`: a model's FeatureNet to ONNX, a TensorRT engine or an AOTInductor package, or a
Triton Inference Server model repository (``--format triton``)."""

from __future__ import annotations

import json

import click

from ..backends import registry
from ..dtypes import PRECISIONS
from ..errors import CleanDIFTError
from .common import command_line, emit, export_api

TRITON = "triton"  # not an artifact format: a model repository around one (serving/triton_repo)


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
    type=click.Choice((*registry.accepted_names(exportable=True), TRITON), case_sensitive=False),
    default="onnx",
    show_default=True,
    help="Artifact format (aliases: trt = tensorrt = engine, pt2 = aoti); triton: a Triton "
    "model repository in --out (from --from, else an ONNX export).",
)
@click.option(
    "--from",
    "from_artifact",
    default=None,
    type=click.Path(dir_okay=False),
    help="--format triton: the exported .onnx or .engine to put in the repository.",
)
@click.option("--triton-name", default=None, help="--format triton: the model's name.")
@click.option(
    "--queue-delay-us",
    type=click.IntRange(0),
    default=5000,
    show_default=True,
    help="--format triton: dynamic batching's max_queue_delay_microseconds.",
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
    from_artifact,
    triton_name,
    queue_delay_us,
    out,
    device,
    opset,
    workspace,
    opt_level,
    timing_cache,
    no_validate,
    as_json,
):
    """Export a model's FeatureNet to ONNX, a TensorRT engine or an AOTInductor package, or
    write a Triton model repository (--format triton)."""
    ctx = click.get_current_context()
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
    if fmt.lower() == TRITON:
        return _triton(ctx, from_artifact, triton_name, queue_delay_us, out, as_json, log)
    if from_artifact is not None:
        raise CleanDIFTError("--from takes an exported artifact for --format triton only")
    path, meta = _export(dict(ctx.params), log)
    payload = json.loads(meta.to_json())
    payload["path"] = str(path)
    lines = [f"{path}  ({meta.format}, {meta.precision}, batch {meta.batch[0]}..{meta.batch[1]})"]
    lines += [f"  {name:5s} {shape}" for name, shape in meta.output_shape().items()]
    emit(payload, as_json, "\n".join(lines))


def _export(p: dict, log):
    """Run the export of the command's parameters ``p``; returns (artifact path, metadata)."""
    from ..models import PRESETS

    exporter = export_api()  # lazily: the runtime never imports export
    native = PRESETS[p["model"]].resolution if p["model"] in PRESETS else 512
    side = p["resolution"] or native
    options = exporter.ExportOptions(
        model=p["model"], base=p["base"], taps=tuple(p["taps"].split(",")),
        height=p["height"] or side, width=p["width"] or side, batch=p["batch"],
        max_batch=p["max_batch"], precision=p["precision"], format=p["fmt"], out=p["out"],
        device=p["device"], opset=p["opset"], workspace_gib=p["workspace"],
        opt_level=p["opt_level"], timing_cache=p["timing_cache"], validate=not p["no_validate"],
    )  # fmt: skip
    return exporter.export_model(options, log=log)


def _triton(ctx, from_artifact, name, queue_delay_us, out, as_json, log):
    """--format triton: the repository model of --from, or of an ONNX export of the usual
    options (exported into a staging folder of --out, removed afterwards)."""
    import shutil
    import tempfile
    from pathlib import Path

    from ..serving.triton_repo import write_triton_repository

    staging = None
    try:
        source = from_artifact
        if source is None:
            Path(out).mkdir(parents=True, exist_ok=True)
            staging = tempfile.mkdtemp(prefix=".triton-onnx-", dir=out)
            source = str(_export(dict(ctx.params, fmt="onnx", out=staging), log)[0])
        model_dir = write_triton_repository(
            source, out, name=name, queue_delay_us=queue_delay_us, rebuild=command_line(ctx)
        )
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    config = (model_dir / "config.pbtxt").read_text()
    payload = {"repository": str(Path(out)), "model": model_dir.name, "path": str(model_dir),
               "config": config}  # fmt: skip
    text = f"wrote Triton model {model_dir}  (tritonserver --model-repository {out})\n{config}"
    emit(payload, as_json, text.rstrip())
