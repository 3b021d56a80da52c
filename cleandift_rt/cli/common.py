"""Options, parsers and output helpers shared by the `cleandift-rt` commands."""

from __future__ import annotations

import functools
import json
import math

import click

from ..console import log_line
from ..dtypes import PRECISIONS
from ..errors import CleanDIFTError
from ..validation import (
    check_base_name,
    check_device,
    check_model_name,
    check_resolution,
    check_single_tap,
    check_timestep,
    make_folder,
    split_taps,
)

POLICY = click.Choice(["square", "fit"])
RESIZE_FILTER = click.Choice(["area", "bicubic-pil"])  # imaging.RESIZE_FILTERS (cv2-free import)


def emit(payload: dict, as_json: bool, text: str) -> None:
    click.echo(json.dumps(payload, indent=2) if as_json else text)


FUSION_OPTIONS = ("fuse", "tap_weights", "fusion_alpha")


def fusion_options(fn):
    """``--fuse``, ``--tap-weights``, ``--fusion-alpha``, handed to the command as one keyword
    ``fusion`` = {fuse, tap_weights, fusion_alpha} (raw values, None when not given; checked by
    ``check_model_options``, then passed on as ``build_extractor(**fusion)``)."""
    options = [
        click.option(
            "--fuse",
            default=None,
            help="Fuse the --taps into one map 'fused': concat (each tap resampled to the finest "
            "one's grid, L2-normalised, weighted, concatenated) or pca:D (the same, then a PCA "
            "to D channels fitted on the images being matched).",
        ),
        click.option(
            "--tap-weights",
            default=None,
            help="With --fuse: one weight per tap, e.g. 1,1,0.5 (default: equal).",
        ),
        click.option(
            "--fusion-alpha",
            default=None,
            help="SD + DINOv2 models (--model sd21+dinov2-b): the SD share α in "
            "concat(α·SD, (1−α)·DINOv2), in [0, 1] (default 0.5).",
        ),
    ]

    @functools.wraps(fn)
    def run(*args, **kwargs):
        kwargs["fusion"] = {name: kwargs.pop(name) for name in FUSION_OPTIONS}
        return fn(*args, **kwargs)

    for option in reversed(options):
        run = option(run)
    return run


def model_options(taps_option: bool):
    """Options shared by the commands that load a model (and ``fusion_options``)."""

    def wrap(fn):
        options = [
            click.option(
                "--model",
                default="toy",
                show_default=True,
                help="Preset (sd21, sd15, sd21-base, sd15-base, toy, toy-base, tiny), "
                "diffusers folder, hub id or CleanDIFT .safetensors file; MODEL+DINOV2 "
                "(e.g. sd21+dinov2-b, toy+dinov2-tiny) fuses it with a DINOv2 model.",
            ),
            click.option(
                "--base",
                default=None,
                help="Replaces the base pipeline (VAE, configs, text encoder) of a hub preset "
                "with a local diffusers folder or a hub id; names the base of a .safetensors "
                "file that does not say (a preset, folder or hub id).",
            ),
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
                type=click.Choice(PRECISIONS),
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
                    "--taps",
                    "taps",
                    default="us6",
                    show_default=True,
                    help="Tap to match with: mid, us1..us12, up0..up3 (several, comma-"
                    "separated, with --fuse).",
                )
            )
        fn = fusion_options(fn)
        for option in reversed(options):
            fn = option(fn)
        return fn

    return wrap


def check_model_options(
    model: str | None,
    base: str | None = None,
    resolution: int | None = None,
    policy: str = "square",
    device: str | None = None,
    timestep: float | None = None,
    taps: str | None = None,
    single_tap: bool = False,
    fusion: dict | None = None,
):
    """Every model option checked from the arguments alone, before anything heavy is imported
    (a bad name, size, timestep, tap list or fusion option answers in a fraction of a second).
    ``fusion``: the raw ``fusion_options``; ``model`` None: an exported artifact runs, whose
    fusion is baked in. Returns the ``cleandift_rt.fusion.Fusion`` (None: plain taps)."""
    if model is not None:
        check_model_name(model)
    check_base_name(base)
    check_resolution(resolution, policy)
    check_device(device)
    check_timestep(timestep, "--timestep")
    fusion = fusion or {}
    if taps is not None:
        several = fusion.get("fuse") is not None
        names = (check_single_tap if single_tap and not several else split_taps)(taps)
        names = (names,) if isinstance(names, str) else names
    else:
        names = ("us6",)
    from ..fusion import fusion_for

    return fusion_for(model, names, **fusion)


