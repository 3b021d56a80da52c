"""The GPU suite's stages (run by ``benchmarks/gpu_suite.py``, one subprocess each).

Every ``stage_NAME(ctx)`` measures into ``ctx.results`` and saves after each figure, so a stage
killed at its budget keeps what it measured; a part that does not fit the time left, or lacks
a dependency, is skipped with the reason (``ctx.skip``). On a GPU: CUDA events for time,
``torch.cuda.max_memory_allocated`` for peak memory (cleandift_rt.bench, benchmarks/matcher.py).
With ``ctx.dry_run`` every stage runs the same code on the CPU at tiny sizes (CI).

Sizes (GPU / dry run): model random:sd21 / tiny; extraction at 512², 768² / 64², batch 1, 8 /
1, 2; matcher K 1, 256, 4096 on 24², 48², 96² × 320, 1280 → 768² / K 8 on 6² × 16 → 24² (with
Triton) and K 16 on 12² × 32 → 48²; tracking 512², 256 points / 64², 16 points; one
distillation step at 768², batch 8 / 64², batch 1.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class StageSkipped(Exception):
    """Raised by a stage that cannot run at all (the reason is the message)."""


class StageContext:
    """A stage's results, time budget and scratch folder; saved as JSON to ``out``."""

    def __init__(self, out: Path, budget: float, dry_run: bool):
        self.out, self.dry_run, self.budget = out, dry_run, budget
        self.deadline = time.perf_counter() + budget
        self.results: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.status, self.error = "running", None
        self.scratch = Path(os.environ.get("GPU_SUITE_SCRATCH", tempfile.gettempdir()))
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.save()

    def left(self) -> float:
        """Seconds left of the stage's budget."""
        return self.deadline - time.perf_counter()

    def skip(self, part: str, reason: str) -> None:
        print(f"skip {part}: {reason}", flush=True)
        self.skipped[part] = reason
        self.save()

    def fits(self, part: str, need_s: float) -> bool:
        """Whether ``need_s`` seconds are left; else ``part`` is skipped with the reason."""
        if self.left() >= need_s:
            return True
        self.skip(part, f"budget: {self.left():.0f} s left, needs ~{need_s:.0f} s")
        return False

    def save(self) -> None:
        record = {"status": self.status, "results": self.results}
        if self.skipped:
            record["skipped"] = self.skipped
            record["reason"] = "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
        if self.error:
            record["error"], record["reason"] = self.error, self.error["message"]
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(record, default=str))
        os.replace(tmp, self.out)

    def finish(self) -> None:
        self.status = "partial" if self.skipped else "ok"
        self.save()

    def fail(self, error: dict) -> None:
        self.status, self.error = "failed", error
        self.save()

    def skip_stage(self, reason: str) -> None:
        self.status = "skipped"
        self.skipped["stage"] = reason
        self.save()


def load_script(name: str):
    """A benchmarks/ script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stage_device(ctx: StageContext):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not ctx.dry_run else "cpu")


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cmd_out(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout.strip() if run.returncode == 0 else None


def find_nvcc() -> str | None:
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).exists():
            return cand
    return None


# ------------------------------------------------------------------------------ environment


def stage_environment(ctx: StageContext) -> None:
    """Hardware, driver, versions, and the measured matmul / copy peaks of this run."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from cleandift_rt.bench import measure_peaks

    device = stage_device(ctx)
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    for pkg in (
        "triton",
        "diffusers",
        "huggingface_hub",
        "safetensors",
        "numpy",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tensorrt",
        "transformers",
        "opencv-python-headless",
        "opencv-python",
        "scikit-image",
        "pytest",
        "pybind11",
    ):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        import onnxruntime as ort

        versions["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    nvcc = find_nvcc()
    if nvcc:
        text = _cmd_out([nvcc, "--version"]) or ""
        versions["nvcc"] = next(
            (ln.split("release")[-1].strip() for ln in text.splitlines() if "release" in ln),
            text[-60:],
        )
    cmake = _cmd_out(["cmake", "--version"])
    if cmake:
        versions["cmake"] = cmake.splitlines()[0].removeprefix("cmake version ")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    hardware: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "device": str(device)}
    driver: dict[str, Any] = {}
    if torch.cuda.is_available() and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hardware.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
        )
    smi = _cmd_out(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
            "--format=csv,noheader",
        ]
    )
    if smi:
        fields = [f.strip() for f in smi.splitlines()[0].split(",")]
        keys = ("smi_name", "nvidia_driver", "memory_total", "max_sm_clock", "power_limit")
        driver.update(zip(keys, fields))
        head = _cmd_out(["nvidia-smi"]) or ""
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        if m:
            driver["cuda_driver"] = m.group(1)
    else:
        driver["nvidia_driver"] = None
        driver["note"] = "nvidia-smi not found or failed"
    ctx.results.update(hardware=hardware, driver=driver, versions=versions)
    ctx.save()
    precisions = ["bf16", "fp16", "fp32"] if device.type == "cuda" else ["fp32"]
    peaks: dict[str, Any] = {}
    measure_peaks(peaks, device, precisions, 0.1 if ctx.dry_run else 1.0)
    hardware["peaks"] = {
        k: round(v.get("tflops", v.get("gb_per_s", 0.0)), 2)
        for k, v in peaks.items()
        if "error" not in v
    }
    hardware["peak_units"] = "matmul_*: TFLOP/s (best of n² matmuls), copy: GB/s (read + write)"
    hardware["peak_detail"] = peaks
    ctx.save()


