"""C++ CPU matcher vs the Python matcher (low-resolution torch method), one process.

Usage: ``python cpp_bindings/python/bench_matcher.py [--threads N] [--repeats R] [--cuda]``
(after ``make test-cpp``; the extension is read from cpp_bindings/build/python). Prints one JSON
line per case: median seconds of each backend, their ratio and whether the argmaxes agree
(equal, or near-ties within 1e-5 of the best score). ``--cuda`` adds the CUDA matcher and the
Triton kernel when both are available.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cleandift_rt.matching import PixelGrid, cosine_argmax_lowres

BUILD = Path(__file__).resolve().parents[1] / "build" / "python"
sys.path.insert(0, str(BUILD))
import cleandift_rt_cpp as cpp  # noqa: E402

# (name, C, h, w, H, W, K): SD 2.1 taps at 768 px and a DIFT-like evaluation size.
CASES = [
    ("us6@768 K=256", 1280, 48, 48, 768, 768, 256),
    ("us6@768 K=1024", 1280, 48, 48, 768, 768, 1024),
    ("us9@768 K=256", 640, 96, 96, 768, 768, 256),
    ("us3@768->480x640 K=256", 1280, 24, 24, 480, 640, 256),
]


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def agree(a_xy, a_scores, b_xy, b_scores) -> bool:
    same = (torch.as_tensor(a_xy) == torch.as_tensor(b_xy)).all(dim=1)
    close = (torch.as_tensor(a_scores) - torch.as_tensor(b_scores)).abs() <= 1e-5
    return bool((same | close).all())


def run_case(case: tuple, matcher, threads: int, repeats: int, cuda: bool) -> dict:
    """Time one case on every available backend (same inputs)."""
    name, c, h, w, big_h, big_w, k = case
    g = torch.Generator().manual_seed(0)
    target = torch.randn(c, h, w, generator=g)
    queries = torch.randn(k, c, generator=g)
    grid = PixelGrid.interpolate((h, w), (big_h, big_w))
    cgrid = cpp.PixelGrid(*grid.size, *grid.scale, *grid.shift)
    t_np, q_np = target.numpy(), queries.numpy()
    py = cosine_argmax_lowres(queries, target, grid=grid)
    cc = matcher.cosine_argmax(q_np, t_np, cgrid)
    row = {
        "case": name,
        "threads": threads,
        "python_lowres_s": median_time(
            lambda: cosine_argmax_lowres(queries, target, grid=grid), repeats
        ),
        "cpp_cpu_s": median_time(lambda: matcher.cosine_argmax(q_np, t_np, cgrid), repeats),
        "agree": agree(cc[0], cc[1], py[0], py[1]),
    }
    row["speedup_cpp_vs_python"] = row["python_lowres_s"] / row["cpp_cpu_s"]
    if cuda and cpp.cuda_available():
        cu = cpp.cuda_cosine_argmax(q_np, t_np, cgrid)
        row["cuda_equals_cpu"] = bool((cu[0] == cc[0]).all() and (cu[1] == cc[1]).all())
        row["cpp_cuda_s"] = median_time(lambda: cpp.cuda_cosine_argmax(q_np, t_np, cgrid), repeats)
        if torch.cuda.is_available():
            from cleandift_rt.matching.triton_argmax import cosine_argmax_triton

            qd, td = queries.cuda(), target.cuda()

            def triton_run():
                cosine_argmax_triton(qd, td, grid=grid)
                torch.cuda.synchronize()

            row["triton_s"] = median_time(triton_run, repeats)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    matcher = cpp.Matcher(num_threads=args.threads)
    for case in CASES:
        print(
            json.dumps(run_case(case, matcher, args.threads, args.repeats, args.cuda)), flush=True
        )


if __name__ == "__main__":
    main()
