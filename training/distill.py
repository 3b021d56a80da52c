"""`python -m training.distill`: distil a CleanDIFT student from a Stable Diffusion teacher.

    python -m training.distill --teacher sd21 --data photos/ --out runs/sd21
    torchrun --nproc_per_node 8 -m training.distill --teacher sd21 --data photos/ --out runs/sd21

The recipe (../shared/FACTS.md, "Distillation recipe") with every value a flag, by default
exactly CompVis/cleandift's released training code: SwiGLU heads, a VAE posterior sample per
image for teacher and student (``--latent``), teacher bins ⌊1 + (k + u)·998/3⌋ (999 never
drawn), constant-with-warmup lr starting at 0, and teacher and student initialised from the
bf16-rounded U-Net (``--init-bf16-round``). Writes to --out:
``checkpoints/step-*.safetensors`` (resume state, every --save-every steps and on SIGINT /
SIGTERM), ``metrics.jsonl`` (+ ``tensorboard/`` when installed), and at the end
``<name>_unet.safetensors`` (diffusers U-Net keys; learned timestep, base and recipe in the
metadata) and ``<name>_full.safetensors`` (student + heads + timestep + empty-prompt context).
"""

from __future__ import annotations

import copy
import os
import random
import re
import sys
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
from tqdm import tqdm

from cleandift_rt.console import run_console
from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.models import load_model
from cleandift_rt.models.checkpoint import save_student_checkpoint, save_unet_file
from cleandift_rt.models.featurenet import INPUT_MULTIPLE
from cleandift_rt.protocol import DIFT_TIMESTEP

from . import ddp
from .captions import CaptionEncoder, text_encoder_folder
from .data import (
    DEFAULT_MIN_SIZE,
    ImageFolder,
    StepBatchSampler,
    make_loader,
    read_caption,
    scan_images,
    split_holdout,
)
from .metrics import MetricsLogger, peak_memory_bytes
from .objective import (
    LATENT_MODES,
    T_MAX,
    Student,
    Teacher,
    bin_edges,
    constant_with_warmup,
    cosine_loss,
    distillation_step,
    round_to_bf16_,
    step_generator,
    stratified_timesteps,
)
from .state import STATE_FORMAT, latest_state, list_checkpoints, read_state, restore_rng, save_state
from .stop import StopFlag, report_run
from .student_init import init_student

# --teacher short names → load_model names (the teacher is the *base* SD U-Net)
TEACHERS = {"sd21": "sd21-base", "sd15": "sd15-base", "toy": "toy-base", "tiny": "tiny"}
DISTILLED_TAPS = "mid," + ",".join(f"us{i}" for i in range(1, 11))  # K = 11; us11/us12 are not
INIT_TIMESTEP = float(DIFT_TIMESTEP)
# flags that must equal the checkpoint's on --resume (steps, logging and saving may change)
RECIPE_KEYS = (
    "teacher",
    "data",
    "batch_size",
    "resolution",
    "lr",
    "warmup",
    "bins",
    "taps",
    "seed",
    "precision",
    "init_timestep",
    "teacher_t_max",
    "base",
    "val_images",
    "min_size",
    "captions",
    "latent",
    "init_bf16_round",
)
# the recipe's revision, saved with it: 2 = the reference's SwiGLU mapping gate, posterior-sample
# latents, bins over [1, t_max), warm-up from lr 0 and bf16-rounded initial U-Net weights;
# checkpoints without one are revision 1 (they cannot resume: their heads gate differently)
RECIPE_REVISION = 2


