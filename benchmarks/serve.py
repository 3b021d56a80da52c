"""Load test of `cleandift-rt serve`: C concurrent clients, a fixed number of /v1/match requests,
against 1 and 2 replicas on a local Ray Serve (localhost only, bounded in requests and seconds).

Reports per replica count: p50 / p90 / p99 client latency, requests/s, the servers' batch-size
histogram for the timed requests, errors and lost requests (both must be 0), and how many answers
differ from a local ``FeatureExtractor.match`` on the same inputs (must be 0; a tie between
neighbouring pixels whose scores agree to 1e-4 counts as equal, see tests/test_serving.py).

    python benchmarks/serve.py --model tiny --resolution 128 --clients 8 --requests 256 \\
        --replicas 1,2 --out benchmarks/results/serve_cpu_tiny.json

Ray starts once; each replica count is its own Serve application on the same port.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cleandift_rt.serving.config import ServeConfig, free_port  # noqa: E402


def photos(count: int, max_side: int | None = None) -> list[np.ndarray]:
    """scikit-image's bundled photos (various sizes up to 512 px; shrunk so that the longer
    side is at most ``max_side``), cycled to ``count``."""
    import cv2
    from skimage import data

    names = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry"]
    images = []
    for name in names:
        im = np.ascontiguousarray(getattr(data, name)()[..., :3])
        if max_side and max(im.shape[:2]) > max_side:
            f = max_side / max(im.shape[:2])
            size = (max(1, round(im.shape[1] * f)), max(1, round(im.shape[0] * f)))
            im = cv2.resize(im, size, interpolation=cv2.INTER_AREA)
        images.append(im)
    return [images[i % len(images)] for i in range(count)]


def make_jobs(images: list[np.ndarray], distinct: int, points: int, seed: int = 0):
    """``distinct`` (source index, target index, points) requests."""
    rng = np.random.default_rng(seed)
    jobs = []
    for _ in range(distinct):
        a, b = rng.choice(len(images), 2, replace=False)
        h, w = images[a].shape[:2]
        pts = np.stack([rng.uniform(0, w - 1, points), rng.uniform(0, h - 1, points)], 1)
        jobs.append((int(a), int(b), pts.tolist()))
    return jobs


def same_match(reply: dict, want, atol: float = 1e-4) -> bool:
    target = np.array([m["target"] for m in reply["matches"]], dtype=np.float64)
    scores = np.array([m["score"] for m in reply["matches"]], dtype=np.float32)
    if target.shape != want.target_points.shape:
        return False
    moved = np.abs(target - want.target_points).max(axis=1)
    return bool(np.all(moved <= 1) and np.allclose(scores, want.scores, atol=atol))


def run_load(url: str, bodies: list[bytes], order: list[int], clients: int, deadline: float):
    """Send ``order`` (indices into bodies) from ``clients`` threads; returns per-request
    (index, status, latency_s, reply or None)."""
    import urllib.error
    import urllib.request

    results: list[tuple[int, int, float, dict | None]] = []
    lock = threading.Lock()
    cursor = iter(order)

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            request = urllib.request.Request(f"{url}/v1/match", data=bodies[i], method="POST")
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    status, reply = response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                status, reply = exc.code, None
            except OSError:
                status, reply = 0, None
            with lock:
                results.append((i, status, time.perf_counter() - start, reply))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def histogram_delta(after: dict, before: dict) -> dict[str, int]:
    keys = sorted({*after["batches"], *before["batches"]}, key=int)
    delta = {k: after["batches"].get(k, 0) - before["batches"].get(k, 0) for k in keys}
    return {k: v for k, v in delta.items() if v}


def machine() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import ray
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--artifact", default=None)
    p.add_argument("--taps", default="us6")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--device", default="auto", help="Of the replicas and the local reference.")
    p.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: the device's).")
    p.add_argument(
        "--score-atol",
        type=float,
        default=1e-4,
        help="Score tolerance vs the local reference (fp16 on a GPU: about 2e-3).",
    )
    p.add_argument("--replicas", default="1,2", help="Comma-separated replica counts.")
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--clients", type=int, default=8, help="Concurrent clients (C).")
    p.add_argument("--requests", type=int, default=256, help="Timed requests per replica count.")
    p.add_argument("--distinct", type=int, default=32, help="Distinct requests (cycled).")
    p.add_argument("--points", type=int, default=16, help="Points per request.")
    p.add_argument("--max-side", type=int, default=None, help="Shrink the photos to this side.")
    p.add_argument("--warmup", type=int, default=16, help="Untimed requests first.")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-seconds", type=float, default=600, help="Budget per replica count.")
    p.add_argument("--out", default=None, help="Write the results as JSON here.")
    args = p.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        p.error("the load test runs on localhost only (--host 127.0.0.1 or ::1)")
    replica_counts = [int(r) for r in args.replicas.split(",")]

    import ray
    import torch

    from cleandift_rt import FeatureExtractor
    from cleandift_rt.runtime import build_extractor
    from cleandift_rt.serving import start_server
    from cleandift_rt.serving.client import Client
    from cleandift_rt.serving.protocol import encode_image

    images = photos(6, args.max_side)
    jobs = make_jobs(images, args.distinct, args.points)
    torch.set_num_threads(1)  # the reference must not compete with the replicas for cores
    local: FeatureExtractor = build_extractor(args.model, args.taps, artifact=args.artifact,
                                              resolution=args.resolution, device=args.device,
                                              dtype=args.dtype)  # fmt: skip
    tap = local.taps[0]
    expected = [local.match(images[a], images[b], pts, tap=tap) for a, b, pts in jobs]
    encoded = [encode_image(im) for im in images]
    bodies = [json.dumps({"source": encoded[a], "target": encoded[b], "points": pts,
                          "tap": tap}).encode() for a, b, pts in jobs]  # fmt: skip

    report = {
        "command": shlex.join(["python", "benchmarks/serve.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "image_sizes": [list(im.shape[:2]) for im in images],
        "runs": [],
    }
    port = free_port(args.host)
    root = str(Path(__file__).resolve().parents[1])  # the replicas import this checkout
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})  # fmt: skip
    try:
        for replicas in replica_counts:
            config = ServeConfig(
                model=args.model, artifact=args.artifact, taps=args.taps,
                resolution=args.resolution, device=args.device, dtype=args.dtype, host=args.host,
                port=port,
                replicas=replicas, gpus_per_replica=args.gpus_per_replica,
                cpus_per_replica=args.cpus_per_replica, max_batch=args.max_batch,
                batch_wait_ms=args.batch_wait_ms, app_name=f"bench{replicas}",
            )  # fmt: skip
            t0 = time.perf_counter()
            server = start_server(config, check=False)
            started = time.perf_counter() - t0
            try:
                deadline = time.monotonic() + args.max_seconds
                warmup = [i % len(bodies) for i in range(args.warmup)]
                warm = run_load(server.url, bodies, warmup, args.clients, deadline)
                before = Client(server.url).stats()
                order = [i % len(bodies) for i in range(args.requests)]
                t0 = time.perf_counter()
                results = run_load(server.url, bodies, order, args.clients, deadline)
                wall = time.perf_counter() - t0
                after = Client(server.url).stats()
            finally:
                server.stop()
            ok = [r for r in results if r[1] == 200]
            latencies = np.array([r[2] for r in ok]) * 1e3
            mismatches = sum(not same_match(r[3], expected[r[0]], args.score_atol) for r in ok)
            phases = {k: round(float(np.median([r[3]["timing_ms"][k] for r in ok])), 1)
                      for k in ("decode", "extract", "match", "total")} if ok else {}  # fmt: skip
            histogram = histogram_delta(after, before)
            errors = sum(r[1] not in (200, 0) for r in results)
            run = {
                "replicas": replicas,
                "seconds_to_start": round(started, 1),
                "requests": args.requests,
                "answered": len(ok),
                "errors": errors,
                "lost": args.requests - len(ok) - errors,  # unanswered, or not sent in time
                "mismatches_vs_local": int(mismatches),
                "warmup_errors": sum(r[1] != 200 for r in warm),
                "seconds": round(wall, 3),
                "requests_per_s": round(len(ok) / wall, 2) if wall else None,
                "latency_ms": {
                    q: round(float(np.percentile(latencies, int(q[1:]))), 1) if len(ok) else None
                    for q in ("p50", "p90", "p99")
                },
                "server_ms_p50": phases,  # per phase, as the server timed it
                "batch_histogram": histogram,
                "mean_batch": round(sum(int(k) * v for k, v in histogram.items())
                                    / max(1, sum(histogram.values())), 2),
            }  # fmt: skip
            report["runs"].append(run)
            print(json.dumps(run), flush=True)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    bad = any(r["errors"] or r["lost"] or r["mismatches_vs_local"] for r in report["runs"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
