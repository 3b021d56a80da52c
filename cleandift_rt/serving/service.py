"""The Ray Serve application: a FeatureService deployment (one FeatureExtractor per replica,
dynamic batching across concurrent requests) and a BatchStats deployment (the batch-size
histogram of all replicas). Imported only by ``serving.server`` (it imports Ray).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import CleanDIFTError, one_line
from .config import ServeConfig
from .protocol import (
    API_VERSION,
    MatchReply,
    RequestError,
    decode_image,
    error_body,
    features_to_bytes,
    parse_flag,
    parse_json,
    parse_points,
    parse_tap,
    parse_taps,
)

START_ERROR = "@@cleandift-rt-start-error@@"  # brackets a replica's one-line start-up error
log = logging.getLogger("ray.serve")


class BatchStats:
    """How the replicas batched: {images per forward pass: passes}, and requests by status."""

    def __init__(self):
        self.batches: Counter[int] = Counter()
        self.requests: Counter[str] = Counter()

    def record_batch(self, sizes: list[int]) -> None:
        self.batches.update(sizes)

    def record_request(self, route: str, status: int) -> None:
        self.requests[f"{route} {status}"] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "batches": {str(k): v for k, v in sorted(self.batches.items())},
            "images": sum(k * v for k, v in self.batches.items()),
            "forward_passes": sum(self.batches.values()),
            "requests": dict(sorted(self.requests.items())),
        }


class FeatureService:
    """One replica: a FeatureExtractor built by ``runtime.build_extractor``.

    Every image of every request goes through ``extract_one``, which ``@serve.batch`` collects
    into batches of up to ``max_batch`` images (waiting at most ``batch_wait_ms`` for one to
    fill). Ray Serve forms those batches on its timer even while the model is busy, so under
    load they would queue behind the running pass as many small batches; they go to a model
    queue instead, and each forward pass takes up to ``max_batch`` of the images waiting there
    (what Triton's dynamic batcher does). Passes run one at a time on a model thread (one per
    input size and runner batch range), while the event loop keeps decoding and matching other
    requests in worker threads.
    """

    def __init__(self, config: dict[str, Any], stats):
        from ..runtime import build_extractor

        self.config = ServeConfig(**config)
        self.stats = stats
        try:
            self.fx = build_extractor(**self.config.extractor_args())
            self._warm_up()
        except CleanDIFTError as exc:  # one line for the `serve` command to print
            raise RuntimeError(f"{START_ERROR}{one_line(exc)}{START_ERROR}") from None
        self.extract_one.set_max_batch_size(self.config.max_batch)
        self.extract_one.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.model_queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self.model_busy = False
        self.model_task: asyncio.Task | None = None
        self.pending: set[asyncio.Task] = set()  # statistics calls in flight
        self.prefix = self.config.route_prefix.rstrip("/")

    def _warm_up(self) -> None:
        size = self.fx.size if isinstance(self.fx.size, tuple) else (self.fx.size,) * 2
        self._forward([np.zeros((*size, 3), np.uint8)])

    # ------------------------------------------------------------------------ batching

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005, max_concurrent_batches=8)
    async def extract_one(self, arrays: list[np.ndarray]) -> list[tuple[dict, int] | Exception]:
        """uint8 (H, W, 3) network inputs → ({tap: (C, h, w)}, images in its forward pass) each,
        or the exception of its pass (which fails its own request only; see ``features_of``)."""
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in arrays]
        self.model_queue.extend(zip(arrays, futures))
        if not self.model_busy:
            self.model_busy = True
            self.model_task = loop.create_task(self._drain_model_queue())
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def features_of(self, array: np.ndarray) -> tuple[dict, int]:
        """One image through the batcher: ({tap: (C, h, w)}, images in its forward pass)."""
        result = await self.extract_one(array)
        if isinstance(result, Exception):
            raise result
        return result

    async def _drain_model_queue(self) -> None:
        """Forward passes over the model queue, up to ``max_batch`` images each, until empty."""
        loop = asyncio.get_running_loop()
        try:
            while self.model_queue:
                count = min(len(self.model_queue), self.config.max_batch)
                take = [self.model_queue.popleft() for _ in range(count)]
                arrays = [a for a, _ in take]
                try:
                    outputs, sizes = await loop.run_in_executor(
                        self.model_thread, self._forward, arrays
                    )
                except Exception as exc:  # noqa: BLE001 - fails these requests, not the replica
                    for _, future in take:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._background(self.stats.record_batch.remote(sizes))
                for out, (_, future) in zip(outputs, take):
                    if not future.done():
                        future.set_result((out, len(arrays)))
        finally:
            self.model_busy = False

    def _forward(self, arrays: list[np.ndarray]) -> tuple[list[dict], list[int]]:
        """``extract_prepared`` per input size (it chunks to the runner's batch range and pads an
        artifact's smallest batch); returns per-image {tap: (C, h, w)} and the number of images
        of each runner call."""
        lo, hi = self.fx.batch_range
        step = max(lo, min(len(arrays), hi))
        outputs: list[dict] = [{} for _ in arrays]
        sizes: list[int] = []
        by_shape: dict[tuple, list[int]] = {}
        for i, array in enumerate(arrays):
            by_shape.setdefault(array.shape, []).append(i)
        for indices in by_shape.values():
            batch = np.stack([arrays[i] for i in indices])
            maps = self.fx.extract_prepared(batch, batch_size=step).maps
            for j, i in enumerate(indices):
                outputs[i] = {tap: m[j] for tap, m in maps.items()}
            sizes += [min(step, len(indices) - s) for s in range(0, len(indices), step)]
        return outputs, sizes

    def _background(self, awaitable) -> None:
        """Await a statistics call without holding up a request."""

        async def settle():
            try:
                await awaitable
            except Exception as exc:  # noqa: BLE001 - statistics never fail a request
                log.warning("batch statistics not recorded: %s", one_line(exc))

        task = asyncio.get_running_loop().create_task(settle())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    # ------------------------------------------------------------------------ routes

    async def __call__(self, request: Request) -> Response:
        route = request.url.path.removeprefix(self.prefix).rstrip("/") or "/"
        handler = ROUTES.get(route)
        try:
            if handler is None:
                raise RequestError(404, f"no route {route}: use {', '.join(ROUTES)}")
            method, name = handler
            if request.method != method:
                raise RequestError(405, f"{route} takes {method}, not {request.method}")
            response = await getattr(self, name)(request)
        except RequestError as exc:
            response = _error(exc.status, str(exc))
        except CleanDIFTError as exc:  # e.g. a MatchError on degenerate features
            response = _error(422, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug: log it, answer, keep serving
            log.exception("internal error on %s", route)
            response = _error(500, f"internal error: {one_line(exc)}")
        if route in ROUTES and route not in ("/v1/health", "/v1/stats"):
            self._background(self.stats.record_request.remote(route, response.status_code))
        return response

    async def _body(self, request: Request) -> dict[str, Any]:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"body of {declared} bytes is over --max-body-mb "
                                    f"{self.config.max_body_mb:g}")  # fmt: skip
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"body is over --max-body-mb {self.config.max_body_mb:g}")
            chunks.append(chunk)
        return parse_json(b"".join(chunks))

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        return JSONResponse(self.describe())

    async def stats_route(self, request: Request) -> Response:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)
        return JSONResponse(await self.stats.snapshot.remote())

    async def match(self, request: Request) -> Response:
        start = time.perf_counter()
        data = await self._body(request)
        tap = parse_tap(data.get("tap"), self.fx.taps)
        mutual = parse_flag(data.get("mutual"), "mutual")
        source, target, points, prepared = await self._in_thread(self._decode_pair, data)
        decoded = time.perf_counter()
        (src, n_src), (tgt, n_tgt) = await asyncio.gather(
            self.features_of(prepared[0].array), self.features_of(prepared[1].array)
        )
        extracted = time.perf_counter()
        maps = {tap: torch.stack([src[tap], tgt[tap]])}
        transforms = [p.transform for p in prepared]
        reply = await self._in_thread(self._match, maps, transforms, points, tap, mutual)
        done = time.perf_counter()
        reply.batch_size = max(n_src, n_tgt)
        reply.timing_ms = {
            "decode": 1e3 * (decoded - start),
            "extract": 1e3 * (extracted - decoded),
            "match": 1e3 * (done - extracted),
            "total": 1e3 * (done - start),
        }
        return JSONResponse(reply.to_json())

    def _decode_pair(self, data: dict[str, Any]):
        source = decode_image(data.get("source"), "source")
        points = parse_points(data.get("points"), source.shape[:2])
        target = decode_image(data.get("target"), "target")
        return source, target, points, self.fx.prepare([source, target])

    def _match(self, maps, transforms, points, tap, mutual) -> MatchReply:
        from ..extractor import Features
        from ..matching import match_points

        features = Features(maps, transforms, dict(self.fx.strides))
        if not mutual:
            result = self.fx.match_features(features, points, tap=tap)
            lost = np.zeros(len(points), dtype=bool)
            return MatchReply(result.source_points, result.target_points, result.scores, lost,
                              tap, 0, {})  # fmt: skip
        found = match_points(maps[tap][0], maps[tap][1], points,
                             src_grid=features.grid(0, tap), tgt_grid=features.grid(1, tap),
                             mutual=True)  # fmt: skip
        return MatchReply(
            np.asarray(points, dtype=np.float64),
            found.target.cpu().numpy().astype(np.float64),
            found.scores.float().cpu().numpy(),
            ~found.mutual.cpu().numpy(),
            tap, 0, {},
        )  # fmt: skip

    async def extract(self, request: Request) -> Response:
        data = await self._body(request)
        taps = parse_taps(data.get("taps"), self.fx.taps)
        prepared = await self._in_thread(
            lambda: self.fx.prepare(decode_image(data.get("image"), "image"))[0]
        )
        out, n = await self.features_of(prepared.array)
        from ..extractor import Features

        features = Features({t: out[t][None] for t in taps}, [prepared.transform],
                            {t: self.fx.strides[t] for t in taps})  # fmt: skip
        body = await self._in_thread(
            features_to_bytes, features, self.fx.model_name, self.fx.policy
        )
        return Response(body, media_type="application/octet-stream",
                        headers={"X-Batch-Size": str(n)})  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """What /v1/info answers."""
        import platform

        import ray

        from .. import __version__

        runner, cfg = self.fx.runner, self.config
        size = self.fx.size if isinstance(self.fx.size, tuple) else (self.fx.size,) * 2
        dtype = getattr(runner, "dtype", None)
        return {
            "api": API_VERSION,
            "model": self.fx.model_name,
            "description": self.fx.description,
            "artifact": cfg.artifact,
            "taps": list(self.fx.taps),
            "channels": dict(runner.channels),
            "strides": dict(self.fx.strides),
            "input_size": list(size),
            "policy": self.fx.policy,
            "backend": getattr(runner, "name", type(runner).__name__),
            "device": str(runner.device),
            "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
            "torch_threads": torch.get_num_threads(),
            "batching": {
                "max_batch": cfg.max_batch,
                "batch_wait_ms": cfg.batch_wait_ms,
                "runner_batch_range": list(self.fx.batch_range),
            },
            "max_body_mb": cfg.max_body_mb,
            "replicas": cfg.replicas,
            "versions": {
                "cleandift_rt": __version__,
                "torch": torch.__version__,
                "ray": ray.__version__,
                "python": platform.python_version(),
            },
        }


ROUTES = {
    "/v1/health": ("GET", "health"),
    "/v1/info": ("GET", "info"),
    "/v1/stats": ("GET", "stats_route"),
    "/v1/match": ("POST", "match"),
    "/v1/extract": ("POST", "extract"),
}


def _error(status: int, message: str) -> Response:
    return Response(error_body(message), status_code=status, media_type="application/json")


def build_app(config: ServeConfig):
    """The Serve application of ``config``: FeatureService replicas + one BatchStats."""
    stats = serve.deployment(BatchStats, name="BatchStats", num_replicas=1,
                             ray_actor_options={"num_cpus": 0})  # fmt: skip
    options: dict[str, Any] = {"num_cpus": config.cpus_per_replica}
    if config.gpus_per_replica:
        options["num_gpus"] = config.gpus_per_replica
    service = serve.deployment(
        FeatureService,
        name="FeatureService",
        num_replicas=config.replicas,
        ray_actor_options=options,
        max_ongoing_requests=8 * config.max_batch,  # = max_batch x serve.batch's concurrency
        health_check_period_s=10,
        max_constructor_retry_count=config.replicas,  # a model that fails to load fails again
    )
    return service.bind(config.to_dict(), stats.bind())