def output_parent(path: str) -> None:
    """Create the folder of an output file when missing, saying so on stderr."""
    from pathlib import Path

    make_folder(Path(path).expanduser().parent, log_line)


def export_api():
    """The ``export`` package of the tree this ``cleandift_rt`` comes from, imported on demand
    (the runtime never imports it): the top-level ``export/`` folder beside ``cleandift_rt/`` in a
    checkout (also under an editable install), else the wheel's ``cleandift_rt.export``."""
    import importlib
    import importlib.util
    from pathlib import Path

    checkout = Path(__file__).resolve().parents[2] / "export"
    spec = importlib.util.find_spec("export") if (checkout / "__init__.py").is_file() else None
    beside = spec is not None and Path(spec.origin or "").resolve().parent == checkout
    name = "export" if beside else "cleandift_rt.export"
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CleanDIFTError(f"the export tools are not installed here ({exc})") from None


def tap_to_use(fx, tap: str) -> str:
    """``tap`` when the extractor has it under that name, else its first tap (an alias such as
    ``up1`` was resolved by the model, or an artifact does not hold it)."""
    return tap if tap in fx.taps else fx.taps[0]


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


def int_list(text: str, what: str) -> tuple[int, ...]:
    """'128,256' → (128, 256); CleanDIFTError naming the option on bad syntax."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CleanDIFTError(f"{what} must be comma-separated integers, got '{text}'") from None
    if not values:
        raise CleanDIFTError(f"{what} is empty")
    return values


def float_list(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CleanDIFTError(f"{what} must be comma-separated numbers, got '{text}'") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise CleanDIFTError(f"{what} must be fractions in (0, 1], got '{text}'")
    return values


def command_line(ctx: click.Context) -> str:
    """The command that reproduces this run: its path and every option not at its default."""
    import shlex

    words = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or value in (param.get_default(ctx), None):
            continue
        if param.is_flag:
            if value or param.secondary_opts:  # a bare flag left off is at its default
                words.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(words)


def write_report(path: str, payload: dict) -> str:
    from ..files import write_json

    try:
        return str(write_json(path, payload))
    except OSError as exc:
        raise CleanDIFTError(f"cannot write '{path}': {exc.strerror or exc}") from None


#: ``matching.refine``'s modes and defaults, here without importing torch (a test checks
#: they agree).
REFINE_MODES = ("none", "softargmax", "quadratic")
REFINE_DEFAULTS = {"refine_window": 4, "refine_temperature": 0.01}


def refine_options(refine: str, window: str, temperature: str) -> dict:
    """``--refine*`` values as ``FeatureExtractor.match`` keywords; CleanDIFTError (one line,
    naming the option) on a bad value, before any model loads."""
    if refine not in REFINE_MODES:
        raise CleanDIFTError(f"--refine must be one of {', '.join(REFINE_MODES)}, got '{refine}'")
    try:
        win = int(window)
    except ValueError:
        win = None
    if win is None or win < 1:
        raise CleanDIFTError(f"--refine-window must be an integer >= 1 (pixels), got '{window}'")
    try:
        temp = float(temperature)
    except ValueError:
        temp = float("nan")
    if not (math.isfinite(temp) and temp > 0):
        raise CleanDIFTError(f"--refine-temperature must be a number > 0, got '{temperature}'")
    return {"refine": refine, "refine_window": win, "refine_temperature": temp}


def refine_cli_options(fn=None, *, default: str = "none"):
    """``--refine``, ``--refine-window``, ``--refine-temperature`` (parsed by
    ``refine_options``), shared by `match` (``@refine_cli_options``: default none) and `track`
    (``@refine_cli_options(default="quadratic")``: it lowers tracking jitter, TRACKING.md)."""
    if fn is None:
        return lambda f: refine_cli_options(f, default=default)
    options = [
        click.option(
            "--refine",
            default=default,
            show_default=True,
            help="Sub-pixel refinement: none, softargmax (softmax of the exact upsampled cosine "
            "over a window around the argmax) or quadratic (3×3 parabola).",
        ),
        click.option(
            "--refine-window",
            default=str(REFINE_DEFAULTS["refine_window"]),
            show_default=True,
            help="Soft-argmax window half-width in target pixels (integer >= 1).",
        ),
        click.option(
            "--refine-temperature",
            default=str(REFINE_DEFAULTS["refine_temperature"]),
            show_default=True,
            help="Soft-argmax temperature in cosine units (> 0).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
