"""User-facing errors.

Every error a user can cause with bad input (a missing image, an unknown tap, an offline hub id,
...) is a :class:`CleanDIFTError`. The CLI prints such errors as one ``error: ...`` line and exits
with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


class CleanDIFTError(Exception):
    """Base class of errors caused by the caller's input or environment (CLI exit status 2)."""


class ImageError(CleanDIFTError):
    """An image cannot be read, decoded or used (missing file, corrupt data, bad shape)."""


class TapError(CleanDIFTError):
    """An unknown or unavailable feature tap name."""


class ModelError(CleanDIFTError):
    """A model cannot be found, downloaded or loaded."""


class InputSizeError(CleanDIFTError):
    """An input whose size the model or artifact cannot take."""


class MatchError(CleanDIFTError):
    """Bad matching input: empty or out-of-range points, NaN/Inf features, mismatched channels."""


class CleanDIFTWarning(UserWarning):
    """Input that runs but may not give what the caller expects (an image stretched a lot, an
    artifact built by other versions). The CLI prints it as one ``warning: ...`` line."""
