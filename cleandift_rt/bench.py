"""Benchmark harness behind `cleandift-rt bench`: CleanDIFT vs DIFT on the same hardware.

For one model and its taps, every (backend-precision, resolution, batch) case is timed after
warm-up over rotating uint8 inputs (CUDA events on a GPU, ``perf_counter`` on the CPU): median
and p90 latency, throughput, peak memory. FLOPs per image are counted with
``torch.utils.flop_counter`` on a meta-device copy of the model (shapes only, no arithmetic);
the hardware peak is measured in the same run (best large matmul per dtype, device copy
bandwidth), and MFU = achieved FLOP/s ÷ that peak. The DIFT baseline (ensemble 8, t = 261, fp32
eager, VAE encoded per copy as the reference implementation does) runs in the same process at
batch 1 per resolution, and every row reports CleanDIFT's speedup per image over it. The
matcher (exact upsampled cosine argmax) is timed on a map of the first tap's shape.

FLOP accounting: DIFT's ensemble of N runs the VAE encoder and the truncated U-Net on N copies
of each image, so its FLOPs per image are exactly N × CleanDIFT's for the same tap (the noising
is element-wise, which ``flop_counter`` does not count).
"""

from __future__ import annotations

import functools
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .backends import registry
from .dtypes import DTYPE_NAMES, DTYPES, PRECISIONS
from .errors import CleanDIFTError
from .extractor import resolve_device
from .models.featurenet import INPUT_MULTIPLE
from .protocol import DIFT_TIMESTEP

SCHEMA = "cleandift-rt.bench/1"
MAX_RUNS = 1000

#: build_artifact(backend, precision, resolution, batch) → path of an exported artifact
ArtifactBuilder = Callable[[str, str, int, int], Path]


@dataclass
class BenchSettings:
    """What to measure. backends: "backend-precision" names (e.g. torch-fp32, onnx-fp16); a bare
    backend takes the device's default precision (fp16 on CUDA, fp32 on the CPU).
    min_time: seconds of timed runs per case (at least ``reps`` runs, at most 1000)."""

    model: str = "toy"
    taps: tuple[str, ...] = ("us6",)
    resolutions: tuple[int, ...] = (256,)
    batches: tuple[int, ...] = (1,)
    backends: tuple[str, ...] = ("torch",)
    device: str = "auto"
    warmup: int = 2
    reps: int = 5
    min_time: float = 2.0
    dift: bool = True
    dift_t: int = DIFT_TIMESTEP
    dift_ensemble: int = 8
    matcher: bool = True
    matcher_points: int = 1024
    peak_seconds: float = 1.0
    threads: int | None = None
    seed: int = 0

    def cases(self, device: torch.device) -> list[tuple[str, str]]:
        """[(backend, precision)] parsed and checked; CleanDIFTError on a bad name."""
        out = []
        for name in self.backends:
            backend, _, precision = name.partition("-")
            precision = precision or ("fp16" if device.type == "cuda" else "fp32")
            spec = registry.get(backend)  # one line naming the nearest on a typo
            if precision not in PRECISIONS:
                raise CleanDIFTError(
                    f"unknown precision in '{name}': use BACKEND[-PRECISION] with precision "
                    f"{'/'.join(PRECISIONS)}"
                )
            out.append((spec.name, precision))
        return out

    def check(self) -> None:
        """CleanDIFTError (one line) on settings no run could satisfy."""
        if not self.resolutions or not self.batches or not self.backends:
            raise CleanDIFTError("need at least one resolution, batch size and backend")
        for r in self.resolutions:
            if r <= 0 or r % INPUT_MULTIPLE:
                raise CleanDIFTError(f"resolution {r} is not a positive multiple of 64 px")
        if min(self.batches) < 1 or self.reps < 1 or self.warmup < 0 or self.min_time < 0:
            raise CleanDIFTError("batches and --reps must be >= 1, --warmup and --min-time >= 0")
        if self.peak_seconds < 0 or (self.threads is not None and self.threads < 1):
            raise CleanDIFTError("--peak-seconds must be >= 0 and --threads >= 1")
        if not 0 <= self.dift_t < 1000 or self.dift_ensemble < 1 or self.matcher_points < 1:
            raise CleanDIFTError("need 0 <= --dift-t < 1000, --dift-ensemble >= 1, points >= 1")


