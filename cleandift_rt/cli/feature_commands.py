"""`info`, `extract`, `match` and `demo`: features and matches from images."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click

from ..dtypes import PRECISIONS
from ..errors import CleanDIFTError
from ..store.cli import is_store_path, run_store_extract, store_options
from ..validation import check_output_file, check_output_folder, make_folder, remove_empty
from .common import (
    check_model_options,
    check_points_inside,
    command_line,
    emit,
    log_line,
    model_options,
    output_parent,
    parse_points,
    refine_cli_options,
    refine_options,
)


def aoti_compiler() -> str | None:
    """The C++ compiler AOTInductor would use here ($CXX, else g++, c++ or clang++), or None."""
    import os
    import shutil

    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(as_json: bool):
    """Versions, devices, the backends available here and the named models."""
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
    from ..backends import registry
    from ..matching.triton_argmax import triton_available
    from ..models import PRESETS
    from ..models.presets import DINO_PRESETS, MIRROR_NOTE

    backends = {spec.name: spec.available() for spec in registry.BACKENDS}
    backends["aoti"] = backends["aoti"] and aoti_compiler() is not None  # compiles C++
    backends["triton"] = triton_available()  # the fused matcher (cosine_argmax on CUDA)
    registered = [
        {"name": s.name, "aliases": list(s.aliases), "suffix": s.suffix, "extra": s.extra,
         "devices": list(s.devices), "available": backends[s.name], "description": s.description}
        for s in registry.BACKENDS
    ]  # fmt: skip

    models = {name: p.description for name, p in PRESETS.items()}
    dino = {
        name: repo or "random fixed-seed weights (tests)" for name, repo in DINO_PRESETS.items()
    }
    payload = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "devices": devices,
        "backends": backends,
        "registry": registered,
        "models": models,
        "dino_models": dino,
        "notes": [
            MIRROR_NOTE,
            "--base DIR|HUB_ID replaces the base of every hub preset",
            "MODEL+DINOV2 (e.g. sd21+dinov2-b) fuses a model with a DINOv2 backbone",
        ],
    }
    lines = [f"python {payload['python']} on {payload['platform']}"]
    lines += [f"  {k:24s} {v or '-'}" for k, v in versions.items()]
    lines += ["devices: " + ", ".join(d.get("gpu", d["name"]) for d in devices)]
    lines += ["backends: " + ", ".join(k for k, ok in backends.items() if ok)]
    for s in registered:
        also = f" (= {', '.join(s['aliases'])})" if s["aliases"] else ""
        need = "" if s["available"] else f"  [pip install 'cleandift-rt[{s['extra']}]']"
        lines.append(f"  {s['name'] + also:28s} {s['description']}{need if s['extra'] else ''}")
    lines += ["models:"] + [f"  {k:24s} {v}" for k, v in models.items()]
    lines += ["DINOv2 backbones (MODEL+DINOV2):"] + [f"  {k:24s} {v}" for k, v in dino.items()]
    lines += [f"note: {n}" for n in payload["notes"]]
    emit(payload, as_json, "\n".join(lines))


@click.command()
@click.argument("images", nargs=-1, required=True, metavar="SOURCES...")
@model_options(taps_option=True)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(),
    help="A folder: a sharded, resumable feature store (store.json, shard-*.safetensors, "
    "index.jsonl). A .safetensors file: one (N, C, h, w) tensor per tap, for small sets.",
)
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@store_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def extract(
    images, model, base, resolution, policy, device, dtype, timestep, taps, fusion, out,
    batch_size, as_json, **store_args,
):  # fmt: skip
    """Extract features of SOURCES (images, folders, globs, @list.txt, videos) into a feature
    store folder, or into one .safetensors file."""
    fused = check_model_options(
        None if store_args["artifact"] else model, base, resolution, policy, device, timestep,
        taps, fusion=fusion,
    )  # fmt: skip
    pca_dim = fused.pca_dim if fused is not None else None
    if is_store_path(out):
        import shlex

        model_args = dict(model=model, taps=taps, device=device, dtype=dtype,
                          resolution=resolution, policy=policy, base=base,
                          timestep=timestep, **fusion)  # fmt: skip
        command = f"{command_line(click.get_current_context())} {shlex.join(images)}"
        payload, text = run_store_extract(
            images, out, model_args=model_args, store_args=store_args, batch_size=batch_size,
            as_json=as_json, command=command,
        )  # fmt: skip
        emit(payload, as_json, text)
        return
    if store_args["engine"] != "local":
        raise CleanDIFTError("--engine ray writes a feature store: give --out a folder")
    check_output_file(out, "--out", (".safetensors",))
    from ..imaging import check_image_file, image_name

    for image in images:  # fail before loading a model (headers only; pixels decode later)
        check_image_file(image)
    from ..models.checkpoint import atomic_save

    start = time.perf_counter()
    from ..runtime import build_extractor

    fx = build_extractor(
        model, taps, base=base, resolution=resolution, policy=policy, device=device, dtype=dtype,
        timestep=timestep, artifact=store_args["artifact"], **fusion,
    )  # fmt: skip
    feats = fx(list(images), batch_size=batch_size, progress=not as_json)
    tensors = dict(feats.maps)
    pca_dim = fx.pca_dim
    if pca_dim is not None:  # reduced with a PCA of every image's fused cells, stored beside
        from ..fusion import FUSED
        from ..matching.pca import fit_pca

        pca = fit_pca([feats[FUSED]], pca_dim)
        tensors[FUSED] = pca.project(feats[FUSED]).contiguous()
        tensors.update(pca.state_dict())
    meta = {
        "model": fx.model_name,
        "taps": json.dumps(
            {t: {"stride": feats.strides[t], "shape": list(tensors[t].shape)} for t in feats.maps}
        ),
        "fusion": json.dumps(dict(fx.fusion, pca_dim=pca_dim) if fx.fusion else {}),
        "images": json.dumps([image_name(i) for i in images]),
        "transforms": json.dumps([t.to_dict() for t in feats.transforms]),
        "policy": policy,
        "dtype": str(feats[fx.taps[0]].dtype).removeprefix("torch."),
        "hub_files": json.dumps(fx.hub_files),  # [{repo, file, commit}]: the exact weights
    }
    output_parent(out)
    try:
        atomic_save(tensors, out, meta)
    except OSError as exc:
        raise CleanDIFTError(f"cannot write '{out}': {exc.strerror or exc}") from None
    seconds = time.perf_counter() - start
    payload = {
        "out": str(Path(out)),
        "images": len(images),
        "model": fx.model_name,
        "taps": json.loads(meta["taps"]),
        "fusion": json.loads(meta["fusion"]),
        "hub_files": fx.hub_files,
        "seconds": round(seconds, 3),
    }
    text = [f"wrote {out}: {len(images)} image(s), model {fx.model_name}, {seconds:.1f} s"]
    text += [
        f"  {t:5s} {tuple(v['shape'])} stride {v['stride']}" for t, v in payload["taps"].items()
    ]
    emit(payload, as_json, "\n".join(text))


@click.command()
@click.argument("source")
@click.argument("target")
@model_options(taps_option=False)
@click.option(
    "--points", default=None, help="Source points 'x,y;x,y' in pixels (centre = integer)."
)
@click.option("--grid", type=click.IntRange(1, 256), default=None, help="An N×N grid of points.")
@refine_cli_options
@click.option(
    "--flip-align",
    is_flag=True,
    help="Also match against the horizontally flipped target; keep the better (mean cosine).",
)
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
    fusion,
    points,
    grid,
    refine,
    refine_window,
    refine_temperature,
    flip_align,
    out,
    as_json,
):
    """Match points of SOURCE in TARGET (results in original pixel coordinates)."""
    check_model_options(
        model, base, resolution, policy, device, timestep, taps, single_tap=True, fusion=fusion
    )
    refine_opts = refine_options(refine, refine_window, refine_temperature)
    if (points is None) == (grid is None):
        raise CleanDIFTError("give exactly one of --points 'x,y;x,y' and --grid N")
    check_output_file(out, "--out", (".png",))
    pts = parse_points(points) if points is not None else None
    from ..imaging import check_image_size, load_image

    src, tgt = load_image(source), load_image(target)
    check_image_size(src.shape[:2], source)
    check_image_size(tgt.shape[:2], target)
    if pts is None:
        from ..geometry import grid_points

        pts = grid_points(src.shape[:2], grid).tolist()
    check_points_inside(pts, src.shape[:2])
    from ..runtime import build_extractor

    fx = build_extractor(
        model, taps, base=base, resolution=resolution, policy=policy, device=device, dtype=dtype,
        timestep=timestep, **fusion,
    )  # fmt: skip
    result = fx.match(src, tgt, pts, flip_align=flip_align, **refine_opts)
    payload = {"source": source, "target": target, "model": fx.model_name, **result.to_dict()}
    if fx.fusion:
        payload["fusion"] = fx.fusion
    if out is not None:
        from ..viz import draw_correspondences, save_png

        picture = draw_correspondences(src, tgt, result.source_points, result.target_points)
        output_parent(out)
        try:
            payload["picture"] = str(save_png(out, picture))
        except OSError as exc:
            raise CleanDIFTError(f"cannot write '{out}': {exc.strerror or exc}") from None
    lines = [f"{len(pts)} match(es), model {fx.model_name}, tap {result.tap}"]
    if result.refine != "none":
        lines[0] += f", refine {result.refine}"
    if result.flipped is not None:
        lines[0] += ", flipped target" if result.flipped else ", unflipped target"
    if fx.fusion:
        lines[0] += f" ({fx.fusion['channels']} channels"
        lines[0] += f", PCA to {result.pca_dim})" if result.pca_dim else ")"
    digits = 0 if result.refine == "none" else 2
    lines += [
        f"  ({a:.1f}, {b:.1f}) -> ({c:.{digits}f}, {d:.{digits}f})  score {s:.3f}"
        for (a, b), (c, d), s in zip(result.source_points, result.target_points, result.scores)
    ]
    if out is not None:
        lines.append(f"wrote {out}")
    emit(payload, as_json, "\n".join(lines))


@click.command()
@click.option(
    "--model",
    default="auto",
    show_default=True,
    help="Model to run (see `extract`); auto: sd21 when cached or downloadable, else toy.",
)
@click.option(
    "--tap", "taps", default=None, help="Tap (default: us9 for the toy models, else us6)."
)
@click.option("--image", default=None, help="Your own photo (default: the bundled astronaut).")
@click.option(
    "--out-dir", default="demo-output", show_default=True, type=click.Path(file_okay=False)
)
@click.option(
    "--compare-base",
    default="auto",
    show_default=True,
    help="Base model scored beside it (auto: toy-base for toy; none: no comparison).",
)
@click.option("--resolution", type=int, default=None)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(PRECISIONS), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def demo(model, taps, image, out_dir, compare_base, resolution, device, dtype, as_json):
    """Offline demo: match a photo to a known warp of it; write two PNGs."""
    check_model_options(None if model == "auto" else model, None, resolution, "square", device,
                        None, taps, single_tap=True)  # fmt: skip
    if compare_base not in ("auto", "none"):
        check_model_options(compare_base)
    check_output_folder(out_dir, "--out-dir")
    from ..demo import BASE_OF, DEMO_TAP, choose_model, run_demo
    from ..imaging import check_image_size, load_image
    from ..runtime import build_extractor

    photo = None
    if image is not None:
        photo = load_image(image)
        check_image_size(photo.shape[:2], image)
    chosen = None
    if model == "auto":
        model, chosen = choose_model()
        if "downloading" in chosen:  # before the download's progress bars
            click.echo(chosen, err=True)
    taps = taps or DEMO_TAP.get(model, "us6")
    options = dict(resolution=resolution, device=device, dtype=dtype)
    fx = build_extractor(model, taps, **options)
    base_name = BASE_OF.get(model) if compare_base == "auto" else compare_base
    base = build_extractor(base_name, taps, **options) if base_name not in (None, "none") else None
    created = make_folder(out_dir, log_line)
    try:
        report = run_demo(fx, out_dir, photo, base=base)
    except BaseException:
        remove_empty(created)
        raise
    nm, b = report.no_motion, report.base
    lines = [chosen] if chosen and "downloading" not in chosen else []
    lines += [
        f"model {report.model}, tap {report.tap}: {report.points} points matched to a known warp",
        f"  PCK@0.05 {report.pck_05:.2f}   PCK@0.10 {report.pck_10:.2f}   "
        f"mean error {report.mean_error_px:.1f} px",
    ]
    if b is not None:
        lines.append(
            f"  base {b['model']}: PCK@0.05 {b['pck_05']:.2f}   PCK@0.10 {b['pck_10']:.2f}   "
            f"mean error {b['mean_error_px']:.1f} px"
        )
    lines += [
        f"  no motion: PCK@0.05 {nm['pck_05']:.2f}   PCK@0.10 {nm['pck_10']:.2f}   "
        f"mean error {nm['mean_error_px']:.1f} px",
        f"  cycle check: {report.cycle_consistent} of {report.points} matches come back within "
        f"{report.cycle_radius_px:.0f} px",
        f"  wrote {report.correspondences_png} (thick: passes the cycle check; thin grey: fails)",
        f"  wrote {report.features_png} (joint PCA of the features over the photos)",
    ]
    if report.random_weights:
        lines.append(
            f"note: '{report.model}' has random weights: the pictures show the plumbing, not "
            "feature quality (random features do not match real photos). Run --model sd21 with "
            "the weights downloaded for real correspondences."
        )
    payload = report.to_dict() | ({"auto": chosen} if chosen else {})
    emit(payload, as_json, "\n".join(lines))