@dataclass
class TrainConfig:
    """Every flag of ``python -m training.distill`` (see ``--help`` for units and defaults).

    batch_size is the global batch (images per optimiser step), split evenly over processes.
    """

    teacher: str
    data: str
    out: str
    steps: int = 400
    batch_size: int = 8
    resolution: int | None = None
    lr: float = 1e-5
    warmup: int = 2000
    bins: int = 3
    taps: str = DISTILLED_TAPS
    seed: int = 0
    precision: str = "fp32"
    compile: bool = False
    grad_checkpointing: bool = False
    resume: bool = False
    resume_from: str | None = None
    init_from: str | None = None
    base: str | None = None
    log_every: int = 10
    save_every: int = 100
    keep: int = 3
    val_every: int = 100
    val_images: int = 4
    workers: int = 4
    min_size: int = DEFAULT_MIN_SIZE
    captions: bool = True
    init_timestep: float = INIT_TIMESTEP
    teacher_t_max: int = T_MAX
    latent: str = "sample"
    init_bf16_round: bool = True
    device: str = "auto"
    name: str | None = None
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainResult:
    """What a run did. ``interrupted``: stopped by a signal (a checkpoint holds its state)."""

    step: int
    interrupted: bool
    checkpoint: str | None
    unet_file: str | None = None
    full_file: str | None = None
    loss: float | None = None
    timestep: float | None = None
    val_cos: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    skipped_images: int = 0
    seconds: float = 0.0


def _check(cfg: TrainConfig, world: int) -> None:
    positive = {"steps": cfg.steps, "batch-size": cfg.batch_size, "bins": cfg.bins}
    positive |= {"log-every": cfg.log_every, "save-every": cfg.save_every}
    positive |= {"val-every": cfg.val_every}
    for name, value in positive.items():
        if value < 1:
            raise CleanDIFTError(f"--{name} must be at least 1 (got {value})")
    for name, value in {"warmup": cfg.warmup, "keep": cfg.keep, "workers": cfg.workers}.items():
        if value < 0:
            raise CleanDIFTError(f"--{name} must be at least 0 (got {value})")
    if cfg.val_images < 0:
        raise CleanDIFTError(f"--val-images must be at least 0 (got {cfg.val_images})")
    if not cfg.bins <= cfg.teacher_t_max <= T_MAX:
        raise CleanDIFTError(
            f"--teacher-t-max must be in [--bins, {T_MAX}] (got {cfg.teacher_t_max})"
        )
    if not cfg.lr > 0:
        raise CleanDIFTError(f"--lr must be positive (got {cfg.lr})")
    if cfg.resolution is not None and (cfg.resolution < 64 or cfg.resolution % INPUT_MULTIPLE):
        raise CleanDIFTError(f"--resolution must be a multiple of 64 (got {cfg.resolution})")
    if cfg.latent not in LATENT_MODES:
        raise CleanDIFTError(f"--latent must be sample or mean (got {cfg.latent!r})")
    if cfg.precision not in ("fp32", "bf16"):
        raise CleanDIFTError(f"--precision must be fp32 or bf16 (got {cfg.precision})")
    if cfg.batch_size % world:
        raise CleanDIFTError(
            f"--batch-size {cfg.batch_size} (global) is not divisible by {world} processes"
        )


def _default_name(teacher: str) -> str:
    stem = Path(teacher).name if Path(teacher).expanduser().exists() else teacher
    return "cleandift_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-")


def _recipe(cfg: TrainConfig, resolution: int) -> dict:
    recipe = {k: getattr(cfg, k) for k in RECIPE_KEYS}
    recipe["data"] = str(Path(cfg.data).resolve())
    recipe["resolution"] = resolution
    recipe["revision"] = RECIPE_REVISION
    return recipe


def _check_resume(saved: dict, recipe: dict, path: Path) -> None:
    revision = saved.get("revision", 1)
    if revision != RECIPE_REVISION:
        what = (
            " (GELU mapping gate, bins over [1, t_max + 1), warm-up from lr/warmup, "
            "posterior-mean latents, fp32 initial weights)"
            if revision == 1
            else ""
        )
        raise CleanDIFTError(
            f"checkpoint {path} was written by distillation recipe revision {revision}{what} and "
            f"cannot continue under revision {RECIPE_REVISION}: finish it with the release that "
            "wrote it, or use a new --out"
        )
    for key in RECIPE_KEYS:
        value = saved.get(key)
        if value != recipe[key]:
            raise CleanDIFTError(
                f"--{key.replace('_', '-')} {recipe[key]!r} differs from the checkpoint's "
                f"{value!r} ({path}): resume with the same recipe or use a new --out"
            )


