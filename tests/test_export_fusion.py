"""Fused graphs exported (issue 17): `tiny` with fused taps and `tiny+dinov2-tiny` (SD + DINOv2)
as ONNX, run in onnxruntime against PyTorch (cosine >= 0.9999), their sidecars describing the
one output ``fused`` and read back by ``load_runtime``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cleandift_rt import cli
from cleandift_rt.artifacts import ArtifactError, read_sidecar, sidecar_path
from cleandift_rt.fusion import FUSED, make_fusion
from cleandift_rt.imaging import prepare_image
from cleandift_rt.models import load_model
from cleandift_rt.runtime import build_extractor, load_runtime
from export import ExportError, ExportOptions, export_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # two ONNX exports

SIZE = 64


def photos(n: int) -> np.ndarray:
    from cleandift_rt.photos import sample_photo

    names = ("astronaut", "chelsea", "coffee")
    return np.stack([prepare_image(sample_photo(names[i % 3]), SIZE).array for i in range(n)])


CASES = {
    "taps": dict(model="tiny", taps=("us3", "us6", "us9"), fuse="concat", tap_weights=(1, 1, 0.5)),
    "dino": dict(model="tiny+dinov2-tiny", taps=("us6",), fusion_alpha=0.4),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("fused")
    made = {}
    for name, case in CASES.items():
        options = ExportOptions(height=SIZE, width=SIZE, batch=1, max_batch=3, precision="fp32",
                                out=str(out), device="cpu", **case)  # fmt: skip
        made[name] = export_model(options, log=lambda _: None)
    return made


def reference(case: dict, images: np.ndarray) -> torch.Tensor:
    fusion = make_fusion(
        case["taps"], fuse=case.get("fuse"), tap_weights=case.get("tap_weights"),
        alpha=case.get("fusion_alpha"), dino="dinov2-tiny" if "+" in case["model"] else None,
    )  # fmt: skip
    net = load_model(case["model"]).feature_net(case["taps"], fusion)
    with torch.no_grad():
        return net(torch.from_numpy(images))[0]


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_fused_output_equals_pytorch(artifacts, name):
    path, meta = artifacts[name]
    images = photos(3)
    out = load_runtime(path).runner(images)
    assert list(out) == [FUSED]
    ref = reference(CASES[name], images)
    assert out[FUSED].shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(out[FUSED].flatten(1), ref.flatten(1), dim=1)
    assert (cos >= 0.9999).all(), cos
    assert meta.validation[FUSED]["cosine"] >= 0.9999


def test_sidecars_describe_the_fused_output(artifacts):
    path, meta = artifacts["taps"]
    assert [(t.name, t.channels, t.stride) for t in meta.taps] == [(FUSED, 192, 8)]
    assert [(t["name"], t["weight"]) for t in meta.fusion["taps"]] == [
        ("us3", 1.0), ("us6", 1.0), ("us9", 0.5)
    ]  # fmt: skip
    assert "--fuse concat --tap-weights 1,1,0.5" in meta.rebuild and "-fused-" in path.name
    path, meta = artifacts["dino"]
    assert [(t.name, t.channels, t.stride) for t in meta.taps] == [(FUSED, 96, 16)]
    assert meta.fusion["alpha"] == 0.4 and meta.fusion["dino"]["input_size"] == [70, 70]
    assert "--fusion-alpha 0.4" in meta.rebuild
    fx = load_runtime(path)
    assert read_sidecar(path) == meta and fx.fusion == meta.fusion and fx.taps == (FUSED,)


def test_artifact_matches_with_a_pca_of_the_pair(artifacts):
    path, _ = artifacts["taps"]
    fx = build_extractor(artifact=str(path), fuse="pca:8", device="cpu")
    result = fx.match(photos(1)[0], photos(2)[1], [(10.0, 20.0), (40.0, 30.0)])
    assert result.pca_dim == 8 and result.tap == FUSED
    with pytest.raises(Exception, match="baked"):
        build_extractor(artifact=str(path), tap_weights="1,1,1")


def test_a_sidecar_whose_fusion_disagrees_is_refused(artifacts, tmp_path):
    import shutil

    path, _ = artifacts["taps"]
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    data = json.loads(sidecar_path(path).read_text())
    data["fusion"]["channels"] = 7
    sidecar_path(copy).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="fusion describes"):
        load_runtime(copy)


def test_pca_is_not_exported():
    with pytest.raises(ExportError, match="after the graph"):
        ExportOptions(model="tiny", taps=("us6", "us9"), fuse="pca:8", format="onnx").check()


def test_cli_export_of_a_dino_model(tmp_path, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(["export", "--model", "tiny+dinov2-tiny", "--taps", "us6,us9", "--fuse",
                  "concat", "--resolution", str(SIZE), "--precision", "fp32", "--device", "cpu",
                  "--out", str(tmp_path), "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert (info.value.code or 0) == 0, err
    payload = json.loads(out)
    assert payload["outputs"] == {FUSED: ["batch", 64 * 2 + 32, SIZE // 8, SIZE // 8]}
    assert payload["validation"][FUSED]["cosine"] >= 0.9999
    assert payload["fusion"]["dino"]["model"] == "dinov2-tiny"


def test_aoti_package_returns_the_fused_map(tmp_path):
    """AOTInductor compiles the same fused graph (SD taps + DINOv2, one output); about a minute
    of C++ compilation on two cores."""
    import torch._inductor.config
    from conftest import FAST_COMPILE  # the suite's AOTInductor settings

    case = dict(model="tiny+dinov2-tiny", taps=("us6", "us9"), fuse="concat")
    options = ExportOptions(height=SIZE, width=SIZE, batch=1, max_batch=2, precision="fp32",
                            format="aoti", out=str(tmp_path), device="cpu", **case)  # fmt: skip
    with torch._inductor.config.patch(FAST_COMPILE):
        path, meta = export_model(options, log=lambda _: None)
    images = photos(2)
    out = load_runtime(path).runner(images)
    ref = reference(case, images)
    cos = torch.nn.functional.cosine_similarity(out[FUSED].flatten(1), ref.flatten(1), dim=1)
    assert list(out) == [FUSED] and (cos >= 0.9999).all(), cos
    assert meta.fusion["channels"] == 64 * 2 + 32 and meta.taps[0].stride == 8
