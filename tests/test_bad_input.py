"""Every bad input gets a clear answer before any compute (issue 18).

The battery runs each CLI case in-process through the real console runner (``cli.main``) and
asserts: exit status 2, exactly one ``error: ...`` line on stderr, no traceback, no new file
anywhere under the test's folder, an answer in under 2 s, and, where the input alone is wrong,
that no model (and no artifact) was loaded: the loaders are replaced by tripwires that fail the
test if reached. A few cases run as real subprocesses for the console path and start-up time.
Python API cases assert the exception type and that the message names the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cleandift_rt import cli
from cleandift_rt.errors import CleanDIFTError, CleanDIFTWarning, ImageError, MatchError

REPO = Path(__file__).resolve().parents[1]
MAX_SECONDS = 2.0


class ModelLoaded(BaseException):
    """Raised by the tripwires: a model or artifact load was reached (BaseException, so no
    handler of the runtime turns it into a clean error)."""


@pytest.fixture
def tripwires(monkeypatch):
    """Fail the test if any model or artifact starts to load."""
    import cleandift_rt.models.loading as loading
    import cleandift_rt.runtime as runtime

    def trip(*args, **kwargs):
        raise ModelLoaded(f"a model/artifact load was reached with {args[:1]}")

    monkeypatch.setattr(loading, "_load", trip)
    monkeypatch.setattr(runtime, "load_runner", trip)


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Inputs in a folder of their own; the test's cwd is a clean folder beside it."""
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(d / "ok.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(d / "tiny.png")
    (d / "text.png").write_text("not an image")
    (d / "weights.bin").write_bytes(b"\0" * 16)
    (d / "afile").write_text("x")
    (d / "folder").mkdir()
    (d / "points.json").write_text('{"points": "1,2"}')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    names = {p.stem.replace(".", "_"): str(p) for p in d.iterdir()}
    names.update(OUT=str(work / "out"), MISSING=str(d / "missing.png"))
    return names


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_main(args: list[str], capsys) -> tuple[int, str, str, float]:
    capsys.readouterr()
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code), out, err, seconds


def assert_one_error(code: int, out: str, err: str, expect: str) -> str:
    assert code == 2, f"exit {code}, stderr: {err!r}"
    assert "Traceback" not in err + out
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(err.splitlines()) == 1, f"stderr: {err!r}"
    assert expect.lower() in errors[0].lower(), f"{expect!r} not in {errors[0]!r}"
    return errors[0]


