"""`cleandift-rt`: the command-line entry point.

Every command takes ``--json`` for machine-readable output, exits 0 on success and 2 with one
``error: ...`` line (no traceback, no partial output file) on bad input. Commands live in
modules by area (``feature_commands``: info, extract, match, demo; ``eval_commands``: eval
spair / homography; one module each for export, bench, track, serve); heavy imports happen
inside them, so ``cleandift-rt --help`` starts fast.
"""

from __future__ import annotations

import click

from ..console import run_console
from .bench_command import bench
from .common import command_line
from .eval_commands import eval_group
from .export_command import export_command
from .feature_commands import demo, extract, info, match
from .serve_command import serve
from .track_command import track

__all__ = ["cli", "command_line", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cleandift-rt", prog_name="cleandift-rt")
def cli():
    """Noise-free Stable Diffusion features (CleanDIFT): extract and match, fast."""


for command in (info, extract, match, demo, export_command, bench, eval_group, track, serve):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors → one `error:` line and exit status 2."""
    run_console(cli, argv, "cleandift-rt")
