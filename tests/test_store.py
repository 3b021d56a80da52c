"""Feature stores: `extract SOURCES --out DIR`, FeatureStore, resume, bad input, Ray Data engine.

All runs use the `tiny` model at 64² on the CPU with a few tens of small images.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cleandift_rt import cli
from cleandift_rt.extractor import FeatureExtractor
from cleandift_rt.matching import match_points
from cleandift_rt.store import (
    FeatureStore,
    StoreError,
    StoreOptions,
    expand_sources,
    extract_local,
)

RES = 64
MODEL = ["--model", "tiny", "--resolution", str(RES), "--device", "cpu"]
ROOT = Path(__file__).resolve().parents[1]


def write_images(folder: Path, n: int, seed: int = 0, corrupt: tuple[int, ...] = ()) -> list[Path]:
    """``n`` small PNGs of varied sizes (30..69 x 40..59 px), some in a subfolder; the indices in
    ``corrupt`` are garbage bytes. Returns the paths in the order a folder source lists them."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / (f"a/img{i:03d}.png" if i % 4 == 0 else f"img{i:03d}.png")
        path.parent.mkdir(exist_ok=True)
        if i in corrupt:
            path.write_bytes(
                b"\x89PNG not really" + bytes(rng.integers(0, 255, 40, dtype=np.uint8))
            )
        else:
            h, w = 30 + int(rng.integers(0, 40)), 40 + int(rng.integers(0, 20))
            cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        paths.append(path)
    return [Path(p) for p in sorted(map(str, paths), key=lambda p: (Path(p).parent != folder, p))]


