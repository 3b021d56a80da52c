"""Tests of the `cleandift-rt` command line (cleandift_rt/cli/), CPU only, offline.

The contract (DESIGN): every command takes ``--json``, exits 0 on success, and on bad input exits
2 printing exactly one ``error: ...`` line on stderr (no traceback), leaving no output file and no
temporary file behind.

The ``tiny`` model has fixed-seed random weights: these tests check shapes, files, coordinate
ranges, JSON structure and errors, never that its matches are right.

A few commands run through the real console path (a subprocess of ``python -m
cleandift_rt.cli``, ~5 s of imports each); the many bad-input cases call ``cli.main`` in-process.
Every run is offline (HF_HUB_OFFLINE=1) with HOME, the Hugging Face cache and the project cache
under a temporary folder.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from skimage import data

from cleandift_rt import cli
from cleandift_rt.geometry import grid_points

RES = "128"  # tiny at 128 px: us6 (stride 16) is 8x8, mid (stride 64) is 2x2
ASTRONAUT_HW = (512, 512)
CHELSEA_HW = (300, 451)
COMMANDS = ("info", "extract", "match", "demo")


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A fresh HOME holding every cache the CLI could touch."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def env(home) -> dict[str, str]:
    """Environment of the subprocesses: offline, caches in the temporary HOME."""
    e = dict(os.environ)
    e.update(
        HF_HUB_OFFLINE="1",
        HOME=str(home),
        HF_HOME=str(home / "hf"),
        XDG_CACHE_HOME=str(home / ".cache"),
        CLEANDIFT_RT_CACHE=str(home / "cleandift-rt"),
        PYTHONUNBUFFERED="1",
    )
    e.pop("HF_HUB_CACHE", None)
    e.pop("HUGGINGFACE_HUB_CACHE", None)
    return e


@pytest.fixture(autouse=True)
def _offline_in_process(monkeypatch, home):
    """The same isolation for in-process calls of ``cli.main``."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("CLEANDIFT_RT_CACHE", str(home / "cleandift-rt"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """A.png (astronaut, written by cv2), B.jpg (chelsea, written by PIL), bad.png (random
    bytes), and a path that does not exist."""
    d = tmp_path_factory.mktemp("images")
    a, b, bad = d / "A.png", d / "B.jpg", d / "bad.png"
    assert cv2.imwrite(str(a), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    Image.fromarray(data.chelsea()).save(b, quality=95)
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {"A": a, "B": b, "BAD": bad, "MISSING": d / "missing.png"}


@dataclass
class ConsoleRun:
    """One run of ``python -m cleandift_rt.cli ARGS`` (the real console path) with ``work`` as
    its cwd and ``out_dir`` an empty folder for its output; ``result`` is (exit code, stdout,
    stderr) once it ran."""

    args: list[str]
    work: Path
    out_dir: Path
    result: tuple[int, str, str] | None = None

    def run(self, env: dict[str, str]) -> None:
        proc = subprocess.run(
            [sys.executable, "-m", "cleandift_rt.cli", *self.args],
            env=env,
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.result = (proc.returncode, proc.stdout, proc.stderr)


def argv(*parts) -> list[str]:
    """Command-line words: strings split on whitespace; paths and lists kept whole."""
    words: list[str] = []
    for part in parts:
        if isinstance(part, str):
            words += part.split()
        elif isinstance(part, (list, tuple)):
            words += [str(w) for w in part]
        else:
            words.append(str(part))
    return words


def call_main(args: list[str], capsys) -> tuple[int, str, str]:
    """``cli.main(ARGS)`` in-process → (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code), out, err


def assert_user_error(code: int, out: str, err: str) -> None:
    """Exit 2, exactly one stderr line starting with 'error: ', no traceback, nothing on stdout."""
    assert code == 2, f"exit {code}, stderr: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("error: ") and len(lines[0]) > len("error: ")
    assert out.strip() == "", f"stdout on error: {out!r}"


def assert_ok(code: int, err: str) -> None:
    assert code == 0, f"exit {code}, stderr: {err!r}"
    assert "Traceback" not in err


