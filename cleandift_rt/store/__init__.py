"""Dataset-scale extraction: sources, a streaming pipeline, a sharded feature store and its
reader, and a Ray Data engine (``ray`` is imported only by ``store.ray_engine``).

    cleandift-rt extract photos/ --model sd21 --out feats/      # writes, resumes
    >>> from cleandift_rt import FeatureStore
    >>> store = FeatureStore("feats/")
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "FeatureStore": "reader",
    "StoredImage": "reader",
    "StoreDataset": "reader",
    "StoreError": "layout",
    "SourceItem": "sources",
    "expand_sources": "sources",
    "StoreOptions": "pipeline",
    "StoreSummary": "pipeline",
    "extract_local": "pipeline",
    "extract_ray": "ray_engine",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
