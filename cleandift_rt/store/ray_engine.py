"""Ray Data engine: the store pipeline across GPUs and machines.

    items → from_items → map_batches(decode_batch)        CPU tasks, --cpus-per-decoder each
          → map_batches(ExtractorActor)                   --workers actors, --gpus-per-worker
                                                          each; the model loads once per actor
          → iter_batches (in order) → StoreWriter         on the driver: the same shards and
                                                          index as the one-machine path

The driver decides which items to run (resume), and writes every shard itself, so the store
is the one the local engine writes for the same inputs. Actors are restarted by Ray when they
die and their batches retried: Ray Data's actor pools default to ``max_restarts=-1`` and
``max_task_retries=-1``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .layout import STORAGE_DTYPES, StoreError
from .pipeline import (
    BatchRunner,
    StoreOptions,
    StoreSummary,
    _summary,
    auto_shard_size,
    extractor_settings,
    sigterm_as_interrupt,
    skip_or_stop,
)
from .sources import DecodedItem, SourceItem, decode_items, item_runs
from .writer import StoreWriter

RAY_EXTRA = "pip install 'cleandift-rt[ray]'"


def import_ray():
    """``ray`` with Ray Data, or StoreError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - needs pandas and pyarrow
    except ImportError as exc:
        raise StoreError(f"--engine ray needs Ray Data ({exc.name} missing): {RAY_EXTRA}") from None
    return ray


def decode_batch(batch: dict[str, np.ndarray], size, policy: str, min_side: int):
    """Ray task: rows (i, source, frame, timestamp) → i, image uint8 (n, H, W, 3) (zeros when
    skipped), reason ("" when decoded), transform (JSON), original (n, 2) (H, W) or -1."""
    items = [
        SourceItem(str(s), None if f < 0 else int(f), None if f < 0 else float(t))
        for s, f, t in zip(batch["source"], batch["frame"], batch["timestamp"])
    ]
    decoded = [d for run in item_runs(items, 16) for d in decode_items(run, size, policy, min_side)]
    n = len(decoded)
    images = np.zeros((n, size[0], size[1], 3), dtype=np.uint8)
    original = np.full((n, 2), -1, dtype=np.int64)
    for j, d in enumerate(decoded):
        if d.array is not None:
            images[j] = d.array
        if d.original_size is not None:
            original[j] = d.original_size
    return {
        "i": np.asarray(batch["i"], dtype=np.int64),
        "image": images,
        "reason": np.array([d.reason or "" for d in decoded], dtype=object),
        "transform": np.array(
            [json.dumps(d.transform.to_dict()) if d.transform else "" for d in decoded],
            dtype=object,
        ),
        "original": original,
    }


def _to_numpy(t: torch.Tensor, storage: torch.dtype) -> np.ndarray:
    t = t.detach().to("cpu", storage).contiguous()
    return t.view(torch.int16).numpy() if storage == torch.bfloat16 else t.numpy()


def _from_numpy(a: np.ndarray, storage: torch.dtype) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True))  # Ray's batches are read-only views
    return t.view(torch.bfloat16) if storage == torch.bfloat16 else t


