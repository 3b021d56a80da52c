"""What `cleandift-rt serve` runs: the model, the HTTP address, replicas and batching.

``ServeConfig.check()`` finds bad options before Ray starts or a model loads (one-line
CleanDIFTError); it imports neither Ray nor the model code.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CleanDIFTError, ModelError


@dataclass
class ServeConfig:
    """A feature service.

    model / artifact: what each replica loads (an exported ``artifact`` wins); taps: served taps
    (comma-separated); max_batch: images per forward pass; batch_wait_ms: how long a replica
    waits for a batch to fill; max_body_mb: largest request body (MiB); gpus_per_replica /
    cpus_per_replica: Ray resources of a replica; address: a running Ray cluster to join (None:
    start a local one); app_name / route_prefix: the Serve application (the API lives at
    ``route_prefix`` + ``v1/...``).
    """

    model: str = "toy"
    artifact: str | None = None
    taps: str = "us6"
    base: str | None = None
    resolution: int | None = None
    policy: str = "square"
    device: str = "auto"
    dtype: str | None = None
    timestep: float | None = None
    fuse: str | None = None  # fusion (cleandift_rt.fusion): concat or pca:D
    tap_weights: str | None = None
    fusion_alpha: str | float | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_body_mb: float = 32.0
    address: str | None = None
    app_name: str = "cleandift_rt"
    route_prefix: str = "/"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def extractor_args(self) -> dict[str, Any]:
        """Keyword arguments of ``runtime.build_extractor`` for one replica."""
        return {
            "model": self.model,
            "taps": tuple(t.strip() for t in self.taps.split(",") if t.strip()),
            "artifact": self.artifact,
            "device": self.device,
            "dtype": self.dtype,
            "resolution": self.resolution,
            "policy": self.policy,
            "base": self.base,
            "timestep": self.timestep,
            "fuse": self.fuse,
            "tap_weights": self.tap_weights,
            "fusion_alpha": self.fusion_alpha,
        }

    def check(self, check_port: bool = True) -> None:
        """CleanDIFTError (one line) on bad options, a model or artifact that cannot be found,
        or a port already in use; cheap: no Ray, no weights."""
        if not 1 <= self.port <= 65535:
            raise CleanDIFTError(f"--port must be 1..65535, got {self.port}")
        if self.replicas < 1:
            raise CleanDIFTError(f"--replicas must be >= 1, got {self.replicas}")
        if self.gpus_per_replica < 0 or self.cpus_per_replica < 0:
            raise CleanDIFTError("--gpus-per-replica and --cpus-per-replica must be >= 0")
        if not 1 <= self.max_batch <= 1024:
            raise CleanDIFTError(f"--max-batch must be 1..1024, got {self.max_batch}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise CleanDIFTError(f"--batch-wait-ms must be 0..10000, got {self.batch_wait_ms:g}")
        if not 0 < self.max_body_mb <= 4096:
            raise CleanDIFTError(f"--max-body-mb must be in (0, 4096], got {self.max_body_mb:g}")
        if self.policy not in ("square", "fit"):
            raise CleanDIFTError(f"unknown resize policy '{self.policy}' (square, fit)")
        if self.resolution is not None and (self.resolution <= 0 or self.resolution % 64):
            raise CleanDIFTError(f"--resolution must be a positive multiple of 64, got "
                                 f"{self.resolution}")  # fmt: skip
        if not self.extractor_args()["taps"]:
            raise CleanDIFTError("--taps is empty")
        self.check_fusion()
        if self.gpus_per_replica > 0 and self.address is None:
            import torch

            if not torch.cuda.is_available():
                raise CleanDIFTError(
                    "--gpus-per-replica > 0 but CUDA is not available here "
                    "(join a GPU cluster with --address, or serve on the CPU)"
                )
        self.check_model()
        if check_port and self.address is None:
            check_port_free(self.host, self.port)

    def check_fusion(self) -> None:
        """Fusion options that fit the model and taps (``fusion.fusion_for``)."""
        from ..fusion import fusion_for
        from ..validation import split_taps

        model = None if self.artifact is not None else self.model
        fusion_for(model, split_taps(self.taps), fuse=self.fuse, tap_weights=self.tap_weights,
                   fusion_alpha=self.fusion_alpha)  # fmt: skip

    def check_model(self) -> None:
        """The model or artifact exists (weights are loaded only by the replicas)."""
        if self.artifact is not None:
            from ..artifacts import read_sidecar

            read_sidecar(self.artifact)  # ArtifactError: missing, no sidecar, bad sidecar
            return
        from ..fusion import split_model_name
        from ..models import PRESETS
        from ..models.hub import looks_like_repo_id
        from ..models.loading import RANDOM_PREFIX

        name, dino = split_model_name(self.model)
        if dino is not None:
            from ..validation import check_dino_name

            check_dino_name(dino)
        if name in PRESETS or name.startswith(RANDOM_PREFIX):
            return
        path = Path(name).expanduser()
        if path.is_file():
            if path.suffix != ".safetensors":
                raise ModelError(f"'{path}': only .safetensors weight files are read (no pickles)")
            return
        if path.is_dir() or looks_like_repo_id(name):
            return
        raise ModelError(
            f"unknown model '{name}': not a preset ({', '.join(PRESETS)}), a local folder, "
            "a .safetensors file or a hub id"
        )


def check_port_free(host: str, port: int) -> None:
    """CleanDIFTError when ``host:port`` cannot be bound (in use, or not a local address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CleanDIFTError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
