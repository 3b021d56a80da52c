"""A feature store's PCA (``extract --fuse pca:D --out DIR``): fitted on every stored cell of
the ``fused`` map of every image (shard by shard, exact: ``matching.pca.PCAFitter``), written
beside the shards as ``DIR/pca.safetensors`` and read back as ``FeatureStore(DIR).pca``.

The maps stay full width in the shards; ``store.pca.project(image["fused"])`` reduces one. A
resumed extraction refits over all images, so the file always describes the whole store.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..fusion import FUSED
from ..matching.pca import PCA, PCAFitter
from .layout import StoreError

PCA_FILE = "pca.safetensors"


def write_store_pca(root: str | Path, dim: int) -> Path:
    """Fit the ``dim``-component PCA of the store's ``fused`` cells and write ``PCA_FILE``."""
    from safetensors.torch import save

    from ..files import write_bytes
    from .reader import FeatureStore

    store = FeatureStore(root)
    if FUSED not in store.taps:
        raise StoreError(f"pca:{dim} needs a fused store (taps: {', '.join(store.taps)})")
    fitter = PCAFitter()
    for shard in sorted({e["shard"] for e in store.images}):
        fitter.update(store.shard_maps(shard, FUSED))
    pca = fitter.fit(dim)
    meta = {"dim": str(dim), "images": str(len(store)), "tap": FUSED,
            "fitted_on": json.dumps("every cell of every stored fused map")}  # fmt: skip
    tensors = {k: v.contiguous() for k, v in pca.state_dict().items()}
    return write_bytes(Path(root) / PCA_FILE, save(tensors, metadata=meta))


def read_store_pca(root: str | Path) -> PCA | None:
    """The PCA stored with the store at ``root``, or None."""
    path = Path(root) / PCA_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return PCA.from_state_dict(load_file(str(path)))
