"""The GPU suite's stages (run by ``benchmarks/gpu_suite.py``, one subprocess each).

Every ``stage_NAME(ctx)`` measures into ``ctx.results`` and saves after each figure, so a stage
killed at its budget keeps what it measured; a part that does not fit the time left, or lacks
a dependency, is skipped with the reason (``ctx.skip``). On a GPU: CUDA events for time,
``torch.cuda.max_memory_allocated`` for peak memory (cleandift_rt.bench, benchmarks/matcher.py).
With ``ctx.dry_run`` every stage runs the same code on the CPU at tiny sizes (CI).

Sizes (GPU / dry run): model random:sd21 / tiny; extraction at 512², 768² / 64², batch 1, 8 /
1, 2; matcher K 1, 256, 4096 on 24², 48², 96² × 320, 1280 → 768² / K 1, 64 on
12² × 32 and 6² × 16 → 48²; tracking 512², 256 points / 64², 16 points; one distillation step at
768², batch 8 / 64², batch 2.
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


def _load_script(name: str):
    """A benchmarks/ script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _device(ctx: StageContext):
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not ctx.dry_run else "cpu")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
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

    device = _device(ctx)
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
    precisions = ["fp32"] if ctx.dry_run else ["bf16", "fp16", "fp32"]
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
        return [(16, 12, 32, 48), (1, 6, 16, 48)]
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

    bm = _load_script("matcher")
    device = _device(ctx)
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
        if triton_ok:
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
        _free(device)
    bad = [r for r in ctx.results["rows"] if r.get("parity_ok") is False]
    if bad:
        raise AssertionError(
            f"{len(bad)} matcher rows disagree with the naive pipeline, first: "
            f"{ {k: bad[0][k] for k in ('k', 'map', 'channels', 'method')} }"
        )


# ------------------------------------------------------------------------------ bench


def bench_sizes(dry_run: bool) -> dict:
    if dry_run:
        return {
            "model": "tiny",
            "resolutions": (64,),
            "batches": (1, 2),
            "warmup": 1,
            "reps": 2,
            "min_time": 0.0,
            "peak_s": 0.1,
            "dift_reps": 1,
        }
    return {
        "model": "random:sd21",
        "resolutions": (512, 768),
        "batches": (1, 8),
        "warmup": 3,
        "reps": 10,
        "min_time": 0.5,
        "peak_s": 0.5,
        "dift_reps": 3,
    }


