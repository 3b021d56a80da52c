"""Shared fixtures: small SD-shaped models built offline with fixed seeds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
if not torch.cuda.is_available():  # Triton kernels run in Triton's CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own prompt-embedding cache."""
    monkeypatch.setenv("CLEANDIFT_RT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models run fastest single-threaded, with no OpenMP spinning on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny():
    from cleandift_rt.models import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def sd_shaped_unet():
    """Factory of width-32 U-Nets with the block layout of SD 2.1 ("sd21") or SD 1.5 ("sd15"),
    cross-attention width 48, weights from ``seed``."""
    from diffusers import UNet2DConditionModel

    from cleandift_rt.models.configs import scaled_unet_config

    def make(kind: str, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return UNet2DConditionModel(**scaled_unet_config(kind, 32, 48)).eval()

    return make


# Test-only AOTInductor compile settings (about 30 % faster on 2 cores): scalar C++ kernels and an
# unoptimised wrapper. Production exports keep torch's defaults (vectorised kernels, -O1 wrapper)
# and are validated against PyTorch by export_model itself.
FAST_COMPILE = {"cpp.simdlen": 0, "aot_inductor.compile_wrapper_opt_level": "O0"}


@pytest.fixture(scope="session")
def aoti_artifact(tmp_path_factory):
    """(path of the .pt2, its ArtifactMetadata): tiny, us6+mid, 64x64, batch 1..4, fp32 — the one
    AOTInductor compile of the suite, shared by test_export_aoti and the runner contract."""
    import torch._inductor.config

    from export.build import ExportOptions, export_model

    out = tmp_path_factory.mktemp("aoti")
    options = ExportOptions(model="tiny", taps=("us6", "mid"), height=64, width=64, batch=1,
                            max_batch=4, precision="fp32", format="aoti", out=str(out),
                            device="cpu")  # fmt: skip
    with pytest.MonkeyPatch.context() as mp, torch._inductor.config.patch(FAST_COMPILE):
        mp.setenv("CLEANDIFT_RT_CACHE", str(out / "cache"))
        return export_model(options, log=lambda _: None)