# ------------------------------------------------------------------------------ matcher


def matcher_grid(dry_run: bool) -> list[tuple[int, int, int, int]]:
    """(K, side, C, out) configurations, the target one (K=4096, 48²×1280 → 768²) first."""
    if dry_run:  # Triton's CPU interpreter takes ~1 s a call: two configurations
        return [(8, 6, 16, 24), (16, 12, 32, 48)]
    first, ks, sides, chans, out = (
        (4096, 48, 1280, 768),
        (1, 256, 4096),
        (24, 48, 96),
        (320, 1280),
        768,
    )
    rest = [(k, s, c, out) for s in sides for c in chans for k in ks if (k, s, c, out) != first]
    return [first] + rest


def parity(coords, scores, t_coords, t_scores, tol: float) -> dict:
    """Agreement of one method's (coords, scores) with the naive pipeline's: same argmax, or a
    near-tie (score within ``tol`` of the naive best)."""
    same = (coords.cpu() == t_coords.cpu()).all(dim=1)
    diff = (scores.float().cpu() - t_scores.float().cpu()).abs()
    ok = same | (diff <= tol)
    return {
        "same_argmax": float(same.float().mean()),
        "max_score_diff": float(diff.max()),
        "tie_tolerance": tol,
        "parity_ok": bool(ok.all()),
    }


def stage_matcher(ctx: StageContext) -> None:
    """Triton matcher (and the low-res torch method) against the naive pipeline: parity, median
    time (CUDA events) and peak extra memory (max_memory_allocated), K × map × C grid."""
    import torch

    from cleandift_rt.matching.lowres import cosine_argmax_lowres
    from cleandift_rt.matching.triton_argmax import cosine_argmax_triton, triton_available

    bm = load_script("matcher")
    device = stage_device(ctx)
    dev = device.type
    torch.set_grad_enabled(False)
    dtype = torch.float16 if dev == "cuda" else torch.float32
    memory = bm.CudaMemory() if dev == "cuda" else bm.CpuMemory()
    min_time, reps = (0.0, 1) if ctx.dry_run else (0.1, 10)
    tol = 2e-3 if dtype == torch.float16 else 1e-5
    triton_ok = triton_available()
    ctx.results.update(
        dtype=str(dtype).removeprefix("torch."),
        device=dev,
        rows=[],
        timing="CUDA events" if dev == "cuda" else "perf_counter",
        memory="torch.cuda.max_memory_allocated − allocated before"
        if dev == "cuda"
        else "peak live tensor bytes (profiler)",
    )
    if not triton_ok:
        ctx.skip("triton", "triton is not importable")
    for k, side, c, out in matcher_grid(ctx.dry_run):
        if not ctx.fits(f"K={k} {side}²×{c}", 4.0 if not ctx.dry_run else 1.0):
            continue
        gen = torch.Generator(device="cpu").manual_seed(k * 7919 + side * 31 + c)
        target = torch.randn(c, side, side, generator=gen).to(device, dtype)
        queries = torch.randn(k, c, generator=gen).to(device, dtype)
        methods = {"naive": bm.naive_argmax, "lowres": cosine_argmax_lowres}
        if triton_ok and (not ctx.dry_run or not ctx.results["rows"]):  # interpreter: once
            methods["triton"] = cosine_argmax_triton
        runners = {m: functools.partial(f, queries, target, (out, out)) for m, f in methods.items()}
        results = {}
        for method, fn in runners.items():
            row = {
                "k": k,
                "map": side,
                "channels": c,
                "out": out,
                "method": method,
                "dtype": ctx.results["dtype"],
            }
            need = bm.naive_bytes(k, c, out)
            if method == "naive" and need > 0.6 * bm.free_bytes(dev):
                row["status"] = f"skipped: needs {need / 2**30:.1f} GiB"
            else:
                results[method], times, peak = bm.measure(fn, dev, memory, min_time, reps)
                row.update(
                    status="ok",
                    median_s=statistics.median(times),
                    runs=len(times),
                    peak_extra_bytes=peak,
                )
            ctx.results["rows"].append(row)
            if method != "naive" and "naive" in results and method in results:
                row.update(parity(*results[method], *results["naive"], tol))
                row["parity"] = "ok" if row["parity_ok"] else "MISMATCH"
            ctx.save()
        del target, queries, results, runners
        free_memory(device)
    bad = [r for r in ctx.results["rows"] if r.get("parity_ok") is False]
    if bad:
        raise AssertionError(
            f"{len(bad)} matcher rows disagree with the naive pipeline, first: "
            f"{ {k: bad[0][k] for k in ('k', 'map', 'channels', 'method')} }"
        )


