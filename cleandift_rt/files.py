"""Writing files so that readers never see a partial one: the one atomic-write helper.

Everything the project writes (artifacts and sidecars, checkpoints, reports, PNGs, videos,
TensorRT timing caches, model folders) is written to a hidden temporary sibling and renamed
into place (``os.replace``, atomic on POSIX); on any error the temporary is removed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Path:
    """A fresh hidden path beside ``path``: ``.NAME.<hex>.tmp``, or ``.STEM.<hex>SUFFIX`` with
    ``keep_suffix`` (for writers that pick a format from the suffix, e.g. OpenCV's video)."""
    path = Path(path)
    tag = uuid.uuid4().hex[:12]
    name = f".{path.stem}.{tag}{path.suffix}" if keep_suffix else f".{path.name}.{tag}.tmp"
    return path.parent / name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write (a file, or a folder); when the block
    ends it replaces ``path``, on an error it is removed. An existing folder is moved aside
    first and deleted only once the new one is in place. Creates the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, keep_suffix=keep_suffix)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir():
            old = temporary_sibling(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, *, sync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (``sync``: fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented JSON (trailing newline) to ``path`` atomically."""
    return write_text(path, json.dumps(payload, indent=2) + "\n")
