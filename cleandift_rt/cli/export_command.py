"""`export`: a model's FeatureNet to ONNX, a TensorRT engine or an AOTInductor package, or a
Triton Inference Server model repository (``--format triton``)."""

from __future__ import annotations

import json

import click

from ..backends import registry
from ..dtypes import PRECISIONS
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
from .common import (
    check_model_options,
    command_line,
    emit,
    export_api,
    fusion_options,
    log_line,
)

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
@fusion_options
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
    fusion,
):
    """Export a model's FeatureNet to ONNX, a TensorRT engine or an AOTInductor package, or
    write a Triton model repository (--format triton)."""
    ctx = click.get_current_context()
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
    check_output_folder(out, "--out")
    if fmt.lower() == TRITON:
        return _triton(ctx, from_artifact, triton_name, queue_delay_us, out, as_json, log)
    if from_artifact is not None:
        raise CleanDIFTError("--from takes an exported artifact for --format triton only")
    fmt = registry.get(fmt, exportable=True).name
    _check_export_args(dict(ctx.params, fmt=fmt))
    created = make_folder(out, log_line)
    try:
        path, meta = _export(dict(ctx.params, fmt=fmt), log)
    except BaseException:
        remove_empty(created)
        raise
    payload = json.loads(meta.to_json())
    payload["path"] = str(path)
    lines = [f"{path}  ({meta.format}, {meta.precision}, batch {meta.batch[0]}..{meta.batch[1]})"]
    lines += [f"  {name:5s} {shape}" for name, shape in meta.output_shape().items()]
    emit(payload, as_json, "\n".join(lines))


def _side(p: dict) -> int:
    from ..fusion import split_model_name
    from ..models.presets import PRESETS  # a plain table: no torch

    model = split_model_name(p["model"])[0]
    return p["resolution"] or (PRESETS[model].resolution if model in PRESETS else 512)


def _fusion_args(p: dict) -> dict:
    return {name: p[name] for name in ("fuse", "tap_weights", "fusion_alpha")}


def _check_export_args(p: dict) -> None:
    """Every export argument checked before anything heavy is imported or a model loads."""
    fused = check_model_options(p["model"], p["base"], None, "square", p["device"], None,
                                p["taps"], fusion=_fusion_args(p))  # fmt: skip
    if fused is not None and fused.pca_dim is not None:
        raise CleanDIFTError(
            f"--fuse {p['fuse']} is applied after the graph: export with --fuse concat and "
            f"match the artifact with --fuse {p['fuse']}"
        )
    side = _side(p)
    check_input_size(p["height"] or side, p["width"] or side)
    if p["max_batch"] is not None and p["max_batch"] < p["batch"]:
        raise CleanDIFTError(f"--max-batch {p['max_batch']} is smaller than --batch {p['batch']}")
    registry.check_options(
        registry.get(p["fmt"], exportable=True),
        {"opset": p["opset"], "workspace_gib": p["workspace"], "opt_level": p["opt_level"],
         "timing_cache": p["timing_cache"]},
    )  # fmt: skip
    check_output_file(p["timing_cache"], "--timing-cache")
    check_export_needs(p["fmt"], p["precision"], p["device"], validate=not p["no_validate"])


def _export(p: dict, log):
    """Run the export of the command's parameters ``p``; returns (artifact path, metadata)."""
    from ..fusion import check_alpha, parse_weights

    exporter = export_api()  # lazily: the runtime never imports export
    side = _side(p)
    taps = split_taps(p["taps"])
    weights = parse_weights(p["tap_weights"], taps) if p["tap_weights"] is not None else None
    alpha = check_alpha(p["fusion_alpha"]) if p["fusion_alpha"] is not None else None
    options = exporter.ExportOptions(
        model=p["model"], base=p["base"], taps=taps,
        height=p["height"] or side, width=p["width"] or side, batch=p["batch"],
        max_batch=p["max_batch"], precision=p["precision"], format=p["fmt"], out=p["out"],
        device=p["device"], opset=p["opset"], workspace_gib=p["workspace"],
        opt_level=p["opt_level"], timing_cache=p["timing_cache"], validate=not p["no_validate"],
        fuse=p["fuse"], tap_weights=weights, fusion_alpha=alpha,
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
            _check_export_args(dict(ctx.params, fmt="onnx"))
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