class BenchSession:
    """One model, its FLOPs per resolution and this process's measured peaks, and the timing of
    any runner into rows (cleandift_rt.bench's time_runs / peak_memory / latency_stats)."""

    TAPS = ("us6",)

    def __init__(self, ctx: StageContext, precisions: list[str]):
        import torch

        from cleandift_rt.bench import measure_peaks, model_flops
        from cleandift_rt.models import load_model

        self.ctx, self.sizes, self.device = ctx, bench_sizes(ctx.dry_run), _device(ctx)
        torch.set_grad_enabled(False)
        t = time.perf_counter()
        self.loaded = load_model(self.sizes["model"])
        ctx.results.update(
            model=self.sizes["model"],
            taps=list(self.TAPS),
            rows=[],
            load_s=time.perf_counter() - t,
            device=str(self.device),
        )
        self.flops = {}
        for res in self.sizes["resolutions"]:
            self.flops[res] = model_flops(self.loaded, self.TAPS, res, 261, 8)
        ctx.results["gflop_per_image"] = {
            str(r): {k: v / 1e9 if k != "ratio" else v for k, v in f.items()}
            for r, f in self.flops.items()
        }
        self.peaks: dict[str, Any] = {}
        measure_peaks(
            self.peaks, self.device, sorted(set(precisions) | {"fp32"}), self.sizes["peak_s"]
        )
        ctx.results["peaks"] = self.peaks
        ctx.save()

    def inputs(self, batch: int, res: int):
        from cleandift_rt.bench import random_images

        return random_images(batch, res, self.device, seed=0)

    def time(self, runner, res: int, batch: int, warmup: int | None = None) -> dict:
        from cleandift_rt.bench import latency_stats, peak_memory, time_runs

        s = self.sizes
        inputs = self.inputs(batch, res)
        with peak_memory(self.device) as mem:
            times = time_runs(
                runner,
                inputs,
                self.device,
                s["warmup"] if warmup is None else warmup,
                s["reps"],
                s["min_time"],
            )
        return {"resolution": res, "batch": batch, **latency_stats(times, batch), **mem}

    def add_row(self, row: dict, precision: str) -> dict:
        """FLOPs, achieved TFLOP/s and MFU vs this process's matmul peak of ``precision``."""
        gflop = self.flops[row["resolution"]]["cleandift"] / 1e9
        peak = self.peaks.get(f"matmul_{precision}", {}).get("tflops")
        achieved = gflop * 1e9 / (row["ms_per_image"] * 1e-3) / 1e12
        row.update(
            gflop_per_image=gflop,
            achieved_tflops=achieved,
            peak_key=f"matmul_{precision}",
            peak_tflops=peak,
            mfu=achieved / peak if peak else None,
        )
        self.ctx.results["rows"].append(row)
        self.ctx.save()
        print(
            f"{row['variant']:28s} {row['resolution']:4d}² b{row['batch']}: "
            f"{row['median_ms']:9.3f} ms  MFU {row['mfu'] or 0:.3f}  "
            f"{row['peak_memory_mib']:.0f} MiB",
            flush=True,
        )
        return row

    def cases(self):
        return [(r, b) for r in reversed(self.sizes["resolutions"]) for b in self.sizes["batches"]]


def _torch_runner(session: BenchSession, precision: str, channels_last: bool, compile=None):
    import torch

    from cleandift_rt.backends import TorchRunner
    from cleandift_rt.extractor import DTYPES

    session.loaded.to(session.device, DTYPES[precision])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in (session.loaded.unet, session.loaded.vae):  # back and forth between variants
        torch.nn.Module.to(module, memory_format=fmt)
    net = session.loaded.feature_net(session.TAPS)
    return TorchRunner(net, channels_last=channels_last, compile=compile)


def stage_bench_eager(ctx: StageContext) -> None:
    """DIFT baseline (fp32 eager, ensemble 8, batch 1) and CleanDIFT torch fp16 / bf16, eager
    NCHW and channels-last, every resolution × batch."""
    import torch

    from cleandift_rt.bench import latency_stats, peak_memory, time_runs

    precisions = ["fp32"] if ctx.dry_run else ["fp16", "bf16"]
    if ctx.dry_run:  # the CPU path of the half-precision code as well, at the smallest size
        precisions = ["fp32", "bf16"]
    s = BenchSession(ctx, precisions)
    ctx.results["dift"] = []
    s.loaded.to(s.device, torch.float32)
    dift = s.loaded.dift(s.TAPS, t=261, ensemble=8, encode_each_copy=True)
    for res in s.sizes["resolutions"]:
        if not ctx.fits(f"DIFT {res}²", 3.0 if ctx.dry_run else 8.0):
            continue
        inputs = [torch.as_tensor(x).to(s.device) for x in s.inputs(1, res)]
        with peak_memory(s.device) as mem:
            reps = s.sizes["dift_reps"]
            times = time_runs(dift, inputs, s.device, 1 if reps > 1 else 0, reps, 0.0)
        row = {
            "resolution": res,
            "batch": 1,
            "t": 261,
            "ensemble": 8,
            "precision": "fp32",
            **latency_stats(times, 1),
            **mem,
        }
        gflop = s.flops[res]["dift"] / 1e9
        peak = s.peaks.get("matmul_fp32", {}).get("tflops")
        row.update(
            gflop_per_image=gflop,
            achieved_tflops=gflop / row["ms_per_image"],
            mfu=gflop / row["ms_per_image"] / peak if peak else None,
        )
        ctx.results["dift"].append(row)
        ctx.save()
        print(f"DIFT×8 fp32 {res}²: {row['median_ms']:.1f} ms", flush=True)
    del dift
    _free(s.device)
    dift_ms = {d["resolution"]: d["ms_per_image"] for d in ctx.results["dift"]}
    for precision in precisions:
        for channels_last in (False, True):
            variant = f"torch-{precision}" + ("-channels-last" if channels_last else "")
            runner = _torch_runner(s, precision, channels_last)
            for res, batch in s.cases():
                if ctx.dry_run and (precision != "fp32" or channels_last) and batch > 1:
                    continue  # CPU: bf16 and channels-last once each (the code path)
                if not ctx.fits(f"{variant} {res}² b{batch}", 2.0 if ctx.dry_run else 4.0):
                    continue
                row = {
                    "variant": variant,
                    "backend": "torch",
                    "precision": precision,
                    "channels_last": channels_last,
                    "compile": None,
                    **s.time(runner, res, batch),
                }
                if res in dift_ms:
                    row["speedup_vs_dift"] = dift_ms[res] / row["ms_per_image"]
                s.add_row(row, precision)
            del runner
            _free(s.device)


