"""The GPU suite's pure parts (benchmarks/gpu_report.py, gpu_wheels.py, gpu_suite.py's CLI): the
report schema covers every target, targets are judged from the stage rows, and the bootstrap
installs exactly the carried wheels the interpreter lacks. The suite itself runs in CI as
`python benchmarks/gpu_suite.py --dry-run` (.ci/run), followed by `--validate --strict`."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.append(str(BENCH))  # after the repo: benchmarks/training.py must not shadow training

import gpu_report  # noqa: E402
import gpu_suite  # noqa: E402
import gpu_wheels  # noqa: E402
from packaging.version import Version  # noqa: E402


def bench_row(variant, res, batch, ms, mfu=None):
    return {
        "variant": variant,
        "resolution": res,
        "batch": batch,
        "median_ms": ms,
        "p90_ms": ms,
        "ms_per_image": ms / batch,
        "mfu": mfu,
        "peak_key": "matmul_fp16",
    }


def gpu_stages(**overrides) -> dict:
    """Stage records as a GPU run leaves them (only the fields the targets read)."""
    stages = {
        "bench_eager": {
            "status": "ok",
            "seconds": 40.0,
            "results": {
                "rows": [
                    bench_row("torch-fp16", 768, 1, 12.0, 0.3),
                    bench_row("torch-fp16", 768, 8, 60.0, 0.45),
                    bench_row("torch-fp16", 512, 8, 30.0, 0.6),
                ],
                "dift": [
                    {
                        "resolution": 768,
                        "batch": 1,
                        "ensemble": 8,
                        "median_ms": 400.0,
                        "p90_ms": 410.0,
                        "ms_per_image": 400.0,
                    }
                ],
            },
        },
        "bench_compile": {
            "status": "ok",
            "seconds": 90.0,
            "results": {"rows": [bench_row("torch-fp16-compile", 768, 1, 7.5, 0.5)]},
        },
        "matcher": {
            "status": "ok",
            "seconds": 30.0,
            "results": {
                "rows": [
                    {
                        "k": 4096,
                        "map": 48,
                        "channels": 1280,
                        "out": 768,
                        "method": "naive",
                        "status": "ok",
                        "median_s": 0.05,
                        "peak_extra_bytes": 2**34,
                        "dtype": "float16",
                    },
                    {
                        "k": 4096,
                        "map": 48,
                        "channels": 1280,
                        "out": 768,
                        "method": "triton",
                        "status": "ok",
                        "median_s": 0.0012,
                        "peak_extra_bytes": 40 * 2**20,
                        "dtype": "float16",
                    },
                ]
            },
        },
        "tracking": {
            "status": "ok",
            "seconds": 30.0,
            "results": {
                "runs": {
                    "full": {
                        "fps": 120.0,
                        "points": 256,
                        "resolution": 512,
                        "dtype": "float16",
                        "latency_ms": {},
                    },
                    "radius": {
                        "fps": 150.0,
                        "radius": 32.0,
                        "points": 256,
                        "resolution": 512,
                        "dtype": "float16",
                        "latency_ms": {},
                    },
                }
            },
        },
    }
    stages.update(overrides)
    return stages


def full_report(stages: dict, dry_run: bool = False) -> dict:
    return {
        "schema": gpu_report.SCHEMA,
        "mode": "dry-run" if dry_run else "gpu",
        "command": "x",
        "started_utc": "t0",
        "finished_utc": "t1",
        "total_seconds": 1.0,
        "total_budget_s": 450,
        "hardware": {"gpu": "NVIDIA H200"},
        "driver": {"nvidia_driver": "580"},
        "versions": {},
        "bootstrap": {},
        "stages": stages,
        "targets": gpu_report.evaluate_targets(stages, dry_run),
    }


def test_targets_judged_from_the_stage_rows():
    t = gpu_report.evaluate_targets(gpu_stages(), dry_run=False)
    assert set(t) == set(gpu_report.TARGET_KEYS)
    lat = t["extract_768_us6_b1_latency_ms"]  # best of eager 12 ms and compiled 7.5 ms
    assert (lat["measured"], lat["met"]) == (7.5, True) and "compile" in lat["source"]
    assert t["extract_768_us6_b8_mfu"]["measured"] == 0.45  # 768² only, not the 512² row
    assert t["extract_768_us6_b8_mfu"]["met"] is False
    assert t["speedup_vs_dift_768"]["measured"] == pytest.approx(400.0 / 7.5)
    assert t["speedup_vs_dift_768"]["met"] is True
    assert t["matcher_k4096_48x1280_to_768_ms"]["measured"] == pytest.approx(1.2)
    assert t["matcher_k4096_48x1280_to_768_ms"]["met"] is False
    assert t["matcher_k4096_48x1280_to_768_peak_mb"]["measured"] == pytest.approx(40.0)
    assert t["matcher_k4096_48x1280_to_768_peak_mb"]["met"] is True
    assert t["tracking_512_256pts_fps"]["met"] is True
    assert "radius 32 px: 150.0 FPS" in t["tracking_512_256pts_fps"]["source"]


def test_unmeasured_targets_are_null_with_the_stage_reason():
    skipped = {"status": "skipped", "reason": "no CUDA device", "seconds": 0.0, "results": {}}
    stages = gpu_stages(matcher=skipped, tracking={**skipped, "reason": "missing modules: cv2"})
    t = gpu_report.evaluate_targets(stages, dry_run=False)
    for key in ("matcher_k4096_48x1280_to_768_ms", "tracking_512_256pts_fps"):
        assert t[key]["measured"] is None and t[key]["met"] is None
    assert "matcher skipped: no CUDA device" in t["matcher_k4096_48x1280_to_768_ms"]["reason"]
    assert "cv2" in t["tracking_512_256pts_fps"]["reason"]
    # a dry run measures the stand-in configuration but never claims a target
    dry = gpu_report.evaluate_targets({}, dry_run=True)
    assert all(v["met"] is None and v["reason"] for v in dry.values())


def test_validate_report_names_every_gap():
    report = full_report(gpu_stages())
    assert gpu_report.validate_report(report) == []
    del report["targets"]["tracking_512_256pts_fps"]
    report["stages"]["matcher"] = {"status": "failed", "seconds": 1.0, "reason": "boom"}
    report["stages"]["training"] = {"status": "partial", "seconds": 2.0}
    del report["driver"]
    problems = gpu_report.validate_report(report)
    assert "target 'tracking_512_256pts_fps' missing" in problems
    assert "missing top-level key 'driver'" in problems
    assert "stage matcher: failed without an error message" in problems
    assert "stage training: status partial without a reason" in problems
    assert not any("matcher failed: boom" in p for p in problems)
    assert "stage matcher failed: boom" in gpu_report.validate_report(report, strict=True)
    report["stages"]["matcher"] = {"status": "timeout", "seconds": 9.0, "reason": "killed"}
    assert "stage matcher timeout: killed" in gpu_report.validate_report(report, strict=True)
    report["stages"]["matcher"]["budget_cut_by_total"] = True  # the total budget ran out
    assert not any("matcher" in p for p in gpu_report.validate_report(report, strict=True))


def test_markdown_lists_targets_stages_and_rows():
    text = gpu_report.markdown(full_report(gpu_stages()))
    assert "## Targets" in text and "**met**" in text and "**missed**" in text
    assert "| torch-fp16-compile | 768 | 1 |" in text
    assert "| bench_eager | ok |" in text


def test_validate_cli(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(full_report(gpu_stages())))
    assert gpu_suite.main(["--validate", str(good)]) == 0
    bad = full_report(gpu_stages())
    bad["targets"].pop("speedup_vs_dift_768")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert gpu_suite.main(["--validate", str(tmp_path / "bad.json")]) == 1
    assert "target 'speedup_vs_dift_768' missing" in capsys.readouterr().err
    assert gpu_suite.main(["--validate", str(tmp_path / "none.json")]) == 2


def fake_wheel(folder: Path, name: str, version: str, requires=()) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    meta = [f"Name: {name}", f"Version: {version}", *(f"Requires-Dist: {r}" for r in requires)]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(meta) + "\n")
    return path


def test_wheel_plan_installs_only_what_is_missing_or_too_old(tmp_path):
    fake_wheel(
        tmp_path,
        "diffusers",
        "0.42.1",
        ["huggingface-hub>=1.32", "importlib_metadata", 'pytest-x; extra == "test"'],
    )
    fake_wheel(tmp_path, "huggingface_hub", "2.4.0", ["httpx2>=2"])
    fake_wheel(tmp_path, "httpx2", "2.16.2")
    fake_wheel(tmp_path, "importlib_metadata", "10.2.0")
    wheels = gpu_wheels.carried(tmp_path)
    base = {
        n: Version(v)
        for n, v in (("safetensors", "0.8"), ("click", "8.3"), ("tqdm", "4.70"), ("pillow", "12.0"))
    }

    def names(have):
        todo, problems = gpu_wheels.plan(wheels, {**base, **have})
        return sorted(gpu_wheels.wheel_info(p)[0] for p in todo), problems

    # the image's hub 1.33 satisfies diffusers: only diffusers and importlib-metadata go in
    assert names({"huggingface-hub": Version("1.33.0")}) == (
        ["diffusers", "importlib-metadata"],
        [],
    )
    # a hub older than diffusers needs: the carried hub and its own dependency too
    assert names({"huggingface-hub": Version("1.20.0"), "importlib-metadata": Version("8")}) == (
        ["diffusers", "httpx2", "huggingface-hub"],
        [],
    )
    # nothing carried for a missing package: a problem naming the preparation step
    _, problems = gpu_wheels.plan({}, {**base, "huggingface-hub": Version("1.33")})
    assert problems == [
        "diffusers missing, need diffusers>=0.30, no wheel carried "
        "(python benchmarks/gpu_suite.py --prepare)"
    ]


def test_marked_test_files_finds_the_gpu_and_tensorrt_tests():
    import gpu_stages

    files = gpu_stages.marked_test_files()
    assert "tests/test_tensorrt.py" in files and "tests/test_cpp_bindings.py" in files
    assert "tests/test_gpu_suite.py" not in files
