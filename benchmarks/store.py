"""Dataset-scale extraction benchmark: `cleandift-rt extract SOURCES --out DIR`.

Measures, each run a separate `cleandift-rt extract` process (its peak RSS from wait4):

* a 1,000-image folder with 3 corrupt files extracted by `tiny` at 64² into a store (local
  engine): images/s, skipped, shards, bytes;
* images/s of the local engine and of Ray Data with 1 and 2 extractor actors on this CPU, on one
  folder of ``--ray-images`` images;
* peak RSS for 1,000 vs 10,000 small images (the streaming pipeline keeps it flat);
* bytes per image per tap and storage dtype (tiny at 64², and SD 2.1 at 768² from FACTS.md);
* projected time for SPair-71k with flips and for 1 M images on 1, 8 and 64 H200s from the FLOP
  count of one CleanDIFT us6 extraction at 768² and the dense bf16 peak (no GPU measured here).

    PYTHONPATH=$PWD python benchmarks/store.py --out benchmarks/results/store_cpu_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# FACTS.md: CleanDIFT us6 extraction at 768² (VAE encoder + U-Net to us6) and the measured
# dense bf16 peak of an H100/H200-class GPU
GFLOP_US6_768 = 3740.0
H200_BF16_TFLOPS = 790.0
SPAIR_IMAGES = 1800  # SPair-71k: 1,800 images (70,958 pairs), each extracted once; flips double it
SD21_TAPS_768 = {"mid": (1280, 12), "us3": (1280, 24), "us6": (1280, 48), "us9": (640, 96),
                 "us12": (320, 96)}  # fmt: skip
ITEMSIZE = {"fp16": 2, "bf16": 2, "fp32": 4}


def make_folder(folder: Path, n: int, corrupt: int = 0, seed: int = 0) -> None:
    """``n`` small PNGs (24..47 x 32..55 px) in 10 subfolders; the last ``corrupt`` are garbage."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"d{i % 10}" / f"img{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if i >= n - corrupt:
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(64))
        else:
            h, w = 24 + int(rng.integers(0, 24)), 32 + int(rng.integers(0, 24))
            cv2.imwrite(str(path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def run_extract(source: Path, out: Path, *extra: str) -> dict:
    """One `cleandift-rt extract` process: its --json summary, wall time and peak RSS (MiB)."""
    cmd = [sys.executable, "-m", "cleandift_rt.cli", "extract", str(source), "--model", "tiny",
           "--resolution", "64", "--device", "cpu", "--out", str(out), "--json",
           *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    # the child has been reaped by communicate; its rusage is in RUSAGE_CHILDREN's maximum
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {stderr.decode()[-2000:]}")
    summary = json.loads(stdout)
    summary["wall_s"] = round(wall, 2)
    summary["command"] = " ".join(["cleandift-rt", *cmd[3:]])
    return summary


def peak_rss_mib(source: Path, out: Path, *extra: str) -> tuple[dict, float]:
    """run_extract in a fresh helper process, so RUSAGE_CHILDREN holds only this run's peak."""
    code = (
        "import json, resource, sys; sys.path.insert(0, sys.argv[1] + '/benchmarks');"
        "from store import run_extract;"
        "s = run_extract(*sys.argv[2:4], *sys.argv[4:]);"
        "s['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024;"
        "print(json.dumps(s))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(source), str(out), *extra],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    summary = json.loads(done.stdout)
    return summary, summary["peak_rss_mib"]


def bytes_per_image() -> dict:
    out = {"tiny_64": {}, "sd21_768": {}}
    for storage, item in ITEMSIZE.items():
        out["tiny_64"][storage] = {"us6": 64 * 4 * 4 * item, "mid": 128 * 1 * 1 * item}
        out["sd21_768"][storage] = {t: c * s * s * item for t, (c, s) in SD21_TAPS_768.items()}
    return out


def projections() -> dict:
    """Hours for SPair-71k with flips and for 1 M images at the FLOP floor and at 40 % MFU."""
    floor_s = GFLOP_US6_768 / (H200_BF16_TFLOPS * 1e3)
    jobs = {"spair71k_flips": 2 * SPAIR_IMAGES, "1M_images": 1_000_000}
    table = {}
    for name, n in jobs.items():
        table[name] = {
            f"{gpus}xH200": {
                "floor_h": round(n * floor_s / gpus / 3600, 4),
                "at_40pct_mfu_h": round(n * floor_s / 0.4 / gpus / 3600, 4),
            }
            for gpus in (1, 8, 64)
        }
    us6_fp16 = 1280 * 48 * 48 * 2
    return {
        "basis": f"CleanDIFT us6 at 768² = {GFLOP_US6_768:.0f} GFLOP (FACTS.md, flop_counter), "
        f"dense bf16 peak {H200_BF16_TFLOPS:.0f} TFLOP/s (FACTS.md); floor "
        f"{floor_s * 1e3:.2f} ms/image; no GPU was lent to this run, so no measured GPU time",
        "images": jobs,
        "hours": table,
        "store_gb_us6_fp16": {k: round(n * us6_fp16 / 1e9, 1) for k, n in jobs.items()},
        "decode_note": "at the 40 % MFU rate one H200 takes ~85 images/s; decode+resize of a "
        "500x375 JPEG to 768² is measured below per CPU core",
        "write_mb_per_s_per_gpu_us6_fp16": round(0.4 / floor_s * us6_fp16 / 1e6, 1),
        "write_note": "the Ray driver writes every shard: at ~0.5 GB/s of us6 fp16 maps per GPU, "
        "its disk or network, not the GPUs, bounds a 64-GPU run (bf16/fp16 and fewer taps help)",
    }


def decode_rate() -> float:
    """Images/s of one core decoding a 500x375 JPEG and resizing it to 768² (SPair-like)."""
    from cleandift_rt.imaging import prepare_image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        rng = np.random.default_rng(0)
        base = cv2.resize(rng.integers(0, 255, (47, 63, 3), dtype=np.uint8), (500, 375))
        cv2.imwrite(str(path), base)
        prepare_image(str(path), 768)
        start, n = time.perf_counter(), 20
        for _ in range(n):
            prepare_image(str(path), 768)
        return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/store_cpu_tiny.json")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--ray-images", type=int, default=200)
    parser.add_argument("--rss-counts", default="1000,10000")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    batch = ["--batch-size", str(args.batch_size)]
    work = Path(tempfile.mkdtemp(prefix="cleandift-store-bench-"))
    report: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"{platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        # 1. the 1,000-image folder with 3 corrupt files
        folder = work / "folder"
        make_folder(folder, args.images, corrupt=3)
        summary, rss = peak_rss_mib(folder, work / "store1000", *batch)
        report["folder_1000"] = {**summary, "peak_rss_mib": round(rss, 1)}
        print("1,000-image folder:", json.dumps(report["folder_1000"]), flush=True)
        # 2. local vs Ray with 1 and 2 actors on the same smaller folder
        small = work / "small"
        make_folder(small, args.ray_images, seed=1)
        engines = {"local": run_extract(small, work / "s_local", *batch, "--workers", "2")}
        if not args.skip_ray:
            for n in (1, 2):
                engines[f"ray_{n}_workers"] = run_extract(
                    small, work / f"s_ray{n}", *batch, "--engine", "ray", "--workers", str(n),
                    "--cpus-per-decoder", "0.5",
                )  # fmt: skip
        report["engines"] = {
            k: {key: v[key] for key in ("images", "seconds", "images_per_s", "wall_s", "command")}
            for k, v in engines.items()
        }
        print("engines:", json.dumps(report["engines"]), flush=True)
        # 3. peak RSS vs number of images
        rss_rows = {}
        for count in (int(c) for c in args.rss_counts.split(",")):
            if count == args.images:  # the 1,000-image folder run above is this row
                first = report["folder_1000"]
                rss_rows[str(count)] = {k: first[k] for k in ("peak_rss_mib", "images_per_s",
                                                              "shards", "bytes")}  # fmt: skip
                continue
            f = work / f"rss{count}"
            make_folder(f, count, seed=2)
            summary, rss = peak_rss_mib(f, work / f"rss_store{count}", *batch)
            rss_rows[str(count)] = {
                "peak_rss_mib": round(rss, 1),
                "images_per_s": summary["images_per_s"],
                "shards": summary["shards"],
                "bytes": summary["bytes"],
            }
            shutil.rmtree(f)
            print(f"RSS {count}:", json.dumps(rss_rows[str(count)]), flush=True)
        report["peak_rss_by_images"] = rss_rows
        report["bytes_per_image"] = bytes_per_image()
        report["projection"] = projections()
        report["projection"]["decode_768_images_per_s_per_core"] = round(decode_rate(), 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