def _dift_ms() -> dict[int, float]:
    """DIFT ms per image from the bench_eager stage of this run (for speedups), if saved."""
    path = (
        Path(os.environ.get("GPU_SUITE_SCRATCH", tempfile.gettempdir())) / "stage-bench_eager.json"
    )
    try:
        rows = json.loads(path.read_text())["results"].get("dift", [])
    except (OSError, ValueError, KeyError):
        return {}
    return {d["resolution"]: d["ms_per_image"] for d in rows}


def stage_bench_compile(ctx: StageContext) -> None:
    """torch.compile (Inductor, mode reduce-overhead: CUDA graphs) of the channels-last
    FeatureNet, fp16 then bf16, 768² first; each shape compiles in its warm-up. The dry run
    compiles with the ``aot_eager`` backend (Dynamo and AOTAutograd, no Inductor code
    generation, which takes minutes on a shared 2-core CPU)."""
    import torch

    precisions = ["fp32"] if ctx.dry_run else ["fp16", "bf16"]
    s = BenchSession(ctx, precisions)
    mode = "aot_eager" if ctx.dry_run else "reduce-overhead"
    ctx.results["compile_mode"] = mode
    dift_ms = _dift_ms()
    top, *others = sorted(s.sizes["resolutions"], reverse=True)
    cases = [(p, top, b) for p in precisions for b in s.sizes["batches"]]  # the targets' size
    cases += [(p, r, b) for r in others for p in precisions for b in s.sizes["batches"]]
    if ctx.dry_run:
        cases = cases[:1]  # one compile on the CPU
    for precision, res, batch in cases:
        variant = f"torch-{precision}-compile"
        if not ctx.fits(f"{variant} {res}² b{batch}", 15.0 if ctx.dry_run else 45.0):
            continue
        torch._dynamo.reset()  # a fresh compile per shape (and no cache-size fallback to eager)
        if ctx.dry_run:
            runner = _torch_runner(s, precision, channels_last=False)
            runner.net = torch.compile(runner.net, backend="aot_eager", dynamic=False)
        else:
            runner = _torch_runner(s, precision, channels_last=True, compile=mode)
        t = time.perf_counter()
        runner(s.inputs(batch, res)[0])  # the compilation
        _sync(s.device)
        compile_s = time.perf_counter() - t
        row = {
            "variant": variant,
            "backend": "torch",
            "precision": precision,
            "channels_last": not ctx.dry_run,
            "compile": mode,
            "compile_s": compile_s,
            **s.time(runner, res, batch),
        }
        if res in dift_ms:
            row["speedup_vs_dift"] = dift_ms[res] / row["ms_per_image"]
        s.add_row(row, precision)
        del runner
        _free(s.device)


