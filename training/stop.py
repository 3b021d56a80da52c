"""Stop a training loop cleanly on SIGINT / SIGTERM (the loop checkpoints, then exits), and
report how a run ended."""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict

import click


class StopFlag:
    """Set by the first SIGINT / SIGTERM (a second SIGINT interrupts at once)."""

    def __init__(self):
        self.set = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame):
        self.set = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def report_run(result, as_json: bool, done: str) -> None:
    """Print a run's result (a dataclass with ``step``, ``interrupted``, ``checkpoint``): JSON,
    or ``done`` / where an interrupted run's state is. An interrupted run exits with 130."""
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
    elif result.interrupted:
        click.echo(f"interrupted at step {result.step}; state in {result.checkpoint}")
    else:
        click.echo(done)
    if result.interrupted:
        sys.exit(130)
