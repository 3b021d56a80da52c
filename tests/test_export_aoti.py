"""AOTInductor export and runner (CPU): one compile of the tiny model, shared by every test."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_COMPILE  # the suite's AOTInductor settings

from cleandift_rt.artifacts import ArtifactError, read_sidecar
from cleandift_rt.backends import TorchRunner
from cleandift_rt.errors import InputSizeError
from cleandift_rt.extractor import FeatureExtractor
from cleandift_rt.imaging import prepare_image
from cleandift_rt.models import load_model
from cleandift_rt.runtime import load_runner, load_runtime

skimage_data = pytest.importorskip("skimage.data")

TAPS = ("us6", "mid")
SIZE = (64, 64)
pytestmark = pytest.mark.slow  # AOTInductor compiles C++ (about 1 min on 2 cores)


@pytest.fixture(scope="module")
def exported(aoti_artifact) -> tuple[Path, object]:
    """(path of the .pt2, its ArtifactMetadata): tiny, us6+mid, 64x64, batch 1..4, fp32."""
    return aoti_artifact


@pytest.fixture(scope="module")
def runner(exported):
    return load_runner(exported[0], device="cpu")


@pytest.fixture(scope="module")
def reference_net():
    return load_model("tiny").feature_net(list(TAPS)).eval()


def photos(count: int) -> np.ndarray:
    """uint8 (count, 64, 64, 3): astronaut first, then chelsea and coffee."""
    sources = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee()]
    return np.stack([prepare_image(sources[i % 3], SIZE).array for i in range(count)])


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|."""
    return float((out.float() - ref).abs().max() / ref.abs().max())


# Outputs against PyTorch fp32 and numpy vs torch inputs: tests/test_runner_contract.py (every
# registered runner, aoti included).


def test_batch_out_of_range(runner):
    with pytest.raises(InputSizeError, match=r"1\.\.4; rebuild: cleandift-rt export"):
        runner(photos(5))
    with pytest.raises(InputSizeError, match="128x128"):
        runner(np.zeros((1, 128, 128, 3), np.uint8))


