"""Run metrics: JSONL (always) and TensorBoard (when installed), on rank 0 only."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import torch

METRICS_FILE = "metrics.jsonl"


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory on ``device``, else this process's peak RSS (bytes)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


class MetricsLogger:
    """Appends one JSON object per record to ``<out>/metrics.jsonl``.

    On resume from step s, records of steps after s (from the interrupted tail) are dropped
    first, so the file describes exactly one run.
    """

    def __init__(self, out: Path, resume_step: int | None, tensorboard: bool = True):
        self.path = out / METRICS_FILE
        self.note = ""  # a message for the user (why TensorBoard is off)
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.note = "TensorBoard logging off: pip install 'cleandift-rt[train]'"
            else:
                self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        self.writer.add_scalar(f"{key}/{sub}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
