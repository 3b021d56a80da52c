"""Benchmark the exact upsampled cosine argmax: naive vs banded reference vs low-res vs Triton.

All methods run side by side in one process on the same inputs (random ``(C, h, w)`` maps and
``(K, C)`` queries, fixed seed), matching on the ``F.interpolate`` grid of ``--out`` pixels:

* ``naive``: ``F.interpolate`` the whole map, ``F.normalize`` pixels and queries, matmul, argmax;
  skipped (and recorded) when its tensors would exceed 60 % of free RAM / GPU memory;
* ``reference``: :func:`cleandift_rt.matching.cosine_argmax_reference` (banded, exact);
* ``lowres``: :func:`cleandift_rt.matching.lowres.cosine_argmax_lowres`;
* ``triton``: :func:`cleandift_rt.matching.triton_argmax.cosine_argmax_triton` (CUDA only);
* ``auto``: :func:`cleandift_rt.matching.cosine_argmax`, the public entry point (``backend="auto"``:
  Triton on CUDA, else low-res) — what users get.

Time: median over repeats after one warm-up run (``perf_counter`` on CPU, CUDA events on GPU).
Peak extra memory of one run (separate from the timed runs): on GPU
``torch.cuda.max_memory_allocated`` minus the allocation before the run; on CPU the peak of live
tensor bytes from the profiler's allocation events (``CpuMemory``).
Methods whose estimated run time exceeds ``--max-seconds`` are skipped and recorded.

    python benchmarks/matcher.py --quick --json benchmarks/results/matcher_cpu.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from cleandift_rt.dtypes import DTYPES, PRECISIONS
from cleandift_rt.files import write_json
from cleandift_rt.matching import cosine_argmax
from cleandift_rt.matching.lowres import cosine_argmax_lowres
from cleandift_rt.matching.reference import cosine_argmax_reference
from cleandift_rt.matching.triton_argmax import cosine_argmax_triton, triton_available

FULL = {"k": (1, 256, 4096), "maps": (24, 48, 96), "channels": (320, 640, 1280)}
QUICK = {"k": (1, 256, 4096), "maps": (48,), "channels": (320, 1280)}
METHODS = ("naive", "reference", "lowres", "triton", "auto")
GB = 1024**3
MB = 1024**2


# --------------------------------------------------------------------------- the naive pipeline


def naive_argmax(queries: torch.Tensor, target: torch.Tensor, out: tuple[int, int]):
    """Literal pipeline: upsample, normalise, ``(K, H·W)`` scores, argmax. fp32 compute."""
    c = target.shape[0]
    up = F.interpolate(target[None].float(), out, mode="bilinear", align_corners=False)[0]
    up = F.normalize(up.reshape(c, -1), dim=0)
    scores = F.normalize(queries.float(), dim=1) @ up
    best, idx = scores.max(dim=1)
    return torch.stack([idx % out[1], idx // out[1]], dim=1), best


def naive_bytes(k: int, c: int, out: int) -> int:
    """float32 bytes of the naive pipeline's big tensors alive at its peak."""
    return 4 * out * out * (2 * c + k)


# --------------------------------------------------------------------------- measurement


class CpuMemory:
    """Peak extra tensor memory of a region on the CPU, as ``CudaMemory`` measures it on a GPU.

    The profiler records every allocation and free of PyTorch's CPU allocator (``[memory]``
    events, bytes signed); the peak of their running sum is the region's peak of live tensor
    bytes. Process RSS was tried first: it also counts heap fragmentation and library code pages
    re-faulted under memory pressure, and repeated runs of one configuration differed by up to
    3×; this count is exact and repeatable. The measured run is separate from the timed ones.
    """

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        gc.collect()
        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()

    def stop(self) -> int:
        self._profile.__exit__(None, None, None)
        events = [
            e for e in self._profile.profiler.kineto_results.events() if e.name() == "[memory]"
        ]
        live = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            live += event.nbytes()
            peak = max(peak, live)
        return peak