ST = "{OUT}.safetensors"
# (id, args, text the error line must contain, modules made unimportable)
# fmt: off
CLI_CASES = [
    # info
    ("info-unknown-option", ["info", "--bogus"], "no such option", ()),
    ("info-extra-argument", ["info", "extra"], "unexpected extra argument", ()),
    # extract: silent garbage and late failures from the issue
    ("extract-timestep-nan", ["extract", "{ok}", "--out", ST, "--timestep", "nan"], "finite", ()),
    ("extract-timestep-negative", ["extract", "{ok}", "--out", ST, "--timestep", "-5"],
     "[0, 999]", ()),
    ("extract-timestep-1000", ["extract", "{ok}", "--out", ST, "--timestep", "1000"], "999", ()),
    ("extract-timestep-inf", ["extract", "{ok}", "--out", ST, "--timestep", "inf"], "finite", ()),
    ("extract-base-nosuch", ["extract", "{ok}", "--out", ST, "--base", "nosuch"], "--base", ()),
    ("extract-base-path-missing", ["extract", "{ok}", "--out", ST, "--base", "./nosuch"],
     "does not exist", ()),
    ("extract-out-under-a-file", ["extract", "{ok}", "--out", "/proc/version/art.safetensors"],
     "is a file, not a folder", ()),
    ("extract-out-under-my-file", ["extract", "{ok}", "--out", "{afile}/x.safetensors"],
     "not a folder", ()),
    ("extract-out-unknown-suffix", ["extract", "{ok}", "--out", "{folder}/feats.npy"],
     ".safetensors", ()),
    ("extract-out-read-only", ["extract", "{ok}", "--out", "/sys/x.safetensors"], "/sys", ()),
    ("extract-one-pixel-image", ["extract", "{tiny}", "--out", ST], "too small", ()),
    ("extract-not-an-image", ["extract", "{text}", "--out", ST], "cannot decode", ()),
    ("extract-missing-image", ["extract", "{MISSING}", "--out", ST], "no such file", ()),
    ("extract-folder-as-image", ["extract", "{folder}", "--out", ST], "directory", ()),
    ("extract-unknown-model", ["extract", "{ok}", "--out", ST, "--model", "nosuch"],
     "unknown --model", ()),
    ("extract-model-pickle", ["extract", "{ok}", "--out", ST, "--model", "{weights}"],
     ".safetensors", ()),
    ("extract-missing-model-file", ["extract", "{ok}", "--out", ST, "--model", "x.safetensors"],
     "does not exist", ()),
    ("extract-random-arch", ["extract", "{ok}", "--out", ST, "--model", "random:sd99"],
     "random:sd21", ()),
    ("extract-unknown-tap", ["extract", "{ok}", "--out", ST, "--taps", "us13"], "us13", ()),
    ("extract-empty-taps", ["extract", "{ok}", "--out", ST, "--taps", ","], "empty", ()),
    ("extract-resolution-100", ["extract", "{ok}", "--out", ST, "--resolution", "100"],
     "multiple of 64", ()),
    ("extract-resolution-zero", ["extract", "{ok}", "--out", ST, "--resolution", "0"],
     "positive", ()),
    ("extract-device-typo", ["extract", "{ok}", "--out", ST, "--device", "gpu"], "gpu", ()),
    ("extract-dtype-fp8", ["extract", "{ok}", "--out", ST, "--dtype", "fp8"], "fp8", ()),
    # fusion (issue 17): --fuse, --tap-weights, --fusion-alpha, <sd>+<dinov2> names
    ("extract-fuse-one-tap", ["extract", "{ok}", "--out", ST, "--fuse", "concat"],
     "two or more taps", ()),
    ("extract-fuse-unknown", ["extract", "{ok}", "--out", ST, "--taps", "us6,us9", "--fuse",
                              "mean"], "unknown --fuse", ()),
    ("extract-fuse-pca-0", ["extract", "{ok}", "--out", ST, "--taps", "us6,us9", "--fuse",
                            "pca:0"], "pca:D", ()),
    ("extract-fuse-pca-text", ["extract", "{ok}", "--out", ST, "--taps", "us6,us9", "--fuse",
                               "pca:many"], "integer >= 1", ()),
    ("extract-tap-weights-count", ["extract", "{ok}", "--out", ST, "--taps", "us3,us6,us9",
                                   "--fuse", "concat", "--tap-weights", "1,1"], "one per tap", ()),
    ("extract-tap-weights-nan", ["extract", "{ok}", "--out", ST, "--taps", "us6,us9", "--fuse",
                                 "concat", "--tap-weights", "1,nan"], "finite", ()),
    ("extract-tap-weights-inf", ["extract", "{ok}", "--out", ST, "--taps", "us6,us9", "--fuse",
                                 "concat", "--tap-weights", "inf,1"], "finite", ()),
    ("extract-tap-weights-negative", ["extract", "{ok}", "--out", ST, "--taps", "us6,us9",
                                      "--fuse", "concat", "--tap-weights", "1,-0.5"], ">= 0", ()),
    ("extract-tap-weights-without-fuse", ["extract", "{ok}", "--out", ST, "--taps", "us6,us9",
                                          "--tap-weights", "1,1"], "--fuse concat", ()),
    ("extract-alpha-without-dino", ["extract", "{ok}", "--out", ST, "--fusion-alpha", "0.5"],
     "DINOv2", ()),
    ("extract-alpha-above-1", ["extract", "{ok}", "--out", ST, "--model", "tiny+dinov2-tiny",
                               "--fusion-alpha", "1.5"], "[0, 1]", ()),
    ("extract-alpha-negative", ["extract", "{ok}", "--out", ST, "--model", "toy+dinov2-tiny",
                                "--fusion-alpha", "-0.1"], "[0, 1]", ()),
    ("extract-alpha-nan", ["extract", "{ok}", "--out", ST, "--model", "tiny+dinov2-tiny",
                           "--fusion-alpha", "nan"], "[0, 1]", ()),
    ("extract-unknown-dino", ["extract", "{ok}", "--out", ST, "--model", "tiny+dinov3"],
     "unknown DINOv2", ()),
    ("extract-unknown-sd-of-dino", ["extract", "{ok}", "--out", ST, "--model",
                                    "nosuch+dinov2-b"], "unknown --model", ()),
    ("extract-dino-without-transformers", ["extract", "{ok}", "--out", ST, "--model",
                                           "sd21+dinov2-b"], "cleandift-rt[dino]",
     ("transformers",)),
    ("extract-dino-several-taps", ["extract", "{ok}", "--out", ST, "--model", "tiny+dinov2-tiny",
                                   "--taps", "us6,us9"], "--fuse concat", ()),
    ("match-fuse-one-tap", ["match", "{ok}", "{ok}", "--grid", "2", "--fuse", "pca:8"],
     "two or more taps", ()),
    ("match-fuse-weights-count", ["match", "{ok}", "{ok}", "--grid", "2", "--taps", "us6,us9",
                                  "--fuse", "concat", "--tap-weights", "1,2,3"], "one per tap",
     ()),
    ("match-alpha-above-1", ["match", "{ok}", "{ok}", "--grid", "2", "--model",
                             "sd21+dinov2-b", "--fusion-alpha", "2"], "[0, 1]", ()),
    ("export-fuse-pca", ["export", "--taps", "us6,us9", "--fuse", "pca:8", "--out", "{OUT}"],
     "after the graph", ()),
    ("export-fuse-one-tap", ["export", "--fuse", "concat", "--out", "{OUT}"],
     "two or more taps", ()),
    ("export-tap-weights-negative", ["export", "--taps", "us6,us9", "--fuse", "concat",
                                     "--tap-weights", "-1,1", "--out", "{OUT}"], ">= 0", ()),
    ("export-alpha-above-1", ["export", "--model", "tiny+dinov2-tiny", "--fusion-alpha", "1.01",
                              "--out", "{OUT}"], "[0, 1]", ()),
    ("eval-homography-dift-fused", ["eval", "homography", "--dift", "--tap", "us6,us9",
                                    "--fuse", "concat"], "DIFT baseline", ()),
    ("eval-homography-fuse-unknown", ["eval", "homography", "--tap", "us6,us9", "--fuse", "sum"],
     "unknown --fuse", ()),
    ("track-fuse-pca", ["track", "--source", "{folder}", "--grid", "2", "--taps", "us6,us9",
                        "--fuse", "pca:4"], "concat", ()),
    # match
    ("match-several-taps", ["match", "{ok}", "{ok}", "--grid", "2", "--tap", "us6,us9"],
     "one tap", ()),
    ("match-unknown-tap", ["match", "{ok}", "{ok}", "--grid", "2", "--tap", "us99"], "us99", ()),
    ("match-timestep-nan", ["match", "{ok}", "{ok}", "--grid", "2", "--timestep", "nan"],
     "finite", ()),
    ("match-base-nosuch", ["match", "{ok}", "{ok}", "--grid", "2", "--base", "nosuch"],
     "--base", ()),
    ("match-out-under-a-file", ["match", "{ok}", "{ok}", "--grid", "2", "--out",
                                "/proc/version/x.png"], "not a folder", ()),
    ("match-out-wrong-suffix", ["match", "{ok}", "{ok}", "--grid", "2", "--out", "{OUT}.jpg"],
     ".png", ()),
    ("match-one-pixel-source", ["match", "{tiny}", "{ok}", "--grid", "2"], "too small", ()),
    ("match-not-an-image", ["match", "{ok}", "{text}", "--grid", "2"], "cannot decode", ()),
    ("match-points-and-grid", ["match", "{ok}", "{ok}", "--grid", "2", "--points", "1,1"],
     "exactly one", ()),
    ("match-point-outside", ["match", "{ok}", "{ok}", "--points", "100,1"], "outside", ()),
    ("match-bad-points", ["match", "{ok}", "{ok}", "--points", "1;2"], "bad point", ()),
    # export
    ("export-onnx-missing", ["export", "--out", "{OUT}"], 'cleandift-rt[onnx]', ("onnx",)),
    ("export-onnxruntime-missing", ["export", "--out", "{OUT}"], "onnxruntime",
     ("onnxruntime",)),
    ("export-out-under-a-file", ["export", "--out", "/proc/version/art"], "not a folder", ()),
    ("export-out-is-a-file", ["export", "--out", "{afile}"], "is a file", ()),
    ("export-engine-on-cpu", ["export", "--format", "engine", "--device", "cpu", "--out",
                              "{OUT}"], "cleandift-rt[trt]", ("tensorrt",)),
    ("export-engine-cpu-names-device", ["export", "--format", "engine", "--device", "cpu",
                                        "--out", "{OUT}"], "CUDA GPU", ()),
    ("export-bf16-onnx-cpu", ["export", "--precision", "bf16", "--device", "cpu", "--out",
                              "{OUT}"], "bf16", ()),
    ("export-height-100", ["export", "--height", "100", "--out", "{OUT}"], "multiples of 64",
     ()),
    ("export-resolution-100", ["export", "--resolution", "100", "--out", "{OUT}"], "64", ()),
    ("export-max-batch-small", ["export", "--batch", "4", "--max-batch", "2", "--out", "{OUT}"],
     "--max-batch", ()),
    ("export-unknown-tap", ["export", "--taps", "us6,us99", "--out", "{OUT}"], "us99", ()),
    ("export-unknown-model", ["export", "--model", "nosuch", "--out", "{OUT}"], "nosuch", ()),
    ("export-base-nosuch", ["export", "--base", "nosuch", "--out", "{OUT}"], "--base", ()),
    ("export-timing-cache-under-file", ["export", "--timing-cache", "{afile}/c.cache",
                                        "--out", "{OUT}"], "--timing-cache", ()),
    ("export-unknown-format", ["export", "--format", "tflite", "--out", "{OUT}"], "tflite", ()),
    ("export-device-typo", ["export", "--device", "cuda0", "--out", "{OUT}"], "cuda0", ()),
    # bench
    ("bench-onnx-missing", ["bench", "--backends", "onnx"], 'cleandift-rt[onnx]', ("onnx",)),
    ("bench-onnxruntime-missing", ["bench", "--backends", "torch,onnx-fp32"], "onnxruntime",
     ("onnxruntime",)),
    ("bench-trt-missing", ["bench", "--backends", "trt", "--device", "cpu"],
     'cleandift-rt[trt]', ("tensorrt",)),
    ("bench-onnx-bf16-cpu", ["bench", "--backends", "onnx-bf16", "--device", "cpu"], "bf16", ()),
    ("bench-resolution-100", ["bench", "--resolutions", "100"], "multiples of 64", ()),
    ("bench-resolutions-text", ["bench", "--resolutions", "big"], "--resolutions", ()),
    ("bench-out-suffix", ["bench", "--out", "{OUT}.txt"], ".json", ()),
    ("bench-plot-under-file", ["bench", "--plot", "{afile}/p.png"], "--plot", ()),
    ("bench-artifacts-is-file", ["bench", "--artifacts", "{afile}"], "--artifacts", ()),
    ("bench-unknown-model", ["bench", "--model", "nosuch"], "nosuch", ()),
    ("bench-unknown-tap", ["bench", "--taps", "mid,us42"], "us42", ()),
    ("bench-device-typo", ["bench", "--device", "gpu0"], "gpu0", ()),
    # eval
    ("eval-homography-several-taps", ["eval", "homography", "--tap", "us6,us9"], "one tap", ()),
    ("eval-homography-timestep-nan", ["eval", "homography", "--timestep", "nan"], "finite", ()),
    ("eval-homography-out-suffix", ["eval", "homography", "--out", "{OUT}.txt"], ".json", ()),
    ("eval-homography-out-under-file", ["eval", "homography", "--out", "{afile}/r.json"],
     "not a folder", ()),
    ("eval-homography-images-file", ["eval", "homography", "--images", "{afile}"], "is a file",
     ()),
    ("eval-homography-unknown-photo", ["eval", "homography", "--photos", "nosuch"], "nosuch",
     ()),
    ("eval-homography-thresholds", ["eval", "homography", "--thresholds", "2"], "(0, 1]", ()),
    ("eval-homography-artifact-and-dift", ["eval", "homography", "--artifact", "{afile}",
                                           "--dift"], "exclude", ()),
    ("eval-homography-base-nosuch", ["eval", "homography", "--base", "nosuch"], "--base", ()),
    ("eval-spair-missing-root", ["eval", "spair", "--root", "{OUT}"], "{OUT}", ()),
    ("eval-spair-alpha-zero", ["eval", "spair", "--root", "{folder}", "--alpha", "0"],
     "--alpha", ()),
    # eval: the matching options `match` has, answered as `match` answers them
    ("eval-spair-refine-unknown", ["eval", "spair", "--root", "{folder}", "--refine", "cubic"],
     "--refine must be one of none, softargmax, quadratic", ()),
    ("eval-spair-refine-before-root", ["eval", "spair", "--root", "{OUT}", "--flip-align",
                                       "--refine-window", "0"], "--refine-window", ()),
    ("eval-spair-refine-temperature-zero", ["eval", "spair", "--root", "{folder}",
                                            "--refine", "softargmax", "--refine-temperature",
                                            "0"], "--refine-temperature must be a number > 0",
     ()),
    ("eval-homography-refine-window-text", ["eval", "homography", "--refine-window", "two"],
     "--refine-window must be an integer >= 1", ()),
    ("eval-homography-refine-temperature-nan", ["eval", "homography", "--flip-align",
                                                "--refine-temperature", "nan"],
     "--refine-temperature must be a number > 0", ()),
    ("eval-homography-refine-unknown", ["eval", "homography", "--flip-align", "--refine",
                                        "Quadratic"], "--refine must be one of", ()),
    # track
    ("track-missing-source", ["track", "--source", "nosuch.mp4", "--grid", "2"], "nosuch", ()),
    ("track-no-points", ["track", "--source", "{folder}"], "exactly one", ()),
    ("track-several-taps", ["track", "--source", "{folder}", "--grid", "2", "--tap", "us6,us9"],
     "one tap", ()),
    ("track-timestep-negative", ["track", "--source", "{folder}", "--grid", "2", "--timestep",
                                 "-5"], "[0, 999]", ()),
    ("track-out-suffix", ["track", "--source", "{folder}", "--grid", "2", "--out", "{OUT}.txt"],
     ".mp4", ()),
    ("track-out-under-a-file", ["track", "--source", "{folder}", "--grid", "2", "--out",
                                "/proc/version/v.mp4"], "not a folder", ()),
    ("track-tracks-under-file", ["track", "--source", "{folder}", "--grid", "2", "--tracks",
                                 "{afile}/t.jsonl"], "--tracks", ()),
    ("track-points-file-string", ["track", "--source", "{folder}", "--points-file", "{points}"],
     "must hold", ()),
    ("track-missing-artifact", ["track", "--source", "{folder}", "--grid", "2", "--artifact",
                                "{OUT}.onnx"], "--artifact", ()),
    ("track-missing-reference", ["track", "--source", "{folder}", "--grid", "2",
                                 "--reference", "{MISSING}"], "no such file", ()),
    ("track-base-nosuch", ["track", "--source", "{folder}", "--grid", "2", "--base", "nosuch"],
     "--base", ()),
    # demo
    ("demo-several-taps", ["demo", "--tap", "us6,us9", "--out-dir", "{OUT}"], "one tap", ()),
    ("demo-out-dir-under-file", ["demo", "--out-dir", "/proc/version/d"], "not a folder", ()),
    ("demo-out-dir-is-file", ["demo", "--out-dir", "{afile}"], "is a file", ()),
    ("demo-one-pixel-image", ["demo", "--image", "{tiny}", "--out-dir", "{OUT}"], "too small",
     ()),
    ("demo-missing-image", ["demo", "--image", "{MISSING}", "--out-dir", "{OUT}"],
     "no such file", ()),
    ("demo-unknown-model", ["demo", "--model", "nosuch", "--out-dir", "{OUT}"], "nosuch", ()),
    ("demo-resolution-100", ["demo", "--resolution", "100", "--out-dir", "{OUT}"], "64", ()),
    ("demo-device-typo", ["demo", "--device", "gpu", "--out-dir", "{OUT}"], "gpu", ()),
]
# fmt: on


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, files, tripwires, tmp_path, capsys, monkeypatch):
    _, args, expect, blocked = case
    for module in blocked:  # `import module` fails as on an install without the extra
        monkeypatch.setitem(sys.modules, module, None)
    before = snapshot(tmp_path)
    code, out, err, seconds = run_main([a.format(**files) for a in args], capsys)
    assert_one_error(code, out, err, expect.format(**files))
    assert snapshot(tmp_path) == before, "a file or folder was left behind"
    assert seconds < MAX_SECONDS, f"answered after {seconds:.2f} s"