def _ort_gpu() -> tuple[bool, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return False, "onnxruntime is not installed"
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        return True, ""
    return False, f"onnxruntime has no CUDA execution provider ({', '.join(providers)})"


def stage_bench_export(ctx: StageContext) -> None:
    """Exported backends built here: AOTInductor fp16 (768² first), ONNX where onnxruntime runs
    on this device, a TensorRT engine where tensorrt is installed."""
    from cleandift_rt.runtime import load_runner
    from export import ExportOptions, export_model

    precision = "fp32" if ctx.dry_run else "fp16"
    s = BenchSession(ctx, [precision])
    dift_ms = _dift_ms()
    s.loaded.to("cpu")  # export_model loads its own copy
    _free(s.device)
    out = ctx.scratch / "artifacts"
    shutil.rmtree(out, ignore_errors=True)
    backends = []
    for fmt, backend in (("aoti", "aoti"), ("onnx", "onnx"), ("engine", "trt")):
        if backend == "aoti" and ctx.dry_run:
            ctx.skip(
                "aoti",
                "dry run: AOTInductor's C++ build takes minutes on a shared CPU "
                "(tests/test_export_aoti.py covers it); ONNX takes the same path here",
            )
            continue
        if backend == "onnx" and s.device.type == "cuda":
            ok, why = _ort_gpu()
            if not ok:
                ctx.skip("onnx", why + ": a CPU run of the SD 2.1 graph does not fit the budget")
                continue
        if backend == "trt" and importlib.util.find_spec("tensorrt") is None:
            ctx.skip("trt", "tensorrt is not installed")
            continue
        if backend == "trt" and s.device.type != "cuda":
            ctx.skip("trt", "TensorRT engines need a CUDA GPU")
            continue
        backends.append((fmt, backend))
    cases = s.cases() if not ctx.dry_run else s.cases()[:1]
    for fmt, backend in backends:
        for res, batch in cases:
            variant = f"{backend}-{precision}"
            if not ctx.fits(f"{variant} {res}² b{batch}", 20.0 if ctx.dry_run else 60.0):
                continue
            t = time.perf_counter()
            options = ExportOptions(
                model=s.sizes["model"],
                taps=s.TAPS,
                height=res,
                width=res,
                batch=batch,
                precision=precision,
                format=fmt,
                out=str(out),
                device=str(s.device),
                validate=False,
            )
            path, _meta = export_model(options, log=lambda line: print(line, flush=True))
            build_s = time.perf_counter() - t
            runner = load_runner(path, s.device)
            row = {
                "variant": variant,
                "backend": backend,
                "precision": precision,
                "build_s": build_s,
                "artifact_mib": path.stat().st_size / 2**20,
                **s.time(runner, res, batch),
            }
            if res in dift_ms:
                row["speedup_vs_dift"] = dift_ms[res] / row["ms_per_image"]
            s.add_row(row, precision)
            del runner
            _free(s.device)
            shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------ tracking


def stage_tracking(ctx: StageContext) -> None:
    """benchmarks/tracking.py: FPS and latency percentiles, full search then --radius."""
    tracking = _load_script("tracking")
    if ctx.dry_run:
        common = [
            "--model",
            "tiny",
            "--resolution",
            "64",
            "--grid",
            "4",
            "--frames",
            "3",
            "--warmup",
            "1",
            "--source-fps",
            "60",
        ]
        radius = "24"
    else:
        common = [
            "--model",
            "random:sd21",
            "--resolution",
            "512",
            "--dtype",
            "fp16",
            "--grid",
            "16",
            "--frames",
            "300",
            "--warmup",
            "5",
            "--source-fps",
            "240",
        ]
        radius = "32"
    ctx.results["runs"] = {}
    for name, extra in (("full", []), ("radius", ["--radius", radius])):
        if not ctx.fits(f"tracking {name}", 5.0 if ctx.dry_run else 15.0):
            continue
        path = ctx.scratch / f"tracking-{name}.json"
        result = tracking.main(common + extra + ["--json", str(path)])
        ctx.results["runs"][name] = result
        ctx.save()


# ------------------------------------------------------------------------------ training


def stage_training(ctx: StageContext) -> None:
    """benchmarks/training.py: one distillation step's throughput and peak memory (bf16 eager);
    on out-of-memory, again with gradient checkpointing."""
    training = _load_script("training")
    path = ctx.scratch / "training.json"
    if ctx.dry_run:
        args = [
            "--teacher",
            "tiny",
            "--resolution",
            "64",
            "--batch-size",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--precisions",
            "fp32",
            "--compile",
            "off",
        ]
    else:
        args = [
            "--teacher",
            "random:sd21",
            "--resolution",
            "768",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--precisions",
            "bf16",
            "--compile",
            "off",
        ]
    for attempt in ([], ["--grad-checkpointing"]):
        path.unlink(missing_ok=True)
        argv = sys.argv
        sys.argv = ["benchmarks/training.py", *args, *attempt, "--out", str(path)]
        try:
            training.main()
            break
        except Exception as exc:  # noqa: BLE001 — out of memory: retry once, else re-raise
            if "out of memory" not in str(exc).lower() or attempt:
                raise
            ctx.results["first_attempt"] = f"out of memory without checkpointing: {exc}"[:300]
            ctx.save()
            _free(_device(ctx))
        finally:
            sys.argv = argv
    ctx.results.update(json.loads(path.read_text()))
    ctx.save()


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
    for step in (
        cmd,
        [
            "cmake",
            "--build",
            str(build),
            "--target",
            "cleandift_rt_cpp",
            "test_matcher",
            "-j",
            str(os.cpu_count() or 2),
        ],
    ):
        run = subprocess.run(step, capture_output=True, text=True, timeout=max(ctx.left() - 5, 5))
        if run.returncode != 0:
            tail = (run.stdout + run.stderr).strip().splitlines()[-8:]
            raise RuntimeError(f"{' '.join(step[:2])} failed: " + " | ".join(tail))
    ctx.results["build_s"] = time.perf_counter() - t
    return build


def stage_cpp_matcher(ctx: StageContext) -> None:
    """The C++ matcher (cpp_bindings/): build with cmake when nvcc is there (dry run: reuse
    `make test-cpp`'s build), run test_matcher (CUDA == CPU), then the CUDA matcher's parity
    against the naive pipeline and its time through the Python bindings (host arrays in and
    out: the copies are included)."""
    import torch

    bm = _load_script("matcher")
    nvcc = find_nvcc()
    device = _device(ctx)
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
    """pytest -m "gpu or tensorrt" over the files that use those markers, with a timeout;
    counts from its JUnit XML."""
    files = marked_test_files()
    junit = ctx.scratch / "gpu-tests.xml"
    junit.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-m",
        "gpu or tensorrt",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-o",
        "addopts=-ra",
        *files,
    ]
    ctx.results.update(command=" ".join(cmd[1:]), files=files)
    try:
        run = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(ctx.left() - 3, 1)
        )
        ctx.results.update(
            returncode=run.returncode,
            output_tail=(run.stdout + run.stderr).strip().splitlines()[-12:],
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        ctx.results.update(returncode=None, output_tail=out.strip().splitlines()[-12:])
        ctx.skip("pytest", f"timed out after {exc.timeout:.0f} s")
    if junit.exists():
        suite = ET.parse(junit).getroot()
        suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
        summary = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        ctx.results["summary"] = summary
        ctx.results["failed"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ]
    ctx.save()
    if ctx.results.get("returncode") not in (0, 5, None):  # 5: nothing selected
        raise AssertionError(
            f"GPU tests failed: {ctx.results.get('failed') or ctx.results['output_tail'][-3:]}"
        )
