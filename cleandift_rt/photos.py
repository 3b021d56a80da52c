"""Sample photos for the demo, `eval homography` and export validation, available offline.

Four photos ship in the package (``data/photos/``: byte copies of scikit-image's astronaut,
chelsea, coffee and rocket, public domain / CC0, see SOURCES.md), so the core install needs no
scikit-image; any other scikit-image photo name is read from scikit-image when it is installed
(the ``demo`` extra).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CleanDIFTError

PHOTO_DIR = Path(__file__).parent / "data" / "photos"
BUNDLED = {p.stem: p for p in sorted(PHOTO_DIR.glob("*")) if p.suffix in (".png", ".jpg")}


def sample_photo(name: str = "astronaut") -> np.ndarray:
    """The sample photo ``name`` as uint8 (H, W, 3) RGB: a bundled one, else scikit-image's.

    Raises:
        CleanDIFTError: an unknown name, or scikit-image missing for a photo not bundled.
    """
    from .imaging import load_image

    if name in BUNDLED:
        return load_image(BUNDLED[name])
    try:
        from skimage import data
    except ImportError:
        raise CleanDIFTError(
            f"photo '{name}' is not bundled ({', '.join(BUNDLED)}); scikit-image has more: "
            'pip install "cleandift-rt[demo]", or pass your own image'
        ) from None
    if name.startswith(("_", "download")) or not callable(getattr(data, name, None)):
        raise CleanDIFTError(f"no sample photo '{name}' (bundled: {', '.join(BUNDLED)})")
    try:
        image = np.asarray(getattr(data, name)())
    except Exception as exc:  # photos scikit-image must download first (offline here)
        raise CleanDIFTError(f"cannot get scikit-image photo '{name}': {exc}") from None
    if image.ndim != 2 and not (image.ndim == 3 and image.shape[2] in (3, 4)):
        raise CleanDIFTError(f"scikit-image's '{name}' is not a photo (shape {image.shape})")
    return load_image(image)