def png_rgb(path: Path) -> np.ndarray:
    """Read back a PNG written by the CLI: PNG signature, 3 channels, uint8."""
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.dtype == np.uint8
    assert img.ndim == 3 and img.shape[2] == 3
    return img


def assert_match_payload(payload: dict, n: int, source_hw, target_hw) -> None:
    """JSON of `match`: n matches, sources inside the source image, integer targets inside the
    target image, scores in [-1, 1]."""
    assert payload["model"] == "tiny" and payload["tap"] == "us6"
    matches = payload["matches"]
    assert isinstance(matches, list) and len(matches) == n
    (sh, sw), (th, tw) = source_hw, target_hw
    for m in matches:
        assert set(m) == {"source", "target", "score"}
        sx, sy = m["source"]
        tx, ty = m["target"]
        assert -0.5 <= sx <= sw - 0.5 and -0.5 <= sy <= sh - 0.5
        assert tx == int(tx) and ty == int(ty), m
        assert 0 <= tx <= tw - 1 and 0 <= ty <= th - 1, m
        assert np.isfinite(m["score"]) and -1.0 - 1e-5 <= m["score"] <= 1.0 + 1e-5, m


# ---------------------------------------------------------------------------------------------
# Real console runs (subprocess), computed once per module
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def console(tmp_path_factory, images, env):
    """Every subprocess run of this module, run once up front, two side by side. Keys: info,
    help, extract, match, demo, and bad:<case> for each case of SUBPROCESS_BAD."""
    a, b = images["A"], images["B"]
    specs = {
        "info": lambda o: ["info", "--json"],
        "help": lambda o: ["--help"],
        "extract": lambda o: argv(
            "extract",
            a,
            b,
            "--model tiny --taps us6,mid --resolution",
            RES,
            "--device cpu --json --out",
            o / "f.safetensors",
        ),
        "match": lambda o: argv(
            "match",
            a,
            b,
            "--points 10,20;100,50 --model tiny --resolution",
            RES,
            "--json --out",
            o / "vis.png",
        ),
        "demo": lambda o: argv("demo --model tiny --resolution", RES, "--json --out-dir", o / "D"),
    }
    for case, args in SUBPROCESS_BAD.items():
        specs[f"bad:{case}"] = lambda o, args=args: _fill(args, images, o)
    runs = {}
    for name, make_args in specs.items():
        work = tmp_path_factory.mktemp(name.replace(":", "-"))
        (work / "out").mkdir()
        runs[name] = ConsoleRun(argv(make_args(work / "out")), work, work / "out")
    # two at a time: the ~5 s of imports of each run is single-threaded
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda r: r.run(env), runs.values()))
    return runs


@pytest.mark.slow
def test_info_json(console):
    code, out, err = console["info"].result
    assert_ok(code, err)
    payload = json.loads(out)
    assert isinstance(payload["versions"]["torch"], str) and payload["versions"]["torch"]
    assert payload["versions"]["cleandift-rt"]
    devices = payload["devices"]
    assert isinstance(devices, list) and devices[0]["name"] == "cpu"
    assert payload["backends"]["torch"] is True
    assert all(isinstance(v, bool) for v in payload["backends"].values())
    assert {"sd21", "toy", "toy-base", "tiny"} <= set(payload["models"])


def test_info_text(capsys):
    code, out, err = call_main(["info"], capsys)
    assert_ok(code, err)
    assert "torch" in out and "devices:" in out and "backends:" in out


@pytest.mark.slow
def test_help_lists_commands(console):
    code, out, err = console["help"].result
    assert_ok(code, err)
    assert out.lstrip().startswith("Usage:")
    commands = out.split("Commands:", 1)[1].split()
    for name in COMMANDS:
        assert name in commands


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-h"],
        ["extract", "--help"],
        ["match", "--help"],
        ["demo", "--help"],
        ["info", "--help"],
        ["--version"],
    ],
)
def test_help_and_version_in_process(args, capsys):
    code, out, err = call_main(args, capsys)
    assert_ok(code, err)
    assert err == ""
    if args == ["--version"]:
        assert "0.1" in out
    else:
        assert "Usage:" in out
    if args in ([], ["-h"]):
        assert all(name in out for name in COMMANDS)


