"""The export's error type (its own module, so every exporter imports it without a cycle)."""

from __future__ import annotations

from cleandift_rt.errors import CleanDIFTError


class ExportError(CleanDIFTError):
    """The export failed (bad options, or an artifact that does not validate)."""
