"""Multi-tap fusion, SD + DINOv2 fusion and PCA (issue 17): the fused FeatureNet output equals a
naive composition of the separate features, the PCA equals numpy's SVD PCA, and `extract` /
`match` run end to end with --fuse and a +dinov2 model (tiny models, CPU, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from cleandift_rt import cli
from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.fusion import FUSED, make_fusion
from cleandift_rt.imaging import prepare_image
from cleandift_rt.matching.pca import PCAFitter, fit_pca, pca_pair
from cleandift_rt.models import load_model
from cleandift_rt.models.dino import build_tiny_dino

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 128
TAPS = ("us3", "us6", "us9")


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """uint8 (2, 128, 128, 3): two bundled sample photos."""
    from cleandift_rt.photos import sample_photo

    arrays = [prepare_image(sample_photo(n), SIZE).array for n in ("astronaut", "chelsea")]
    return torch.from_numpy(np.stack(arrays))


@pytest.fixture(scope="module")
def tiny_dino():
    return load_model("tiny+dinov2-tiny")


def naive_fuse(maps: list[torch.Tensor], weights) -> torch.Tensor:
    """The composition spelled out: resample to the largest grid, normalise, weight, concat."""
    size = max((m.shape[-2:] for m in maps), key=lambda s: s[0])
    parts = []
    for m, w in zip(maps, weights):
        up = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
        parts.append(w * up / up.norm(dim=1, keepdim=True))
    return torch.cat(parts, 1)


def naive_dino(images: torch.Tensor, model) -> torch.Tensor:
    """DINOv2 patch tokens of uint8 images as a (B, C, h, w) map, written out by hand."""
    x = images.permute(0, 3, 1, 2).float() / 255
    side = round(images.shape[1] / 14) * 14
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    tokens = model(pixel_values=(x - mean) / std).last_hidden_state[:, 1:]
    g = side // 14
    return tokens.transpose(1, 2).reshape(len(images), -1, g, g)


def test_fused_taps_equal_the_naive_composition(tiny, photos):
    weights = (1.0, 0.7, 0.25)
    plain = tiny.feature_net(TAPS)
    fused = tiny.feature_net(TAPS, make_fusion(TAPS, fuse="concat", tap_weights="1,0.7,0.25"))
    with torch.no_grad():
        maps = list(plain(photos))
        (out,) = fused(photos)
    expect = naive_fuse(maps, weights)
    assert out.shape == expect.shape == (2, 64 * 3, SIZE // 8, SIZE // 8)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)
    assert fused.taps == (FUSED,) and fused.sd_taps == TAPS
    assert fused.strides == {FUSED: 8} and fused.channels == {FUSED: 192}
    info = fused.fusion_info()
    assert [(t["name"], t["stride"], t["weight"]) for t in info["taps"]] == [
        ("us3", 32, 1.0), ("us6", 16, 0.7), ("us9", 8, 0.25)
    ]  # fmt: skip


def test_default_weights_are_equal(tiny, photos):
    fused = tiny.feature_net(("us6", "mid"), make_fusion(("us6", "mid"), fuse="concat"))
    with torch.no_grad():
        (out,) = fused(photos)
        maps = list(tiny.feature_net(("us6", "mid"))(photos))
    torch.testing.assert_close(out, naive_fuse(maps, (1, 1)), atol=1e-6, rtol=0)
    # each tap's part of a fused cell has unit norm
    norms = out.view(2, 2, 64, *out.shape[-2:]).norm(dim=2)
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_sd_plus_dino_equals_separate_sd_and_dinov2_runs(tiny_dino, tiny, photos, alpha):
    net = tiny_dino.feature_net(("us6",), make_fusion(("us6",), alpha=alpha, dino="dinov2-tiny"))
    with torch.no_grad():
        (out,) = net(photos)
        (sd,) = tiny.feature_net(("us6",))(photos)  # a separate SD FeatureNet
        dino = naive_dino(photos, build_tiny_dino())  # a separate Dinov2Model, same seed
    dino = F.interpolate(dino, size=sd.shape[-2:], mode="bilinear", align_corners=False)
    expect = torch.cat([alpha * F.normalize(sd, dim=1), (1 - alpha) * F.normalize(dino, dim=1)], 1)
    assert out.shape == (2, 64 + 32, SIZE // 16, SIZE // 16)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)
    info = net.fusion_info(SIZE, SIZE)
    assert info["alpha"] == alpha and info["dino"]["input_size"] == [126, 126]
    assert info["dino"]["channels"] == 32 and info["channels"] == 96


def test_fused_taps_with_dino(tiny_dino, tiny, photos):
    taps = ("us6", "us9")
    fusion = make_fusion(taps, fuse="concat", tap_weights="1,0.5", alpha=0.6, dino="dinov2-tiny")
    with torch.no_grad():
        (out,) = tiny_dino.feature_net(taps, fusion)(photos)
        sd = naive_fuse(list(tiny.feature_net(taps)(photos)), (1, 0.5))
        dino = naive_dino(photos, build_tiny_dino())
    dino = F.interpolate(dino, size=sd.shape[-2:], mode="bilinear", align_corners=False)
    expect = torch.cat([0.6 * F.normalize(sd, dim=1), 0.4 * F.normalize(dino, dim=1)], 1)
    torch.testing.assert_close(out, expect, atol=1e-6, rtol=0)


def test_a_dino_model_fuses_by_default(tiny_dino):
    net = tiny_dino.feature_net("us6")
    assert net.taps == (FUSED,) and net.fusion.alpha == 0.5 and tiny_dino.name == "tiny+dinov2-tiny"


@pytest.mark.parametrize(
    "taps,kwargs,message",
    [
        (("us6",), {"fuse": "concat"}, "two or more taps"),
        (("us6", "us9"), {"fuse": "mean"}, "unknown --fuse"),
        (("us6", "us9"), {"fuse": "pca:0"}, "pca:D"),
        (("us6", "us9"), {"fuse": "pca:x"}, "pca:D"),
        (("us6", "us9"), {"fuse": "concat", "tap_weights": "1"}, "one per tap"),
        (("us6", "us9"), {"fuse": "concat", "tap_weights": "1,nan"}, "finite"),
        (("us6", "us9"), {"fuse": "concat", "tap_weights": "1,-1"}, ">= 0"),
        (("us6", "us9"), {"fuse": "concat", "tap_weights": "0,0"}, "all 0"),
        (("us6",), {"alpha": 1.5, "dino": "dinov2-tiny"}, "[0, 1]"),
        (("us6",), {"alpha": 0.5}, "DINOv2"),
        (("us6",), {"tap_weights": "1"}, "--fuse concat"),
        (("us6", "us9"), {"dino": "dinov2-tiny"}, "one tap"),
    ],
)
def test_fusion_options_that_do_not_fit(taps, kwargs, message):
    with pytest.raises(CleanDIFTError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_fusion(taps, **kwargs)


# --------------------------------------------------------------------------------------- PCA


def numpy_pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, components (D, C), variances) by SVD of the centred data, as textbooks do it."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:dim], s[:dim] ** 2 / (len(x) - 1)


def test_pca_equals_numpy_svd_pca():
    gen = torch.Generator().manual_seed(0)
    scales = torch.linspace(3.0, 0.1, 12, dtype=torch.float64)
    maps = torch.randn(3, 12, 7, 9, generator=gen, dtype=torch.float64) * scales.view(1, -1, 1, 1)
    maps = maps + 2.0  # a mean away from 0
    cells = maps.movedim(1, -1).reshape(-1, 12).numpy()
    mean, comps, variances = numpy_pca(cells, 5)
    pca = fit_pca([maps], 5)
    np.testing.assert_allclose(pca.mean.numpy(), mean, atol=1e-12)
    np.testing.assert_allclose(pca.variances.numpy(), variances, rtol=1e-9)
    signs = np.sign((pca.components.numpy() * comps).sum(1))  # SVD's sign is arbitrary
    np.testing.assert_allclose(pca.components.numpy(), comps * signs[:, None], atol=1e-9)
    projected = pca.project(maps).movedim(1, -1).reshape(-1, 5).numpy()
    np.testing.assert_allclose(projected, (cells - mean) @ (comps * signs[:, None]).T, atol=1e-9)
    # the sign convention: each component's largest-magnitude entry is positive
    c = pca.components
    assert (c.gather(1, c.abs().argmax(1, keepdim=True)) > 0).all()


def test_pca_accumulated_in_pieces_equals_one_fit():
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(5, 6, 4, 4, generator=gen, dtype=torch.float64) * torch.arange(1, 7).view(
        1, -1, 1, 1
    )
    whole = fit_pca([maps], 4)
    fitter = PCAFitter()
    for piece in (maps[:1], maps[1:4], maps[4]):
        fitter.update(piece)
    parts = fitter.fit(4)
    torch.testing.assert_close(parts.mean, whole.mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(parts.components, whole.components, atol=1e-9, rtol=0)


def test_pca_pair_is_fitted_on_both_maps_and_refuses_a_large_d():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 8, 5, 5, generator=gen)
    pa, pb = pca_pair(a, b, 3)
    assert pa.shape == pb.shape == (3, 5, 5) and pa.dtype == torch.float32
    both = torch.cat([pa.flatten(1), pb.flatten(1)], 1)
    assert both.mean(1).abs().max() < 1e-5  # centred on the pair's mean
    with pytest.raises(CleanDIFTError, match="pca:9"):
        pca_pair(a, b, 9)


def test_match_with_pca_goes_through_the_exact_matcher(photos):
    from cleandift_rt import FeatureExtractor
    from cleandift_rt.matching import cosine_argmax, sample_descriptors

    fx = FeatureExtractor.from_pretrained("tiny", ("us6", "us9"), fuse="pca:16", device="cpu",
                                          resolution=SIZE)  # fmt: skip
    src, tgt = photos[0].numpy(), photos[1].numpy()
    points = [(10.0, 20.0), (64.0, 64.0), (100.0, 30.0)]
    result = fx.match(src, tgt, points)
    assert result.pca_dim == 16 and result.tap == FUSED and result.to_dict()["pca_dim"] == 16
    feats = fx([src, tgt])
    a, b = pca_pair(feats[FUSED][0], feats[FUSED][1], 16)
    q = sample_descriptors(a, torch.tensor(points, dtype=torch.float64), feats.grid(0, FUSED))
    coords, scores = cosine_argmax(q, b, grid=feats.grid(1, FUSED))
    np.testing.assert_array_equal(result.target_points, coords.numpy())
    np.testing.assert_allclose(result.scores, scores.numpy(), atol=1e-6)


# --------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    from cleandift_rt.photos import sample_photo

    d = tmp_path_factory.mktemp("img")
    paths = {}
    for name in ("astronaut", "chelsea"):
        Image.fromarray(sample_photo(name)).save(d / f"{name}.png")
        paths[name] = str(d / f"{name}.png")
    return paths


def run_cli(args: list[str], capsys) -> dict:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert (info.value.code or 0) == 0, err
    return json.loads(out)


def test_cli_extract_fused_taps(images, tmp_path, capsys):
    out = tmp_path / "f.safetensors"
    payload = run_cli(["extract", images["astronaut"], images["chelsea"], "--model", "tiny",
                       "--resolution", SIZE, "--taps", "us3,us6,us9", "--fuse", "concat",
                       "--tap-weights", "1,1,0.5", "--out", out, "--json"], capsys)  # fmt: skip
    assert payload["taps"] == {FUSED: {"stride": 8, "shape": [2, 192, 16, 16]}}
    assert [t["weight"] for t in payload["fusion"]["taps"]] == [1.0, 1.0, 0.5]
    with safe_open(str(out), "pt") as f:
        assert list(f.keys()) == [FUSED]
        assert json.loads(f.metadata()["fusion"])["channels"] == 192


def test_cli_extract_pca_stores_the_pca(images, tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    payload = run_cli(["extract", images["astronaut"], images["chelsea"], "--model", "tiny",
                       "--resolution", SIZE, "--taps", "us6,us9", "--fuse", "pca:8", "--out", out,
                       "--json"], capsys)  # fmt: skip
    assert payload["taps"][FUSED]["shape"] == [2, 8, 16, 16]
    assert payload["fusion"]["pca_dim"] == 8
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == [FUSED, "pca_components", "pca_mean", "pca_variances"]
        assert f.get_tensor("pca_components").shape == (8, 128)


def test_cli_extract_store_with_pca(images, tmp_path, capsys):
    from cleandift_rt.store import FeatureStore

    out = tmp_path / "store"
    payload = run_cli(["extract", images["astronaut"], images["chelsea"], "--model", "tiny",
                       "--resolution", SIZE, "--taps", "us6,us9", "--fuse", "pca:4", "--out", out,
                       "--storage", "fp32", "--json"], capsys)  # fmt: skip
    assert payload["pca"]["dim"] == 4
    store = FeatureStore(out)
    assert store.taps == (FUSED,) and store.settings["fusion"]["channels"] == 128
    maps = torch.stack([image[FUSED] for image in store])
    expect = fit_pca([maps], 4)
    torch.testing.assert_close(store.pca.components, expect.components)
    assert store.pca.project(store[0][FUSED]).shape == (4, 16, 16)


def test_cli_match_with_pca(images, capsys):
    payload = run_cli(["match", images["astronaut"], images["chelsea"], "--model", "tiny",
                       "--resolution", SIZE, "--taps", "us3,us6", "--fuse", "pca:8",
                       "--points", "100,100;300,200", "--json"], capsys)  # fmt: skip
    assert payload["tap"] == FUSED and payload["pca_dim"] == 8
    assert payload["fusion"]["channels"] == 128 and len(payload["matches"]) == 2


@pytest.mark.parametrize("model", ["tiny+dinov2-tiny"])
def test_cli_extract_and_match_with_dino(model, images, tmp_path, capsys):
    out = tmp_path / "d.safetensors"
    payload = run_cli(["extract", images["astronaut"], "--model", model, "--resolution", SIZE,
                       "--fusion-alpha", "0.4", "--out", out, "--json"], capsys)  # fmt: skip
    assert payload["model"] == model
    assert payload["taps"] == {FUSED: {"stride": 16, "shape": [1, 96, 8, 8]}}
    assert payload["fusion"]["alpha"] == 0.4 and payload["fusion"]["dino"]["model"] == "dinov2-tiny"
    payload = run_cli(["match", images["astronaut"], images["chelsea"], "--model", model,
                       "--resolution", SIZE, "--grid", "2", "--json"], capsys)  # fmt: skip
    assert payload["tap"] == FUSED and payload["fusion"]["dino"]["channels"] == 32
    assert len(payload["matches"]) == 4


def test_a_local_dinov2_folder_loads_quietly(tmp_path, photos, capsys):
    """``tiny+DIR`` with DIR a saved Dinov2Model (safetensors) computes what the named one does."""
    folder = tmp_path / "dino"
    build_tiny_dino().save_pretrained(folder, safe_serialization=True)
    capsys.readouterr()
    loaded = load_model(f"tiny+{folder}")
    assert capsys.readouterr().err == "" and loaded.dino.sources == [str(folder)]
    with torch.no_grad():
        (a,) = loaded.feature_net("us6")(photos)
        (b,) = load_model("tiny+dinov2-tiny").feature_net("us6")(photos)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_offline_hub_dino_is_one_line_error(monkeypatch, tmp_path):
    """A hub DINOv2 id that is not cached, offline: one ModelError line naming it, quickly."""
    import time

    from cleandift_rt.errors import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelError, match="facebook/dinov2-base") as info:
        from cleandift_rt.models.dino import load_dino

        load_dino("dinov2-b")
    assert "\n" not in str(info.value) and "offline" in str(info.value)
    assert time.perf_counter() - start < 5


def test_cli_eval_homography_with_fused_taps_and_pca(capsys):
    payload = run_cli(["eval", "homography", "--model", "tiny", "--resolution", 64, "--taps",
                       "us6,us9", "--fuse", "pca:4", "--pairs-per-image", 1, "--grid", 3,
                       "--photos", "astronaut,chelsea", "--json"], capsys)  # fmt: skip
    assert payload["overall"]["pairs"] == 2 and payload["model"] == "tiny"


def test_cli_track_with_a_dino_model_and_fused_taps(tmp_path, capsys):
    from cleandift_rt.photos import sample_photo

    folder = tmp_path / "frames"
    folder.mkdir()
    photo = prepare_image(sample_photo("astronaut"), SIZE).array
    for i in range(3):
        Image.fromarray(np.roll(photo, 2 * i, axis=1)).save(folder / f"{i:03d}.png")
    summary = run_cli(["track", "--source", folder, "--model", "tiny+dinov2-tiny", "--taps",
                       "us6,us9", "--fuse", "concat", "--resolution", 64, "--grid", 3,
                       "--warmup", 0, "--json"], capsys)  # fmt: skip
    assert summary["frames"] == 3 and summary["tap"] == FUSED and summary["points"] == 9
