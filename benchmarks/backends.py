"""Backends side by side: latency, throughput and peak memory of one FeatureNet per backend.

    python benchmarks/backends.py --model tiny --resolutions 256 --batches 1,4 \
        --backends torch-fp32,torch-bf16,onnx-fp32,onnx-fp16,aoti-fp32 --json out.json

Every (backend, resolution, batch) is measured in its own worker process (so peak memory
belongs to that backend alone) with the harness of ``cleandift-rt bench``: warm-up, then timed
runs over rotating inputs (CUDA events on a GPU, perf_counter on the CPU), median and p90.
Exported artifacts are built first (without validation; the tests cover parity). Ratios are
to PyTorch eager fp32 measured in the same run. (``cleandift-rt bench`` measures in one
process and adds FLOPs, MFU, the DIFT baseline and the matcher.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from cleandift_rt.bench import latency_stats, machine_info, random_images, time_runs
from cleandift_rt.files import write_json

EXPORTED = {"onnx": "onnx", "aoti": "aoti", "trt": "engine"}


def make_runner(backend: str, precision: str, args, res: int, batch: int, workdir: Path):
    """The runner for one backend: torch eager, or an artifact exported for this shape."""
    from cleandift_rt.dtypes import DTYPES
    from cleandift_rt.extractor import resolve_device
    from cleandift_rt.models import load_model

    device = resolve_device(args.device)
    if backend == "torch":
        from cleandift_rt.backends import TorchRunner

        model = load_model(args.model).to(device, DTYPES[precision])
        return TorchRunner(model.feature_net(args.taps.split(",")))
    from cleandift_rt.cli.common import export_api
    from cleandift_rt.runtime import load_runner

    exporter = export_api()  # the checkout's export/, else the installed cleandift_rt.export
    ExportOptions, export_model = exporter.ExportOptions, exporter.export_model

    options = ExportOptions(model=args.model, taps=tuple(args.taps.split(",")), height=res,
                            width=res, batch=batch, precision=precision,
                            format=EXPORTED[backend], out=str(workdir), device=str(device),
                            validate=False)  # fmt: skip
    path = workdir / options.file_name(args.model)
    if not path.exists():
        export_model(options, log=lambda _: None)
    return load_runner(path, device)


def measure(runner, res: int, batch: int, seconds: float, warmup: int) -> dict:
    """Median / p90 latency (ms) over rotating uint8 inputs, throughput (images/s): the
    harness of ``cleandift-rt bench`` (cleandift_rt.bench)."""
    inputs = random_images(batch, res, runner.device, seed=0, n=4)
    times = time_runs(runner, inputs, runner.device, warmup, reps=3, min_time=seconds)
    stats = latency_stats(times, batch)
    return {k: stats[k] for k in ("median_ms", "p90_ms", "runs", "images_per_s")}


def worker(args) -> None:
    """One measurement; prints a JSON line."""
    backend, precision = args.worker.split("-")
    res, batch = args.res, args.batch
    runner = make_runner(backend, precision, args, res, batch, Path(args.workdir))
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        free_before = torch.cuda.mem_get_info()[0]
    result = measure(runner, res, batch, args.seconds, args.warmup)
    if runner.device.type == "cuda":
        result["peak_torch_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["device_used_mib"] = (free_before - torch.cuda.mem_get_info()[0]) / 2**20
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--taps", default="us6")
    parser.add_argument("--resolutions", default="256")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--backends", default="torch-fp32,torch-bf16,onnx-fp32,onnx-fp16,aoti-fp32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--res", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="cleandift-bench-"))
    for res in map(int, args.resolutions.split(",")):
        for batch in map(int, args.batches.split(",")):
            for backend in args.backends.split(","):
                cmd = [sys.executable, __file__, "--worker", backend, "--res", str(res),
                       "--batch", str(batch), "--workdir", str(workdir), "--model", args.model,
                       "--taps", args.taps, "--device", args.device, "--seconds",
                       str(args.seconds), "--warmup", str(args.warmup)]  # fmt: skip
                done = subprocess.run(cmd, capture_output=True, text=True)
                row = {"backend": backend, "resolution": res, "batch": batch}
                if done.returncode == 0:
                    row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                else:
                    row["error"] = (done.stderr.strip().splitlines() or ["failed"])[-1]
                rows.append(row)
                print(f"{backend:11s} {res:5d}² b{batch:<3d} "
                      + (f"{row['median_ms']:9.2f} ms  {row['images_per_s']:8.2f} img/s"
                         if "median_ms" in row else row["error"]), flush=True)  # fmt: skip
    for row in rows:  # ratio to PyTorch eager fp32 at the same shape, same run
        base = next((r for r in rows if r["backend"] == "torch-fp32" and "median_ms" in r
                     and (r["resolution"], r["batch"]) == (row["resolution"], row["batch"])),
                    None)  # fmt: skip
        if base and "median_ms" in row:
            row["speedup_vs_torch_fp32"] = base["median_ms"] / row["median_ms"]
    report = {"command": " ".join(sys.argv), "machine": machine_info(), "model": args.model,
              "taps": args.taps, "rows": rows}  # fmt: skip
    header = f"{'backend':11s} {'res':>5s} {'batch':>5s} {'median ms':>10s} {'p90 ms':>8s} "
    header += f"{'img/s':>8s} {'×fp32':>6s} {'peak RSS MiB':>12s}"
    print("\n" + header)
    for r in rows:
        if "median_ms" in r:
            print(
                f"{r['backend']:11s} {r['resolution']:5d} {r['batch']:5d} {r['median_ms']:10.2f} "
                f"{r['p90_ms']:8.2f} {r['images_per_s']:8.2f} "
                f"{r.get('speedup_vs_torch_fp32', float('nan')):6.2f} "
                f"{r['peak_rss_mib']:12.0f}"
            )
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
