"""``Client(url)``: the feature service's HTTP API from Python (standard library only).

    >>> from cleandift_rt.serving import Client
    >>> client = Client("http://127.0.0.1:8000")
    >>> result = client.match("a.jpg", "b.jpg", [(120, 80), (300, 210)])
    >>> result.target_points, result.scores

Images are anything ``FeatureExtractor`` takes (paths, uint8 HWC arrays, CHW tensors, PIL
images); they are decoded here as ``load_image`` does and sent as lossless PNG, so the server
computes on exactly the pixels a local extractor would.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from ..errors import CleanDIFTError
from .protocol import encode_image, features_from_bytes, match_result_from_json


class ServiceError(CleanDIFTError):
    """The service refused a request (``status``: its HTTP status, 0 when unreachable)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Client:
    """A client of one ``cleandift-rt serve`` URL (thread-safe: one connection per call).

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000``.
        timeout: seconds per request.
    """

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.last_reply: dict[str, Any] = {}  # the latest /v1/match JSON (timing, batch size)

    def health(self) -> bool:
        """True when the service answers ``/v1/health``."""
        try:
            return self._request("GET", "/v1/health")[1].get("status") == "ok"
        except ServiceError:
            return False

    def info(self) -> dict[str, Any]:
        """``/v1/info``: model, taps, channels, strides, input size, backend, batching, ..."""
        return self._request("GET", "/v1/info")[1]

    def stats(self) -> dict[str, Any]:
        """``/v1/stats``: the servers' batch-size histogram and request counts."""
        return self._request("GET", "/v1/stats")[1]

    def match(
        self,
        source: Any,
        target: Any,
        points: Any,
        *,
        tap: str | None = None,
        mutual: bool = False,
    ):
        """Like ``FeatureExtractor.match``: source points (N, 2) (x, y) in original source
        pixels → ``MatchResult`` in original target pixels. With ``mutual`` the cycle check
        runs; its per-point ``lost`` flags are in ``self.last_reply``."""
        pts = np.asarray(points, dtype=np.float64)
        if pts.ndim != 2 or pts.shape[-1] != 2 or len(pts) == 0:
            raise CleanDIFTError(f"points must be (N, 2) pixel coordinates, got {pts.shape}")
        body = {
            "source": encode_image(source),
            "target": encode_image(target),
            "points": pts.tolist(),
            "mutual": bool(mutual),
        }
        if tap is not None:
            body["tap"] = tap
        reply = self._request("POST", "/v1/match", json.dumps(body).encode())[1]
        self.last_reply = reply
        return match_result_from_json(reply)[0]

    def extract(self, image: Any, taps: list[str] | None = None):
        """Features of one image: ``Features`` with maps {tap: (1, C, h, w)} on the CPU (the
        server's dtype), the image's transform and the strides."""
        body: dict[str, Any] = {"image": encode_image(image)}
        if taps is not None:
            body["taps"] = list(taps)
        raw = self._request("POST", "/v1/extract", json.dumps(body).encode(), raw=True)[1]
        return features_from_bytes(raw)

    def _request(self, method: str, path: str, body: bytes | None = None, raw: bool = False):
        request = urllib.request.Request(
            self.url + path,
            data=body,
            method=method,
            headers={"Content-Type": "application/json"} if body is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = response.read()
                return response.status, data if raw else json.loads(data)
        except urllib.error.HTTPError as exc:
            raise ServiceError(exc.code, f"{path}: HTTP {exc.code}: {_error_text(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(0, f"cannot reach {self.url}: {reason}") from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)