class ExtractorActor:
    """Ray Data callable class: loads the extractor once, then maps decoded batches to
    ``map:<tap>`` columns (n, C, h, w) in the storage dtype (bf16 as its int16 bits; zeros for
    skipped rows, which the model never sees)."""

    def __init__(self, spec: dict[str, Any], storage: str, batch_size: int):
        from ..runtime import build_extractor

        self.fx = build_extractor(**spec)
        self.storage = STORAGE_DTYPES[storage]
        self.run = BatchRunner(self.fx, batch_size)
        settings = extractor_settings(self.fx, storage)
        self.shapes = {t: (v["channels"], *v["size"]) for t, v in settings["taps"].items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.flatnonzero(batch["reason"] == "")
        n = len(batch["i"])
        np_dtype = np.int16 if self.storage == torch.bfloat16 else None
        out = {k: batch[k] for k in ("i", "reason", "transform", "original")}
        maps = {}
        for tap, shape in self.shapes.items():
            dtype = np_dtype or torch.empty((), dtype=self.storage).numpy().dtype
            maps[tap] = np.zeros((n, *shape), dtype=dtype)
        step = self.run.batch_size
        for start in range(0, len(ok), step):
            rows = ok[start : start + step]
            result = self.run([batch["image"][j] for j in rows])
            for tap, t in result.items():
                maps[tap][rows] = _to_numpy(t, self.storage)
        out.update({f"map:{tap}": a for tap, a in maps.items()})
        return out


def _describe(spec: dict[str, Any], storage: str, command: str) -> dict[str, Any]:
    from ..runtime import build_extractor

    return extractor_settings(build_extractor(**spec), storage, command)


def extract_ray(
    spec: dict[str, Any],
    items: list[SourceItem],
    out: str | Path,
    options: StoreOptions,
    *,
    address: str | None = None,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    cpus_per_decoder: float = 1.0,
    actor_cls: type = ExtractorActor,
) -> StoreSummary:
    """Extract ``items`` on Ray Data into the store ``out`` (resuming it), with ``options.workers``
    extractor actors built from ``spec`` (``build_extractor`` keyword arguments).

    Uses the running Ray (``ray.init`` done by the caller), else connects to ``address``
    ("auto", "ray://HOST:PORT") or starts a local one, which it shuts down at the end.
    ``cpus_per_worker`` None: 1 for GPU actors; CPU actors share what the decode tasks leave of
    the cluster's CPUs (whole CPUs for all of them would leave none to decode with: a deadlock).
    """
    ray = import_ray()
    start = time.perf_counter()
    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise StoreError(
                f"cannot start or reach Ray at '{address or 'local'}': {exc}"
            ) from None
        started = True
    try:
        spec = {**spec, "device": "cuda" if gpus_per_worker > 0 else spec.get("device") or "cpu"}
        if cpus_per_worker is None:
            cpus = float(ray.cluster_resources().get("CPU", 1.0))
            workers = max(1, options.workers)
            spare = (cpus - cpus_per_decoder) / workers
            cpus_per_worker = 1.0 if gpus_per_worker > 0 else max(0.05, min(1.0, spare))
        describe = ray.remote(num_gpus=gpus_per_worker, num_cpus=cpus_per_worker)(_describe)
        settings = ray.get(describe.remote(spec, options.storage, options.command))
        shard_size = options.shard_size or auto_shard_size(settings)
        writer = StoreWriter(out, settings, shard_size)
        try:
            todo = [i for i in items if i.key not in writer.done]
            with sigterm_as_interrupt():
                _run(ray, spec, settings, todo, writer, options, gpus_per_worker,
                     cpus_per_worker, cpus_per_decoder, actor_cls)  # fmt: skip
                writer.finish()
        finally:
            writer.close()
        return _summary(writer, out, start, len(items) - len(todo))
    finally:
        if started:
            ray.shutdown()


def _run(ray, spec, settings, todo, writer, options, gpus, cpus, cpus_decoder, actor_cls):
    if not todo:
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    batch_size = max(1, options.batch_size)
    rows = [
        {
            "i": j,
            "source": it.source,
            "frame": -1 if it.frame is None else it.frame,
            "timestamp": float("nan") if it.timestamp is None else it.timestamp,
        }
        for j, it in enumerate(todo)
    ]
    blocks = max(1, min(len(rows) // batch_size, 4 * max(1, options.workers) * 8))
    size = tuple(settings["input_size"])
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"size": size, "policy": settings["policy"], "min_side": options.min_side},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=cpus_decoder,
    )
    ds = ds.map_batches(
        actor_cls,
        fn_constructor_kwargs={
            "spec": spec,
            "storage": settings["storage"],
            "batch_size": batch_size,
        },  # fmt: skip
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, options.workers)),
        num_gpus=gpus,
        num_cpus=cpus,
    )
    storage = STORAGE_DTYPES[settings["storage"]]
    taps = list(settings["taps"])
    bar = tqdm(total=len(todo), desc="extract (ray)", unit="img", disable=not options.progress,
               file=sys.stderr, dynamic_ncols=True)  # fmt: skip
    pending: list[tuple[DecodedItem, dict[str, torch.Tensor]]] = []

    def flush():
        if pending:
            maps = {t: torch.stack([m[t] for _, m in pending]) for t in taps}
            writer.add_rows([d for d, _ in pending], maps)
            pending.clear()

    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for j, i in enumerate(batch["i"]):
                item = todo[int(i)]
                h, w = (int(v) for v in batch["original"][j])
                original = (h, w) if h > 0 else None
                reason = str(batch["reason"][j])
                if reason:
                    flush()
                    skip_or_stop(writer, DecodedItem(item, original_size=original, reason=reason),
                                 options.strict)  # fmt: skip
                else:
                    from ..imaging import ImageTransform

                    transform = ImageTransform.from_dict(json.loads(batch["transform"][j]))
                    maps = {t: _from_numpy(batch[f"map:{t}"][j], storage) for t in taps}
                    pending.append((DecodedItem(item, None, transform, original), maps))
                    if len(pending) == writer.room:
                        flush()
                bar.update(1)
        flush()
    finally:
        bar.close()
