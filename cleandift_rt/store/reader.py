"""``FeatureStore(DIR)``: a feature store read back lazily (memory-mapped safetensors shards).

    >>> store = FeatureStore("feats/")
    >>> len(store), store.taps
    >>> image = store.find("photos/cat.jpg")
    >>> image["us6"]            # (C, h, w) in the storage dtype, read from the shard on access
    >>> image.grid("us6")       # PixelGrid of the ORIGINAL image's pixels over the map
    >>> feats = image.features()            # the project's Features (B = 1)
    >>> match_points(a["us6"], b["us6"], points, a.grid("us6"), b.grid("us6"))

Only complete shards are visible, so a store can be opened while another process writes it;
``refresh()`` picks up shards committed since.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..imaging import ImageTransform
from .layout import (
    STORAGE_DTYPES,
    StoreError,
    committed_entries,
    item_key,
    read_settings,
    shard_files,
)


class StoredImage:
    """One image of a store: its maps per tap (lazy), transform, and where it came from.

    Attributes:
        index: position in the store (0 ≤ index < len(store)).
        source: the source path as given to ``extract``; frame / timestamp for video frames.
        transform: original → network-input coordinates (the extractor's ``ImageTransform``).
        strides: network-input pixels per feature cell, per tap.
    """

    def __init__(self, store: FeatureStore, index: int, entry: dict[str, Any]):
        self._store = store
        self.index = index
        self.entry = entry
        self.source: str = entry["source"]
        self.frame: int | None = entry.get("frame")
        self.timestamp: float | None = entry.get("timestamp")
        self.shard: int = entry["shard"]
        self.row: int = entry["row"]
        self.transform = ImageTransform.from_dict(entry["transform"])
        self.strides = {t: v["stride"] for t, v in store.settings["taps"].items()}

    @property
    def original_size(self) -> tuple[int, int]:
        return self.transform.original_size

    @property
    def taps(self) -> tuple[str, ...]:
        return self._store.taps

    def __getitem__(self, tap: str) -> torch.Tensor:
        """The (C, h, w) map of ``tap`` in the storage dtype (read on access)."""
        return self._store._row(self.shard, self.row, tap)

    @property
    def maps(self) -> dict[str, torch.Tensor]:
        return {t: self[t] for t in self.taps}

    def grid(self, tap: str) -> Any:
        """The grid of the ORIGINAL image's pixels over the feature cells of ``tap``."""
        from ..matching import PixelGrid

        t = self.transform
        return PixelGrid.from_input_transform(t.original_size, t.scale, t.offset, self.strides[tap])

    def features(self, dtype: torch.dtype | None = None, device: str | None = None):
        """This image as the project's ``Features`` (maps (1, C, h, w)), for
        ``FeatureExtractor.match_features`` and everything else that takes Features."""
        from ..extractor import Features

        maps = {t: self[t][None].to(device=device, dtype=dtype) for t in self.taps}
        return Features(maps, [self.transform], dict(self.strides))

    def __repr__(self) -> str:
        where = f"{self.source}" + (f"#{self.frame}" if self.frame is not None else "")
        return f"StoredImage({self.index}: {where}, shard {self.shard} row {self.row})"


class FeatureStore:
    """A feature store written by ``cleandift-rt extract SOURCES --out DIR``.

    ``len(store)`` images (skipped ones excluded; see ``skipped``), ``store[i]`` /
    iteration / ``find(path, frame=None)`` give :class:`StoredImage`; ``dataset(tap)`` is a
    ``torch.utils.data.Dataset`` of (C, h, w) maps. Shards are memory-mapped when first read.

    Raises:
        StoreError: ``root`` is not a store (no ``store.json``) or a shard is unreadable.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        settings = read_settings(self.root)
        if settings is None:
            raise StoreError(f"'{self.root}' is not a feature store (no store.json)")
        self.settings = settings
        self.taps: tuple[str, ...] = tuple(settings["taps"])
        self.storage: torch.dtype = STORAGE_DTYPES[settings["storage"]]
        self._handles: dict[int, Any] = {}
        self.refresh()

    def refresh(self) -> FeatureStore:
        """Re-read the index: shards committed since opening become visible."""
        entries = committed_entries(self.root)
        self._paths = dict(shard_files(self.root))
        self.entries = entries
        self.images = [e for e in entries if e.get("row") is not None]
        self.skipped = [e for e in entries if e.get("row") is None]
        self._by_key = {item_key(e): i for i, e in enumerate(self.images)}
        self._by_name: dict[str, list[int]] = {}
        for i, e in enumerate(self.images):
            self._by_name.setdefault(e["source"], []).append(i)
        return self

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> StoredImage:
        if not isinstance(index, int):
            raise TypeError(f"store indices are ints, got {type(index).__name__}")
        n = len(self.images)
        if not -n <= index < n:
            raise IndexError(f"image {index} out of range for a store of {n}")
        index %= n
        return StoredImage(self, index, self.images[index])

    def __iter__(self) -> Iterator[StoredImage]:
        for i in range(len(self.images)):
            yield self[i]

    def find(self, path: str | os.PathLike[str], frame: int | None = None) -> StoredImage:
        """The image extracted from ``path`` (frame ``frame`` of a video); the path as given to
        ``extract`` or any path to the same file. StoreError when it is not in the store (a
        skipped image's reason is named)."""
        text = os.fspath(path)
        key = (os.path.abspath(text), -1 if frame is None else frame)
        index = self._by_key.get(key)
        if index is None and frame is None and len(self._by_name.get(text, [])) == 1:
            index = self._by_name[text][0]
        if index is None:
            for e in self.skipped:
                if item_key(e) == key:
                    raise StoreError(f"'{text}' was skipped: {e['skipped']}")
            raise StoreError(f"'{text}'{'' if frame is None else f' frame {frame}'} is not in "
                             f"the store '{self.root}'")  # fmt: skip
        return self[index]

    def _handle(self, shard: int):
        handle = self._handles.get(shard)
        if handle is None:
            from safetensors import safe_open

            path = self._paths.get(shard)
            if path is None:
                raise StoreError(f"shard {shard} of '{self.root}' is missing")
            handle = self._handles[shard] = safe_open(str(path), framework="pt")
        return handle

    def _row(self, shard: int, row: int, tap: str) -> torch.Tensor:
        if tap not in self.settings["taps"]:
            raise StoreError(f"tap '{tap}' is not in the store (have: {', '.join(self.taps)})")
        return self._handle(shard).get_slice(tap)[row : row + 1][0]

    def shard_maps(self, shard: int, tap: str) -> torch.Tensor:
        """All (n, C, h, w) maps of ``tap`` in shard ``shard`` (memory-mapped read)."""
        return self._handle(shard).get_tensor(tap)

    def dataset(self, tap: str, dtype: torch.dtype | None = None):
        """A ``torch.utils.data.Dataset``: item ``i`` is image ``i``'s (C, h, w) map of ``tap``
        (``dtype``: cast on read). Picklable, so DataLoader workers open shards themselves."""
        if tap not in self.settings["taps"]:
            raise StoreError(f"tap '{tap}' is not in the store (have: {', '.join(self.taps)})")
        return StoreDataset(self, tap, dtype)

    @property
    def pca(self):
        """The PCA fitted on the whole store (``extract --fuse pca:D``; a
        ``matching.pca.PCA``: ``store.pca.project(image["fused"])`` → (D, h, w)), or None."""
        from .pca import read_store_pca

        return read_store_pca(self.root)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __repr__(self) -> str:
        return (f"FeatureStore('{self.root}': {len(self)} images, {len(self.skipped)} skipped, "
                f"taps {', '.join(self.taps)}, {self.settings['storage']})")  # fmt: skip


class StoreDataset(torch.utils.data.Dataset):
    """Maps of one tap of a :class:`FeatureStore`, (C, h, w) per item."""

    def __init__(self, store: FeatureStore, tap: str, dtype: torch.dtype | None = None):
        self.store = store
        self.tap = tap
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> torch.Tensor:
        entry = self.store.images[index]
        t = self.store._row(entry["shard"], entry["row"], self.tap)
        return t if self.dtype is None else t.to(self.dtype)