# ---------------------------------------------------------------------------------------------
# extract
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_extract_file_and_json(console):
    code, stdout, err = console["extract"].result
    assert_ok(code, err)
    out = console["extract"].out_dir / "f.safetensors"
    assert out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.safetensors"]  # no temp file

    payload = json.loads(stdout)
    assert payload["images"] == 2 and payload["model"] == "tiny"
    assert Path(payload["out"]) == out
    assert payload["taps"] == {
        "us6": {"stride": 16, "shape": [2, 64, 8, 8]},
        "mid": {"stride": 64, "shape": [2, 64, 2, 2]},
    }
    assert isinstance(payload["seconds"], (int, float)) and payload["seconds"] >= 0

    with safe_open(str(out), framework="pt") as f:
        assert sorted(f.keys()) == ["mid", "us6"]
        assert tuple(f.get_tensor("us6").shape) == (2, 64, 8, 8)
        assert tuple(f.get_tensor("mid").shape) == (2, 64, 2, 2)
        meta = f.metadata()
    assert meta["model"] == "tiny"
    assert meta["policy"] == "square" and meta["dtype"] == "float32"
    assert json.loads(meta["images"]) == ["A.png", "B.jpg"]
    assert json.loads(meta["taps"]) == payload["taps"]
    transforms = json.loads(meta["transforms"])
    assert isinstance(transforms, list) and len(transforms) == 2
    for t, hw in zip(transforms, (ASTRONAUT_HW, CHELSEA_HW)):
        assert t["original_size"] == list(hw)
        assert t["input_size"] == [128, 128]
        assert t["scale_yx"] == pytest.approx([128 / hw[0], 128 / hw[1]])  # (H, W) order
        assert t["offset_yx"] == [0.0, 0.0]


@pytest.mark.slow
def test_extract_parity_with_api(console, images):
    """The CLI's file holds exactly what the Python API computes."""
    from cleandift_rt.extractor import FeatureExtractor

    code, _, err = console["extract"].result
    assert_ok(code, err)
    out = console["extract"].out_dir / "f.safetensors"
    fx = FeatureExtractor.from_pretrained("tiny", taps=("us6", "mid"), resolution=128, device="cpu")
    with torch.no_grad():
        feats = fx([str(images["A"]), str(images["B"])])
    with safe_open(str(out), framework="pt") as f:
        for tap in ("us6", "mid"):
            saved = f.get_tensor(tap)
            api = feats[tap].float().cpu()
            assert saved.dtype == torch.float32 and saved.shape == api.shape
            assert torch.isfinite(saved).all()
            torch.testing.assert_close(saved, api, atol=1e-5, rtol=0)


def test_extract_text_mode_in_process(images, tmp_path, capsys):
    out = tmp_path / "t.safetensors"
    code, stdout, err = call_main(
        argv("extract", images["B"], "--model tiny --resolution", RES, "--device cpu --out", out),
        capsys,
    )
    assert_ok(code, err)
    assert f"wrote {out}" in stdout and "(1, 64, 8, 8)" in stdout
    with safe_open(str(out), framework="pt") as f:
        assert list(f.keys()) == ["us6"]  # the default tap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


@pytest.mark.slow
def test_extract_output_file_mode_follows_umask(console):
    code, _, err = console["extract"].result
    assert_ok(code, err)
    out = console["extract"].out_dir / "f.safetensors"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------
# match
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_match_points_json_and_picture(console, images):
    code, out, err = console["match"].result
    assert_ok(code, err)
    vis = console["match"].out_dir / "vis.png"
    payload = json.loads(out)
    assert_match_payload(payload, 2, ASTRONAUT_HW, CHELSEA_HW)
    assert [m["source"] for m in payload["matches"]] == [[10.0, 20.0], [100.0, 50.0]]
    assert payload["source"] == str(images["A"]) and payload["target"] == str(images["B"])
    assert Path(payload["picture"]) == vis
    img = png_rgb(vis)
    assert img.shape[0] > 0 and img.shape[1] > img.shape[0]  # two pictures side by side
    assert sorted(p.name for p in vis.parent.iterdir()) == ["vis.png"]  # no temp file


