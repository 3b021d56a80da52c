"""Distillation throughput: images/s and peak memory per training step, fp32 vs bf16, eager vs
torch.compile, measured in one process on synthetic uint8 images (no data loading).

    python benchmarks/training.py --teacher tiny --resolution 256 --batch-size 8 --bins 3
    python benchmarks/training.py --teacher random:sd21 --resolution 768 --batch-size 8  # GPU

Each variant builds a fresh teacher/student (the recipe's 11 taps, Adam, lr 1e-5), runs
--warmup steps (compilation happens there), then times --steps steps (CUDA-synchronised wall
time per step; median reported). FLOPs per step are counted once with
torch.utils.flop_counter on the meta device; on CUDA the bf16 matmul peak is measured in the
same run for MFU. Peak memory: CUDA max allocated per variant; on CPU the process's peak RSS
(cumulative over variants). --flops-only counts FLOPs and exits (any machine, any size).
Writes a JSON record (--out) and prints a table. The 400-step estimate is 400 × median step.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cleandift_rt.files import write_json  # noqa: E402
from cleandift_rt.models import DIFT_TIMESTEP, load_model  # noqa: E402
from training.distill import DISTILLED_TAPS, TEACHERS  # noqa: E402
from training.metrics import peak_memory_bytes  # noqa: E402
from training.objective import (  # noqa: E402
    Student,
    Teacher,
    distillation_step,
    stratified_timesteps,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_matmul_peak(device: torch.device) -> float | None:
    """Measured dense bf16 matmul throughput (FLOP/s) on CUDA, else None."""
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    sync(device)
    return 20 * 2 * 8192**3 / (time.perf_counter() - start)


def count_step_flops(args, loaded) -> dict[str, int]:
    """FLOPs of one distillation step by part, counted on the meta device (no memory, no time):
    VAE encoder, teacher U-Net (B·K noisy latents), student forward + heads, student backward."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from training.objective import cosine_loss

    b, k, r = args.batch_size, args.bins, args.resolution
    parts: dict[str, int] = {}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(loaded.unet.config)
        vae = AutoencoderKL.from_config(loaded.vae.config)
        student = Student(copy.deepcopy(unet), args.taps, float(DIFT_TIMESTEP))
        teacher = Teacher(vae, unet, args.taps)
        images = torch.zeros(b, r, r, 3, dtype=torch.uint8)
        context = torch.zeros(loaded.context.shape)
        t = torch.zeros(b * k, dtype=torch.long)
        noise = torch.zeros(b * k, 4, r // 8, r // 8)
        with FlopCounterMode(display=False) as counter:
            latent = teacher.latents(images)
        parts["vae_encoder"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            target = teacher.features(latent.repeat_interleave(k, 0), noise, t, context)
        parts["teacher_unet"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            loss, _ = cosine_loss(student(latent, context, t.float()), target)
        parts["student_forward_heads"] = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            loss.backward()
        parts["student_backward"] = counter.get_total_flops()
    return parts


def run_variant(args, loaded, precision: str, compiled: bool, device: torch.device) -> dict:
    """Build teacher + student, warm up, time steps; returns the measured record."""
    torch.manual_seed(0)
    student = (
        Student(copy.deepcopy(loaded.unet), args.taps, float(DIFT_TIMESTEP)).to(device).train()
    )
    student.requires_grad_(True)
    teacher = Teacher(loaded.vae, loaded.unet, args.taps).to(device)
    if args.grad_checkpointing:
        student.unet.enable_gradient_checkpointing()
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if compiled:
        teacher.compile_unet()
        student.compile_unet()
    autocast = torch.autocast(device.type, torch.bfloat16) if precision == "bf16" else nullcontext()
    b, k, r = args.batch_size, args.bins, args.resolution
    gen = torch.Generator().manual_seed(0)
    context = loaded.context.to(device)

    def inputs():
        images = torch.randint(0, 256, (b, r, r, 3), dtype=torch.uint8, generator=gen)
        t = stratified_timesteps(b, k, gen)
        noise = torch.randn((b * k, 4, r // 8, r // 8), generator=gen)
        return images.to(device), t.to(device), noise.to(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.warmup):
        distillation_step(
            teacher, student, optimizer, scheduler, *_order(inputs(), context), autocast
        )
    sync(device)
    warmup_s = time.perf_counter() - start

    times = []
    for _ in range(args.steps):
        batch = _order(inputs(), context)
        sync(device)
        t0 = time.perf_counter()
        loss, _ = distillation_step(teacher, student, optimizer, scheduler, *batch, autocast)
        loss.item()
        sync(device)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    record = {
        "precision": precision,
        "compile": compiled,
        "step_s_median": median,
        "step_s_min": min(times),
        "images_per_s": b / median,
        "steps_400_min": 400 * median / 60,
        "peak_memory_gib": peak_memory_bytes(device) / 2**30,
        "warmup_s": warmup_s,
    }
    del student, teacher, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def _order(batch, context):
    images, t, noise = batch
    return images, context, t, noise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="tiny", help="tiny, random:sd21, random:sd15, ...")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bins", type=int, default=3)
    parser.add_argument("--taps", default=DISTILLED_TAPS)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--compile", default="off,on", help="off, on or off,on")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--flops-only", action="store_true", help="Count FLOPs, time nothing.")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference's fp32 setting
        torch.backends.cudnn.allow_tf32 = True
    loaded = load_model(TEACHERS.get(args.teacher, args.teacher))
    args.resolution = args.resolution or loaded.resolution
    peak = bf16_matmul_peak(device)
    flops = count_step_flops(args, loaded)
    step_flops = sum(flops.values())
    print(f"{step_flops / 1e12:.3f} TFLOP per step: {flops}", flush=True)
    variants = [
        (precision, compiled == "on")
        for compiled in args.compile.split(",")
        for precision in args.precisions.split(",")
    ]
    payload = {
        "teacher": args.teacher,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "bins": args.bins,
        "taps": args.taps,
        "grad_checkpointing": args.grad_checkpointing,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bf16_matmul_peak_tflops": peak / 1e12 if peak else None,
        "flops_per_step": flops,
        "command": " ".join(sys.argv),
        "results": [],
    }
    if args.out:
        write_json(args.out, payload)
    for precision, compiled in [] if args.flops_only else variants:
        rec = run_variant(args, loaded, precision, compiled, device)
        rec["achieved_tflops"] = step_flops / rec["step_s_median"] / 1e12
        if peak:
            rec["mfu_vs_bf16_peak"] = step_flops / rec["step_s_median"] / peak
        payload["results"].append(rec)
        print(
            f"{precision:5s} compile={'on ' if compiled else 'off'} "
            f"{rec['images_per_s']:8.2f} img/s  step {rec['step_s_median'] * 1e3:9.1f} ms  "
            f"400 steps {rec['steps_400_min']:7.2f} min  peak {rec['peak_memory_gib']:6.2f} GiB"
            f"  (warm-up {rec['warmup_s']:.0f} s)",
            flush=True,
        )
        if args.out:  # after every variant: a long compile that times out loses nothing
            write_json(args.out, payload)


if __name__ == "__main__":
    main()
