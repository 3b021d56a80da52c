"""The demo's model choice (`--model auto`) and its warp, scores and pictures."""

from __future__ import annotations

import numpy as np
import pytest

from cleandift_rt import demo
from cleandift_rt.demo import CYCLE_RADIUS, choose_model, demo_warp, run_demo
from cleandift_rt.runtime import build_extractor


def _fake_cache(root, files) -> None:
    """A Hugging Face hub cache holding ``files`` [(repo, name)] at one commit per repo."""
    for repo in {r for r, _ in files}:
        folder = root / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text("0" * 40)
        for r, name in files:
            if r == repo:
                path = folder / "snapshots" / ("0" * 40) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("x")


def test_auto_uses_the_cached_sd21_student(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    needed = demo._needed_files("sd21")
    assert ("CompVis/cleandift", "cleandift_sd21_unet.safetensors") in needed
    _fake_cache(tmp_path, needed)
    model, line = choose_model(cache_dir=str(tmp_path))
    assert model == "sd21" and "cache" in line
    _fake_cache(tmp_path / "partial", needed[:-1])  # the student file is missing
    model, line = choose_model(cache_dir=str(tmp_path / "partial"))
    assert model == "toy" and "HF_HUB_OFFLINE" in line


def test_auto_falls_back_to_toy_when_the_hub_does_not_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def silent(missing, timeout):
        raise TimeoutError("no answer")

    monkeypatch.setattr(demo, "_download_bytes", silent)
    model, line = choose_model(cache_dir=str(tmp_path), timeout=0.5)
    assert model == "toy" and "did not answer within 0.5 s" in line
    monkeypatch.setattr(demo, "_download_bytes", lambda missing, timeout: 5.2e9)
    model, line = choose_model(cache_dir=str(tmp_path))
    assert model == "sd21" and "downloading 5.2 GB" in line


def test_demo_warp_defeats_standing_still_and_reports_baselines(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    fx = build_extractor("tiny", ("us6",), device="cpu", resolution=128)
    report = run_demo(fx, tmp_path, image, base=fx)
    assert report.no_motion["pck_10"] <= 0.35  # "no motion" fails on the demo's warp
    assert report.no_motion["mean_error_px"] > 0.1 * 256
    assert report.base is not None and report.base["pck_10"] == pytest.approx(report.pck_10)
    assert 0 <= report.cycle_consistent <= report.points
    assert report.cycle_radius_px == pytest.approx(CYCLE_RADIUS * 256)
    m = demo_warp((256, 256))
    assert m.shape == (3, 3) and m[2, 2] == pytest.approx(1.0)
    assert (tmp_path / "correspondences.png").is_file() and (
        tmp_path / "features_pca.png"
    ).is_file()
