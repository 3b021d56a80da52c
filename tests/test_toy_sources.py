"""The toy models' Debian photo sources: the committed manifest and the gathering helpers."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest

from training.toy_photos import HELD_OUT, TRAIN_PHOTOS
from training.toy_sources import (
    HELD_OUT_PATTERNS,
    MANIFEST,
    PACKAGES,
    _pixel_scale,
    candidates,
    downscale,
    ground_truth_pairs,
    is_held_out,
    licence_of,
)

OPENCV_PAIRS = {
    "graf1.png",
    "graf3.png",
    "leuvenA.jpg",
    "leuvenB.jpg",
    "aloeL.jpg",
    "aloeR.jpg",
    "rubberwhale1.png",
    "rubberwhale2.png",
    "basketball1.png",
    "basketball2.png",
    "box.png",
    "box_in_scene.png",
}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def test_manifest_never_trains_on_a_held_out_photo(manifest):
    files = manifest["files"]
    train = [e for e in files if e["role"] == "train"]
    held = [e for e in files if e["role"] == "heldout"]
    assert len(train) >= 100 and {e["package"] for e in train} == set(PACKAGES)
    # every classic OpenCV matching pair is held out, and nothing else from OpenCV is
    assert {e["path"].rsplit("/", 1)[-1] for e in held} == OPENCV_PAIRS
    for entry in train:
        name = entry["path"].rsplit("/", 1)[-1]
        assert not is_held_out(name) and not is_held_out(entry["file"]), entry
    # no held-out photo hides in the training set under another name
    assert not {e["sha256"] for e in train} & {e["sha256"] for e in held}
    assert not {e["png_sha256"] for e in train} & {e["png_sha256"] for e in held}
    # scikit-image's evaluation photos are not among its training photos either
    assert not set(HELD_OUT) & set(TRAIN_PHOTOS)
    assert manifest["held_out_patterns"] == list(HELD_OUT_PATTERNS)


def test_manifest_records_provenance_of_every_file(manifest):
    assert set(manifest["packages"]) == set(PACKAGES)
    for entry in manifest["files"]:
        assert entry["version"] == manifest["packages"][entry["package"]]
        assert entry["licence"] and entry["licence"] != "see copyright", entry
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        assert re.fullmatch(r"[0-9a-f]{64}", entry["png_sha256"])
        assert max(entry["written_size"]) <= manifest["side"]
        assert entry["file"].startswith(entry["role"] + "/")
    assert len({e["file"] for e in manifest["files"]}) == len(manifest["files"])


def test_held_out_rule_by_name():
    assert is_held_out("graf1.png") and is_held_out("opencv-doc--leuvenB.png")
    assert is_held_out("Box_in_scene.png")
    assert not is_held_out("baboon.jpg") and not is_held_out("opencv-doc--fruits.png")


def _package(tmp_path, copyright_text: str, files: dict[str, tuple[int, int]]):
    root = tmp_path / "pkg"
    doc = root / "usr/share/doc/opencv-doc"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(copyright_text)
    data = root / "usr/share/doc/opencv-doc/examples/data"
    data.mkdir(parents=True)
    for name, (h, w) in files.items():
        cv2.imwrite(str(data / name), np.full((h, w, 3), 128, np.uint8))
    return root, data


def test_licence_prefers_the_most_specific_paragraph(tmp_path):
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: someone\nLicense: Apache-2.0\n\n"
        "Files: samples/data/fruits.jpg\n  samples/data/baboon.jpg\nLicense: CC-BY-4.0\n"
    )
    root, _ = _package(tmp_path, text, {})
    assert licence_of(root, "opencv-doc", "x/y/baboon.jpg") == "CC-BY-4.0"
    assert licence_of(root, "opencv-doc", "x/y/other.png") == "Apache-2.0"
    (root / "usr/share/doc/opencv-doc/copyright").write_text(
        "Image Authors:\n - a.jpg\n   Licensed under Creative Commons Attribution 3.0.\n"
    )
    assert licence_of(root, "opencv-doc", "a.jpg") == "Creative Commons Attribution 3.0"


def test_candidates_and_downscale(tmp_path):
    root, data = _package(tmp_path, "", {"a.png": (80, 90), "b.jpg": (64, 64)})
    (data / "notes.txt").write_text("x")
    (data / "aloeGT.png").write_bytes((data / "a.png").read_bytes())  # not a photo: skipped
    assert [p.name for p in candidates("opencv-doc", root)] == ["a.png", "b.jpg"]
    small = downscale(np.zeros((600, 1200, 3), np.uint8), 512)
    assert small.shape == (256, 512, 3)
    assert downscale(np.zeros((100, 50, 3), np.uint8), 512).shape == (100, 50, 3)


def test_ground_truth_homography_is_rewritten_for_the_downscaled_pixels(tmp_path):
    _, data = _package(tmp_path, "", {})
    h = np.array([[0.9, -0.1, 30.0], [0.2, 1.1, -20.0], [1e-4, -2e-5, 1.0]])
    store = cv2.FileStorage(str(data / "H1to3p.xml"), cv2.FILE_STORAGE_WRITE)
    store.write("H13", h)
    store.release()
    written = {
        "graf1.png": {"file": "heldout/g1.png", "size": [800, 640], "written_size": [512, 410]},
        "graf3.png": {"file": "heldout/g3.png", "size": [800, 640], "written_size": [512, 410]},
    }
    (pair,) = ground_truth_pairs(data, written)
    assert (pair["source"], pair["target"]) == ("g1.png", "g3.png")
    m = np.asarray(pair["homography"])
    p = np.array([[100.0, 200.0, 1.0], [700.0, 50.0, 1.0]]).T  # original pixels
    a = _pixel_scale([800, 640], [512, 410])
    expected = a @ (h @ p)
    got = m @ (a @ p)
    np.testing.assert_allclose(got[:2] / got[2], expected[:2] / expected[2], atol=1e-9)


def test_training_photos_refuse_a_held_out_photo(tmp_path):
    from cleandift_rt.errors import CleanDIFTError
    from training.toy_photos import training_photos

    cv2.imwrite(str(tmp_path / "opencv-doc--graf1.png"), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(CleanDIFTError, match="held out"):
        training_photos(str(tmp_path))