def call_main(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return (info.value.code or 0), out, err


def assert_one_error_line(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]


def read_store(root: Path) -> tuple[list[dict], dict[str, dict[str, torch.Tensor]]]:
    index = [json.loads(line) for line in (root / "index.jsonl").read_text().splitlines()]
    shards = {p.name: load_file(p) for p in sorted(root.glob("shard-*.safetensors"))}
    return index, shards


@pytest.fixture(scope="module")
def fx():
    return FeatureExtractor.from_pretrained("tiny", taps=("us6", "mid"), device="cpu",
                                            resolution=RES)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """14 images in a folder tree, #3 corrupt, plus a 5x4 px 'tiny' image."""
    folder = tmp_path_factory.mktemp("data") / "photos"
    paths = write_images(folder, 14, corrupt=(3,))
    cv2.imwrite(str(folder / "zz_tiny.png"), np.zeros((4, 5, 3), np.uint8))
    return folder, paths


@pytest.fixture(scope="module")
def store_fp32(dataset, tmp_path_factory, fx):
    """The dataset extracted in fp32 through the API, shards of 4 images."""
    folder, _ = dataset
    out = tmp_path_factory.mktemp("stores") / "fp32"
    items = expand_sources([str(folder)])
    # batch 1 and one thread (as in a Ray actor with under 2 CPUs): float32 sums then add up in
    # the same order everywhere (other batch compositions or thread counts differ by ~3e-6)
    options = StoreOptions(storage="fp32", shard_size=4, batch_size=1, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        summary = extract_local(fx, items, out, options)
    finally:
        torch.set_num_threads(threads)
    return out, summary


# ------------------------------------------------------------------------------ round trip


def test_store_round_trip_equals_feature_extractor(dataset, store_fp32, fx):
    folder, paths = dataset
    out, summary = store_fp32
    good = [p for p in paths if "img003" not in p.name]
    assert (summary.images, summary.skipped, summary.shards) == (13, 2, 4)
    store = FeatureStore(out)
    assert len(store) == 13 and store.taps == ("us6", "mid")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = fx([str(p) for p in good], batch_size=1)
    finally:
        torch.set_num_threads(threads)
    for i, image in enumerate(store):
        assert Path(image.source) == good[i]
        assert image.transform == ref.transforms[i]
        for tap in ("us6", "mid"):
            assert image[tap].dtype == torch.float32
            assert torch.equal(image[tap], ref[tap][i])
        assert image.grid("us6") == ref.grid(i, "us6")
    # find by the path as given and by another spelling of it; the Features bridge matches
    a = store.find(str(good[1]))
    b = store.find(os.path.relpath(good[5]))
    assert (a.index, b.index) == (1, 5)
    pts = [(5.0, 7.0), (20.0, 12.0)]
    direct = fx.match(str(good[1]), str(good[5]), pts)
    feats = a.features()
    pair = type(feats)({t: torch.cat([feats[t], b.features()[t]]) for t in feats.maps},
                       feats.transforms + b.features().transforms, feats.strides)  # fmt: skip
    via_store = fx.match_features(pair, pts)
    np.testing.assert_allclose(via_store.target_points, direct.target_points)
    m = match_points(a["us6"], b["us6"], pts, a.grid("us6"), b.grid("us6"))
    np.testing.assert_allclose(m.target.numpy(), direct.target_points)
    # a torch Dataset of one tap
    data = store.dataset("us6", dtype=torch.float32)
    assert len(data) == 13 and data[2].shape == (64, RES // 16, RES // 16)
    assert torch.equal(data[2], ref["us6"][2])


def test_skipped_images_are_listed_with_reasons(store_fp32):
    out, _ = store_fp32
    store = FeatureStore(out)
    reasons = {Path(e["source"]).name: e["skipped"] for e in store.skipped}
    assert set(reasons) == {"img003.png", "zz_tiny.png"}
    assert "cannot decode" in reasons["img003.png"] and "\n" not in reasons["img003.png"]
    assert "tiny image 5x4" in reasons["zz_tiny.png"]
    with pytest.raises(StoreError, match="was skipped: cannot decode"):
        store.find(store.skipped[0]["source"])
    with pytest.raises(StoreError, match="is not in the store"):
        store.find("elsewhere.png")
    index, shards = read_store(out)
    assert [e["row"] for e in index if e["shard"] == 0 and e["row"] is not None] == [0, 1, 2, 3]
    assert list(shards) == [f"shard-0000{i}.safetensors" for i in range(4)]
    assert shards["shard-00000.safetensors"]["us6"].shape == (4, 64, 4, 4)
    assert not list(out.glob(".*.tmp"))


def test_store_json_records_the_settings(store_fp32, fx):
    out, _ = store_fp32
    meta = json.loads((out / "store.json").read_text())
    assert meta["model"] == "tiny" and meta["storage"] == "fp32" and meta["policy"] == "square"
    assert meta["input_size"] == [RES, RES]
    assert meta["taps"]["us6"] == {"channels": 64, "stride": 16, "size": [4, 4]}
    assert len(meta["weights_sha256"]) == 64 and meta["producer"]["torch"]
    from cleandift_rt.store.cli import STORAGE_CHOICES
    from cleandift_rt.store.layout import STORAGE_DTYPES

    assert set(STORAGE_CHOICES) == set(STORAGE_DTYPES)  # the CLI's list, kept free of torch


# ------------------------------------------------------------------------------ the CLI


def test_cli_store_sources_json_and_refusals(tmp_path, capsys):
    images = write_images(tmp_path / "in", 6)
    (tmp_path / "list.txt").write_text(f"{images[0]}\n# a comment\nin/{images[1].name}\n")
    out = tmp_path / "store"
    args = ["extract", f"@{tmp_path / 'list.txt'}", str(tmp_path / "in" / "img00[3-5].png"),
            *MODEL, "--taps", "us6", "--out", out, "--shard-size", "2", "--json"]  # fmt: skip
    code, stdout, err = call_main(args, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["images"] == 4 and summary["shards"] == 2 and summary["skipped"] == 0
    assert summary["bytes"] == sum(p.stat().st_size for p in out.glob("shard-*"))
    assert summary["images_per_s"] > 0
    stamps = [p.stat().st_mtime_ns for p in sorted(out.glob("shard-*"))]
    # the same command again: nothing to do, nothing rewritten
    code, stdout, err = call_main(args, capsys)
    assert code == 0 and json.loads(stdout)["already_in_store"] == 4
    assert [p.stat().st_mtime_ns for p in sorted(out.glob("shard-*"))] == stamps
    # other storage, other taps, other size: refused in one line
    for change in (["--storage", "bf16"], ["--taps", "us6,mid"], ["--resolution", "128"]):
        code, _, err = call_main(args + change, capsys)
        assert_one_error_line(code, err, "other settings")
    # the single-file output is still there for a .safetensors path
    code, _, err = call_main(["extract", images[0], *MODEL, "--out", tmp_path / "f.safetensors"],
                             capsys)  # fmt: skip
    assert code == 0 and (tmp_path / "f.safetensors").is_file()


def test_cli_store_bad_input(tmp_path, capsys):
    images = write_images(tmp_path / "in", 3, corrupt=(1,))
    out = tmp_path / "store"
    code, _, err = call_main(["extract", tmp_path / "missing", *MODEL, "--out", out], capsys)
    assert_one_error_line(code, err, "does not exist")
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    code, _, err = call_main(["extract", images[0], *MODEL, "--out", tmp_path / "file/s"], capsys)
    assert_one_error_line(code, err, "not a folder")
    code, _, err = call_main(
        ["extract", tmp_path / "in", *MODEL, "--out", out, "--strict", "--json"], capsys
    )
    assert_one_error_line(code, err, "--strict", "img001.png")
    assert not list(out.glob("shard-*"))


def test_full_disk_leaves_complete_shards_only(tmp_path, capsys, monkeypatch):
    """ENOSPC while the second shard is written: one error line, exit 2, the first shard whole,
    no temporary file left; the rerun completes the store."""
    import cleandift_rt.store.writer as writer

    write_images(tmp_path / "in", 5)
    out = tmp_path / "store"
    args = ["extract", tmp_path / "in", *MODEL, "--out", out, "--shard-size", "2", "--json"]
    real_fsync = os.fsync

    def full_disk(fd):  # the disk fills up while shard 1 is flushed to its temporary file
        if ".shard-00001.safetensors" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(writer.os, "fsync", full_disk)
    code, _, err = call_main(args, capsys)
    assert_one_error_line(code, err, "no space left on device", "shard-00001")
    assert [p.name for p in out.glob("shard-*")] == ["shard-00000.safetensors"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert len(FeatureStore(out)) == 2
    monkeypatch.setattr(writer.os, "fsync", real_fsync)
    code, _, err = call_main(args, capsys)
    assert code == 0, err
    assert len(FeatureStore(out)) == 5


def test_video_frames_every_n(tmp_path, fx):
    path = tmp_path / "clip.avi"
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (48, 40))
    rng = np.random.default_rng(1)
    for _ in range(10):
        video.write(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    video.release()
    items = expand_sources([str(path)], every=3)
    assert [(i.frame, i.timestamp) for i in items] == [(0, 0.0), (3, 0.3), (6, 0.6), (9, 0.9)]
    out = tmp_path / "store"
    extract_local(fx, items, out, StoreOptions(storage="fp32", shard_size=3, progress=False))
    store = FeatureStore(out)
    cap = cv2.VideoCapture(str(path))
    frames = [cap.read()[1][:, :, ::-1].copy() for _ in range(10)]
    ref = fx([frames[i] for i in (0, 3, 6, 9)])
    assert [im.frame for im in store] == [0, 3, 6, 9]
    image = store.find(str(path), frame=6)
    assert image.timestamp == 0.6 and image.original_size == (40, 48)
    torch.testing.assert_close(image["us6"], ref["us6"][2], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ resume


@pytest.mark.slow
def test_sigint_then_rerun_equals_an_uninterrupted_run(tmp_path, fx):
    """A real `cleandift-rt extract` sent SIGINT after its first shard: exit 130, complete
    shards only; the same command again finishes the store without rewriting those shards, and
    the store is identical to one written without interruption."""
    write_images(tmp_path / "in", 24, corrupt=(7, 15))
    args = ["extract", str(tmp_path / "in"), *MODEL, "--taps", "us6,mid", "--shard-size", "4",
            "--batch-size", "2"]  # fmt: skip
    reference = tmp_path / "reference"
    extract_local(fx, expand_sources([str(tmp_path / "in")]), reference,
                  StoreOptions(shard_size=4, batch_size=2, progress=False))  # fmt: skip
    out = tmp_path / "store"
    cmd = [sys.executable, "-m", "cleandift_rt.cli", *args, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "shard-00000.safetensors").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    kept = sorted(out.glob("shard-*"))
    assert 1 <= len(kept) < len(list(reference.glob("shard-*")))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    stats = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in kept}
    assert len(FeatureStore(out)) == 4 * len(kept)  # readable as it is
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name, stat in stats.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == stat
    index, shards = read_store(out)
    ref_index, ref_shards = read_store(reference)
    assert index == ref_index and list(shards) == list(ref_shards)
    for name, tensors in shards.items():
        for tap, t in tensors.items():
            assert torch.equal(t, ref_shards[name][tap]), (name, tap)


# ------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_local():
    import ray  # the [dev] extra has ray[data]: a missing one fails here instead of skipping
    import ray.data  # noqa: F401
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": env})  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


SPEC = {"model": "tiny", "taps": ("us6", "mid"), "device": "cpu", "resolution": RES}


def _crash_once_actor(marker: str):
    from cleandift_rt.store.ray_engine import ExtractorActor

    class CrashOnce(ExtractorActor):
        """Dies (os._exit) in its first batch the first time any actor runs one."""

        def __call__(self, batch):
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
                os._exit(1)
            except FileExistsError:
                pass
            return super().__call__(batch)

    return CrashOnce


@pytest.mark.slow
def test_ray_engine_equals_local_even_when_a_worker_dies(ray_local, dataset, store_fp32, tmp_path):
    """Two CPU extractor actors on a local Ray write the same index and (fp32) the same maps as
    the one-machine path; an actor killed mid-run is restarted and its batch retried."""
    from cleandift_rt.store.ray_engine import extract_ray

    folder, _ = dataset
    local, _ = store_fp32
    items = expand_sources([str(folder)])
    options = StoreOptions(storage="fp32", shard_size=4, batch_size=1, workers=2, progress=False)
    marker = tmp_path / "crashed"
    actor = _crash_once_actor(str(marker))
    summary = extract_ray(SPEC, items, tmp_path / "ray", options, cpus_per_decoder=0.5,
                          actor_cls=actor)  # fmt: skip
    assert marker.exists()  # an actor did die
    assert (summary.images, summary.skipped, summary.shards) == (13, 2, 4)
    index, shards = read_store(tmp_path / "ray")
    ref_index, ref_shards = read_store(local)
    assert index == ref_index and list(shards) == list(ref_shards)
    for name, tensors in shards.items():
        for tap, t in tensors.items():
            torch.testing.assert_close(t, ref_shards[name][tap], rtol=0, atol=1e-6)
    settings = json.loads((tmp_path / "ray" / "store.json").read_text())
    ref_settings = json.loads((local / "store.json").read_text())
    for key in ("model", "weights_sha256", "taps", "input_size", "policy", "storage", "compute"):
        assert settings[key] == ref_settings[key]
