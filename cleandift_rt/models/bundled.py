"""Weights shipped inside the package: the `toy-base` Stable Diffusion and its `toy` student.

They live in ``cleandift_rt/models/toy/`` with ``MANIFEST.json``, which records the SHA-256 of
every file, the commands and seeds that produced them, and their measured quality. Every load
checks the hashes (about 20 ms for the few MB), so a damaged or hand-edited file is refused
instead of giving silently different features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ModelError

TOY_DIR = Path(__file__).with_name("toy")
MANIFEST_FILE = "MANIFEST.json"
REGENERATE = "regenerate them with `make toy-weights` (training/README in the manifest)"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path = TOY_DIR) -> dict:
    """The manifest of ``folder`` (``files``: relative path → sha256, plus provenance)."""
    path = folder / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(
            f"the bundled toy weights are not installed ({path} missing); {REGENERATE}"
        ) from None
    except ValueError as exc:
        raise ModelError(f"unreadable manifest '{path}': {exc}") from None


_VERIFIED: dict[tuple[Path, str], tuple] = {}  # (folder, entry) → stat signature last verified


def _signature(paths: list[Path]) -> tuple:
    return tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in paths)


def bundled_path(entry: str, folder: Path = TOY_DIR) -> Path:
    """The verified path of a manifest entry (a file, or a folder of listed files).

    Hashes are checked once per process and again whenever a file's size or mtime changes.
    """
    files = read_manifest(folder).get("files", {})
    mine = {r: d for r, d in files.items() if r == entry or r.startswith(f"{entry}/")}
    if not mine:
        raise ModelError(f"the toy manifest lists no file for '{entry}'; {REGENERATE}")
    paths = [folder / rel for rel in sorted(mine)]
    for path in paths:
        if not path.is_file():
            raise ModelError(f"bundled file '{path}' is missing; {REGENERATE}")
    signature = _signature(paths)
    if _VERIFIED.get((folder, entry)) != signature:
        for path, rel in zip(paths, sorted(mine)):
            if sha256_of(path) != mine[rel]:
                raise ModelError(
                    f"bundled file '{path}' does not match its recorded SHA-256; {REGENERATE}"
                )
        _VERIFIED[(folder, entry)] = signature
    return folder / entry