def _copy_artifact(src: Path, dst_dir: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as artifact ``name`` in ``dst_dir`` with src's sidecar (name fixed)."""
    dst = dst_dir / name
    dst.write_bytes(data)
    sidecar = json.loads(Path(f"{src}.json").read_text())
    sidecar["artifact"] = name
    Path(f"{dst}.json").write_text(json.dumps(sidecar))
    return dst


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_package(exported, tmp_path, damage):
    path = exported[0]
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # one byte inside the library: the zip opens, its CRC does not match
        data[len(data) // 2] ^= 0xFF
    else:
        data = bytearray(b"not a package\n")
    bad = _copy_artifact(path, tmp_path, "bad.pt2", bytes(data))
    with pytest.raises(ArtifactError) as info:
        load_runtime(bad, device="cpu")
    message = str(info.value)
    assert "\n" not in message and "bad.pt2" in message


def test_foreign_device(exported):
    from cleandift_rt.backends.aoti_runner import AOTIRunner

    path, _ = exported
    with pytest.raises(ArtifactError, match="compiled for cpu, not cuda; rebuild: "):
        AOTIRunner(path, read_sidecar(path), torch.device("cuda"))


def test_cpu_isa_check(monkeypatch):
    from cleandift_rt.backends import aoti_runner

    monkeypatch.setattr(aoti_runner, "host_cpu_isas", lambda: {"AVX2"})
    assert aoti_runner.cpu_isa_supported("AVX2")
    assert aoti_runner.cpu_isa_supported("INVALID_VEC_ISA")  # scalar kernels run anywhere
    assert not aoti_runner.cpu_isa_supported("AVX512")


def test_package_metadata(exported):
    path, _ = exported
    meta = torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(str(path), "model")
    assert meta["cleandift_rt.taps"] == ",".join(TAPS)
    assert (meta["cleandift_rt.batch_min"], meta["cleandift_rt.batch_max"]) == ("1", "4")
    assert meta["AOTI_DEVICE_KEY"] == "cpu"
    assert meta["AOTI_CPU_ISA"] == "INVALID_VEC_ISA"  # FAST_COMPILE reached the compiler


def test_runtime_match(exported, reference_net):
    path, _ = exported
    source, target = skimage_data.astronaut(), skimage_data.chelsea()
    points = np.array([[100.0, 120.0], [250.5, 300.0], [400.0, 50.0]])
    runtime = load_runtime(path, device="cpu")
    assert "aoti" in runtime.description
    result = runtime.match(source, target, points, tap="us6")
    expected = FeatureExtractor(TorchRunner(reference_net, SIZE)).match(
        source, target, points, tap="us6"
    )
    assert result.target_points.shape == (3, 2) and np.isfinite(result.scores).all()
    np.testing.assert_allclose(result.scores, expected.scores, atol=1e-4)
    np.testing.assert_array_equal(result.target_points, expected.target_points)


def test_concurrent_calls(runner):
    batches = [photos(1), photos(3), photos(2), photos(4)]
    sequential = [runner(b) for b in batches]
    results: dict[int, dict[str, torch.Tensor]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(indices: list[int]) -> None:
        try:
            start.wait()
            for _ in range(3):
                for i in indices:
                    out = runner(batches[i])
                    for tap in TAPS:  # every repeat equals the sequential result
                        torch.testing.assert_close(out[tap], sequential[i][tap], rtol=0, atol=0)
                    results[i] = out
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(ix,)) for ix in ([0, 1], [2, 3])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]


def test_sidecar(exported):
    path, meta = exported
    on_disk = read_sidecar(path)
    assert on_disk.format == "aoti" and path.suffix == ".pt2"
    assert tuple(t.name for t in on_disk.taps) == TAPS
    assert on_disk.batch == (1, 4) and (on_disk.height, on_disk.width) == SIZE
    assert on_disk.precision == "fp32"
    assert set(on_disk.validation) == set(TAPS)
    for tap, report in on_disk.validation.items():
        assert report["finite"] and report["cosine"] >= 0.9999, tap
    assert "--format aoti" in on_disk.rebuild and "--max-batch 4" in on_disk.rebuild
    assert meta.validation == on_disk.validation
    assert not list(path.parent.glob(".export-*"))  # staging removed


def test_export_failure_is_one_line(reference_net, tmp_path, monkeypatch):
    from export.aoti_export import write_aoti
    from export.build import ExportError

    def fail(*args, **kwargs):
        raise RuntimeError("data-dependent branch\nlong trace ...")

    monkeypatch.setattr(torch.export, "export", fail)
    with pytest.raises(ExportError, match=r"^torch\.export of the FeatureNet failed: data-dep"):
        write_aoti(reference_net, tmp_path / "x.pt2", 64, 64, (1, 4))
    assert not (tmp_path / "x.pt2").exists()


def test_package_from_another_torch_version_is_refused(exported, tmp_path):
    path, _ = exported
    copy = _copy_artifact(path, tmp_path, path.name, path.read_bytes())
    sidecar = Path(f"{copy}.json")
    data = json.loads(sidecar.read_text())
    data["producer"]["torch"] = "1.0.0"
    sidecar.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"compiled with torch 1\.0\.0.*rebuild: ") as info:
        load_runner(copy, "cpu")
    assert "\n" not in str(info.value)


def test_static_batch_package(reference_net, tmp_path):
    """A fixed batch of 1 (the common deployment shape) compiles and matches PyTorch: inductor
    constant-folds the baked timestep there, which a dynamic batch does not exercise."""
    import torch._inductor.config

    from export.build import ExportOptions, export_model

    options = ExportOptions(model="tiny", taps=TAPS, height=SIZE[0], width=SIZE[1], batch=1,
                            precision="fp32", format="aoti", out=str(tmp_path), device="cpu",
                            validate=False)  # fmt: skip
    with torch._inductor.config.patch(FAST_COMPILE):
        path, meta = export_model(options, log=lambda _: None)
    assert meta.batch == (1, 1)
    images = photos(1)
    got = load_runner(path, "cpu")(images)
    with torch.inference_mode():
        want = reference_net(torch.from_numpy(images))
    for tap, ref in zip(TAPS, want):
        assert (got[tap] - ref).abs().max() / ref.abs().max() < 1e-4
