"""Writes a feature store: settings, complete-only shards, the index, and resume state.

Shards hold ``shard_size`` extracted images each (the last one fewer); skipped images are listed
in the shard that follows them. Which images land in which shard depends only on the ordered
items and on which of them are skipped, so an interrupted run that is resumed, a Ray run and a
local run all write the same shards.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import one_line
from ..files import write_bytes
from .layout import (
    INDEX_FILE,
    SETTINGS_FILE,
    STORAGE_DTYPES,
    StoreError,
    committed_entries,
    fsync_dir,
    item_key,
    read_settings,
    settings_mismatch,
    shard_files,
    shard_name,
)
from .sources import DecodedItem, SourceItem


def _os_error(what: str, path: Path, exc: OSError) -> StoreError:
    reason = exc.strerror or one_line(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return StoreError(f"cannot {what} '{path}': {reason}")


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` via a hidden temporary file and a rename (fsynced); on any error
    the temporary file is removed and ``path`` is untouched."""
    write_bytes(path, data, sync=True)
    fsync_dir(path.parent)


def _entry(d: DecodedItem, shard: int, row: int | None) -> dict[str, Any]:
    item: SourceItem = d.item
    return {
        "source": item.source,
        "frame": item.frame,
        "timestamp": item.timestamp,
        "shard": shard,
        "row": row,
        "original_size": list(d.original_size) if d.original_size else None,
        "transform": d.transform.to_dict() if d.transform else None,
        "skipped": d.reason,
    }


class StoreWriter:
    """Appends extracted images to the store at ``root`` shard by shard.

    Args:
        root: the store folder (created; must be writable).
        settings: what ``store.json`` records (see ``extractor_settings``); an existing store
            with other settings is refused with one line.
        shard_size: extracted images per shard.

    ``done`` holds the keys (``SourceItem.key``) of images already in complete shards: a rerun
    skips them. Only one writer at a time may hold a store (a lock file), and temporary files
    of killed writers are removed on open.
    """

    def __init__(self, root: str | Path, settings: dict[str, Any], shard_size: int):
        if shard_size < 1:
            raise StoreError(f"--shard-size must be at least 1, got {shard_size}")
        self.root = Path(root)
        self.shard_size = shard_size
        self.settings = settings
        self.storage = STORAGE_DTYPES[settings["storage"]]
        self.tap_shapes = {t: (v["channels"], *v["size"]) for t, v in settings["taps"].items()}
        self._open()
        self.entries: list[dict[str, Any]] = []
        self.rows: dict[str, list[torch.Tensor]] = {t: [] for t in self.tap_shapes}
        self.n_rows = 0
        self.images = self.skipped = self.shards = self.bytes = 0

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        root = self.root
        if root.exists() and not root.is_dir():
            raise StoreError(f"--out '{root}' exists and is not a folder")
        try:
            root.mkdir(parents=True, exist_ok=True)
            self._lock = open(root / ".lock", "a")  # noqa: SIM115 - held for the writer's life
        except OSError as exc:
            raise _os_error("write the store folder", root, exc) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise StoreError(f"store '{root}' is being written by another process") from None
        try:
            self._resume_state()
        except BaseException:
            self.close()
            raise

    def _resume_state(self) -> None:
        root = self.root
        for name in os.listdir(root):  # leftovers of a killed writer (we hold the lock)
            if name.startswith(".") and name.endswith(".tmp"):
                (root / name).unlink(missing_ok=True)
        old = read_settings(root)
        shards = shard_files(root)
        if old is None and shards:
            raise StoreError(f"'{root}' holds shards but no {SETTINGS_FILE}: not resumable")
        if old is not None:
            diff = settings_mismatch(old, self.settings)
            if diff:
                raise StoreError(
                    f"'{root}' is a store made with other settings ({diff}): use another --out "
                    "folder or the store's own settings"
                )
        else:
            data = json.dumps(self.settings, indent=2).encode()
            try:
                _write_atomic(root / SETTINGS_FILE, data)
            except OSError as exc:
                raise _os_error("write", root / SETTINGS_FILE, exc) from None
        entries = committed_entries(root)
        self.done = {item_key(e) for e in entries}
        self.next_shard = shards[-1][0] + 1 if shards else 0
        self.existing_images = sum(e["row"] is not None for e in entries)
        self.existing_skipped = sum(e["row"] is None for e in entries)
        self.existing_shards = len(shards)
        lines = "".join(json.dumps(e) + "\n" for e in entries).encode()
        try:  # the index says exactly what the complete shards hold
            _write_atomic(root / INDEX_FILE, lines)
        except OSError as exc:
            raise _os_error("write", root / INDEX_FILE, exc) from None

    # ------------------------------------------------------------------ adding

    @property
    def room(self) -> int:
        """Images the current shard still takes."""
        return self.shard_size - self.n_rows

    def add_skipped(self, decoded: DecodedItem) -> None:
        self.entries.append(_entry(decoded, self.next_shard, None))
        self.skipped += 1

    def add_rows(self, decoded: list[DecodedItem], maps: dict[str, torch.Tensor]) -> None:
        """Images ``decoded`` (at most ``room``) and their maps {tap: (n, C, h, w)}, any dtype
        and device (stored as the store's dtype on the CPU); commits a full shard."""
        n = len(decoded)
        if n > self.room:
            raise ValueError(f"{n} rows do not fit in the {self.room} left in this shard")
        for tap, shape in self.tap_shapes.items():
            t = maps[tap]
            if tuple(t.shape) != (n, *shape):
                raise StoreError(f"tap {tap}: got maps {tuple(t.shape)}, store holds {shape}")
            self.rows[tap].append(t.detach().to("cpu", self.storage).contiguous())
        for d in decoded:
            self.entries.append(_entry(d, self.next_shard, self.n_rows))
            self.n_rows += 1
        self.images += n
        if self.n_rows == self.shard_size:
            self.commit()

    def commit(self) -> None:
        """Write the current shard (atomically) and append its lines to the index."""
        from safetensors.torch import save

        if not self.entries:
            return
        tensors = {
            tap: torch.cat(rows) if rows else torch.empty((0, *shape), dtype=self.storage)
            for (tap, rows), shape in zip(self.rows.items(), self.tap_shapes.values())
        }
        meta = {"format": "cleandift-rt-store-shard", "index": json.dumps(self.entries)}
        data = save(tensors, metadata=meta)
        path = self.root / shard_name(self.next_shard)
        try:
            _write_atomic(path, data)
        except OSError as exc:
            raise _os_error("write shard", path, exc) from None
        try:
            with open(self.root / INDEX_FILE, "a") as f:
                f.write("".join(json.dumps(e) + "\n" for e in self.entries))
        except OSError as exc:  # the shard is complete; the next open rebuilds the index
            raise _os_error("append to", self.root / INDEX_FILE, exc) from None
        finally:
            self.bytes += len(data)
            self.shards += 1
            self.next_shard += 1
            self.entries = []
            self.rows = {t: [] for t in self.tap_shapes}
            self.n_rows = 0

    def finish(self) -> None:
        """Commit the last, partial shard (also one that holds only skipped images)."""
        self.commit()
        self.close()

    def close(self) -> None:
        """Drop an uncommitted shard (complete shards stay) and release the lock."""
        self.entries = []
        self.rows = {t: [] for t in self.tap_shapes}
        self.n_rows = 0
        lock = getattr(self, "_lock", None)
        if lock is not None and not lock.closed:
            lock.close()
