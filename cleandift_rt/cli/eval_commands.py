"""`eval spair` and `eval homography`: correspondence accuracy."""

from __future__ import annotations

import functools

import click

from ..errors import CleanDIFTError
from ..protocol import DIFT_ENSEMBLE, DIFT_TIMESTEP
from ..validation import check_output_file
from .common import (
    RESIZE_FILTER,
    check_model_options,
    emit,
    float_list,
    model_options,
    output_parent,
    refine_cli_options,
    refine_options,
    tap_to_use,
    write_report,
)

MATCHING_OPTIONS = ("refine", "refine_window", "refine_temperature", "flip_align")


@click.group("eval")
def eval_group():
    """Correspondence accuracy: SPair-71k (DIFT protocol) and an offline homography benchmark."""


def matching_options(fn):
    """``--refine``, ``--refine-window``, ``--refine-temperature`` (``refine_cli_options``, as
    `match` has them) and ``--flip-align``, handed to the command as one keyword ``matching``
    (raw values; ``_check_eval_args`` turns them into ``FeatureExtractor.match`` keywords)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        kwargs["matching"] = {name: kwargs.pop(name) for name in MATCHING_OPTIONS}
        return fn(*args, **kwargs)

    run = click.option(
        "--flip-align",
        is_flag=True,
        help="Also match each pair against the horizontally flipped target and keep the better "
        "(mean best-match cosine), as `match --flip-align`; points found in the flip are mapped "
        "back to the target's pixels before scoring. The JSON counts the flipped pairs.",
    )(run)
    return refine_cli_options(run)


def eval_options(fn):
    """Options of every `eval` subcommand: the model (or artifact, or DIFT baseline), the
    matching options and output."""
    options = [
        model_options(taps_option=False),
        matching_options,
        click.option(
            "--artifact",
            default=None,
            type=click.Path(exists=True, dir_okay=False),
            help="Evaluate an exported artifact (ONNX, engine, .pt2) instead.",
        ),
        click.option("--dift", is_flag=True, help="Evaluate the DIFT baseline of --model."),
        click.option(
            "--dift-t", type=click.IntRange(0, 999), default=DIFT_TIMESTEP, show_default=True
        ),
        click.option(
            "--dift-ensemble", type=click.IntRange(1), default=DIFT_ENSEMBLE, show_default=True
        ),
        click.option(
            "--out",
            default=None,
            type=click.Path(dir_okay=False),
            help="Write the JSON summary here.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_eval_args(out, model, base, resolution, policy, device, timestep, taps, artifact,
                     dift, fusion, matching, **_) -> dict:  # fmt: skip
    """Every argument of an `eval` command checked before anything heavy is imported; returns
    the matching options as ``FeatureExtractor.match`` keywords (refine…, flip_align)."""
    opts = refine_options(
        matching["refine"], matching["refine_window"], matching["refine_temperature"]
    )
    check_model_options(
        None if artifact else model, base, resolution, policy, device, timestep, taps, True,
        fusion,
    )  # fmt: skip
    if artifact is not None and dift:
        raise CleanDIFTError("--artifact and --dift exclude each other")
    if dift and any(v is not None for v in fusion.values()):
        raise CleanDIFTError("the DIFT baseline takes one plain tap: no --fuse, --tap-weights or "
                             "--fusion-alpha with --dift")  # fmt: skip
    check_output_file(out, "--out", (".json",))
    return {**opts, "flip_align": bool(matching["flip_align"])}


def _eval_predictor(
    model,
    base,
    resolution,
    policy,
    device,
    dtype,
    timestep,
    taps,
    artifact,
    dift,
    dift_t,
    dift_ensemble,
    fusion,
    matching,
    resize_filter="area",
):
    from ..evaluation import ExtractorPredictor

    if artifact is not None and dift:
        raise CleanDIFTError("--artifact and --dift exclude each other")
    from ..runtime import build_extractor

    fx = build_extractor(
        model, taps, artifact=artifact, dift=dift, t=dift_t, ensemble=dift_ensemble, base=base,
        resolution=resolution, policy=policy, device=device, dtype=dtype, timestep=timestep,
        resize_filter=resize_filter, **fusion,
    )  # fmt: skip
    return fx, ExtractorPredictor(fx, tap_to_use(fx, taps), **matching)


def _eval_output(summary: dict, fx, predict, dift: bool, out, as_json: bool, title: str,
                 group: str):  # fmt: skip
    from ..evaluation import format_summary

    summary["model"] = fx.model_name
    summary["description"] = fx.description
    summary["dift_baseline"] = dift
    summary["resize_filter"] = fx.resize_filter
    summary["hub_files"] = fx.hub_files
    summary["matching"] = predict.options  # refine, refine_window, refine_temperature, flip_align
    how = [f"refine {predict.refine}"] if predict.refine != "none" else []
    if predict.flip_align:
        flipped, pairs = summary["overall"]["flipped_pairs"], summary["overall"]["pairs"]
        how.append(f"flip-align: {flipped} of {pairs} pairs flipped")
    title += f" [{', '.join(how)}]" if how else ""
    text = f"{title}: {fx.description or fx.model_name}\n" + format_summary(summary, group)
    if out is not None:
        output_parent(out)
        summary["out"] = write_report(out, summary)
        text += f"\nwrote {out}"
    emit(summary, as_json, text)


@eval_group.command("spair")
@click.option(
    "--root",
    required=True,
    type=click.Path(file_okay=False),
    help="The SPair-71k folder (PairAnnotation/, ImageAnnotation/, JPEGImages/).",
)
@click.option(
    "--split", type=click.Choice(["test", "val", "trn"]), default="test", show_default=True
)
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option(
    "--max-pairs",
    type=click.IntRange(1),
    default=None,
    help="At most this many pairs per category (first by file name).",
)
@click.option(
    "--alpha",
    "alphas",
    default="0.1",
    show_default=True,
    help="PCK thresholds as fractions of the bbox / image size.",
)
@click.option(
    "--prompt-template",
    default=None,
    help="Condition each pair on this prompt, {category} filled in: DIFT's is "
    "'a photo of a {category}' (the default with --dift when the model has a text encoder); "
    "'' for one fixed empty prompt (the default otherwise).",
)
@click.option(
    "--resize-filter",
    type=RESIZE_FILTER,
    default=None,
    help="area (OpenCV; the default) or bicubic-pil (PIL's bicubic, DIFT's; the default "
    "with --dift).",
)
@eval_options
def eval_spair(
    root,
    split,
    categories,
    max_pairs,
    alphas,
    prompt_template,
    resize_filter,
    out,
    as_json,
    **model_args,
):
    """SPair-71k PCK (bbox and image; per category, per point and per image), DIFT protocol."""
    model_args["matching"] = _check_eval_args(out, **model_args)
    cats = [c for c in categories.split(",") if c] if categories else None
    thresholds = float_list(alphas, "--alpha")
    dift = model_args["dift"]
    from ..evaluation.spair import DIFT_PROMPT, DIFT_RESIZE, evaluate_spair, prompt_for, read_pairs

    template = prompt_template if prompt_template is not None else (DIFT_PROMPT if dift else "")
    if template:
        prompt_for(template, "category")  # a bad template fails before loading a model
        if model_args["artifact"] is not None and prompt_template:
            raise CleanDIFTError(
                "--prompt-template needs a PyTorch model: an artifact bakes its prompt"
            )
    read_pairs(root, split, cats, max_pairs)  # bad folder → one line, before loading a model
    resize = resize_filter or (DIFT_RESIZE if dift else "area")
    fx, predict = _eval_predictor(**model_args, resize_filter=resize)
    if template and fx.prompt_encoder is None:
        if prompt_template:
            raise CleanDIFTError(
                f"--prompt-template needs a model with a text encoder; '{fx.model_name}' has none"
            )
        template = ""  # the --dift default, on a model without a text encoder
    summary = evaluate_spair(
        root, predict.match, split, cats, max_pairs, thresholds, progress=not as_json,
        prompt_template=template or None,
    )  # fmt: skip
    _eval_output(
        summary, fx, predict, model_args["dift"], out, as_json, f"SPair-71k {split}", "category"
    )


@eval_group.command("homography")
@click.option(
    "--images",
    default=None,
    type=click.Path(file_okay=False),
    help="A folder of photos (default: the bundled sample photos).",
)
@click.option(
    "--photos",
    default="astronaut,chelsea,coffee,rocket",
    show_default=True,
    help="Sample photo names when --images is not given (bundled: astronaut, chelsea, coffee, "
    "rocket; any scikit-image photo with the [demo] extra).",
)
@click.option("--pairs-per-image", type=click.IntRange(1), default=4, show_default=True)
@click.option(
    "--kind", type=click.Choice(["homography", "affine"]), default="homography", show_default=True
)
@click.option(
    "--strength",
    type=click.FloatRange(0, 3),
    default=1.0,
    show_default=True,
    help="Scales the random warps' rotation, scale, shear, shift and corner moves.",
)
@click.option(
    "--grid",
    type=click.IntRange(1, 64),
    default=10,
    show_default=True,
    help="An N×N grid of source points (those landing inside the target are kept).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--thresholds",
    default="0.01,0.05,0.1",
    show_default=True,
    help="PCK thresholds as fractions of the image's longer side.",
)
@eval_options
def eval_homography(
    images,
    photos,
    pairs_per_image,
    kind,
    strength,
    grid,
    seed,
    thresholds,
    out,
    as_json,
    **model_args,
):
    """PCK and end-point error on photos warped by seeded random homographies (no download)."""
    model_args["matching"] = _check_eval_args(out, **model_args)
    alphas = float_list(thresholds, "--thresholds")
    from ..evaluation.homography import evaluate_homography, load_photos, make_pairs

    pictures = load_photos([p for p in photos.split(",") if p], images)
    pairs = make_pairs(pictures, pairs_per_image, kind, seed, grid, strength)
    fx, predict = _eval_predictor(**model_args)
    summary = evaluate_homography(predict.match, pairs, alphas, progress=not as_json)
    summary.update(kind=kind, seed=seed, strength=strength, pairs_per_image=pairs_per_image)
    title = f"{kind} benchmark (seed {seed})"
    _eval_output(summary, fx, predict, model_args["dift"], out, as_json, title, "photo")
