"""`cleandift-rt extract SOURCES --out DIR`: the store half of the extract command.

``store_options`` adds the store's options to the click command; ``run_store_extract`` checks
every input before a model loads, runs the local or the Ray engine, and returns the summary
(payload, text) the command prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import CleanDIFTError
from ..fusion import parse_fuse

STORAGE_CHOICES = ("fp16", "bf16", "fp32")  # layout.STORAGE_DTYPES (not imported: it needs torch)


def is_store_path(out: str) -> bool:
    """True when ``--out`` names a store folder: an existing folder, or a path without a
    suffix; ``.safetensors`` is the single-file output; anything else is refused."""
    path = Path(out)
    if path.is_dir() or out.endswith(("/", "\\")):
        return True
    if out.lower().endswith(".safetensors"):
        return False
    if path.suffix:
        raise CleanDIFTError(
            f"--out must be a folder (a feature store) or a .safetensors file, got '{out}'"
        )
    return True


def store_options(fn):
    """The options of a store extraction (they only apply when --out is a folder)."""
    options = [
        click.option("--artifact", default=None,
                     help="Run an exported artifact instead of --model."),
        click.option("--shard-size", type=click.IntRange(1), default=None,
                     help="Images per shard (store; default: about 512 MiB of maps)."),
        click.option("--storage", type=click.Choice(STORAGE_CHOICES), default="fp16",
                     show_default=True, help="dtype of the stored maps (store)."),
        click.option("--workers", type=click.IntRange(0), default=2, show_default=True,
                     help="Decoding threads (local engine) or extractor actors (ray)."),
        click.option("--every", type=click.IntRange(1), default=1, show_default=True,
                     help="Every N-th frame of video sources."),
        click.option("--strict", is_flag=True, help="Stop at the first bad image (store)."),
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local",
                     show_default=True, help="One machine, or Ray Data (pip install "
                     "'cleandift-rt[ray]')."),
        click.option("--address", default=None,
                     help="Ray cluster: auto or ray://HOST:PORT (default: a local Ray)."),
        click.option("--gpus-per-worker", type=click.FloatRange(0), default=None,
                     help="GPUs per Ray extractor actor (default: 1 when CUDA is here, else 0)."),
        click.option("--cpus-per-decoder", type=click.FloatRange(0, min_open=True), default=1.0,
                     show_default=True, help="CPUs per Ray decode task."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_store_extract(
    sources: tuple[str, ...],
    out: str,
    *,
    model_args: dict[str, Any],
    store_args: dict[str, Any],
    batch_size: int,
    as_json: bool,
    command: str,
) -> tuple[dict[str, Any], str]:
    """Extract SOURCES into the store ``out``; (payload, text) for the command to print."""
    from .pipeline import StoreOptions, check_writable
    from .sources import expand_sources

    a = store_args
    items = expand_sources(list(sources), every=a["every"])  # before any model loads
    check_writable(out)
    options = StoreOptions(
        storage=a["storage"],
        shard_size=a["shard_size"],
        batch_size=batch_size,
        workers=a["workers"],
        strict=a["strict"],
        progress=not as_json,
        command=command,
    )
    if a["engine"] == "ray":
        from .ray_engine import extract_ray, import_ray

        import_ray()
        gpus = a["gpus_per_worker"]
        if gpus is None:
            import torch

            gpus = 1.0 if torch.cuda.is_available() else 0.0
        summary = extract_ray(
            {**model_args, "artifact": a["artifact"]},
            items,
            out,
            options,
            address=a["address"],
            gpus_per_worker=gpus,
            cpus_per_decoder=a["cpus_per_decoder"],
        )
    else:
        from ..runtime import build_extractor
        from .pipeline import extract_local

        fx = build_extractor(**model_args, artifact=a["artifact"])
        summary = extract_local(fx, items, out, options)
    payload = summary.to_dict()
    pca_dim = parse_fuse(model_args.get("fuse"))[1]
    if pca_dim is not None:  # fitted on every stored fused map, written beside the shards
        from .pca import write_store_pca

        payload["pca"] = {"dim": pca_dim, "file": str(write_store_pca(out, pca_dim))}
    store = payload["store"]
    text = (
        f"wrote {summary.out}: {summary.images} image(s) in {summary.shards} shard(s), "
        f"{summary.skipped} skipped, {summary.bytes / 2**20:.1f} MiB, {summary.seconds:.1f} s "
        f"({summary.images_per_s:.1f} images/s)"
    )
    if summary.already:
        text += f"; {summary.already} already in the store"
    text += f"\n  store: {store['images']} image(s), {store['skipped']} skipped, "
    text += f"{store['shards']} shard(s)"
    if pca_dim is not None:
        text += f"\n  PCA to {pca_dim} channels: {payload['pca']['file']}"
    return payload, text
