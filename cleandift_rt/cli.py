"""`cleandift-rt`: the command-line entry point.

Every command takes ``--json`` for machine-readable output, exits 0 on success and 2 with one
``error: ...`` line (no traceback, no partial output file) on bad input.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import click

from .errors import CleanDIFTError

POLICY = click.Choice(["square", "fit"])


def _fail(message: str, code: int = 2):
    click.echo(f"error: {' '.join(str(message).split())}", err=True)
    sys.exit(code)


def _emit(payload: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else text)


def model_options(taps_option: bool):
    """Options shared by the commands that load a model."""

    def wrap(fn):
        options = [
            click.option(
                "--model",
                default="tiny",
                show_default=True,
                help="Preset (sd21, sd15, sd21-base, sd15-base, tiny), diffusers folder, "
                "hub id or CleanDIFT .safetensors file.",
            ),
            click.option("--base", default=None, help="Base model of a bare *_unet.safetensors."),
            click.option(
                "--resolution",
                type=int,
                default=None,
                help="Input size (square side, or longer side with --policy fit); "
                "default: the model's native size.",
            ),
            click.option(
                "--policy",
                type=POLICY,
                default="square",
                show_default=True,
                help="square: resize as DIFT; fit: keep aspect and pad.",
            ),
            click.option(
                "--device", default="auto", show_default=True, help="auto, cpu, cuda[:N]."
            ),
            click.option(
                "--dtype",
                type=click.Choice(["fp32", "fp16", "bf16"]),
                default=None,
                help="Default: fp16 on CUDA, fp32 on CPU.",
            ),
            click.option(
                "--timestep",
                type=float,
                default=None,
                help="Override the U-Net timestep (default: the model's).",
            ),
        ]
        if taps_option:
            options.append(
                click.option(
                    "--taps",
                    default="us6",
                    show_default=True,
                    help="Comma-separated taps: mid, us1..us12, up0..up3.",
                )
            )
        else:
            options.append(
                click.option(
                    "--tap",
                    "taps",
                    default="us6",
                    show_default=True,
                    help="Tap to match with: mid, us1..us12, up0..up3.",
                )
            )
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


def _extractor(model, base, resolution, policy, device, dtype, timestep, taps):
    from .extractor import FeatureExtractor

    return FeatureExtractor.from_pretrained(
        model,
        taps=taps,
        base=base,
        resolution=resolution,
        policy=policy,
        device=device,
        dtype=dtype,
        timestep=timestep,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cleandift-rt", prog_name="cleandift-rt")
def cli():
    """Noise-free Stable Diffusion features (CleanDIFT): extract and match, fast."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(as_json: bool):
    """Versions, devices and the backends available here."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    packages = [
        "cleandift-rt",
        "torch",
        "diffusers",
        "numpy",
        "opencv-python-headless",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "triton",
        "transformers",
    ]
    versions = {p: ver(p) for p in packages}
    devices = [{"name": "cpu", "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "name": f"cuda:{i}",
                    "gpu": p.name,
                    "capability": f"{p.major}.{p.minor}",
                    "memory_gib": round(p.total_memory / 2**30, 1),
                }
            )
    backends = {
        "torch": True,
        "onnxruntime": bool(versions["onnxruntime"] or versions["onnxruntime-gpu"]),
        "tensorrt": bool(versions["tensorrt"]),
        "triton": bool(versions["triton"]),
    }
    payload = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "devices": devices,
        "backends": backends,
    }
    lines = [f"python {payload['python']} on {payload['platform']}"]
    lines += [f"  {k:24s} {v or '-'}" for k, v in versions.items()]
    lines += ["devices: " + ", ".join(d.get("gpu", d["name"]) for d in devices)]
    lines += ["backends: " + ", ".join(k for k, ok in backends.items() if ok)]
    _emit(payload, as_json, "\n".join(lines))


@cli.command()
@click.argument("images", nargs=-1, required=True)
@model_options(taps_option=True)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False),
    help="Output .safetensors: one (N, C, h, w) tensor per tap, metadata in the header.",
)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def extract(
    images, model, base, resolution, policy, device, dtype, timestep, taps, out, batch_size, as_json
):
    """Extract features of IMAGES into a safetensors file."""
    from .imaging import image_name
    from .models.checkpoint import atomic_save

    if not out.lower().endswith(".safetensors"):
        raise CleanDIFTError(f"--out must be a .safetensors file, got '{out}'")
    for image in images:  # fail before loading a model; decoding errors come per image later
        if not Path(image).exists():
            raise CleanDIFTError(f"cannot read image '{image}': no such file")
        if not Path(image).is_file():
            raise CleanDIFTError(f"cannot read image '{image}': not a regular file")
    start = time.perf_counter()
    fx = _extractor(model, base, resolution, policy, device, dtype, timestep, taps)
    feats = fx(list(images), batch_size=batch_size, progress=not as_json)
    meta = {
        "model": fx.model_name,
        "taps": json.dumps(
            {t: {"stride": feats.strides[t], "shape": list(feats[t].shape)} for t in feats.maps}
        ),
        "images": json.dumps([image_name(i) for i in images]),
        "transforms": json.dumps([t.to_dict() for t in feats.transforms]),
        "policy": policy,
        "dtype": str(feats[fx.taps[0]].dtype).removeprefix("torch."),
    }
    try:
        atomic_save(dict(feats.maps), out, meta)
    except OSError as exc:
        raise CleanDIFTError(f"cannot write '{out}': {exc.strerror or exc}") from None
    seconds = time.perf_counter() - start
    payload = {
        "out": str(Path(out)),
        "images": len(images),
        "model": fx.model_name,
        "taps": json.loads(meta["taps"]),
        "seconds": round(seconds, 3),
    }
    text = [f"wrote {out}: {len(images)} image(s), model {fx.model_name}, {seconds:.1f} s"]
    text += [
        f"  {t:5s} {tuple(v['shape'])} stride {v['stride']}" for t, v in payload["taps"].items()
    ]
    _emit(payload, as_json, "\n".join(text))


def parse_points(text: str) -> list[tuple[float, float]]:
    """'x,y;x,y' → [(x, y), ...]; CleanDIFTError on bad syntax or no point."""
    points = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            x, y = (float(v) for v in part.split(","))
        except ValueError:
            raise CleanDIFTError(f"bad point '{part}': use 'x,y;x,y' in pixels") from None
        points.append((x, y))
    if not points:
        raise CleanDIFTError("no points to match: give --points 'x,y;x,y' or --grid N")
    return points


def check_points_inside(points: list, size: tuple[int, int]) -> None:
    """CleanDIFTError naming the first point that is not finite or not inside an (H, W) image."""
    h, w = size
    for x, y in points:
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):  # False for NaN too
            raise CleanDIFTError(f"point ({x:g}, {y:g}) is outside the {w}x{h} source image")


@cli.command()
@click.argument("source")
@click.argument("target")
@model_options(taps_option=False)
@click.option(
    "--points", default=None, help="Source points 'x,y;x,y' in pixels (centre = integer)."
)
@click.option("--grid", type=click.IntRange(1, 256), default=None, help="An N×N grid of points.")
@click.option(
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write a correspondence picture (.png).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def match(
    source,
    target,
    model,
    base,
    resolution,
    policy,
    device,
    dtype,
    timestep,
    taps,
    points,
    grid,
    out,
    as_json,
):
    """Match points of SOURCE in TARGET (results in original pixel coordinates)."""
    from .imaging import load_image

    if (points is None) == (grid is None):
        raise CleanDIFTError("give exactly one of --points 'x,y;x,y' and --grid N")
    if out is not None and not out.lower().endswith(".png"):
        raise CleanDIFTError(f"--out must be a .png file, got '{out}'")
    pts = parse_points(points) if points is not None else None
    src, tgt = load_image(source), load_image(target)
    if pts is None:
        from .demo import grid_points

        pts = grid_points(src.shape[:2], grid).tolist()
    check_points_inside(pts, src.shape[:2])
    fx = _extractor(model, base, resolution, policy, device, dtype, timestep, taps)
    result = fx.match(src, tgt, pts)
    payload = {"source": source, "target": target, "model": fx.model_name, **result.to_dict()}
    if out is not None:
        from .viz import draw_correspondences, save_png

        picture = draw_correspondences(src, tgt, result.source_points, result.target_points)
        try:
            payload["picture"] = str(save_png(out, picture))
        except OSError as exc:
            raise CleanDIFTError(f"cannot write '{out}': {exc.strerror or exc}") from None
    lines = [f"{len(pts)} match(es), model {fx.model_name}, tap {result.tap}"]
    lines += [
        f"  ({a:.1f}, {b:.1f}) -> ({c:.0f}, {d:.0f})  score {s:.3f}"
        for (a, b), (c, d), s in zip(result.source_points, result.target_points, result.scores)
    ]
    if out is not None:
        lines.append(f"wrote {out}")
    _emit(payload, as_json, "\n".join(lines))


@cli.command()
@click.option("--model", default="tiny", show_default=True, help="Model to run (see `extract`).")
@click.option("--tap", "taps", default="us6", show_default=True)
@click.option("--image", default=None, help="Your own photo (default: scikit-image's astronaut).")
@click.option(
    "--out-dir", default="demo-output", show_default=True, type=click.Path(file_okay=False)
)
@click.option("--resolution", type=int, default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(model, taps, image, out_dir, resolution, device, dtype, as_json):
    """Offline demo: match a photo to a known warp of it; write two PNGs."""
    from .demo import run_demo
    from .imaging import load_image

    photo = load_image(image) if image is not None else None
    fx = _extractor(model, None, resolution, "square", device, dtype, None, taps)
    report = run_demo(fx, out_dir, photo)
    lines = [
        f"model {report.model}, tap {report.tap}: {report.points} points matched to a known warp",
        f"  PCK@0.05 {report.pck_05:.2f}   PCK@0.10 {report.pck_10:.2f}   "
        f"mean error {report.mean_error_px:.1f} px",
        f"  wrote {report.correspondences_png} (grey lines: off by more than 10 % of the size)",
        f"  wrote {report.features_png} (joint PCA of the features)",
    ]
    if report.random_weights:
        lines.append(
            f"note: '{report.model}' has random weights: the pictures show the plumbing, not "
            "feature quality (random features do not match real photos). Run --model sd21 with "
            "the weights downloaded for real correspondences."
        )
    _emit(report.to_dict(), as_json, "\n".join(lines))


@cli.command("export")
@click.option("--model", default="tiny", show_default=True, help="Model to export (see `extract`).")
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
    from export import ExportOptions, export_model  # lazily: the runtime never imports export

    from .models import PRESETS

    native = PRESETS[model].resolution if model in PRESETS else 512
    side = resolution or native
    options = ExportOptions(
        model=model, base=base, taps=tuple(t for t in taps.split(",")), height=height or side,
        width=width or side, batch=batch, max_batch=max_batch, precision=precision, format=fmt,
        out=out, device=device, opset=opset, workspace_gib=workspace, opt_level=opt_level,
        timing_cache=timing_cache, validate=not no_validate,
    )  # fmt: skip
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
    path, meta = export_model(options, log=log)
    payload = json.loads(meta.to_json())
    payload["path"] = str(path)
    lines = [f"{path}  ({meta.format}, {meta.precision}, batch {meta.batch[0]}..{meta.batch[1]})"]
    lines += [f"  {name:5s} {shape}" for name, shape in meta.output_shape().items()]
    _emit(payload, as_json, "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors → one `error:` line and exit status 2."""
    try:
        code = cli.main(args=argv, prog_name="cleandift-rt", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # bare `cleandift-rt`
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        code = 0
    except click.ClickException as exc:
        _fail(exc.format_message())
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except CleanDIFTError as exc:
        _fail(str(exc))
    except BrokenPipeError:
        code = 0
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