def test_battery_size():
    """The issue asks for at least 60 cases across every command and the Python API."""
    commands = {c[1][0] for c in CLI_CASES}
    assert commands == {"info", "extract", "match", "export", "bench", "eval", "track", "demo"}
    assert len(CLI_CASES) + len(API_CASES) >= 60


# ------------------------------------------------------------------------------ subprocesses


def console(
    args: list[str], tmp_path: Path, preamble: str = "", timeout: float = 120
) -> subprocess.CompletedProcess:
    """``python -m cleandift_rt.cli ARGS`` with ``preamble`` run first (a sitecustomize)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    if preamble:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(textwrap.dedent(preamble))
        env["PYTHONPATH"] = f"{site}{os.pathsep}{REPO}"
    return subprocess.run(
        [sys.executable, "-m", "cleandift_rt.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )


def test_console_answers_argument_errors_without_heavy_imports(tmp_path):
    """The real console path: a missing image answers in one line, and neither torch nor
    diffusers is imported on the way (they cost seconds before the first check)."""
    probe = """
        import atexit, sys
        atexit.register(lambda: sys.stderr.write(
            "heavy:" + ",".join(m for m in ("torch", "diffusers") if m in sys.modules) + "\\n"))
    """
    start = time.perf_counter()
    done = console(["extract", "nosuch.png", "--out", "x.safetensors"], tmp_path, probe)
    seconds = time.perf_counter() - start
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[0] == "error: cannot read image 'nosuch.png': no such file"
    assert lines[1] == "heavy:", f"imported before the first check: {lines[1]}"
    assert seconds < 10, seconds  # a whole interpreter start; about 0.3 s on an idle machine


def test_console_export_onnx_without_onnx(tmp_path):
    """The core install (no onnx): one line naming the extra, not ModuleNotFoundError."""
    block = "import sys\nsys.modules['onnx'] = None\n"
    done = console(["export", "--format", "onnx", "--out", "art"], tmp_path, block)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        'error: ONNX export needs onnx, which is not installed: pip install "cleandift-rt[onnx]"'
    ]
    assert not (tmp_path / "art").exists()


def test_console_bench_onnx_without_onnx(tmp_path):
    block = "import sys\nsys.modules['onnx'] = None\nsys.modules['onnxruntime'] = None\n"
    done = console(["bench", "--backends", "torch,onnx"], tmp_path, block)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        'error: ONNX export needs onnx, which is not installed: pip install "cleandift-rt[onnx]"'
    ]


# --------------------------------------------------------------------------------- Python API


def _nan_timestep():
    from cleandift_rt import FeatureExtractor

    FeatureExtractor.from_pretrained("tiny", timestep=float("nan"))


def _negative_timestep():
    from cleandift_rt import FeatureExtractor

    FeatureExtractor.from_pretrained("tiny", timestep=-5)


def _timestep_text():
    from cleandift_rt import FeatureExtractor

    FeatureExtractor.from_pretrained("tiny", timestep="soon")


def _load_model_timestep():
    from cleandift_rt.models import load_model

    load_model("tiny", timestep=1e4)


def _base_nosuch():
    from cleandift_rt.models import load_model

    load_model("tiny", base="nosuch")


def _unknown_tap():
    from cleandift_rt import FeatureExtractor

    FeatureExtractor.from_pretrained("tiny", taps=("us6", "us13"))


def _float_0_255():
    from cleandift_rt import load_image

    load_image(np.full((16, 16, 3), 200.0, np.float32))


def _float_negative():
    from cleandift_rt import load_image

    load_image(np.full((16, 16, 3), -0.2, np.float32))


def _float_tensor_0_255():
    from cleandift_rt import load_image

    load_image(torch.full((3, 16, 16), 128.0))


def _one_pixel_prepare():
    from cleandift_rt import prepare_image

    prepare_image(np.zeros((1, 1, 3), np.uint8), 64)


def _thin_fit_prepare():
    from cleandift_rt import prepare_image

    prepare_image(np.zeros((8, 3000, 3), np.uint8), 256, "fit")


def _transform_dict():
    from cleandift_rt import ImageTransform

    ImageTransform.from_dict({"original_size": [2, 2], "input_size": [64, 64], "scale_yx": [0, 1]})


# (id, call, exception type, text in its message); all answer before a model loads
API_CASES = [
    ("from-pretrained-timestep-nan", _nan_timestep, CleanDIFTError, "finite"),
    ("from-pretrained-timestep-negative", _negative_timestep, CleanDIFTError, "[0, 999]"),
    ("from-pretrained-timestep-text", _timestep_text, CleanDIFTError, "soon"),
    ("load-model-timestep-too-large", _load_model_timestep, CleanDIFTError, "999"),
    ("from-pretrained-unknown-tap", _unknown_tap, CleanDIFTError, "us13"),
    ("load-model-base-nosuch", _base_nosuch, CleanDIFTError, "--base 'nosuch' does not exist"),
    ("load-image-float-0-255", _float_0_255, ImageError, "divide by 255"),
    ("load-image-float-negative", _float_negative, ImageError, "[0, 1]"),
    ("load-image-float-tensor-0-255", _float_tensor_0_255, ImageError, "divide by 255"),
    ("prepare-one-pixel", _one_pixel_prepare, ImageError, "too small"),
    ("prepare-fit-thin-strip", _thin_fit_prepare, CleanDIFTError, "less than one"),
    ("transform-zero-scale", _transform_dict, CleanDIFTError, "scale"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, tripwires):
    _, call, kind, expect = case
    start = time.perf_counter()
    with pytest.raises(kind) as info:
        call()
    assert expect in str(info.value) and "\n" not in str(info.value)
    assert time.perf_counter() - start < MAX_SECONDS


@pytest.fixture(scope="module")
def fx():
    from cleandift_rt import FeatureExtractor

    return FeatureExtractor.from_pretrained("tiny", taps=("us6", "mid"), resolution=64)


def test_extractor_refuses_empty_and_string_points(fx):
    with pytest.raises(ImageError, match="no images"):
        fx([])
    image = np.full((64, 64, 3), 90, np.uint8)
    with pytest.raises(MatchError, match="not the string '1,2'"):
        fx.match(image, image, "1,2")
    with pytest.raises(MatchError, match=r"\(N, 2\)"):
        fx.match(image, image, [{"x": 1}])
    with pytest.raises(ImageError, match="divide by 255"):
        fx(np.full((64, 64, 3), 90.0, np.float32))


def test_extractor_warns_what_a_stretched_image_became(fx):
    strip = np.full((10, 600, 3), 90, np.uint8)
    with pytest.warns(CleanDIFTWarning, match=r"600x10 px.*64x64: x0\.107 horizontally, x6\.4"):
        (prepared,) = fx.prepare(strip)
    assert prepared.array.shape == (64, 64, 3)  # it still runs: a warning, not a refusal
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an ordinary photo resizes without a word
        fx.prepare(np.full((48, 64, 3), 90, np.uint8))


def test_features_is_a_mapping_with_a_short_repr(fx):
    feats = fx([np.full((64, 64, 3), 90, np.uint8)] * 2)
    assert list(feats.keys()) == ["us6", "mid"] == list(feats)
    assert "us6" in feats and "us9" not in feats
    assert [v.shape for v in feats.values()] == [feats["us6"].shape, feats["mid"].shape]
    assert dict(feats.items()) == feats.maps
    assert len(feats) == 2  # images
    text = repr(feats)
    assert (
        text
        == "Features(2 image(s) on cpu; us6: (2, 64, 4, 4) float32, mid: (2, 64, 1, 1) float32)"
    )
    with pytest.raises(CleanDIFTError, match="us9"):
        feats["us9"]


# ------------------------------------------------------------------ artifact sidecar vs graph


def write_onnx_artifact(folder: Path, **sidecar) -> Path:
    """A small real ONNX graph with the artifact interface (uint8 (1, 64, 64, 3) → us6 float32
    (1, 8, 4, 4): cast, NHWC → NCHW, a stride-16 convolution) and a sidecar (fields overridden
    by ``sidecar``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cleandift_rt import __version__
    from cleandift_rt.artifacts import ArtifactMetadata, TapOutput, write_sidecar

    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Transpose", ["f"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["t", "w"], ["us6"], kernel_shape=[16, 16], strides=[16, 16]),
        ],
        "featurenet",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 64, 64, 3])],
        [helper.make_tensor_value_info("us6", TensorProto.FLOAT, [1, 8, 4, 4])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "tiny-us6-64x64-b1-fp32.onnx"
    onnx.save(model, str(path))
    fields = dict(
        format="onnx", artifact=path.name, model="tiny", weights_sha256="0" * 64,
        timestep=261.0, taps=[TapOutput("us6", 8, 16)], height=64, width=64, batch=(1, 1),
        precision="fp32", producer={"cleandift_rt": __version__, "torch": torch.__version__},
        rebuild="cleandift-rt export --model tiny --resolution 64 --precision fp32",
    )  # fmt: skip
    fields.update(sidecar)
    write_sidecar(path, ArtifactMetadata(**fields))
    return path


def test_onnx_artifact_matching_its_sidecar_loads(tmp_path):
    pytest.importorskip("onnxruntime")
    from cleandift_rt.runtime import load_runtime

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fx = load_runtime(write_onnx_artifact(tmp_path), device="cpu")
    out = fx.runner(np.zeros((1, 64, 64, 3), np.uint8))
    assert out["us6"].shape == (1, 8, 4, 4)


@pytest.mark.parametrize(
    "sidecar, expect",
    [
        ({"height": 320}, "input height is 64 in the graph, 320 in the sidecar"),
        ({"width": 128}, "input width is 64 in the graph, 128"),
        ({"batch": (2, 2)}, "input batch is 1 in the graph, 2"),
        ({"precision": "fp16"}, "output us6 is tensor(float), the sidecar says fp16"),
        ({"taps": [{"name": "us6", "channels": 16, "stride": 16}]}, "output us6 channels is 8"),
        ({"taps": [{"name": "us9", "channels": 8, "stride": 16}]}, "graph outputs us6"),
        ({"input_name": "pixels"}, "sidecar input 'pixels'"),
    ],
    ids=["height", "width", "batch", "dtype", "channels", "tap-name", "input-name"],
)
def test_onnx_sidecar_disagreeing_with_its_graph_is_refused(tmp_path, sidecar, expect, capsys):
    """An edited sidecar: one line at load naming the mismatch and the rebuild command, also
    through the CLI (exit 2), instead of an onnxruntime INVALID_ARGUMENT at the first run."""
    pytest.importorskip("onnxruntime")
    from cleandift_rt.artifacts import ArtifactError, TapOutput
    from cleandift_rt.runtime import load_runtime

    if "taps" in sidecar:
        sidecar = {"taps": [TapOutput(**t) for t in sidecar["taps"]]}
    path = write_onnx_artifact(tmp_path, **sidecar)
    with pytest.raises(ArtifactError) as info:
        load_runtime(path, device="cpu")
    message = str(info.value)
    assert expect in message and "rebuild: cleandift-rt export" in message
    code, out, err, _ = run_main(
        ["eval", "homography", "--artifact", str(path), "--device", "cpu"], capsys
    )
    assert_one_error(code, out, err, expect)


def test_onnx_sidecar_with_other_producer_versions_warns(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from cleandift_rt.runtime import load_runtime

    path = write_onnx_artifact(tmp_path, producer={"torch": "1.0.0", "cleandift_rt": "0.0.1"})
    with pytest.warns(CleanDIFTWarning, match=r"exported by cleandift_rt 0\.0\.1, torch 1\.0\.0"):
        load_runtime(path, device="cpu")


def test_bf16_onnx_is_refused_on_the_cpu_before_onnxruntime_sees_it(tmp_path):
    pytest.importorskip("onnxruntime")
    from cleandift_rt.artifacts import ArtifactError
    from cleandift_rt.runtime import load_runtime

    path = write_onnx_artifact(tmp_path, precision="bf16")
    with pytest.raises(ArtifactError, match="bf16 graph.*CPU provider"):
        load_runtime(path, device="cpu")


def test_tensorrt_and_aoti_refuse_other_producer_versions():
    """Where versions matter the sidecar's producer is a refusal with the rebuild command:
    a TensorRT engine built by another TensorRT (pure check, no GPU needed) and an AOTInductor
    package compiled by another torch (checked before the package is opened)."""
    from cleandift_rt.artifacts import ArtifactError, ArtifactMetadata, TapOutput
    from cleandift_rt.backends.aoti_runner import AOTIRunner
    from cleandift_rt.backends.tensorrt_runner import mismatch_reason

    meta = ArtifactMetadata(
        format="engine", artifact="a.engine", model="tiny", weights_sha256="0", timestep=261.0,
        taps=[TapOutput("us6", 8, 16)], height=64, width=64, batch=(1, 1), precision="fp16",
        producer={"tensorrt": "10.0.1"}, target={"gpu": "H200", "compute_capability": "9.0"},
        rebuild="cleandift-rt export --format engine",
    )  # fmt: skip
    reason = mismatch_reason(meta, "10.13.0", "H200", (9, 0))
    assert reason and "10.0.1" in reason and reason.endswith("cleandift-rt export --format engine")
    meta.format, meta.producer = "aoti", {"torch": "1.0.0"}
    with pytest.raises(ArtifactError, match=r"compiled with torch 1\.0\.0.*rebuild: cleandift"):
        AOTIRunner("a.pt2", meta, torch.device("cpu"))


def test_aoti_package_metadata_disagreeing_with_its_sidecar_is_refused(fx):
    """The metadata compiled into an AOTInductor package (as export writes it) is compared
    with the sidecar before the package's library is loaded."""
    from cleandift_rt.artifacts import ArtifactError, ArtifactMetadata, TapOutput
    from cleandift_rt.backends.aoti_runner import check_package_metadata
    from export.aoti_export import package_metadata

    net = fx.runner.net
    package = package_metadata(net, 64, 64, (1, 4))
    meta = ArtifactMetadata(
        format="aoti", artifact="a.pt2", model="tiny", weights_sha256="0", timestep=261.0,
        taps=[TapOutput(t, net.channels[t], net.strides[t]) for t in net.taps], height=64,
        width=64, batch=(1, 4), precision="fp32", rebuild="cleandift-rt export --format aoti",
    )  # fmt: skip
    check_package_metadata(package, meta, "a.pt2")  # the exporter's metadata fits its sidecar
    edits = {"height": 320, "batch": (1, 8), "precision": "fp16"}
    for field, value in edits.items():
        edited = ArtifactMetadata(**{**meta.__dict__, field: value})
        with pytest.raises(ArtifactError, match=r"does not match a\.pt2\.json.*rebuild: "):
            check_package_metadata(package, edited, "a.pt2")


# --------------------------------------------------------------------- consistency details


def test_info_lists_aoti(capsys):
    code, out, err, _ = run_main(["info", "--json"], capsys)
    assert code == 0, err
    backends = json.loads(out)["backends"]
    assert set(backends) >= {"torch", "onnx", "engine", "aoti", "triton"}  # the registry names


def test_missing_output_folder_is_created_with_one_line(files, capsys, tmp_path):
    out = tmp_path / "new" / "deeper" / "f.safetensors"
    code, stdout, err, _ = run_main(
        ["extract", files["ok"], "--model", "tiny", "--resolution", "64", "--out", str(out)],
        capsys,
    )
    assert code == 0, err
    assert f"created folder {out.parent}" in err.splitlines()
    assert out.is_file()


def test_demo_and_homography_photos_need_no_scikit_image(monkeypatch):
    """The core install has no scikit-image: the default photos are bundled (and identical
    to scikit-image's); other names say which extra brings them."""
    from cleandift_rt.evaluation.homography import DEFAULT_PHOTOS, load_photos
    from cleandift_rt.photos import sample_photo

    skimage = pytest.importorskip("skimage.data")
    expected = {name: getattr(skimage, name)() for name in DEFAULT_PHOTOS}
    monkeypatch.setitem(sys.modules, "skimage", None)
    for name, image in load_photos(DEFAULT_PHOTOS):
        np.testing.assert_array_equal(image, expected[name])
    with pytest.raises(CleanDIFTError, match=r"cleandift-rt\[demo\]"):
        sample_photo("camera")


NOT_CORE = ("skimage", "onnx", "onnxruntime", "triton", "transformers", "tensorrt", "ray")


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--model", "tiny", "--resolution", "64", "--out-dir", "demo", "--json"],
        ["eval", "homography", "--model", "tiny", "--resolution", "64", "--pairs-per-image",
         "1", "--grid", "3", "--json"],
    ],
    ids=["demo", "eval-homography"],
)  # fmt: skip
def test_core_install_runs_demo_and_eval_homography(args, tmp_path):
    """`pip install -e .` has none of the extras: with every non-core package unimportable,
    the demo and the homography benchmark run on the bundled photos."""
    block = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in NOT_CORE)
    done = console(args, tmp_path, block, timeout=900)  # a model run on a shared CPU
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    if args[0] == "demo":
        assert (tmp_path / payload["correspondences_png"]).is_file()
        assert "created folder demo" in done.stderr.splitlines()
    else:  # the four bundled photos, one warp each
        assert sorted(payload["groups"]) == ["astronaut", "chelsea", "coffee", "rocket"]
