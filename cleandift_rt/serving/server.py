"""Start and stop the feature service on Ray Serve (a local Ray, or a running cluster)."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import CleanDIFTError
from .config import ServeConfig

SERVE_EXTRA = "Ray Serve is not installed: pip install 'cleandift-rt[serve]'"


class ServingError(CleanDIFTError):
    """The service cannot start (Ray missing, a model that does not load, a busy port)."""


def import_serve():
    """``(ray, ray.serve)``, or ServingError naming the extra to install."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ServingError(SERVE_EXTRA) from None
    return ray, serve


@dataclass
class RunningServer:
    """A started service: ``url`` answers the HTTP API until ``stop()``."""

    config: ServeConfig
    started_ray: bool
    seconds_to_start: float

    @property
    def url(self) -> str:
        return self.config.url

    def stop(self) -> None:
        """Take the application down; a Ray this process started is shut down with it."""
        ray, serve = import_serve()
        if not ray.is_initialized():
            return
        try:
            if self.started_ray:
                serve.shutdown()
            else:  # a shared cluster: remove only our application
                serve.delete(self.config.app_name)
        finally:
            if self.started_ray:
                ray.shutdown()

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(config: ServeConfig, *, check: bool = True) -> RunningServer:
    """Start the FeatureService application of ``config`` on Ray Serve and wait until it
    answers ``/v1/health``. Options are checked before Ray starts (``check``); a replica whose
    model does not load is a ServingError with that model's one-line reason."""
    if check:
        config.check()
    ray, serve = import_serve()
    start = time.perf_counter()
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(
            address=config.address,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            runtime_env={"env_vars": _replica_env()},
        )
        started_ray = config.address is None
    from .service import build_app

    running = RunningServer(config, started_ray, 0.0)
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix,
                  blocking=False)  # fmt: skip
        wait_healthy(config.url, timeout_s=60)
    except BaseException as exc:
        if isinstance(exc, ServingError):
            reason = str(exc)
        elif isinstance(exc, Exception):
            reason = _start_failure(serve, config.app_name)
        else:  # Ctrl-C while starting
            reason = None
        try:
            running.stop()
        except Exception:  # noqa: BLE001 - report the start-up error, not the clean-up's
            pass
        if reason is not None:
            raise ServingError(reason) from None
        raise
    running.seconds_to_start = time.perf_counter() - start
    return running


def _replica_env() -> dict[str, str]:
    """Environment the replicas inherit from this process (offline hub, caches)."""
    import os

    keys = ("HF_HUB_OFFLINE", "HF_HOME", "CLEANDIFT_RT_CACHE", "TRITON_INTERPRET", "PYTHONPATH")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _start_failure(serve, app_name: str) -> str:
    """The one-line reason the application did not start."""
    try:
        app = serve.status().applications.get(app_name)
    except Exception:  # noqa: BLE001
        app = None
    messages = [] if app is None else [d.message for d in app.deployments.values()]
    messages.append("" if app is None else app.message)
    for text in messages:
        found = re.search(r"@@cleandift-rt-start-error@@(.*?)@@cleandift-rt-start-error@@",
                          text or "", re.S)  # fmt: skip
        if found:
            return " ".join(found.group(1).split())
    for text in messages:  # an unexpected exception: its last line
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            return f"the service did not start: {lines[-1]}"
    return "the service did not start (see the Ray Serve log above)"


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    """Poll ``url/v1/health`` until it answers 200; ServingError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise ServingError(f"{url}/v1/health did not answer within {timeout_s:g} s: {last}")