def test_match_grid_in_process(images, capsys):
    code, out, err = call_main(
        argv(
            "match", images["A"], images["B"], "--grid 3 --model tiny --resolution", RES, "--json"
        ),
        capsys,
    )
    assert_ok(code, err)
    payload = json.loads(out)
    assert_match_payload(payload, 9, ASTRONAUT_HW, CHELSEA_HW)
    sources = np.array([m["source"] for m in payload["matches"]])
    np.testing.assert_allclose(sources, grid_points(ASTRONAUT_HW, 3))
    assert len({tuple(s) for s in sources.tolist()}) == 9
    assert "picture" not in payload


def test_match_text_mode_in_process(images, tmp_path, capsys):
    vis = tmp_path / "sub" / "v.PNG"  # parent created; the suffix check ignores case
    code, out, err = call_main(
        argv(
            "match",
            images["B"],
            images["A"],
            ["--points", "0,0; 450,299 ;225.5,150"],
            "--model tiny --resolution",
            RES,
            "--out",
            vis,
        ),
        capsys,
    )
    assert_ok(code, err)
    assert out.splitlines()[0].startswith("3 match(es), model tiny, tap us6")
    assert f"wrote {vis}" in out
    png_rgb(vis)
    assert sorted(p.name for p in vis.parent.iterdir()) == ["v.PNG"]


# ---------------------------------------------------------------------------------------------
# demo
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_json(console):
    code, out, err = console["demo"].result
    assert_ok(code, err)
    d = console["demo"].out_dir / "D"
    payload = json.loads(out)
    assert payload["random_weights"] is True
    assert payload["model"] == "tiny" and payload["tap"] == "us6"
    assert 0 < payload["points"] <= 100
    assert 0.0 <= payload["pck_05"] <= payload["pck_10"] <= 1.0
    assert np.isfinite(payload["mean_error_px"]) and payload["mean_error_px"] >= 0
    assert Path(payload["correspondences_png"]) == d / "correspondences.png"
    assert Path(payload["features_png"]) == d / "features_pca.png"
    assert sorted(p.name for p in d.iterdir()) == ["correspondences.png", "features_pca.png"]
    png_rgb(d / "correspondences.png")
    png_rgb(d / "features_pca.png")


def test_demo_text_mentions_random_weights(images, tmp_path, capsys):
    d = tmp_path / "D"
    code, out, err = call_main(
        argv("demo --model tiny --resolution", RES, "--out-dir", d, "--image", images["B"]),
        capsys,
    )
    assert_ok(code, err)
    assert "random" in out.lower() and "PCK@0.10" in out
    assert (d / "correspondences.png").is_file() and (d / "features_pca.png").is_file()


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one `error:` line, no output file, no temp file
# ---------------------------------------------------------------------------------------------

ST, PNG = "{OUT}.safetensors", "{OUT}.png"

