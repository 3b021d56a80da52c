"""On-disk layout of a feature store, shared by its writer and its reader.

```
DIR/store.json              settings: model, weights hash, taps (channels, strides, map size),
                            input size, policy, storage dtype, producer versions, the command
DIR/shard-00000.safetensors one (n, C, h, w) tensor per tap; its index rows in the header
DIR/index.jsonl             one line per image: source, frame, timestamp, shard, row,
                            original size, transform; a skipped image has its reason and
                            no row (its shard is the one that committed the line)
```

A shard is written to a hidden temporary file and renamed into place when complete, so a
``shard-*.safetensors`` file is always whole. The shard's header holds its own index lines (the
shard is the single commit point); ``index.jsonl`` is appended after each commit and rebuilt from
the headers whenever it lags behind (a process killed between the rename and the append).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CleanDIFTError, one_line

STORE_FORMAT = "cleandift-rt-store"
STORE_VERSION = 1
SETTINGS_FILE = "store.json"
INDEX_FILE = "index.jsonl"
SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# what must agree for a store to be resumed or extended (others — command, engine — may differ)
MATCHING_KEYS = ("model", "weights_sha256", "taps", "fusion", "input_size", "policy", "storage",
                 "compute")  # fmt: skip


class StoreError(CleanDIFTError):
    """A store that cannot be read, written, or resumed with these settings."""


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def shard_files(root: Path) -> list[tuple[int, Path]]:
    """Complete shards of the store at ``root``, by number (temporary files are not listed)."""
    try:
        names = os.listdir(root)
    except OSError:
        return []
    found = [(int(m.group(1)), root / n) for n in names if (m := SHARD_RE.match(n))]
    return sorted(found)


def read_settings(root: Path) -> dict[str, Any] | None:
    """``store.json`` of ``root``, or None when there is none; StoreError when it is bad."""
    path = root / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"bad store settings '{path}': {one_line(exc)}") from None
    if data.get("format") != STORE_FORMAT:
        raise StoreError(f"'{path}' is not a cleandift-rt feature store")
    if data.get("version") != STORE_VERSION:
        raise StoreError(f"'{path}': store version {data.get('version')} != {STORE_VERSION}")
    return data


def settings_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """One line naming the first setting in which two stores differ, or None."""
    for key in MATCHING_KEYS:
        if old.get(key) != new.get(key):
            a, b = json.dumps(old.get(key)), json.dumps(new.get(key))
            return f"{key} {a} (store) vs {b} (this run)"
    return None


def shard_entries(path: Path) -> list[dict[str, Any]]:
    """The index lines a shard carries in its header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta["index"])
    except Exception as exc:  # noqa: BLE001 - any unreadable shard is reported the same way
        raise StoreError(f"bad shard '{path}': {one_line(exc)}") from None


def read_index_lines(root: Path) -> list[dict[str, Any]]:
    """Lines of ``index.jsonl`` (a torn last line — a writer killed mid-append — is ignored)."""
    path = root / INDEX_FILE
    try:
        text = path.read_text()
    except OSError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
    return entries


def committed_entries(root: Path) -> list[dict[str, Any]]:
    """Index entries of every complete shard, in shard order: from ``index.jsonl`` where it
    covers a shard, else from the shard's own header."""
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for entry in read_index_lines(root):
        by_shard.setdefault(entry.get("shard", -1), []).append(entry)
    out: list[dict[str, Any]] = []
    for number, path in shard_files(root):
        out += by_shard.get(number) or shard_entries(path)
    return out


def item_key(entry: dict[str, Any]) -> tuple[str, int]:
    frame = entry.get("frame")
    return (os.path.abspath(entry["source"]), -1 if frame is None else int(frame))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
