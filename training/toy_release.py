"""Install trained toy weights into the package: ``python -m training.toy_release``.

``base --from RUN/model``: the pretrained toy SD folder → ``cleandift_rt/models/toy/toy-base``.
``student --from FILE``: a distilled ``*_unet.safetensors`` of ``--teacher toy-base`` →
``cleandift_rt/models/toy/cleandift_toy_unet.safetensors``.

Weights are stored in float16 (the package ships a few MB; loading upcasts to float32), written
to a temp path and renamed. ``MANIFEST.json`` is rewritten with every file's SHA-256 and the
provenance of each entry (the command, its recipe and seeds), which `models/bundled.py` checks
on every load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors import SafetensorError, safe_open

from cleandift_rt.errors import CleanDIFTError, one_line
from cleandift_rt.files import atomic_path, write_json
from cleandift_rt.models.bundled import MANIFEST_FILE, TOY_DIR, sha256_of
from cleandift_rt.models.checkpoint import UNET_FORMAT, atomic_save
from cleandift_rt.models.prompt import STORED_EMBEDDING

from .pretrain_toy import SUMMARY_FILE

BASE_ENTRY = "toy-base"
STUDENT_ENTRY = "cleandift_toy_unet.safetensors"
STORED_DTYPE = torch.float16


def _manifest(dest: Path) -> dict:
    path = dest / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else {"files": {}, "provenance": {}}


def _write_manifest(dest: Path, manifest: dict) -> None:
    files = sorted(
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(".")
    )
    manifest["files"] = {rel: sha256_of(dest / rel) for rel in files}
    manifest["stored_dtype"] = str(STORED_DTYPE).removeprefix("torch.")
    write_json(dest / MANIFEST_FILE, manifest)


def release_base(source: Path, dest: Path, command: str) -> Path:
    """Copy a pretrain_toy model folder into ``dest/toy-base`` in float16."""
    if not (source / "unet" / "config.json").is_file():
        raise CleanDIFTError(f"'{source}' is not a pretrain_toy model folder (unet/, vae/)")
    final = dest / BASE_ENTRY
    with atomic_path(final) as tmp:
        for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
            net = cls.from_pretrained(source, subfolder=sub, use_safetensors=True)
            net.to(STORED_DTYPE).save_pretrained(tmp / sub, safe_serialization=True)
        shutil.copy2(source / STORED_EMBEDDING, tmp / STORED_EMBEDDING)
        summary = json.loads((source / SUMMARY_FILE).read_text())
        shutil.copy2(source / SUMMARY_FILE, tmp / SUMMARY_FILE)
    manifest = _manifest(dest)
    manifest["provenance"][BASE_ENTRY] = {"command": command, "summary": summary}
    _write_manifest(dest, manifest)
    return final


def release_student(source: Path, dest: Path, command: str) -> Path:
    """Copy a distilled ``*_unet.safetensors`` (teacher toy-base) into ``dest`` in float16."""
    try:
        with safe_open(str(source), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise CleanDIFTError(f"cannot read '{source}' as safetensors: {one_line(exc)}") from None
    if meta.get("format") != UNET_FORMAT or meta.get("base") != BASE_ENTRY:
        raise CleanDIFTError(
            f"'{source}' is not a student of toy-base (format {meta.get('format')}, "
            f"base {meta.get('base')}): distil with --teacher toy-base"
        )
    half = {k: v.to(STORED_DTYPE) if v.is_floating_point() else v for k, v in tensors.items()}
    final = dest / STUDENT_ENTRY
    atomic_save(half, final, meta)
    manifest = _manifest(dest)
    recipe = json.loads(meta.get("recipe", "{}"))
    manifest["provenance"][STUDENT_ENTRY] = {
        "command": command,
        "recipe": recipe,
        "steps": meta.get("steps"),
        "timestep": float(meta["timestep"]),
    }
    _write_manifest(dest, manifest)
    return final


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("kind", type=click.Choice(["base", "student"]))
@click.option("--from", "source", required=True, type=click.Path(exists=True))
@click.option("--command", "command", required=True, help="The command that produced it.")
@click.option("--dest", default=str(TOY_DIR), type=click.Path(file_okay=False))
def cli(kind: str, source: str, command: str, dest: str) -> None:
    """Install toy weights (KIND: base or student) into the package, in float16."""
    folder = Path(dest)
    release = release_base if kind == "base" else release_student
    path = release(Path(source), folder, command)
    click.echo(f"installed {path}; manifest {folder / MANIFEST_FILE}")


def main(argv: list[str] | None = None) -> None:
    from cleandift_rt.console import run_console

    run_console(cli, argv, "python -m training.toy_release")


if __name__ == "__main__":
    main()