# fmt: off
BAD_INPUTS = {
    # extract
    "extract-missing-image": ["extract", "{MISSING}", "--out", ST],
    "extract-missing-second-image": ["extract", "{A}", "{MISSING}", "--out", ST, "--json"],
    "extract-directory-as-image": ["extract", "{DIR}", "--out", ST],
    "extract-corrupt-image": ["extract", "{BAD}", "--resolution", RES, "--out", ST],
    "extract-corrupt-second-image": ["extract", "{A}", "{BAD}", "--resolution", RES,
                                     "--out", ST, "--json"],
    "extract-unknown-tap": ["extract", "{A}", "--taps", "us99", "--resolution", RES,
                            "--out", ST],
    "extract-unknown-tap-in-list": ["extract", "{A}", "--taps", "us6,us99", "--resolution",
                                    RES, "--out", ST, "--json"],
    "extract-empty-taps": ["extract", "{A}", "--taps", ",", "--resolution", RES, "--out", ST],
    "extract-unknown-model": ["extract", "{A}", "--model", "nope", "--out", ST],
    "extract-missing-model-file": ["extract", "{A}", "--model", "{OUT}_unet.safetensors",
                                   "--out", ST],
    "extract-wrong-out-extension": ["extract", "{A}", "--out", "{OUT}.npy"],
    "extract-no-out": ["extract", "{A}"],
    "extract-no-images": ["extract", "--out", ST],
    "extract-unknown-option": ["extract", "{A}", "--out", ST, "--bogus"],
    "extract-resolution-not-multiple-of-64": ["extract", "{A}", "--resolution", "100",
                                              "--out", ST],
    "extract-negative-resolution": ["extract", "{A}", "--resolution", "-64", "--out", ST],
    "extract-resolution-not-int": ["extract", "{A}", "--resolution", "big", "--out", ST],
    "extract-bad-policy": ["extract", "{A}", "--policy", "stretch", "--out", ST],
    "extract-bad-dtype": ["extract", "{A}", "--dtype", "fp8", "--out", ST],
    "extract-bad-device": ["extract", "{A}", "--device", "tpu0", "--resolution", RES,
                           "--out", ST],
    "extract-bad-batch-size": ["extract", "{A}", "--batch-size", "0", "--out", ST],
    # match
    "match-missing-source": ["match", "{MISSING}", "{B}", "--points", "1,1", "--out", PNG],
    "match-corrupt-target": ["match", "{A}", "{BAD}", "--points", "1,1", "--resolution", RES,
                             "--out", PNG, "--json"],
    "match-unknown-tap": ["match", "{A}", "{B}", "--points", "1,1", "--tap", "us99",
                          "--resolution", RES, "--out", PNG],
    "match-unknown-model": ["match", "{A}", "{B}", "--points", "1,1", "--model", "nope",
                            "--out", PNG],
    "match-empty-points-semicolon": ["match", "{A}", "{B}", "--points", ";", "--out", PNG],
    "match-empty-points": ["match", "{A}", "{B}", "--points", "", "--out", PNG, "--json"],
    "match-bad-point-syntax": ["match", "{A}", "{B}", "--points", "1,a", "--out", PNG],
    "match-three-coordinates": ["match", "{A}", "{B}", "--points", "1,2,3", "--out", PNG],
    "match-one-coordinate": ["match", "{A}", "{B}", "--points", "10,20;7", "--out", PNG],
    "match-point-outside-source": ["match", "{A}", "{B}", "--points", "5000,5000",
                                   "--resolution", RES, "--out", PNG],
    "match-point-negative": ["match", "{A}", "{B}", "--points", "10,20;-3,4",
                             "--resolution", RES, "--out", PNG, "--json"],
    "match-point-nan": ["match", "{A}", "{B}", "--points", "nan,4", "--resolution", RES,
                        "--out", PNG],
    "match-neither-points-nor-grid": ["match", "{A}", "{B}", "--out", PNG],
    "match-both-points-and-grid": ["match", "{A}", "{B}", "--points", "1,1", "--grid", "3",
                                   "--out", PNG],
    "match-grid-zero": ["match", "{A}", "{B}", "--grid", "0", "--out", PNG],
    "match-wrong-out-extension": ["match", "{A}", "{B}", "--points", "1,1",
                                  "--out", "{OUT}.jpg"],
    "match-resolution-not-multiple-of-64": ["match", "{A}", "{B}", "--points", "1,1",
                                            "--resolution", "100", "--out", PNG],
    "match-missing-target-argument": ["match", "{A}", "--points", "1,1"],
    "match-unknown-option": ["match", "{A}", "{B}", "--points", "1,1", "--fast"],
    # demo
    "demo-missing-image": ["demo", "--image", "{MISSING}", "--out-dir", "{OUT}"],
    "demo-corrupt-image": ["demo", "--image", "{BAD}", "--resolution", RES,
                           "--out-dir", "{OUT}", "--json"],
    "demo-unknown-tap": ["demo", "--tap", "us99", "--resolution", RES, "--out-dir", "{OUT}"],
    "demo-unknown-model": ["demo", "--model", "nope", "--out-dir", "{OUT}"],
    "demo-resolution-not-multiple-of-64": ["demo", "--resolution", "100",
                                           "--out-dir", "{OUT}"],
    "demo-out-dir-is-a-file": ["demo", "--out-dir", "{A}"],
    # group
    "unknown-command": ["bogus"],
    "info-unknown-option": ["info", "--bogus"],
}
# fmt: on


