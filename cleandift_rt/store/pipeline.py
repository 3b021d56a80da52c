"""One-machine streaming extraction into a feature store.

Decoding runs ahead of the model in a pool of worker threads (PIL and OpenCV release the GIL
while they decode and resize) with a bounded window of jobs in flight, so peak memory depends on
the batch size, the number of workers and the shard size — never on the number of images.
Batches go to the extractor's runner as uint8 (B, H, W, 3); on CUDA through pinned host buffers.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .layout import STORAGE_DTYPES, STORE_FORMAT, STORE_VERSION, StoreError
from .sources import MIN_SIDE, DecodedItem, SourceItem, decode_items, item_runs
from .writer import StoreWriter

SHARD_BYTES = 512 * 2**20  # automatic --shard-size: about this many bytes of maps per shard


@dataclass
class StoreOptions:
    """How a store is written. ``shard_size`` None: about 512 MiB of maps per shard."""

    storage: str = "fp16"
    shard_size: int | None = None
    batch_size: int = 8
    workers: int = 2
    strict: bool = False
    min_side: int = MIN_SIDE
    progress: bool = True
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class StoreSummary:
    """What one run did: images extracted and skipped this run, shards and bytes written, and
    the store's totals afterwards."""

    out: str
    images: int
    skipped: int
    shards: int
    bytes: int
    seconds: float
    already: int = 0
    total_images: int = 0
    total_skipped: int = 0
    total_shards: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": self.out,
            "images": self.images,
            "skipped": self.skipped,
            "shards": self.shards,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "already_in_store": self.already,
            "store": {
                "images": self.total_images,
                "skipped": self.total_skipped,
                "shards": self.total_shards,
            },
        }


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("cleandift-rt", "torch", "diffusers", "safetensors", "numpy", "ray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def store_input_size(fx) -> tuple[int, int]:
    """The one (H, W) every image of a store is brought to: the runner's fixed size, else the
    extractor's size as a square (policy "fit" scales into it and pads bottom/right)."""
    if fx.runner.input_size is not None:
        return tuple(fx.runner.input_size)
    size = fx.size
    return (size, size) if isinstance(size, int) else tuple(size)


def _weights_hash(fx) -> str | None:
    meta = getattr(fx.runner, "meta", None)
    if meta is not None:
        return meta.weights_sha256
    module = getattr(fx.runner, "net", None) or getattr(fx.runner, "dift", None)
    if module is None:
        return None
    from ..artifacts import weights_sha256

    return weights_sha256(getattr(module, "_orig_mod", module))


def _provenance(fx) -> dict[str, Any]:
    """What the extractor tells about where its weights came from (hub commits, files)."""
    import json

    out: dict[str, Any] = {"description": getattr(fx, "description", "")}
    for name in ("hub_files", "hub_commits", "provenance", "sources", "metadata"):
        value = getattr(fx, name, None)
        if value:
            try:
                json.dumps(value)
                out[name] = value
            except TypeError:
                out[name] = str(value)
    meta = getattr(fx.runner, "meta", None)
    if meta is not None:
        out["artifact"] = {"format": meta.format, "file": meta.artifact, "producer": meta.producer}
    return out


def extractor_settings(fx, storage: str, command: str = "") -> dict[str, Any]:
    """``store.json`` for a store written by extractor ``fx`` in ``storage`` dtype."""
    from ..dtypes import DTYPE_NAMES

    if storage not in STORAGE_DTYPES:
        raise StoreError(f"unknown --storage '{storage}' (use {', '.join(STORAGE_DTYPES)})")
    h, w = store_input_size(fx)
    runner = fx.runner
    meta = getattr(runner, "meta", None)
    compute = meta.precision if meta is not None else DTYPE_NAMES.get(runner.dtype, "")
    fusion = {"fusion": fx.fusion} if getattr(fx, "fusion", None) else {}
    return {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "model": fx.model_name,
        "weights_sha256": _weights_hash(fx),
        "taps": {
            t: {
                "channels": runner.channels[t],
                "stride": runner.strides[t],
                "size": [h // runner.strides[t], w // runner.strides[t]],
            }
            for t in fx.taps
        },
        **fusion,
        "input_size": [h, w],
        "policy": fx.policy,
        "storage": storage,
        "compute": compute,
        "layout": "one (n, C, h, w) tensor per tap per shard; rows in index.jsonl order",
        "provenance": _provenance(fx),
        "producer": _versions(),
        "command": command,
    }


def auto_shard_size(settings: dict[str, Any]) -> int:
    """Images per shard so that one shard holds about 512 MiB of maps (1..4096)."""
    item = STORAGE_DTYPES[settings["storage"]].itemsize
    per_image = sum(
        v["channels"] * v["size"][0] * v["size"][1] * item for v in settings["taps"].values()
    )
    return max(1, min(4096, SHARD_BYTES // max(per_image, 1)))


def iter_decoded(
    items: list[SourceItem], size, policy: str, workers: int, ahead: int, min_side: int
) -> Iterator[DecodedItem]:
    """Decoded items in order, decoded by ``workers`` threads at most ``ahead`` jobs ahead."""
    runs = item_runs(items, max_run=16)
    if workers <= 0:
        for run in runs:
            yield from decode_items(run, size, policy, min_side)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cleandift-decode")
    pending: deque = deque()
    try:
        for run in runs:
            pending.append(pool.submit(decode_items, run, size, policy, min_side))
            while len(pending) > ahead:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class BatchRunner:
    """Runs uint8 (n, H, W, 3) batches on the extractor's runner, padding a batch up to an
    artifact's smallest batch; on CUDA the batch goes through two pinned host buffers."""

    def __init__(self, fx, batch_size: int):
        lo, hi = fx.batch_range
        self.runner = fx.runner
        self.lo = lo
        self.batch_size = max(lo, min(batch_size, hi))
        self.cuda = torch.device(getattr(fx.runner, "device", "cpu")).type == "cuda"
        self._pinned: list[torch.Tensor] = []
        self._turn = 0

    def _host(self, batch: np.ndarray):
        if not self.cuda:
            return batch
        if not self._pinned or self._pinned[0].shape[1:] != batch.shape[1:]:
            shape = (self.batch_size, *batch.shape[1:])
            self._pinned = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(2)]
        buf = self._pinned[self._turn][: len(batch)]
        self._turn ^= 1
        buf.numpy()[...] = batch
        return buf

    def __call__(self, arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
        batch = np.stack(arrays)
        n = len(batch)
        if n < self.lo:
            batch = np.concatenate([batch, np.repeat(batch[-1:], self.lo - n, axis=0)])
        return {t: out[:n] for t, out in self.runner(self._host(batch)).items()}


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (like Ctrl-C) while the block runs (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def skip_or_stop(writer: StoreWriter, d: DecodedItem, strict: bool) -> None:
    if strict:
        raise StoreError(f"{d.reason} (--strict stops at the first bad image)")
    writer.add_skipped(d)


def extract_local(
    fx, items: list[SourceItem], out: str | Path, options: StoreOptions
) -> StoreSummary:
    """Extract ``items`` with extractor ``fx`` into the store ``out`` (resuming it).

    Images already in complete shards are skipped; Ctrl-C / SIGTERM keep every complete shard
    (KeyboardInterrupt propagates). Raises StoreError on settings mismatch or write errors.
    """
    start = time.perf_counter()
    settings = extractor_settings(fx, options.storage, options.command)
    shard_size = options.shard_size or auto_shard_size(settings)
    writer = StoreWriter(out, settings, shard_size)
    todo = [i for i in items if i.key not in writer.done]
    run = BatchRunner(fx, options.batch_size)
    size = tuple(settings["input_size"])
    bar = tqdm(total=len(todo), desc="extract", unit="img", disable=not options.progress,
               file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    ahead = max(2, 2 * options.workers) * max(1, run.batch_size)
    decoded = iter_decoded(todo, size, fx.policy, options.workers, ahead, options.min_side)
    try:
        with sigterm_as_interrupt():
            batch: list[DecodedItem] = []
            for d in decoded:
                if d.reason is not None:  # the index lists images in source order
                    if batch:
                        writer.add_rows(batch, run([b.array for b in batch]))
                        bar.update(len(batch))
                        batch = []
                    skip_or_stop(writer, d, options.strict)
                    bar.update(1)
                    continue
                batch.append(d)
                if len(batch) >= min(run.batch_size, writer.room):
                    writer.add_rows(batch, run([b.array for b in batch]))
                    bar.update(len(batch))
                    batch = []
            if batch:
                writer.add_rows(batch, run([b.array for b in batch]))
                bar.update(len(batch))
            writer.finish()
    finally:
        decoded.close()  # stops the decoders (queued jobs cancelled) on any exit
        bar.close()
        writer.close()
    return _summary(writer, out, start, len(items) - len(todo))


def _summary(writer: StoreWriter, out, start: float, already: int) -> StoreSummary:
    return StoreSummary(
        out=str(out),
        images=writer.images,
        skipped=writer.skipped,
        shards=writer.shards,
        bytes=writer.bytes,
        seconds=time.perf_counter() - start,
        already=already,
        total_images=writer.existing_images + writer.images,
        total_skipped=writer.existing_skipped + writer.skipped,
        total_shards=writer.existing_shards + writer.shards,
    )


def check_writable(out: str | Path) -> None:
    """StoreError unless ``out`` is (or can be created as) a writable folder — before any
    model loads."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise StoreError(f"--out '{path}' exists and is not a folder")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StoreError(f"cannot create the store folder '{path}': '{probe}' is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write the store folder '{path}': permission denied")