class CudaMemory:
    """Peak extra ``torch.cuda`` allocation of a region."""

    def start(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def stop(self) -> int:
        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - self.base)


def free_bytes(device: str) -> int:
    """Free memory: GPU ``mem_get_info`` or ``MemAvailable`` of ``/proc/meminfo``."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def run_once(fn: Callable[[], Any], device: str) -> float:
    """Seconds of one call (CUDA events on GPU)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fn: Callable[[], Any], device: str, memory: Any, min_time: float, max_reps: int):
    """Warm-up (also the result), one run measuring peak memory, then timed repeats: enough to
    fill ``min_time`` seconds, at least ``max_reps`` capped to 3 (1 after a warm-up over 5 s)."""
    t0 = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    memory.start()
    fn()
    peak = memory.stop()
    least = min(max_reps, 1 if warm > 5.0 else 3)
    reps = max(least, min(max_reps, math.ceil(min_time / max(warm, 1e-6))))
    times = [run_once(fn, device) for _ in range(reps)]
    return result, times, peak


def gemm_rate(device: str, dtype: torch.dtype) -> float:
    """Measured FLOP/s of a square matmul (for run-time estimates)."""
    n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    run_once(lambda: a @ a, device)
    t = min(run_once(lambda: a @ a, device) for _ in range(3))
    return 2 * n**3 / t


def machine_info(device: str) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ram_available_gb": round(free_bytes("cpu") / GB, 1),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    if triton_available():
        import triton

        info["triton"] = triton.__version__
    return info


# --------------------------------------------------------------------------- benchmark


def bench_config(k: int, side: int, c: int, args: argparse.Namespace, rate: float) -> list[dict]:
    """All methods on one (K, h = w = side, C) -> (out, out) problem."""
    device, out = args.device, (args.out, args.out)
    dtype = DTYPES[args.dtype]
    gen = torch.Generator(device=device).manual_seed(k * 7919 + side * 31 + c)
    target = torch.randn(c, side, side, generator=gen, device=device, dtype=dtype)
    queries = torch.randn(k, c, generator=gen, device=device, dtype=dtype)
    memory = CudaMemory() if device == "cuda" else CpuMemory()
    big_flops = 2.0 * k * c * args.out**2  # the full-resolution score GEMM
    runners: dict[str, tuple[Callable[[], Any], float]] = {
        "naive": (lambda: naive_argmax(queries, target, out), big_flops),
        "reference": (lambda: cosine_argmax_reference(queries, target, out), big_flops),
        "lowres": (lambda: cosine_argmax_lowres(queries, target, out), 2.0 * k * c * side**2),
        "triton": (lambda: cosine_argmax_triton(queries, target, out), 2.0 * k * c * side**2),
        "auto": (lambda: cosine_argmax(queries, target, out), 2.0 * k * c * side**2),
    }
    rows, results = [], {}
    for method in args.methods:
        row = {"k": k, "map": side, "channels": c, "out": args.out, "method": method}
        rows.append(row)
        fn, flops = runners[method]
        need = naive_bytes(k, c, args.out)
        if method == "triton" and (device != "cuda" or not triton_available()):
            row["status"] = "skipped: needs CUDA and triton"
            continue
        if method == "naive" and need > 0.6 * free_bytes(device):
            row["status"] = f"skipped: needs {need / GB:.1f} GB"
            continue
        if method in ("naive", "reference") and flops / rate > args.max_seconds:
            row["status"] = f"skipped: ~{flops / rate:.0f} s per run > --max-seconds"
            continue
        results[method], times, peak = measure(fn, device, memory, args.min_time, args.max_reps)
        row.update(
            status="ok", median_s=statistics.median(times), times_s=times, peak_extra_bytes=peak
        )
        print(f"  {describe(row)}", flush=True)
    # Agreement with the reference (else the naive pipeline) where it ran.
    truth = next((m for m in ("reference", "naive") if m in results), None)
    for r in rows:
        if truth is not None and r["method"] in results and r["method"] != truth:
            (coords, scores), (t_coords, t_scores) = results[r["method"]], results[truth]
            r["agree_with"] = truth
            r["same_argmax"] = float((coords == t_coords).all(dim=1).float().mean()) if k else 1.0
            r["max_score_diff"] = float((scores - t_scores).abs().max()) if k else 0.0
    base = {r["method"]: r for r in rows if r.get("status") == "ok"}
    for r in rows:
        for ref in ("naive", "reference"):
            if r.get("status") == "ok" and ref in base and r["method"] != ref:
                r[f"speedup_vs_{ref}"] = base[ref]["median_s"] / r["median_s"]
                r[f"memory_ratio_vs_{ref}"] = base[ref]["peak_extra_bytes"] / max(
                    r["peak_extra_bytes"], 1
                )
    return rows