def _fill(args: list[str], images: dict[str, Path], out_dir: Path) -> list[str]:
    names = {k: str(v) for k, v in images.items()}
    names.update(OUT=str(out_dir / "result"), DIR=str(images["A"].parent))
    return [a.format(**names) for a in args]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_in_process(case, images, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = sorted(p.name for p in images["A"].parent.iterdir())
    code, out, err = call_main(_fill(BAD_INPUTS[case], images, out_dir), capsys)
    assert_user_error(code, out, err)
    assert list(out_dir.iterdir()) == [], "output or temp file left behind"
    assert sorted(p.name for p in images["A"].parent.iterdir()) == before


def test_bad_input_messages(images, tmp_path, capsys):
    """The one line says what is wrong."""
    expect = {
        "extract-missing-image": "missing.png",
        "extract-corrupt-second-image": "bad.png",
        "extract-unknown-tap": "us99",
        "extract-unknown-model": "nope",
        "extract-wrong-out-extension": ".safetensors",
        "extract-resolution-not-multiple-of-64": "64",
        "match-bad-point-syntax": "1,a",
        "match-empty-points": "no points",
        "match-both-points-and-grid": "exactly one",
        "match-wrong-out-extension": ".png",
        "extract-unknown-option": "--bogus",
    }
    for case, needle in expect.items():
        code, out, err = call_main(_fill(BAD_INPUTS[case], images, tmp_path), capsys)
        assert code == 2 and needle in err, (case, err)


@pytest.mark.parametrize("command", ["extract", "match"])
def test_write_failure_leaves_nothing(command, images, tmp_path, capsys, monkeypatch):
    """A failing write (disk full at the final rename) is a one-line error and leaves neither
    the output nor its temporary file."""
    import errno

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    if command == "extract":
        args = argv(
            "extract",
            images["A"],
            "--resolution",
            RES,
            "--device cpu --json --out",
            out_dir / "f.safetensors",
        )
    else:
        args = argv(
            "match",
            images["A"],
            images["B"],
            "--points 1,1 --resolution",
            RES,
            "--json --out",
            out_dir / "v.png",
        )
    monkeypatch.setattr(os, "replace", full)
    code, out, err = call_main(args, capsys)
    assert_user_error(code, out, err)
    assert "cannot write" in err and "No space left" in err
    assert list(out_dir.iterdir()) == []


def test_resolution_zero_is_an_error(images, tmp_path, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, out, err = call_main(
        argv(
            "extract",
            images["A"],
            "--resolution 0 --device cpu --json --out",
            out_dir / "f.safetensors",
        ),
        capsys,
    )
    assert_user_error(code, out, err)
    assert list(out_dir.iterdir()) == []


# Through the real console path: a model-loading failure (the offline hub, which must be a fresh
# process: huggingface_hub reads HF_HUB_OFFLINE at import), a decoding failure after the model is
# loaded, and a click usage error.
SUBPROCESS_BAD = {
    "offline-hub-id": ["extract", "{A}", "--model", "someorg/somemodel", "--out", ST, "--json"],
    "extract-corrupt-second-image": BAD_INPUTS["extract-corrupt-second-image"],
    "extract-unknown-option": BAD_INPUTS["extract-unknown-option"],
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SUBPROCESS_BAD))
def test_bad_input_console(case, console):
    run = console[f"bad:{case}"]
    code, out, err = run.result
    assert_user_error(code, out, err)
    assert list(run.out_dir.iterdir()) == [], "output or temp file left behind"
    assert sorted(p.name for p in run.work.iterdir()) == ["out"]
    if case == "offline-hub-id":
        assert "someorg/somemodel" in err
