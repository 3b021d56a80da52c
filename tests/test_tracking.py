"""Tests of keypoint tracking (cleandift_rt/tracking, `cleandift-rt track`), CPU only, offline.

Synthetic videos are made here from a real photo (scikit-image's astronaut) under known integer
translations and written with cv2.VideoWriter (mp4v, lossy) or as image folders.

Which features: the ``tiny`` model has fixed-seed RANDOM weights and its features do not track
(measured: median error ≈ the motion itself at every tap and resolution tried, see
benchmarks/results/TRACKING.md), so tiny-model tests check plumbing, buffering, faults and outputs.
The geometry ("tracked points follow the known motion within one feature stride") is checked with
:class:`PixelPatchRunner`, a real Runner whose stride-4 features are the raw local-contrast pixel
patches of the frame: discriminative for translations by multiples of its stride, which is what the
test video uses. Everything between the runner and the results (FeatureExtractor preprocessing,
grids in original pixels, the matcher, search windows, chain updates, cycle check, capture thread)
is the production code. The bundled trained ``toy`` model (which never saw this photo) is checked to
track it with learned features.
"""

from __future__ import annotations

import _thread
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from cleandift_rt import FeatureExtractor, cli
from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.geometry import grid_points
from cleandift_rt.matching import PixelGrid, cosine_argmax, cosine_argmax_window
from cleandift_rt.tracking import Tracker, run_tracking

SIZE = 128  # frame side (px)
STRIDE = 4  # PixelPatchRunner stride (px)
# Known motion of the content per frame (x, y) in pixels: multiples of STRIDE, up to 24 px.
PATH = [(0, 0), (4, 0), (8, 4), (12, 4), (16, 8), (20, 8), (24, 12)]