def _context_fn(cfg, ctx, loaded, teacher_name, paths, log) -> Callable[[list[str]], torch.Tensor]:
    """captions → context (1 or B, L, D) on the device."""
    empty = loaded.context.to(ctx.device)
    captioned = sum(1 for p in paths if read_caption(p)) if cfg.captions else 0
    if not captioned:
        return lambda captions: empty
    folder = text_encoder_folder(teacher_name)
    if folder is None:
        log(f"warning: {captioned} captions ignored: teacher '{cfg.teacher}' has no text encoder")
        return lambda captions: empty
    return CaptionEncoder(folder, loaded.context, ctx.device)


def _expand(context: torch.Tensor, bins: int) -> torch.Tensor:
    return context if context.shape[0] == 1 else context.repeat_interleave(bins, dim=0)


def _is_train_state(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == STATE_FORMAT
    except Exception:
        return False  # read_student_file gives the one-line reason


def _starting_point(cfg: TrainConfig, out: Path):
    """(training state to resume or None, student file to initialise from or None)."""
    if sum(map(bool, (cfg.resume, cfg.resume_from, cfg.init_from))) > 1:
        raise CleanDIFTError("give at most one of --resume, --resume-from and --init-from")
    start = cfg.resume_from or cfg.init_from
    if start is not None and not Path(start).is_file():
        raise CleanDIFTError(f"'{start}' does not exist (a checkpoint or a .safetensors file)")
    held = list_checkpoints(out)
    if cfg.resume:
        state = latest_state(out)
        if state is None:
            raise CleanDIFTError(f"no checkpoint in '{out / 'checkpoints'}' to resume from")
        return state, None
    if cfg.resume_from and _is_train_state(Path(cfg.resume_from)):
        state = read_state(Path(cfg.resume_from))
        if held and Path(cfg.resume_from).resolve() not in [p.resolve() for _, p in held]:
            raise CleanDIFTError(f"'{out}' already holds other checkpoints: use another --out")
        return state, None
    if held:
        raise CleanDIFTError(
            f"'{out}' already holds checkpoints: pass --resume to continue, or another --out"
        )
    return None, start  # a student file (weights, timestep, heads; a fresh optimiser)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def validate(
    cfg: TrainConfig,
    teacher: Teacher,
    student: Student,
    images: torch.Tensor,
    context: torch.Tensor,
) -> dict[str, float]:
    """Mean cosine per tap between head(student) and teacher on held-out images (V, R, R, 3),
    at each bin's centre timestep with fixed noise and, for ``--latent sample``, fixed posterior
    samples (seeded): comparable across steps."""
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    edges = bin_edges(cfg.bins, cfg.teacher_t_max)
    centres = ((edges[:-1] + edges[1:]) / 2).floor().long()
    sums: dict[str, float] = {}
    chunk = max(1, cfg.batch_size)
    device = images.device
    for start in range(0, images.shape[0], chunk):
        batch = images[start : start + chunk]
        n = batch.shape[0]
        ctx = context if context.shape[0] == 1 else context[start : start + chunk]
        hw = batch.shape[1] // teacher.encoder.stride
        noise = torch.randn((n * cfg.bins, 4, hw, hw), generator=gen).to(device)
        eps = torch.randn((n, 4, hw, hw), generator=gen).to(device)
        with _autocast(cfg, device):
            latent = teacher.latents(batch, eps if cfg.latent == "sample" else None)
            t = centres.repeat(n).to(device)
            target = teacher.features(
                latent.repeat_interleave(cfg.bins, 0), noise, t, _expand(ctx, cfg.bins)
            )
            pred = student(latent, ctx, t)
        _, cos = cosine_loss(pred, target)
        for tap, value in cos.items():
            sums[tap] = sums.get(tap, 0.0) + float(value) * n
    return {tap: v / images.shape[0] for tap, v in sums.items()}


