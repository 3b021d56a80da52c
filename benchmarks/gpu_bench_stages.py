"""The GPU suite's extraction, tracking and training stages (see gpu_stages.py for the rest).

``bench_*``: CleanDIFT FeatureNet timings into rows (cleandift_rt.bench's time_runs, peak_memory,
latency_stats, model_flops, measure_peaks), one model per stage process: random:sd21 at 512² and
768², batch 1 and 8 on a GPU; tiny at 64², batch 1 and 2 in the dry run. ``tracking`` and
``training`` run benchmarks/tracking.py and benchmarks/training.py in the stage's process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_stages import StageContext, free_memory, load_script, stage_device, sync

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

        self.ctx, self.sizes, self.device = ctx, bench_sizes(ctx.dry_run), stage_device(ctx)
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
    from cleandift_rt.dtypes import DTYPES

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
    for res in sorted(s.sizes["resolutions"], reverse=True):  # 768² (the targets) first
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
    free_memory(s.device)
    dift_ms = {d["resolution"]: d["ms_per_image"] for d in ctx.results["dift"]}
    for precision in precisions:
        for channels_last in (True, False):  # channels-last: the CUDA default
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
            free_memory(s.device)


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
    FeatureNet, fp16 then bf16, 768² first; each shape compiles in its first call. The dry run
    runs the same code with compilation off: Dynamo's capture of the FeatureNet alone takes
    ~30 s on a shared 2-core CPU, Inductor's code generation minutes."""
    import torch

    precisions = ["fp32"] if ctx.dry_run else ["fp16", "bf16"]
    s = BenchSession(ctx, precisions)
    mode = None if ctx.dry_run else "reduce-overhead"
    ctx.results["compile_mode"] = mode
    if ctx.dry_run:
        ctx.skip(
            "torch.compile",
            "dry run: the stage's code with compilation off (Dynamo's "
            "capture of the FeatureNet alone takes ~30 s on a shared 2-core CPU)",
        )
    dift_ms = _dift_ms()
    top, *others = sorted(s.sizes["resolutions"], reverse=True)
    cases = [(p, top, b) for p in precisions for b in s.sizes["batches"]]  # the targets' size
    cases += [(p, r, b) for r in others for p in precisions for b in s.sizes["batches"]]
    if ctx.dry_run:
        cases = cases[:1]  # one compile on the CPU
    for precision, res, batch in cases:
        variant = f"torch-{precision}-compile"
        if not ctx.fits(f"{variant} {res}² b{batch}", 5.0 if ctx.dry_run else 45.0):
            continue
        torch._dynamo.reset()  # a fresh compile per shape (and no cache-size fallback to eager)
        runner = _torch_runner(s, precision, channels_last=not ctx.dry_run, compile=mode)
        t = time.perf_counter()
        runner(s.inputs(batch, res)[0])  # the compilation
        sync(s.device)
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
        free_memory(s.device)


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
    from cleandift_rt.cli.common import export_api
    from cleandift_rt.runtime import load_runner

    exporter = export_api()  # the checkout's export/, else the installed cleandift_rt.export
    ExportOptions, export_model = exporter.ExportOptions, exporter.export_model

    precision = "fp32" if ctx.dry_run else "fp16"
    s = BenchSession(ctx, [precision])
    dift_ms = _dift_ms()
    s.loaded.to("cpu")  # export_model loads its own copy
    free_memory(s.device)
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
            free_memory(s.device)
            shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------------------ tracking


def stage_tracking(ctx: StageContext) -> None:
    """benchmarks/tracking.py: FPS and latency percentiles, full search then --radius."""
    tracking = load_script("tracking")
    if ctx.dry_run:
        common = "--model tiny --resolution 64 --grid 4 --frames 3 --warmup 1 --source-fps 60"
        radius = "24"
    else:  # 16 × 16 = 256 points; a source faster than the 100 FPS target
        common = ("--model random:sd21 --resolution 512 --dtype fp16 --grid 16 --frames 200 "
                  "--warmup 5 --source-fps 240")  # fmt: skip
        radius = "32"
    ctx.results["runs"] = {}
    for name, extra in (("full", []), ("radius", ["--radius", radius])):
        if not ctx.fits(f"tracking {name}", 5.0 if ctx.dry_run else 15.0):
            continue
        path = ctx.scratch / f"tracking-{name}.json"
        result = tracking.main(common.split() + extra + ["--json", str(path)])
        ctx.results["runs"][name] = result
        ctx.save()


# ------------------------------------------------------------------------------ training


def stage_training(ctx: StageContext) -> None:
    """benchmarks/training.py: one distillation step's throughput and peak memory (bf16 eager);
    on out-of-memory, again with gradient checkpointing."""
    training = load_script("training")
    path = ctx.scratch / "training.json"
    if ctx.dry_run:
        args = ("--teacher tiny --resolution 64 --batch-size 1 --steps 1 --warmup 0 "
                "--precisions fp32 --compile off")  # fmt: skip
    else:
        args = ("--teacher random:sd21 --resolution 768 --batch-size 8 --steps 2 --warmup 1 "
                "--precisions bf16 --compile off")  # fmt: skip
    for attempt in ([], ["--grad-checkpointing"]):
        path.unlink(missing_ok=True)
        argv = sys.argv
        sys.argv = ["benchmarks/training.py", *args.split(), *attempt, "--out", str(path)]
        try:
            training.main()
            break
        except Exception as exc:  # out of memory: retry once with checkpointing, else raise
            if "out of memory" not in str(exc).lower() or attempt:
                raise
            ctx.results["first_attempt"] = f"out of memory without checkpointing: {exc}"[:300]
            ctx.save()
            free_memory(stage_device(ctx))
        finally:
            sys.argv = argv
    ctx.results.update(json.loads(path.read_text()))
    ctx.save()