class PixelPatchRunner:
    """Runner protocol: uint8 (B, H, W, 3) → {"patch": (B, 3·s², H/s, W/s)} float32: each cell
    holds its s×s patch of local-contrast RGB (pixel minus its 9×9 mean). Not learned; exact for
    translations by multiples of s."""

    name = "pixel-patch"

    def __init__(self, stride: int = STRIDE):
        self.taps = ("patch",)
        self.strides = {"patch": stride}
        self.channels = {"patch": 3 * stride * stride}
        self.input_size = None
        self.batch_range = (1, 2**31 - 1)  # any batch
        self.device = torch.device("cpu")
        self.stride = stride

    def __call__(self, images) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
        x = x - F.avg_pool2d(x, 9, stride=1, padding=4, count_include_pad=False)
        return {"patch": F.pixel_unshuffle(x, self.stride)}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 224×224 RGB photo to crop moving frames from."""
    return cv2.resize(data.astronaut(), (224, 224), interpolation=cv2.INTER_AREA)


def frame_at(photo: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """SIZE×SIZE crop whose content is moved by (+dx, +dy) relative to frame (0, 0)."""
    return np.ascontiguousarray(photo[48 - dy : 48 - dy + SIZE, 48 - dx : 48 - dx + SIZE])


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE, SIZE))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def count_video_frames(path: str | Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"cannot read back {path}"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def video(photo, tmp_path_factory) -> Path:
    """An mp4 of the photo moving along PATH."""
    out = tmp_path_factory.mktemp("video") / "moving.mp4"
    return write_video(out, [frame_at(photo, dx, dy) for dx, dy in PATH])


@pytest.fixture(scope="module")
def patch_fx() -> FeatureExtractor:
    return FeatureExtractor(PixelPatchRunner(), resolution=SIZE)


@pytest.fixture(scope="module")
def tiny_fx() -> FeatureExtractor:
    return FeatureExtractor.from_pretrained("tiny", taps=("us6",), resolution=64, device="cpu")


def start_points() -> np.ndarray:
    """A 4×4 grid inside the frame, far enough from the border to stay in view along PATH."""
    return grid_points((SIZE, SIZE), 4, margin=0.2)


# ---------------------------------------------------------------------------------------------
# Search-radius matcher
# ---------------------------------------------------------------------------------------------


def test_window_argmax_equals_full_argmax_when_the_disk_covers_the_frame():
    torch.manual_seed(0)
    target, queries = torch.randn(16, 9, 11), torch.randn(7, 16)
    grid = PixelGrid.interpolate((9, 11), (70, 90))
    full_xy, full_s = cosine_argmax(queries, target, grid=grid)
    xy, s = cosine_argmax_window(queries, target, grid, torch.full((7, 2), 35.0), 200.0)
    assert torch.equal(xy, full_xy)
    torch.testing.assert_close(s, full_s, rtol=0, atol=1e-5)


def test_window_argmax_is_the_best_upsampled_pixel_inside_the_disk():
    torch.manual_seed(1)
    target, queries = torch.randn(8, 6, 7), torch.randn(5, 8)
    size, radius = (48, 56), 6.5
    centers = torch.tensor([[0.0, 0.0], [20.0, 30.0], [55.0, 47.0], [10.4, 40.6], [30.0, 5.0]])
    xy, s = cosine_argmax_window(
        queries, target, PixelGrid.interpolate((6, 7), size), centers, radius
    )
    up = F.normalize(
        F.interpolate(target[None], size, mode="bilinear", align_corners=False)[0], dim=0
    )
    cos = torch.einsum("kc,chw->khw", F.normalize(queries, dim=1), up)
    ys, xs = torch.meshgrid(torch.arange(size[0]), torch.arange(size[1]), indexing="ij")
    for k, (cx, cy) in enumerate(centers.round()):
        inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2
        masked = torch.where(inside, cos[k], torch.tensor(float("-inf")))
        best = int(masked.flatten().argmax())
        assert (int(xy[k, 0]), int(xy[k, 1])) == (best % size[1], best // size[1])
        assert abs(float(s[k]) - float(masked.max())) < 1e-5
        assert float(torch.hypot(xy[k, 0] - cx, xy[k, 1] - cy)) <= radius


# ---------------------------------------------------------------------------------------------
# Tracking the known motion
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "anchor"},
        {"mode": "anchor", "radius": 12.0},
        {"mode": "chain", "radius": 12.0},
        {"mode": "chain", "update_rate": 0.5},
        {"mode": "anchor", "refine": "softargmax"},
        {"mode": "chain", "radius": 12.0, "refine": "quadratic"},
    ],
    ids=[
        "anchor", "anchor-radius", "chain-radius", "chain-update-0.5", "anchor-softargmax",
        "chain-radius-quadratic",
    ],
)  # fmt: skip
def test_points_follow_the_known_translation_within_one_stride(video, patch_fx, options):
    points = start_points()
    tracker = Tracker(patch_fx, points, warmup=0, **options)
    results = list(tracker.stream(video))
    assert [r.frame for r in results] == list(range(len(PATH)))
    for r in results:
        truth = points + np.array(PATH[r.frame], dtype=np.float64)
        error = np.linalg.norm(r.points - truth, axis=1)
        assert error.max() <= STRIDE, (r.frame, error.round(1))
        assert not r.lost.any(), (r.frame, r.scores)
        assert r.points.shape == (len(points), 2) and r.scores.dtype == np.float32
    assert tracker.stats.summary()["ended"] == "end"


def test_the_tracker_refines_with_quadratic_by_default(patch_fx):
    """It lowered tracking jitter in every case measured (benchmarks/results/TRACKING.md)."""
    import click

    from cleandift_rt.cli.feature_commands import match
    from cleandift_rt.cli.track_command import track

    assert Tracker(patch_fx, start_points()).refine[0] == "quadratic"
    defaults = {
        cmd.name: next(p.default for p in cmd.params if p.name == "refine")
        for cmd in (track, match)
    }
    assert defaults == {"track": "quadratic", "match": "none"}
    assert isinstance(track, click.Command)


def test_bad_refine_options_are_one_line_errors(patch_fx):
    with pytest.raises(CleanDIFTError, match="refine must be one of"):
        Tracker(patch_fx, start_points(), refine="bogus")
    with pytest.raises(CleanDIFTError, match="refine window must be an integer >= 1"):
        Tracker(patch_fx, start_points(), refine="softargmax", refine_window=0)


def test_a_reference_image_gives_the_points_their_frame(video, patch_fx):
    """Points given on a separate reference image: a saved frame (video frame 2, content at
    (8, 4)), so points move by PATH[i] - (8, 4) in frame i."""
    cap = cv2.VideoCapture(str(video))
    for _ in range(3):
        ok, bgr = cap.read()
    cap.release()
    reference = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    points = start_points()
    # The disk must cover the reference → frame-0 offset (|(8, 4)| ≈ 8.9 px) plus the motion.
    tracker = Tracker(patch_fx, points, reference=reference, warmup=0, radius=12.0)
    for r in tracker.stream(video, max_frames=6):
        truth = points + np.array(PATH[r.frame]) - (8, 4)
        error = np.linalg.norm(r.points - truth, axis=1)
        # Raw patches are ambiguous in flat regions: such points may be flagged lost, but a point
        # reported as tracked is where it should be.
        assert error[~r.lost].max() <= STRIDE, (r.frame, error.round(1), r.lost)
        assert r.lost.sum() <= 2, r.frame
    assert tracker.stats.summary()["ended"] == "max frames"


def test_a_point_that_leaves_the_view_is_lost(video, patch_fx):
    """A point near the right edge moves out of the frame: the cycle check flags it."""
    points = np.array([[64.0, 64.0], [122.0, 40.0]])
    results = list(Tracker(patch_fx, points, warmup=0).stream(video))
    assert not any(r.lost[0] for r in results)
    assert results[0].lost[1] == False  # noqa: E712 (numpy bool)
    assert results[-1].lost[1]  # truth x = 146 is outside the 128-px frame


def test_tiny_model_tracks_a_video_file_end_to_end(video, tiny_fx):
    """Random weights: checks the plumbing, not accuracy. The reference frame itself is
    reliable: there every point comes back within one feature stride."""
    points = start_points()
    tracker = Tracker(tiny_fx, points, warmup=1)
    results = list(tracker.stream(video, max_frames=3))
    assert [r.frame for r in results] == [0, 1, 2]
    stride = tiny_fx.strides["us6"] * SIZE / 64  # in frame pixels
    assert np.linalg.norm(results[0].points - points, axis=1).max() <= stride
    for r in results:
        assert np.isfinite(r.scores).all() and (np.abs(r.scores) <= 1 + 1e-5).all()
        assert set(r.latency_ms) == {"capture", "upload", "extract", "match", "total"}
        assert r.latency_ms["total"] >= r.latency_ms["extract"] > 0
        record = r.to_dict()
        assert record["frame"] == r.frame and len(record["points"]) == len(points)
        assert set(record["points"][0]) == {"id", "x", "y", "score", "lost"}
    summary = tracker.stats.summary()
    assert summary["frames"] == 3 and summary["fps"] > 0
    assert set(summary["latency_ms"]["total"]) == {"p50", "p90", "p99"}


def _fraction_within(fx: FeatureExtractor, video: Path, pixels: float) -> float:
    points = start_points()
    results = list(Tracker(fx, points, warmup=0).stream(video))
    errors = [np.linalg.norm(r.points - points - np.array(PATH[r.frame]), axis=1) for r in results]
    return float((np.concatenate(errors) <= pixels).mean())


@pytest.mark.slow
def test_trained_toy_features_track_the_held_out_photo_where_random_ones_do_not(video):
    """The bundled `toy` weights (trained without this photo) follow the known motion: points
    within 8 px (3 % of the 224-px photo) on ≥ 90 % of (frame, point) pairs, measured 0.96 at
    us9 / 256², against 0.45 for the same architecture with random weights (`tiny`)."""
    fractions = {
        name: _fraction_within(
            FeatureExtractor.from_pretrained(name, taps=("us9",), resolution=256, device="cpu"),
            video,
            8.0,
        )
        for name in ("toy", "tiny")
    }
    assert fractions["toy"] >= 0.9 and fractions["tiny"] <= 0.6, fractions


# ---------------------------------------------------------------------------------------------
# Buffer policies
# ---------------------------------------------------------------------------------------------


def test_latest_policy_drops_frames_when_processing_is_slower(photo, tiny_fx):
    """A source that yields 12 frames at once to a tracker that needs far longer per frame."""
    frames = [frame_at(photo, dx, dy) for dx, dy in PATH] * 2  # 14 frames
    tracker = Tracker(tiny_fx, start_points(), buffer="latest", warmup=0)
    seen = [r.frame for r in tracker.stream(iter(frames))]
    stats = tracker.stats
    assert stats.dropped > 0
    assert stats.read == len(frames) and len(seen) + stats.dropped == len(frames)
    assert seen == sorted(set(seen)) and seen[-1] == len(frames) - 1  # the newest is never lost


def test_all_policy_processes_every_frame(photo, patch_fx):
    frames = [frame_at(photo, dx, dy) for dx, dy in PATH] * 3
    tracker = Tracker(patch_fx, start_points(), buffer="all", warmup=0)
    seen = [r.frame for r in tracker.stream(iter(frames))]
    assert seen == list(range(len(frames))) and tracker.stats.dropped == 0


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


def test_a_source_failing_after_n_frames_leaves_a_valid_video_and_jsonl(photo, tiny_fx, tmp_path):
    n = 4

    def camera():
        for dx, dy in PATH[:n]:
            yield frame_at(photo, dx, dy)
        raise OSError("camera unplugged")

    out, tracks = tmp_path / "out.mp4", tmp_path / "tracks.jsonl"
    tracker = Tracker(tiny_fx, start_points(), warmup=0)
    summary = run_tracking(tracker, camera(), out=out, tracks=tracks)
    assert summary["ended"] == f"source failed after {n} frame(s): camera unplugged"
    assert summary["frames"] == n and summary["video"] == str(out)
    assert count_video_frames(out) == n
    records = read_jsonl(tracks)
    assert [r["frame"] for r in records] == list(range(n))
    assert all(len(r["points"]) == len(start_points()) for r in records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "tracks.jsonl"]  # no temp


def test_ctrl_c_finishes_cleanly_with_complete_outputs(photo, patch_fx, tmp_path):
    tracker = Tracker(patch_fx, start_points(), buffer="all", warmup=0)

    def camera():
        for i in range(1000):
            if i == 8:  # once a few frames are out, do what Ctrl-C does to the main thread
                deadline = time.perf_counter() + 60
                while tracker.stats.frames < 3 and time.perf_counter() < deadline:
                    time.sleep(0.01)
                _thread.interrupt_main()
            time.sleep(0.01)
            yield frame_at(photo, *PATH[i % len(PATH)])

    out, tracks = tmp_path / "out.mp4", tmp_path / "tracks.jsonl"
    summary = run_tracking(tracker, camera(), out=out, tracks=tracks)
    assert summary["ended"] == "interrupted"
    frames = summary["frames"]
    assert 3 <= frames < 1000
    assert count_video_frames(out) == frames
    assert len(read_jsonl(tracks)) == frames


def test_a_source_without_frames_is_an_error_and_writes_nothing(tiny_fx, tmp_path):
    from cleandift_rt.errors import CleanDIFTError

    with pytest.raises(CleanDIFTError, match="gave no frames"):
        run_tracking(
            Tracker(tiny_fx, start_points()), iter([]), out=tmp_path / "o.mp4",
            tracks=tmp_path / "t.jsonl",
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def call_main(args: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "{tmp}/missing.mp4", "--grid", "3"], "cannot open video source"),
        (["--source", "{tmp}/empty_dir", "--grid", "3"], "no images found"),
        (["--source", "99", "--grid", "3"], "cannot open video source camera 99"),
        (["--source", "{video}", "--points-file", "{tmp}/empty_dir"], "cannot read points file"),
        (["--source", "{tmp}/*.png", "--grid", "3"], "no images found"),
        (["--source", "{video}", "--grid", "3", "--out", "{tmp}/o.gif"], "--out video must end"),
        (["--source", "{video}", "--points", "1,2", "--grid", "3"], "exactly one of"),
        (["--source", "{video}", "--points", "500,2", "--tracks", "{tmp}/t.jsonl"], "outside"),
        (["--source", "{video}", "--grid", "2", "--show"], "--show needs an OpenCV build"),
    ],
    ids=[
        "missing",
        "empty-folder",
        "no-camera",
        "bad-points-file",
        "empty-glob",
        "bad-suffix",
        "points-and-grid",
        "outside",
        "show",
    ],
)
def test_cli_bad_input_is_one_line_exit_2_without_files(args, message, video, tmp_path, capsys):
    if "--show" in args:
        from cleandift_rt.tracking.output import _has_gui

        if _has_gui():
            pytest.skip("this OpenCV build has a GUI")
    (tmp_path / "empty_dir").mkdir()
    args = [a.format(tmp=tmp_path, video=video) for a in args]
    code, out, err = call_main(["track", *args, "--resolution", "64", "--warmup", "0"], capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["empty_dir"]


@pytest.mark.slow
def test_cli_tracks_an_image_folder_to_video_and_jsonl(photo, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, (dx, dy) in enumerate(PATH[:3]):
        cv2.imwrite(
            str(folder / f"{i:03d}.png"), cv2.cvtColor(frame_at(photo, dx, dy), cv2.COLOR_RGB2BGR)
        )
    out, tracks = tmp_path / "o.mp4", tmp_path / "t.jsonl"
    code, stdout, err = call_main(
        ["track", "--source", str(folder), "--model", "tiny", "--resolution", "64", "--grid", "3",
         "--mode", "chain", "--radius", "20", "--warmup", "0", "--out", str(out),
         "--tracks", str(tracks), "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["frames"] == 3 and summary["points"] == 9 and summary["ended"] == "end"
    assert summary["dropped"] == 0 and summary["mode"] == "chain"
    assert set(summary["latency_ms"]) == {"capture", "upload", "extract", "match", "total"}
    assert count_video_frames(out) == 3 and len(read_jsonl(tracks)) == 3


@pytest.mark.slow
def test_cli_ctrl_c_stops_cleanly_with_complete_outputs(photo, tmp_path):
    """SIGINT to a real `cleandift-rt track` process: a summary, a video and JSONL holding the
    same frames, and exit status 130 like every other command on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys

    folder = tmp_path / "frames"
    folder.mkdir()
    frame = cv2.cvtColor(frame_at(photo, 0, 0), cv2.COLOR_RGB2BGR)
    for i in range(300):
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.roll(frame, i % 8, axis=1))
    out, tracks = tmp_path / "o.mp4", tmp_path / "t.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1", CLEANDIFT_RT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cleandift_rt.cli", "track", "--source", str(folder), "--model",
         "tiny", "--resolution", "64", "--grid", "2", "--warmup", "0", "--out", str(out),
         "--tracks", str(tracks), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline and proc.poll() is None:
            if tracks.exists() and tracks.read_text().count("\n") >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    summary = json.loads(stdout)
    assert summary["ended"] == "interrupted" and 2 <= summary["frames"] < 300
    assert f"interrupted after {summary['frames']} frame(s)" in stderr.splitlines()
    assert len(read_jsonl(tracks)) == summary["frames"] == count_video_frames(out)