def train(cfg: TrainConfig, on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Run (or resume) a distillation. ``on_step(step, record)`` is called after each step."""
    ctx = ddp.setup(cfg.device)
    try:
        return _train(cfg, ctx, on_step)
    finally:
        ddp.teardown(ctx)


def _train(cfg: TrainConfig, ctx: ddp.Dist, on_step) -> TrainResult:
    began = time.perf_counter()
    _check(cfg, ctx.world)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise CleanDIFTError(f"--out '{out}' exists and is not a folder")

    def log(message: str) -> None:
        if ctx.is_main:
            tqdm.write(message, file=sys.stderr)

    state, init_file = _starting_point(cfg, out)

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    teacher_name = TEACHERS.get(cfg.teacher, cfg.teacher)
    loaded = load_model(teacher_name, base=cfg.base)
    resolution = cfg.resolution or loaded.resolution
    recipe = _recipe(cfg, resolution)
    if state is not None:
        _check_resume(state.config, recipe, state.path)

    paths, report = scan_images(Path(cfg.data), cfg.min_size)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    train_paths, val_paths = split_holdout(paths, cfg.val_images, cfg.seed)
    if report.skipped:
        log(
            f"skipped {report.skipped} files: {len(report.unreadable)} unreadable, "
            f"{len(report.too_small)} smaller than {cfg.min_size} px"
        )
    contexts = _context_fn(cfg, ctx, loaded, cfg.base or teacher_name, paths, log)

    if ctx.device.type == "cuda" and cfg.precision == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = True  # the reference's fp32 + TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)  # heads' initial weights depend on the seed only
    if cfg.init_bf16_round:
        round_to_bf16_(loaded.unet)  # the teacher and the student's starting point alike
    student_unet = copy.deepcopy(loaded.unet)
    student = Student(student_unet, cfg.taps, cfg.init_timestep)
    if init_file is not None:
        init_student(student, init_file, log)
    student = student.to(ctx.device).train()
    student.requires_grad_(True)
    teacher = Teacher(loaded.vae, loaded.unet, cfg.taps).to(ctx.device)
    if cfg.grad_checkpointing:
        student.unet.enable_gradient_checkpointing()

    optimizer = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    scheduler = constant_with_warmup(optimizer, cfg.warmup)
    step = 0
    if state is not None:
        student.load_state_dict(state.model, strict=True)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        restore_rng(state.rng["tensors"], state.rng)
        step = state.step
        log(f"resumed from {state.path} at step {step}")
    if cfg.compile:
        teacher.compile_unet()
        student.compile_unet()
    model = student
    if ctx.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            student,
            device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True,  # up-block layers after the deepest tap never run
        )

    per_rank = cfg.batch_size // ctx.world
    sampler = StepBatchSampler(
        len(train_paths), per_rank, cfg.seed, step, cfg.steps, ctx.rank, ctx.world
    )
    dataset = ImageFolder(train_paths, resolution)
    loader = make_loader(dataset, sampler, cfg.workers, pin_memory=ctx.device.type == "cuda")

    logger = MetricsLogger(out, step if state else None, cfg.tensorboard) if ctx.is_main else None
    if logger and logger.note:
        log(logger.note)
    val_images = val_context = None
    if ctx.is_main and val_paths:
        held = ImageFolder(val_paths, resolution)
        items = [held[i] for i in range(len(held))]
        val_images = torch.stack([s["image"] for s in items]).to(ctx.device)
        val_context = contexts([s["caption"] for s in items])

    def run_validation() -> dict[str, float]:
        if val_images is None:
            return {}
        student.eval()
        cos = validate(cfg, teacher, student, val_images, val_context)
        student.train()
        mean = sum(cos.values()) / len(cos)
        logger.log({"kind": "val", "step": step, "mean_cos": mean, "cos": cos})
        return cos

    val_cos = run_validation() if ctx.is_main and state is None else {}
    latent_hw = resolution // teacher.encoder.stride
    images_seen, window_start, window_steps = 0, time.perf_counter(), 0
    skipped = report.skipped
    loss_value = ips = None
    checkpoint = str(state.path) if state else None
    interrupted = False
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        desc="distill",
        unit="step",
        disable=not (ctx.is_main and cfg.progress),
        dynamic_ncols=True,
    )
    autocast = _autocast(cfg, ctx.device)
    with StopFlag() as stop:
        for batch in loader:
            gen = step_generator(cfg.seed, step)
            k = cfg.bins
            t_all = stratified_timesteps(cfg.batch_size, k, gen, cfg.teacher_t_max)
            noise_all = torch.randn((cfg.batch_size * k, 4, latent_hw, latent_hw), generator=gen)
            eps_all = torch.randn((cfg.batch_size, 4, latent_hw, latent_hw), generator=gen)
            mine = slice(ctx.rank * per_rank * k, (ctx.rank + 1) * per_rank * k)
            my_images = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
            t = t_all[mine].to(ctx.device, non_blocking=True)
            noise = noise_all[mine].to(ctx.device, non_blocking=True)
            eps = eps_all[my_images].to(ctx.device) if cfg.latent == "sample" else None
            images = batch["image"].to(ctx.device, non_blocking=True)
            context = contexts(batch["caption"])
            skipped += batch["skipped"]

            lr = optimizer.param_groups[0]["lr"]  # this step's (the scheduler then moves on)
            loss, cos = distillation_step(
                teacher, model, optimizer, scheduler, images, context, t, noise, autocast, eps
            )
            step += 1
            images_seen += cfg.batch_size
            window_steps += 1
            bar.update(1)

            record: dict = {"step": step}
            if step % cfg.log_every == 0 or step == cfg.steps:
                values = torch.stack([loss, *cos.values()])
                values = ddp.all_mean(values.float(), ctx).tolist()
                elapsed = time.perf_counter() - window_start
                ips = window_steps * cfg.batch_size / max(elapsed, 1e-9)
                loss_value = values[0]
                record |= {
                    "kind": "train",
                    "loss": loss_value,
                    "cos": dict(zip(cos, values[1:])),
                    "loss_per_tap": {tap: -v for tap, v in zip(cos, values[1:])},
                    "timestep": float(student.timestep.detach()),
                    "lr": lr,
                    "images_per_s": ips,
                    "peak_memory_bytes": peak_memory_bytes(ctx.device),
                    "images_seen": images_seen,
                    "skipped_images": skipped,
                }
                if logger:
                    logger.log(record)
                bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{ips:.2f}")
                window_start, window_steps = time.perf_counter(), 0
            if ctx.is_main and (step % cfg.val_every == 0 or step == cfg.steps):
                val_cos = run_validation()
            if on_step is not None:
                on_step(step, record)
            interrupted = ddp.any_rank(stop.set, ctx)
            if interrupted or step % cfg.save_every == 0 or step == cfg.steps:
                if ctx.is_main:
                    checkpoint = str(
                        save_state(out, step, student, optimizer, scheduler, recipe, cfg.keep)
                    )
                ddp.barrier(ctx)
            if interrupted:
                log(f"interrupted at step {step}: state saved to {checkpoint}; rerun with --resume")
                break
    bar.close()

    result = TrainResult(
        step=step,
        interrupted=interrupted,
        checkpoint=checkpoint,
        loss=loss_value,
        timestep=float(student.timestep.detach()),
        val_cos=val_cos,
        images_per_s=ips,
        skipped_images=skipped,
    )
    if ctx.is_main and not interrupted:
        name = cfg.name or _default_name(cfg.teacher)
        source = cfg.base or teacher_name  # the pipeline the teacher really came from
        base = source if not Path(source).expanduser().exists() else str(Path(source).resolve())
        extra = {"recipe": recipe, "steps": step, "producer": "cleandift-rt training.distill"}
        unet_file, full_file = out / f"{name}_unet.safetensors", out / f"{name}_full.safetensors"
        save_unet_file(unet_file, student.unet, float(student.timestep.detach()), base, extra)
        save_student_checkpoint(
            full_file,
            student.unet,
            student.timestep.detach(),
            base,
            heads_state=student.heads.state_dict(),
            context=loaded.context,
            extra=extra,
        )
        result.unet_file, result.full_file = str(unet_file), str(full_file)
    if logger:
        logger.close()
    result.seconds = time.perf_counter() - began
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option(
    "--teacher", default="sd21", help="sd21, sd15, toy, tiny, random:sd21, or a diffusers folder."
)
@click.option("--data", required=True, help="Image folder (jpg/png/webp, nested or flat).")
@click.option("--out", required=True, help="Run folder: checkpoints, metrics, student files.")
@click.option("--steps", type=int, default=400, help="Optimiser steps in total.")
@click.option("--batch-size", type=int, default=8, help="Images per step (global, all processes).")
@click.option("--resolution", type=int, default=None, help="Square input (px); default: teacher's.")
@click.option("--lr", type=float, default=1e-5, help="Adam learning rate after warm-up.")
@click.option(
    "--warmup", type=int, default=2000, help="Linear warm-up steps (lr 0 at the first step)."
)
@click.option("--bins", type=int, default=3, help="Teacher timestep bins (noisy copies per image).")
@click.option("--taps", default=DISTILLED_TAPS, help="Distilled taps.")
@click.option("--seed", type=int, default=0, help="Seed of weights init, data order and noise.")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32")
@click.option("--compile/--no-compile", "compile_", default=False, help="torch.compile the U-Nets.")
@click.option("--grad-checkpointing/--no-grad-checkpointing", default=False)
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out.")
@click.option(
    "--resume-from",
    default=None,
    help="Continue from this training checkpoint (step-*.safetensors); a student file "
    "(as --init-from) starts from its weights with a fresh optimiser.",
)
@click.option(
    "--init-from",
    default=None,
    help="Start from a student file: CompVis' *_full (U-Net, learned timestep, heads), "
    "this project's *_full, or a *_unet file (fresh heads).",
)
@click.option(
    "--base",
    default=None,
    help="Replace the teacher's base pipeline (a hub preset's) with a diffusers folder or hub id.",
)
@click.option("--log-every", type=int, default=10, help="Steps between metric records.")
@click.option("--save-every", type=int, default=100, help="Steps between checkpoints.")
@click.option("--keep", type=int, default=3, help="Checkpoints kept (0: all).")
@click.option("--val-every", type=int, default=100, help="Steps between validations.")
@click.option("--val-images", type=int, default=4, help="Held-out images for validation.")
@click.option("--workers", type=int, default=4, help="DataLoader worker processes.")
@click.option("--min-size", type=int, default=DEFAULT_MIN_SIZE, help="Skip smaller images (px).")
@click.option("--captions/--no-captions", default=True, help="Use name.json captions.")
@click.option("--init-timestep", type=float, default=INIT_TIMESTEP, help="Student t at start.")
@click.option(
    "--teacher-t-max",
    type=int,
    default=T_MAX,
    help="Teacher timesteps: the bins split [1, this), this never drawn (the recipe: 999).",
)
@click.option(
    "--latent",
    type=click.Choice(LATENT_MODES),
    default="sample",
    help="Training latents: one VAE posterior sample per image, shared by teacher and student "
    "(the recipe), or the posterior mean (inference always uses the mean).",
)
@click.option(
    "--init-bf16-round/--no-init-bf16-round",
    default=True,
    help="Start teacher and student from the U-Net rounded to bf16 (the reference loads it in "
    "bf16 and trains in fp32).",
)
@click.option("--device", default="auto", help="auto, cpu, cuda[:N] (torchrun: per local rank).")
@click.option("--name", default=None, help="Student file prefix; default cleandift_<teacher>.")
@click.option("--tensorboard/--no-tensorboard", default=True, help="Also log to TensorBoard.")
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def cli(compile_: bool, as_json: bool, **flags) -> None:
    """Distil a CleanDIFT student from a Stable Diffusion teacher."""
    cfg = TrainConfig(compile=compile_, **flags)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    report_run(result, as_json, f"student: {result.unet_file}\nfull checkpoint: {result.full_file}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input → one ``error: ...`` line on stderr and exit status 2."""
    run_console(cli, argv, "python -m training.distill")


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=FutureWarning)
    main()
