"""Serving: the runtime behind an HTTP API on Ray Serve (dynamic batching across requests),
its Python client, and Triton Inference Server model repositories.

* ``cleandift-rt serve`` / :func:`start_server` (needs the ``serve`` extra: Ray Serve).
* :class:`Client`: ``match`` / ``extract`` / ``info`` over HTTP, standard library only.
* :func:`write_triton_repository`: an exported artifact as a Triton model repository.

The HTTP API (version 1) is described in :mod:`cleandift_rt.serving.protocol`. Nothing here
imports Ray until a server starts.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "Client": "client",
    "ServiceError": "client",
    "ServeConfig": "config",
    "RunningServer": "server",
    "ServingError": "server",
    "start_server": "server",
    "write_triton_repository": "triton_repo",
}
__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