# ------------------------------------------------------------------------------ C++ matcher


def _cpp_build(ctx: StageContext, nvcc: str | None) -> Path:
    """Configure and build the matcher library, its Python bindings and test_matcher (no
    libtorch, no examples) into scratch; returns the build folder."""
    import torch

    build = ctx.scratch / "cpp-build"
    shutil.rmtree(build, ignore_errors=True)
    cmd = [
        "cmake",
        "-S",
        str(ROOT / "cpp_bindings"),
        "-B",
        str(build),
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DPython3_EXECUTABLE={sys.executable}",
        "-DCLEANDIFT_RT_WITH_TORCH=OFF",
        "-DCLEANDIFT_RT_WITH_TENSORRT=OFF",
        "-DCLEANDIFT_RT_EXAMPLES=OFF",
        "-DBUILD_TESTING=ON",
    ]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    if nvcc:
        cmd.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if torch.cuda.is_available() and not ctx.dry_run:
            major, minor = torch.cuda.get_device_capability()
            cmd.append(f"-DCMAKE_CUDA_ARCHITECTURES={major}{minor}")
    else:
        cmd.append("-DCLEANDIFT_RT_WITH_CUDA=OFF")
    t = time.perf_counter()

    def step(args: list[str]) -> str:
        run = subprocess.run(args, capture_output=True, text=True, timeout=max(ctx.left() - 5, 5))
        if run.returncode != 0:
            tail = (run.stdout + run.stderr).strip().splitlines()[-8:]
            raise RuntimeError(f"{' '.join(args[:2])} failed: " + " | ".join(tail))
        return run.stdout

    configure = step(cmd)
    notes = [ln.removeprefix("-- ") for ln in configure.splitlines() if "cleandift_rt:" in ln]
    ctx.results["configure"] = notes
    targets = ["test_matcher"]
    if any("Python bindings in" in ln for ln in notes):
        targets.append("cleandift_rt_cpp")
    else:  # e.g. no Python headers there: test_matcher still checks CUDA == CPU
        ctx.skip("bindings", "not configured: " + "; ".join(n for n in notes if "ython" in n))
    step(["cmake", "--build", str(build), "--target", *targets, "-j", str(os.cpu_count() or 2)])
    ctx.results["build_s"] = time.perf_counter() - t
    return build