# ------------------------------------------------------------------------------ measurement


def time_runs(
    fn: Callable[[Any], Any],
    inputs: list[Any],
    device: torch.device,
    warmup: int,
    reps: int,
    min_time: float,
) -> list[float]:
    """Milliseconds of each timed call of ``fn`` on rotating ``inputs``, after ``warmup`` calls:
    at least ``reps`` runs and ``min_time`` seconds (at most 1000 runs). CUDA events on a GPU
    (the call's device time), ``perf_counter`` elsewhere."""
    cuda = device.type == "cuda"
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    if cuda:
        torch.cuda.synchronize(device)
    times: list[float] = []
    deadline = time.perf_counter() + min_time
    while len(times) < reps or (time.perf_counter() < deadline and len(times) < MAX_RUNS):
        x = inputs[len(times) % len(inputs)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run in turn ``repeats`` times after one warm-up each, so
    machine noise hits every variant alike (CPU wall time: synchronise inside ``fn`` on a GPU)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(statistics.median(t)) for name, t in times.items()}


def latency_stats(times_ms: list[float], batch: int) -> dict[str, float]:
    """median / p90 (ms per call), ms per image, images per second, number of runs."""
    median = statistics.median(times_ms)
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(times_ms, 90)),
        "runs": len(times_ms),
        "ms_per_image": median / batch,
        "images_per_s": batch / median * 1e3,
    }