def describe(r: dict) -> str:
    head = f"K={r['k']:<5} {r['map']}²x{r['channels']:<5} {r['method']:<10}"
    if r.get("status") != "ok":
        return f"{head} {r['status']}"
    return f"{head} {r['median_s'] * 1e3:10.2f} ms {r['peak_extra_bytes'] / MB:9.1f} MB"


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.1f}×" if key in row else "–"


def table(rows: list[dict]) -> str:
    """Markdown table of all rows."""
    lines = [
        "| K | map | C | method | median ms | peak extra MB | speedup vs naive | memory ÷ "
        "(naive / method) | speedup vs reference | same argmax as reference |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [str(r["k"]), f"{r['map']}²", str(r["channels"]), r["method"]]
        if r.get("status") != "ok":
            cells += [r["status"], "", "", "", "", ""]
        else:
            same = f"{r['same_argmax'] * 100:.2f} %" if "same_argmax" in r else "–"
            cells += [
                f"{r['median_s'] * 1e3:.2f}",
                f"{r['peak_extra_bytes'] / MB:.1f}",
                _ratio(r, "speedup_vs_naive"),
                _ratio(r, "memory_ratio_vs_naive"),
                _ratio(r, "speedup_vs_reference"),
                same,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="K 1/256/4096, 48² map, C 320/1280")
    p.add_argument("--k", type=int, nargs="+", help="query counts (default: 1 256 4096)")
    p.add_argument("--maps", type=int, nargs="+", help="map sides h = w (default: 24 48 96)")
    p.add_argument("--channels", type=int, nargs="+", help="channels (default: 320 640 1280)")
    p.add_argument("--out", type=int, default=768, help="output side H = W (default 768)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--device", choices=("cpu", "cuda"), default=None)
    p.add_argument("--dtype", choices=PRECISIONS, default="fp32")
    p.add_argument("--max-seconds", type=float, default=30.0, help="skip longer naive/ref runs")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed repeats")
    p.add_argument("--max-reps", type=int, default=20)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    grid = QUICK if args.quick else FULL
    ks, maps = args.k or grid["k"], args.maps or grid["maps"]
    chans = args.channels or grid["channels"]
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)

    info = machine_info(args.device)
    rate = gemm_rate(args.device, DTYPES[args.dtype])
    info["gemm_gflops"] = round(rate / 1e9, 1)
    print(json.dumps(info), flush=True)
    rows = []
    t0 = time.perf_counter()
    for side in maps:
        for c in chans:
            for k in ks:
                rows += bench_config(k, side, c, args, rate)
    elapsed = time.perf_counter() - t0
    print(table(rows))
    print(f"total {elapsed:.0f} s")
    if args.json:
        record = {
            "command": "python benchmarks/matcher.py " + " ".join(sys.argv[1:]),
            "device": args.device,
            "dtype": args.dtype,
            "machine": info,
            "elapsed_s": elapsed,
            "results": rows,
        }
        write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