def stage_cpp_matcher(ctx: StageContext) -> None:
    """The C++ matcher (cpp_bindings/): build with cmake when nvcc is there (dry run: reuse
    `make test-cpp`'s build), run test_matcher (CUDA == CPU), then the CUDA matcher's parity
    against the naive pipeline and its time through the Python bindings (host arrays in and
    out: the copies are included)."""
    import torch

    bm = load_script("matcher")
    nvcc = find_nvcc()
    device = stage_device(ctx)
    ctx.results["nvcc"] = nvcc
    built = os.environ.get("CLEANDIFT_RT_CPP_BUILD")  # make test-cpp's, or another one
    existing = Path(built).parent if built else ROOT / "cpp_bindings" / "build"
    if ctx.dry_run and list((existing / "python").glob("cleandift_rt_cpp*.so")):
        build = existing
        ctx.results["build"] = f"reused {existing} (make test-cpp)"
    elif nvcc is None and not ctx.dry_run:
        ctx.skip_stage("no nvcc on PATH or in /usr/local/cuda/bin: the CUDA matcher is not built")
        return
    elif not ctx.fits("build", 40.0 if ctx.dry_run else 30.0):
        ctx.skip_stage(ctx.skipped.pop("build"))
        return
    else:
        build = _cpp_build(ctx, nvcc)
    ctx.results["python_dir"] = str(build / "python")
    ctx.save()
    test = build / "tests" / "test_matcher"
    if test.exists():
        run = subprocess.run([str(test)], capture_output=True, text=True, timeout=60)
        ctx.results["test_matcher"] = {
            "returncode": run.returncode,
            "output_tail": (run.stdout + run.stderr).splitlines()[-5:],
        }
        ctx.save()
        if run.returncode != 0:
            raise AssertionError(
                "test_matcher failed: " + " | ".join(ctx.results["test_matcher"]["output_tail"])
            )
    sys.path.insert(0, str(build / "python"))
    try:
        import cleandift_rt_cpp as cpp
    except ImportError as exc:
        ctx.skip("bindings", f"Python bindings not built or not loadable: {exc}")
        return
    from cleandift_rt.matching import PixelGrid

    cuda = cpp.cuda_available() and device.type == "cuda"
    if not cuda:
        ctx.skip("cuda", "no CUDA device or built without CUDA: the CPU C++ matcher runs instead")
    matcher = cpp.Matcher(num_threads=os.cpu_count() or 1)
    ctx.results["rows"] = []
    grid_cfgs = matcher_grid(ctx.dry_run)
    if not cuda:  # the CPU matcher at full size would not fit: the small half of the grid
        grid_cfgs = [g for g in grid_cfgs if g[0] * g[2] * g[1] ** 2 <= 2**22]
    for k, side, c, out in grid_cfgs:
        if not ctx.fits(f"cpp K={k} {side}²×{c}", 3.0 if ctx.dry_run else 4.0):
            continue
        gen = torch.Generator().manual_seed(k * 7919 + side * 31 + c)
        target = torch.randn(c, side, side, generator=gen)
        queries = torch.randn(k, c, generator=gen)
        grid = PixelGrid.interpolate((side, side), (out, out))
        cgrid = cpp.PixelGrid(*grid.size, *grid.scale, *grid.shift)
        q_np, t_np = queries.numpy(), target.numpy()
        fn = functools.partial(
            cpp.cuda_cosine_argmax if cuda else matcher.cosine_argmax, q_np, t_np, cgrid
        )
        got = fn()  # warm-up, and the result
        times = []
        deadline = time.perf_counter() + (0.0 if ctx.dry_run else 0.25)
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 20):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        truth = bm.naive_argmax(queries.to(device), target.to(device), (out, out))
        row = {
            "k": k,
            "map": side,
            "channels": c,
            "out": out,
            "status": "ok",
            "method": "cpp-cuda" if cuda else "cpp-cpu",
            "dtype": "float32",
            "median_s": statistics.median(times),
            "runs": len(times),
            "peak_extra_bytes": None,
            "timing": "perf_counter, host arrays in and out",
        }
        row.update(parity(torch.as_tensor(got[0]), torch.as_tensor(got[1]), *truth, 1e-5))
        row["parity"] = "ok" if row["parity_ok"] else "MISMATCH"
        ctx.results["rows"].append(row)
        ctx.save()
    ctx.results["peak_memory"] = (
        "not measured: the C++ matcher allocates with cudaMalloc, outside torch's allocator"
    )
    bad = [r for r in ctx.results["rows"] if not r["parity_ok"]]
    if bad:
        raise AssertionError(f"{len(bad)} C++ matcher rows disagree with the naive pipeline")


# ------------------------------------------------------------------------------ tests


def marked_test_files() -> list[str]:
    """tests/*.py that use the ``gpu`` or ``tensorrt`` marker."""
    pattern = re.compile(r"pytest\.mark\.(gpu|tensorrt)\b")
    return sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_*.py")
        if pattern.search(p.read_text())
    )


def stage_gpu_tests(ctx: StageContext) -> None:
    """pytest -m "gpu or tensorrt" over the files that use those markers, in this stage's
    process (torch and diffusers already imported; the stage's budget is its timeout); counts
    and failures from its JUnit XML."""
    import pytest

    files = marked_test_files()
    junit = ctx.scratch / "gpu-tests.xml"
    junit.unlink(missing_ok=True)
    args = ["-q", "-m", "gpu or tensorrt", "-p", "no:cacheprovider", f"--rootdir={ROOT}",
            f"--junitxml={junit}", *(str(ROOT / f) for f in files)]  # fmt: skip
    ctx.results.update(command="pytest " + " ".join(args), files=files)
    ctx.save()
    os.chdir(ROOT)
    code = int(pytest.main(args))
    ctx.results["returncode"] = code
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        summary = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        ctx.results["summary"] = summary
        ctx.results["failed"] = {
            f"{case.get('classname')}::{case.get('name')}": (bad.get("message") or "")[:300]
            for case in suite.iter("testcase")
            for bad in (case.find("failure"), case.find("error"))
            if bad is not None
        }
    ctx.save()
    if code not in (0, 5):  # 5: nothing selected
        raise AssertionError(f"GPU tests failed (pytest exit {code}): "
                             f"{sorted(ctx.results.get('failed') or {})}")  # fmt: skip
