"""`serve`: the feature service (HTTP API v1) on Ray Serve, with dynamic batching."""

from __future__ import annotations

import json
import signal
import sys
import time

import click

from ..errors import CleanDIFTError
from .common import model_options


@click.command("serve")
@model_options(taps_option=True)
@click.option("--artifact", default=None, help="Serve an exported artifact instead of --model.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--replicas", type=int, default=1, show_default=True, help="Model replicas.")
@click.option(
    "--gpus-per-replica", type=float, default=0.0, show_default=True, help="GPUs per replica."
)
@click.option(
    "--cpus-per-replica",
    type=float,
    default=1.0,
    show_default=True,
    help="CPUs per replica (also its torch threads).",
)
@click.option(
    "--max-batch", type=int, default=8, show_default=True, help="Images per forward pass."
)
@click.option(
    "--batch-wait-ms",
    type=float,
    default=5.0,
    show_default=True,
    help="How long a replica waits for a batch to fill.",
)
@click.option(
    "--max-body-mb", type=float, default=32.0, show_default=True, help="Largest request body."
)
@click.option("--address", default=None, help="Join a running Ray cluster (e.g. auto).")
@click.option("--json", "as_json", is_flag=True, help="Print the service description as JSON.")
@click.pass_context
def serve(ctx, model, base, resolution, policy, device, dtype, timestep, taps, fusion, artifact,
          host, port, replicas, gpus_per_replica, cpus_per_replica, max_batch, batch_wait_ms,
          max_body_mb, address, as_json):  # fmt: skip
    """Serve extraction and matching over HTTP (POST /v1/match, /v1/extract; GET /v1/info,
    /v1/health, /v1/stats) on Ray Serve, until Ctrl-C."""
    from ..serving.config import ServeConfig

    if artifact is not None and ctx.get_parameter_source("model").name != "DEFAULT":
        raise CleanDIFTError("give one of --model and --artifact, not both")
    config = ServeConfig(
        model=model, artifact=artifact, taps=taps, base=base, resolution=resolution,
        policy=policy, device=device, dtype=dtype, timestep=timestep, host=host, port=port,
        replicas=replicas, gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
        max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_body_mb=max_body_mb,
        address=address, fuse=fusion["fuse"], tap_weights=fusion["tap_weights"],
        fusion_alpha=fusion["fusion_alpha"],
    )  # fmt: skip
    config.check()  # before Ray starts or any model loads
    from ..serving.server import import_serve, start_server

    import_serve()  # one line naming the extra when Ray Serve is missing
    previous = signal.signal(signal.SIGTERM, _interrupt)
    running = None
    try:
        running = start_server(config, check=False)
        from ..serving.client import Client

        described = Client(running.url).info()
        described.update(url=running.url, seconds_to_start=round(running.seconds_to_start, 1))
        if as_json:
            click.echo(json.dumps(described))
        else:
            click.echo(
                f"serving {described['model']} (taps {', '.join(described['taps'])}, "
                f"{described['backend']} on {described['device']}) at {running.url}/v1 with "
                f"{replicas} replica(s), batches of up to {max_batch} images; Ctrl-C stops"
            )
        sys.stdout.flush()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        if running is not None:
            running.stop()
            running = None
        click.echo("stopped: Ray Serve shut down", err=True)
        sys.exit(130)
    finally:
        if running is not None:
            running.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt
