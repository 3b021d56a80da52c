"""The HTTP API's wire format (version 1), shared by the server and the client; no Ray here.

Requests and responses:

* ``POST /v1/match``: JSON ``{"source": IMAGE, "target": IMAGE, "points": [[x, y], ...],
  "tap": "us6", "mutual": false}`` → ``{"matches": [{"source": [x, y], "target": [x, y],
  "score": s, "lost": bool}], "tap": ..., "batch_size": n, "timing_ms": {...}}``.
* ``POST /v1/extract``: JSON ``{"image": IMAGE, "taps": [...]}`` → safetensors bytes
  (``application/octet-stream``): one ``(1, C, h, w)`` tensor per tap; the header metadata holds
  ``model``, ``taps`` (JSON ``{tap: {"stride", "shape"}}``), ``transforms`` (JSON list of
  :meth:`ImageTransform.to_dict`), ``policy`` and ``dtype`` — the layout ``cleandift-rt extract``
  writes.
* Errors: ``{"error": "one line"}`` with 400 (malformed body, bad base64, not an image),
  413 (body or image too large), 422 (points malformed or outside the image, unknown tap), 404 /
  405 (unknown route or method).

IMAGE is a base64-encoded PNG, JPEG or WebP file (a ``data:image/...;base64,`` prefix is
allowed). Coordinates are ``(x, y)`` in ORIGINAL image pixels, pixel centres at integers.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CleanDIFTError, one_line

API_VERSION = "v1"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_IMAGE_PIXELS = 64 * 2**20  # decoded pixels per image; larger → 413
MAX_POINTS = 65536  # points per match request; more → 422


class RequestError(CleanDIFTError):
    """A request the server refuses: ``status`` is the HTTP status, the message one line."""

    def __init__(self, status: int, message: str):
        super().__init__(" ".join(str(message).split()))
        self.status = status


def error_body(message: str) -> bytes:
    """The JSON body of an error response."""
    return json.dumps({"error": " ".join(str(message).split())}).encode()


# ------------------------------------------------------------------------------------ images


def encode_image(image: Any) -> str:
    """Any image ``FeatureExtractor`` takes (path, HWC ndarray, CHW tensor, PIL image) →
    base64 of a lossless PNG of its uint8 RGB pixels (decoded here as ``load_image`` does, so
    the server sees exactly the pixels a local extractor would)."""
    from PIL import Image

    from ..imaging import load_image

    buffer = io.BytesIO()
    Image.fromarray(load_image(image)).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(value: Any, field: str) -> np.ndarray:
    """A request's base64 image file → uint8 RGB (H, W, 3), EXIF orientation applied (as
    ``load_image`` does for a file). RequestError 400 (bad base64, not a PNG/JPEG/WebP, corrupt)
    or 413 (over MAX_IMAGE_PIXELS)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..imaging import load_image

    if not isinstance(value, str) or not value:
        raise RequestError(400, f"'{field}' must be a base64-encoded image file (a string)")
    if value.startswith("data:") and "," in value[:128]:
        value = value.split(",", 1)[1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"'{field}' is not valid base64") from None
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise RequestError(
                    413, f"'{field}' is {img.width}x{img.height}: over {MAX_IMAGE_PIXELS} pixels"
                )
            img.load()
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - broken EXIF: the image as stored
                pass
            return load_image(img)
    except RequestError:
        raise
    except UnidentifiedImageError:
        raise RequestError(400, f"'{field}' is not a PNG, JPEG or WebP image") from None
    except CleanDIFTError as exc:
        raise RequestError(400, f"'{field}': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data
        raise RequestError(400, f"'{field}' cannot be decoded: {one_line(exc)}") from None


# ---------------------------------------------------------------------------------- requests


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object body, or RequestError 400."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"body is not JSON: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise RequestError(400, "body must be a JSON object")
    return data


def parse_points(value: Any, size: tuple[int, int]) -> np.ndarray:
    """``[[x, y], ...]`` inside an (H, W) image → (N, 2) float64; RequestError 422 otherwise."""
    if not isinstance(value, list) or not value:
        raise RequestError(422, "'points' must be a non-empty list of [x, y] pixel coordinates")
    if len(value) > MAX_POINTS:
        raise RequestError(422, f"{len(value)} points: at most {MAX_POINTS} per request")
    h, w = size
    for i, p in enumerate(value):
        if (
            not isinstance(p, list)
            or len(p) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
        ):
            raise RequestError(422, f"points[{i}] must be [x, y] (two numbers), got {p!r:.60}")
        x, y = p
        if not (math.isfinite(x) and math.isfinite(y)):
            raise RequestError(422, f"points[{i}] is not finite")
        if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
            raise RequestError(422, f"points[{i}] ({x:g}, {y:g}) is outside the {w}x{h} source")
    return np.asarray(value, dtype=np.float64)


def parse_tap(value: Any, taps: tuple[str, ...]) -> str:
    """The tap a request names (default: the first served tap); RequestError 422 if unknown."""
    if value is None:
        return taps[0]
    if not isinstance(value, str) or value not in taps:
        raise RequestError(422, f"unknown tap {value!r}: this server has {', '.join(taps)}")
    return value


def parse_taps(value: Any, taps: tuple[str, ...]) -> tuple[str, ...]:
    """The taps an extract request asks for (default: all served); RequestError 422."""
    if value is None:
        return taps
    if not isinstance(value, list) or not value:
        raise RequestError(422, "'taps' must be a non-empty list of tap names")
    return tuple(dict.fromkeys(parse_tap(t, taps) for t in value))


def parse_flag(value: Any, field: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestError(422, f"'{field}' must be true or false")
    return value


# --------------------------------------------------------------------------------- responses


@dataclass
class MatchReply:
    """A /v1/match answer: source (N, 2) float64, target (N, 2) float64, scores (N,) float32,
    lost (N,) bool (cycle check failed; all False without ``mutual``)."""

    source: np.ndarray
    target: np.ndarray
    scores: np.ndarray
    lost: np.ndarray
    tap: str
    batch_size: int
    timing_ms: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        matches = [
            {"source": [float(a), float(b)], "target": [float(c), float(d)],
             "score": float(s), "lost": bool(lost)}
            for (a, b), (c, d), s, lost in zip(self.source, self.target, self.scores, self.lost)
        ]  # fmt: skip
        timing = {k: round(v, 3) for k, v in self.timing_ms.items()}
        return {"matches": matches, "tap": self.tap, "batch_size": self.batch_size,
                "timing_ms": timing}  # fmt: skip


def match_result_from_json(data: dict[str, Any]):
    """A /v1/match response → (MatchResult, lost (N,) bool)."""
    from ..extractor import MatchResult

    matches = data["matches"]
    source = np.array([m["source"] for m in matches], dtype=np.float64).reshape(-1, 2)
    target = np.array([m["target"] for m in matches], dtype=np.float64).reshape(-1, 2)
    scores = np.array([m["score"] for m in matches], dtype=np.float32)
    lost = np.array([m.get("lost", False) for m in matches], dtype=bool)
    return MatchResult(source, target, scores, data["tap"]), lost


def features_to_bytes(features, model: str, policy: str) -> bytes:
    """Features of ONE image → safetensors bytes with the ``extract`` header metadata."""
    from safetensors.torch import save

    maps = {t: m.detach().contiguous().cpu() for t, m in features.maps.items()}
    first = next(iter(maps.values()))
    meta = {
        "model": model,
        "taps": json.dumps(
            {t: {"stride": features.strides[t], "shape": list(m.shape)} for t, m in maps.items()}
        ),
        "transforms": json.dumps([t.to_dict() for t in features.transforms]),
        "policy": policy,
        "dtype": str(first.dtype).removeprefix("torch."),
    }
    return save(maps, meta)


def features_from_bytes(data: bytes):
    """safetensors bytes from /v1/extract → Features (maps on the CPU)."""
    from safetensors.torch import load

    from ..extractor import Features
    from ..imaging import ImageTransform

    maps = load(data)
    header = _safetensors_metadata(data)
    taps = json.loads(header["taps"])
    transforms = [ImageTransform.from_dict(t) for t in json.loads(header["transforms"])]
    ordered = {t: maps[t] for t in taps}
    return Features(ordered, transforms, {t: int(v["stride"]) for t, v in taps.items()})


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors byte string (8-byte length, then the JSON header)."""
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + length]).get("__metadata__", {})