def _rss_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory of the region, into the yielded dict: ``peak_memory_mib`` and
    ``memory_kind``. CUDA: the larger of torch's peak allocation and the drop of free device
    memory (covers onnxruntime/TensorRT buffers); CPU (Linux): the process's peak RSS during
    the region (``VmHWM`` reset through ``/proc/self/clear_refs``), else ``ru_maxrss``."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        free_before = torch.cuda.mem_get_info(device)[0]
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        used = max(
            torch.cuda.max_memory_allocated(device) - base,
            free_before - torch.cuda.mem_get_info(device)[0],
        )
        out.update(peak_memory_mib=used / 2**20, memory_kind="cuda_extra")
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM
        tracked = True
    except OSError:
        tracked = False
    yield out
    if tracked:
        out.update(peak_memory_mib=_rss_bytes("VmHWM") / 2**20, memory_kind="process_rss")
    else:
        import resource

        out.update(
            peak_memory_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            memory_kind="process_max_rss",
        )


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs ``torch.utils.flop_counter`` counts for one call (matmuls, convolutions, attention;
    element-wise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def model_flops(
    loaded, taps: tuple[str, ...], resolution: int, dift_t: int, ensemble: int
) -> dict[str, float]:
    """FLOPs per image of CleanDIFT's FeatureNet and of the DIFT ensemble (VAE per copy) at a
    square ``resolution``, counted on a meta-device copy of ``loaded`` (no weights touched).
    On the meta device attention runs as its two matmuls, so it is counted (a fused attention
    kernel on a real CPU tensor would not be); the numbers match FACTS.md's SD 2.1 table."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .models import DIFTExtractor, build_feature_net

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(loaded.unet.config)
        vae = AutoencoderKL.from_config(loaded.vae.config)
        image = torch.zeros(1, resolution, resolution, 3, dtype=torch.uint8)
    net = build_feature_net(vae, unet, loaded.context.to("meta"), loaded.timestep, taps)
    dift = DIFTExtractor.from_feature_net(net, t=dift_t, ensemble=ensemble, encode_each_copy=True)
    dift = dift.to("meta")
    clean = count_flops(lambda: net(image))
    noisy = count_flops(lambda: dift(image))
    return {"cleandift": float(clean), "dift": float(noisy), "ratio": noisy / clean}


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> dict:
    """Best FLOP/s of a large square matmul in ``dtype`` (8192² on CUDA, 2048² on the CPU),
    over ``seconds`` of repeats: the hardware peak MFU refers to."""
    n = 8192 if device.type == "cuda" else 2048
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    times = time_runs(lambda _: torch.mm(a, b), [None], device, warmup=1, reps=2, min_time=seconds)
    return {"size": n, "tflops": 2 * n**3 / (min(times) * 1e-3) / 1e12}


def copy_bandwidth(device: torch.device, seconds: float = 0.5) -> dict:
    """Best device copy bandwidth (GB/s, bytes read + written) of a 1 GiB (CUDA) or 256 MiB
    (CPU) buffer."""
    nbytes = 2**30 if device.type == "cuda" else 2**28
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    times = time_runs(lambda _: dst.copy_(src), [None], device, warmup=2, reps=3, min_time=seconds)
    return {"bytes": nbytes, "gb_per_s": 2 * nbytes / (min(times) * 1e-3) / 1e9}


def measure_peaks(
    hardware: dict, device: torch.device, precisions: list[str], seconds: float = 1.0
) -> None:
    """Measure matmul peaks (per precision) and copy bandwidth into ``hardware``, keeping the
    best of this and any earlier measurement (shared machines: the least disturbed one)."""
    for precision in precisions:
        key = f"matmul_{precision}"
        try:
            now = matmul_peak(device, DTYPES[precision], seconds)
        except RuntimeError as exc:  # a dtype this device cannot multiply
            hardware.setdefault(key, {"error": str(exc).splitlines()[0]})
            continue
        if now["tflops"] > hardware.get(key, {}).get("tflops", 0.0):
            hardware[key] = now
    now = copy_bandwidth(device, seconds / 2)
    if now["gb_per_s"] > hardware.get("copy", {}).get("gb_per_s", 0.0):
        hardware["copy"] = now


def random_images(batch: int, resolution: int, device: torch.device, seed: int, n: int = 3):
    """``n`` different uint8 (batch, res, res, 3) inputs (numpy on CPU, tensors on CUDA)."""
    gen = np.random.default_rng(seed)
    arrays = [
        gen.integers(0, 256, (batch, resolution, resolution, 3), dtype=np.uint8) for _ in range(n)
    ]
    if device.type == "cuda":
        return [torch.from_numpy(a).to(device) for a in arrays]
    return arrays


def machine_info() -> dict[str, Any]:
    """Python, torch and package versions, CPU model, threads, GPU name."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    for pkg in ("onnxruntime", "onnxruntime-gpu", "tensorrt", "triton", "diffusers"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------------------ the run


@dataclass
class BenchReport:
    """Everything one run measured (see ``to_dict`` for the JSON schema)."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    device: str
    hardware: dict[str, Any] = field(default_factory=dict)
    flops: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    dift: list[dict[str, Any]] = field(default_factory=list)
    matcher: list[dict[str, Any]] = field(default_factory=list)
    command: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}


def _attach_efficiency(row: dict, gflop_per_image: float, peak_tflops: float | None) -> None:
    row["gflop_per_image"] = gflop_per_image
    achieved = gflop_per_image * 1e9 / (row["ms_per_image"] * 1e-3)
    row["achieved_tflops"] = achieved / 1e12
    row["mfu"] = achieved / (peak_tflops * 1e12) if peak_tflops else None


def _runner(loaded, backend, precision, taps, res, batch, device, build_artifact):
    if backend == "torch":
        from .backends import TorchRunner

        loaded.to(device, DTYPES[precision])
        return TorchRunner(loaded.feature_net(taps))
    if build_artifact is None:
        raise CleanDIFTError(f"backend '{backend}' needs an artifact builder (the CLI has one)")
    from .runtime import load_runner

    return load_runner(build_artifact(backend, precision, res, batch), device)


def run_bench(
    settings: BenchSettings,
    build_artifact: ArtifactBuilder | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda _line: None,
) -> BenchReport:
    """Run every case of ``settings`` in this process; see the module docstring."""
    from .models import load_model

    settings.check()
    device = resolve_device(settings.device)
    cases = settings.cases(device)
    # fp32 first: the DIFT baseline and fp32 rows run before the weights are cast down
    cases.sort(key=lambda c: c[1] != "fp32")
    if settings.threads is not None:  # CPU threads of torch (shared machines: fewer is steadier)
        torch.set_num_threads(settings.threads)
    loaded = load_model(settings.model)
    report = BenchReport(asdict(settings), machine_info(), str(device))
    for res in settings.resolutions:  # first: an unknown tap fails before any output
        report.flops[str(res)] = model_flops(
            loaded, settings.taps, res, settings.dift_t, settings.dift_ensemble
        )
    precisions = sorted({p for _, p in cases} | {"fp32"})
    log("measuring the hardware peak (matmul, copy)")
    measure_peaks(report.hardware, device, precisions, settings.peak_seconds)

    todo = len(settings.resolutions) * (len(cases) * len(settings.batches) + settings.dift)
    bar = tqdm(total=todo, desc="bench", unit="case", disable=not progress)
    if settings.dift:
        loaded.to(device, torch.float32)
        dift = loaded.dift(
            settings.taps, t=settings.dift_t, ensemble=settings.dift_ensemble, encode_each_copy=True
        )
        for res in settings.resolutions:
            bar.set_postfix_str(f"DIFT {res}²")
            inputs = [
                torch.as_tensor(x).to(device) for x in random_images(1, res, device, settings.seed)
            ]
            with peak_memory(device) as mem, torch.inference_mode():
                times = time_runs(
                    dift, inputs, device, min(settings.warmup, 1), settings.reps, settings.min_time
                )
            row = {
                "resolution": res,
                "batch": 1,
                "t": settings.dift_t,
                "ensemble": settings.dift_ensemble,
                "precision": "fp32",
                **latency_stats(times, 1),
                **mem,
            }
            report.dift.append(row)
            bar.update()
        del dift

    dift_ms = {r["resolution"]: r["ms_per_image"] for r in report.dift}
    for backend, precision in cases:
        for res in settings.resolutions:
            for batch in settings.batches:
                bar.set_postfix_str(f"{backend}-{precision} {res}² b{batch}")
                runner = _runner(
                    loaded, backend, precision, settings.taps, res, batch, device, build_artifact
                )
                inputs = random_images(batch, res, device, settings.seed)
                with peak_memory(device) as mem:
                    times = time_runs(
                        runner, inputs, device, settings.warmup, settings.reps, settings.min_time
                    )
                row = {
                    "backend": backend,
                    "precision": precision,
                    "resolution": res,
                    "batch": batch,
                    **latency_stats(times, batch),
                    **mem,
                }
                row["speedup_vs_dift"] = (
                    dift_ms[res] / row["ms_per_image"] if res in dift_ms else None
                )
                report.rows.append(row)
                del runner, inputs
                gc.collect()
                bar.update()
    bar.close()
    if settings.matcher:
        report.matcher = time_matcher(loaded, settings, device)
    log("measuring the hardware peak again")
    measure_peaks(report.hardware, device, precisions, settings.peak_seconds)
    for row in report.dift:
        gflop = report.flops[str(row["resolution"])]["dift"] / 1e9
        _attach_efficiency(row, gflop, report.hardware["matmul_fp32"].get("tflops"))
    for row in report.rows:
        gflop = report.flops[str(row["resolution"])]["cleandift"] / 1e9
        _attach_efficiency(row, gflop, report.hardware[f"matmul_{row['precision']}"].get("tflops"))
    return report


def _match_once(queries: torch.Tensor, out_size: tuple[int, int], target: torch.Tensor):
    from .matching import cosine_argmax

    return cosine_argmax(queries, target, out_size)


def time_matcher(loaded, settings: BenchSettings, device: torch.device) -> list[dict]:
    """Time ``cosine_argmax`` per resolution: K random queries against a random map of the
    first tap's (C, res/stride, res/stride), matched on the res × res pixel grid."""
    from .matching.argmax import select_backend

    spec = loaded.feature_net(settings.taps).unet.specs[0]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(settings.seed)
    out = []
    for res in settings.resolutions:
        cells = res // spec.stride
        maps = [
            torch.randn(spec.channels, cells, cells, generator=gen).to(device, dtype)
            for _ in range(2)
        ]
        queries = torch.randn(settings.matcher_points, spec.channels, generator=gen)
        queries = queries.to(device, dtype)
        match = functools.partial(_match_once, queries, (res, res))
        times = time_runs(match, maps, device, 1, settings.reps, min(settings.min_time, 2.0))
        out.append(
            {
                "resolution": res,
                "tap": spec.name,
                "channels": spec.channels,
                "map": [cells, cells],
                "points": settings.matcher_points,
                "dtype": DTYPE_NAMES[dtype],
                "method": select_backend(maps[0]),
                **latency_stats(times, 1),
            }
        )
    return out


# ------------------------------------------------------------------------------ output


def format_table(report: BenchReport) -> str:
    """The terminal table: hardware peak, FLOPs, one line per case, DIFT and matcher rows."""
    hw = report.hardware
    lines = [f"device {report.device}: {report.machine.get('gpu', report.machine['cpu'])}"]
    peaks = ", ".join(
        f"{k.removeprefix('matmul_')} {v['tflops']:.3g} TFLOP/s"
        for k, v in hw.items()
        if k.startswith("matmul_") and "tflops" in v
    )
    lines.append(f"measured peak: matmul {peaks}; copy {hw['copy']['gb_per_s']:.1f} GB/s")
    for res, f in report.flops.items():
        lines.append(
            f"GFLOP/image at {res}²: CleanDIFT {f['cleandift'] / 1e9:.4g}, "
            f"DIFT ×{report.settings['dift_ensemble']} {f['dift'] / 1e9:.4g} "
            f"(ratio {f['ratio']:.3f})"
        )
    head = (
        f"{'backend':12s} {'res':>5s} {'batch':>5s} {'median ms':>10s} {'p90 ms':>9s} "
        f"{'ms/img':>9s} {'img/s':>8s} {'TFLOP/s':>8s} {'MFU':>7s} {'mem MiB':>8s} "
        f"{'×DIFT':>7s}"
    )
    lines += ["", head]

    def line(name: str, r: dict) -> str:
        mfu = f"{r['mfu'] * 100:6.2f}%" if r.get("mfu") is not None else f"{'-':>7s}"
        speed = r.get("speedup_vs_dift")
        return (
            f"{name:12s} {r['resolution']:5d} {r['batch']:5d} {r['median_ms']:10.2f} "
            f"{r['p90_ms']:9.2f} {r['ms_per_image']:9.2f} {r['images_per_s']:8.2f} "
            f"{r['achieved_tflops']:8.3f} {mfu} {r['peak_memory_mib']:8.0f} "
            + (f"{speed:7.1f}" if speed is not None else f"{'-':>7s}")
        )

    for r in report.dift:
        lines.append(line(f"DIFT×{r['ensemble']}-fp32", r))
    for r in report.rows:
        lines.append(line(f"{r['backend']}-{r['precision']}", r))
    if report.matcher:
        lines += ["", "matcher (exact upsampled cosine argmax)"]
        for m in report.matcher:
            lines.append(
                f"  {m['resolution']}²  {m['points']} points vs {m['tap']} "
                f"{m['channels']}×{m['map'][0]}×{m['map'][1]} ({m['method']}, "
                f"{m['dtype']}): {m['median_ms']:.2f} ms median, "
                f"{m['p90_ms']:.2f} ms p90"
            )
    return "\n".join(lines)


PLOT_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def plot_report(report: BenchReport, path: str | Path, size: tuple[int, int] = (560, 1000)) -> Path:
    """PNG of ms per image (log scale) for every (resolution, batch) case, one line per
    backend-precision, DIFT as red squares; drawn with OpenCV, written atomically."""
    import cv2

    from .viz import save_png

    series: dict[str, dict[tuple[int, int], float]] = {}
    for r in report.rows:
        key = f"{r['backend']}-{r['precision']}"
        series.setdefault(key, {})[(r["resolution"], r["batch"])] = r["ms_per_image"]
    dift = {(r["resolution"], 1): r["ms_per_image"] for r in report.dift}
    cats = sorted({c for s in series.values() for c in s} | set(dift))
    values = [v for s in series.values() for v in s.values()] + list(dift.values())
    if not values:
        raise CleanDIFTError("nothing was measured: no plot to draw")
    h, w = size
    left, right, top, bottom = 90, 200, 50, 70  # the legend sits right of the axes
    canvas = np.full((h, w, 3), 255, np.uint8)
    lo, hi = np.log10(min(values)) - 0.1, np.log10(max(values)) + 0.1

    def xy(cat: tuple[int, int], ms: float) -> tuple[int, int]:
        i = cats.index(cat)
        x = left + (i + 0.5) * (w - left - right) / len(cats)
        y = top + (hi - np.log10(ms)) / (hi - lo) * (h - top - bottom)
        return int(round(x)), int(round(y))

    font, black, grey = cv2.FONT_HERSHEY_SIMPLEX, (0, 0, 0), (210, 210, 210)
    for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**e
            if lo <= np.log10(v) <= hi:
                _, y = xy(cats[0], v)
                cv2.line(canvas, (left, y), (w - right, y), grey, 1)
                cv2.putText(canvas, f"{v:g}", (8, y + 5), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (w - right, h - bottom), black, 1)
    for cat in cats:
        x, _ = xy(cat, 10**lo)
        cv2.putText(
            canvas,
            f"{cat[0]} b{cat[1]}",
            (x - 28, h - bottom + 22),
            font,
            0.45,
            black,
            1,
            cv2.LINE_AA,
        )
    cv2.putText(
        canvas,
        f"ms per image (log) - {report.settings['model']}, "
        f"{','.join(report.settings['taps'])}, {report.device}",
        (left, 30),
        font,
        0.55,
        black,
        1,
        cv2.LINE_AA,
    )
    cv2.putText(
        canvas,
        "resolution, batch",
        ((left + w - right) // 2 - 60, h - 20),
        font,
        0.5,
        black,
        1,
        cv2.LINE_AA,
    )
    legend = list(series.items()) + ([("DIFT fp32 (b1)", dift)] if dift else [])
    for k, (name, points) in enumerate(legend):
        color = (214, 39, 40) if name.startswith("DIFT") else PLOT_COLORS[k % len(PLOT_COLORS)]
        pts = [xy(c, points[c]) for c in cats if c in points]
        if len(pts) > 1 and not name.startswith("DIFT"):
            cv2.polylines(canvas, [np.array(pts, np.int32)], False, color, 2, cv2.LINE_AA)
        for p in pts:
            if name.startswith("DIFT"):
                cv2.rectangle(canvas, (p[0] - 5, p[1] - 5), (p[0] + 5, p[1] + 5), color, -1)
            else:
                cv2.circle(canvas, p, 5, color, -1, cv2.LINE_AA)
        ly = top + 20 + 20 * k
        cv2.line(canvas, (w - right + 12, ly - 5), (w - right + 37, ly - 5), color, 3)
        cv2.putText(canvas, name[:20], (w - right + 44, ly), font, 0.45, black, 1, cv2.LINE_AA)
    return save_png(path, canvas)
