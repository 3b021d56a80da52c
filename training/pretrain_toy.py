"""Pretrain the toy Stable Diffusion from scratch: ``python -m training.pretrain_toy``.

Two phases on random crops of the bundled training photos (training/toy_photos.py):

1. **vae**: a diffusers ``AutoencoderKL`` in SD's layout (4 levels, 8× down, 4 latent
   channels) at widths (32, 64, 64, 64): L1 reconstruction + ``edge_weight`` × L1 of the
   image gradients + ``kl_weight`` × KL per latent element. Then SD's latent scaling factor,
   1 / std of the posterior-mean latents of a fixed seeded sample of crops.
2. **unet**: a ``UNet2DConditionModel`` in SD 2.1's layout (block types, 2 layers per block,
   linear projections) at widths (32, 64, 64, 64): ε-prediction with SD's scaled-linear noise
   schedule on the frozen VAE's scaled latent samples, timesteps uniform over 0…999, and a
   fixed seeded context (1, 77, 32) standing for the empty-prompt text embedding.

``--init DIR`` continues from a trained toy SD folder (``<out>/model`` of an earlier run, or the
bundled ``toy-base``) instead of fresh weights: its VAE, U-Net and context are the starting
point (a phase may then have 0 steps: that network is kept as it is), e.g. to widen the
training photos of a model trained on fewer (``make toy-weights`` does: stage 1 on scikit-image's
photos, stage 2 on the Debian photos of training/toy_sources.py).

Adam with linear warm-up then cosine decay to 10 %, gradients clipped to norm 1. A step's
crops, noise and timesteps are drawn from generators seeded by (seed, phase, step), so a
resumed run is the uninterrupted one. Checkpoints (training/state.py) hold both networks and
the current phase's optimiser; SIGINT / SIGTERM saves one and exits.

Output: ``<out>/model/``, a diffusers Stable Diffusion folder (``unet/``, ``vae/``, the context
in ``cleandift_rt_prompt.safetensors``) that ``load_model`` and ``training.distill --teacher``
accept, with ``pretrain.json`` (recipe, losses, seconds per phase).
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm import tqdm

from cleandift_rt.errors import CleanDIFTError
from cleandift_rt.extractor import resolve_device
from cleandift_rt.files import atomic_path, write_json
from cleandift_rt.models.checkpoint import atomic_save
from cleandift_rt.models.configs import CONTEXT_TOKENS, scaled_unet_config, scaled_vae_config
from cleandift_rt.models.noise import NUM_TRAIN_TIMESTEPS, add_noise, sd_alphas_cumprod
from cleandift_rt.models.prompt import STORED_EMBEDDING

from .metrics import MetricsLogger
from .state import latest_state, list_checkpoints, restore_rng, save_state
from .stop import StopFlag, report_run
from .toy_photos import random_crops, training_photos

UNET_WIDTH = 32  # U-Net widths (32, 64, 64, 64), 8-channel attention heads
VAE_WIDTH = 32  # VAE widths (32, 64, 64, 64)
CONTEXT_DIM = 32
MODEL_DIR = "model"
SUMMARY_FILE = "pretrain.json"
SCALE_SAMPLES = 64  # crops whose latent std gives the scaling factor
PHASES = ("vae", "unet")
RECIPE_KEYS = (
    "vae_steps",
    "unet_steps",
    "vae_batch",
    "unet_batch",
    "vae_crop",
    "unet_crop",
    "vae_lr",
    "unet_lr",
    "warmup",
    "kl_weight",
    "edge_weight",
    "seed",
    "images",
    "init",
)


@dataclass
class PretrainConfig:
    out: str
    vae_steps: int = 900
    unet_steps: int = 2200
    vae_batch: int = 8
    unet_batch: int = 16
    vae_crop: int = 96
    unet_crop: int = 128
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    warmup: int = 100
    kl_weight: float = 1e-4
    edge_weight: float = 0.5
    seed: int = 0
    images: str | None = None
    init: str | None = None
    resume: bool = False
    log_every: int = 25
    save_every: int = 250
    keep: int = 2
    device: str = "auto"
    progress: bool = True


@dataclass
class PretrainResult:
    step: int
    interrupted: bool
    checkpoint: str | None = None
    model_dir: str | None = None
    scaling_factor: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def build_networks(seed: int) -> tuple[AutoencoderKL, UNet2DConditionModel, torch.Tensor]:
    """Freshly initialised (vae, unet, context (1, 77, 32)) drawn from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**scaled_vae_config(VAE_WIDTH))
        unet = UNet2DConditionModel(**scaled_unet_config("sd21", UNET_WIDTH, CONTEXT_DIM))
        context = torch.randn(1, CONTEXT_TOKENS, CONTEXT_DIM)
    return vae, unet, context


def load_init(folder: str, vae, unet) -> tuple[torch.Tensor, dict]:
    """Load a toy SD folder's VAE and U-Net weights (as float32) into ``vae`` / ``unet``
    (same architecture); returns its context (1, 77, 32) and {file: SHA-256} of what it read."""
    from safetensors.torch import load_file

    from cleandift_rt.models.bundled import sha256_of

    root = Path(folder)
    files = {sub: root / sub / "diffusion_pytorch_model.safetensors" for sub in ("vae", "unet")}
    files["context"] = root / STORED_EMBEDDING
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise CleanDIFTError(f"--init '{folder}' is not a toy SD folder (missing {missing[0]})")
    for sub, net in (("vae", vae), ("unet", unet)):
        state = {k: v.float() for k, v in load_file(str(files[sub])).items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CleanDIFTError(
                f"--init '{folder}': its {sub} is not the toy architecture ({str(exc)[:80]}…)"
            ) from None
    context = load_file(str(files["context"]))["context"].float()
    return context, {f"{k}": sha256_of(p) for k, p in files.items()}


def _unit(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, S, S, 3) → float (B, 3, S, S) in [-1, 1]."""
    return torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _generators(seed: int, phase: str, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The (crop, noise) generators of one step: a function of (seed, phase, step) only."""
    key = [seed, PHASES.index(phase), step]
    torch_seed = int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)
    return np.random.default_rng(key), torch.Generator().manual_seed(torch_seed)


def _edges(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def vae_loss(vae: AutoencoderKL, x: torch.Tensor, gen: torch.Generator, cfg: PretrainConfig):
    """(total, parts) for images x (B, 3, S, S) in [-1, 1]; parts are detached 0-d tensors."""
    posterior = vae.encode(x).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=gen).to(x.device)
    recon = vae.decode(posterior.mean + posterior.std * eps).sample
    l1 = (recon - x).abs().mean()
    edge = sum((a - b).abs().mean() for a, b in zip(_edges(recon), _edges(x)))
    kl = posterior.kl().mean() / posterior.mean[0].numel()
    total = l1 + cfg.edge_weight * edge + cfg.kl_weight * kl
    return total, {"l1": l1.detach(), "edge": edge.detach(), "kl": kl.detach()}


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, photos, cfg: PretrainConfig, device) -> float:
    """1 / std of posterior-mean latents over SCALE_SAMPLES seeded crops (SD's recipe)."""
    rng = np.random.default_rng([cfg.seed, 99])
    crops = random_crops(photos, SCALE_SAMPLES, cfg.unet_crop, rng)
    means = [
        vae.encode(_unit(crops[i : i + 16], device)).latent_dist.mean
        for i in range(0, len(crops), 16)
    ]
    return float(1.0 / torch.cat(means).std())


def unet_loss(unet, vae, context, x, scale: float, gen: torch.Generator, alphas: torch.Tensor):
    """ε-prediction MSE for images x (B, 3, S, S) in [-1, 1] (VAE frozen)."""
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        eps_vae = torch.randn(posterior.mean.shape, generator=gen).to(x.device)
        latents = (posterior.mean + posterior.std * eps_vae) * scale
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(x),), generator=gen).to(x.device)
    noise = torch.randn(latents.shape, generator=gen).to(x.device)
    noisy = add_noise(latents, noise, t, alphas)
    pred = unet(noisy, t, context.expand(len(x), -1, -1)).sample
    return F.mse_loss(pred, noise)


def _schedule(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % at ``total``."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _check(cfg: PretrainConfig) -> None:
    for name in ("vae_steps", "unet_steps"):  # a phase may be skipped when continuing
        if getattr(cfg, name) < (0 if cfg.init else 1):
            raise CleanDIFTError(f"--{name.replace('_', '-')} must be at least 1 (0 with --init)")
    for name in ("vae_batch", "unet_batch", "log_every", "save_every"):
        if getattr(cfg, name) < 1:
            raise CleanDIFTError(f"--{name.replace('_', '-')} must be at least 1")
    for name, multiple in (("vae_crop", 8), ("unet_crop", 64)):  # VAE: 8×; SD: 8 × 8
        value = getattr(cfg, name)
        if value < 64 or value % multiple:
            flag = "--" + name.replace("_", "-")
            raise CleanDIFTError(f"{flag} must be a multiple of {multiple}, ≥ 64 (got {value})")
    if not (cfg.vae_lr > 0 and cfg.unet_lr > 0):
        raise CleanDIFTError("learning rates must be positive")


def save_model_folder(out: Path, vae, unet, context, summary: dict) -> Path:
    """Write ``<out>/model`` (a diffusers SD folder) via a temp folder and a rename."""
    final = out / MODEL_DIR
    with atomic_path(final) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        atomic_save({"context": context}, tmp / STORED_EMBEDDING, {"prompt": ""})
        write_json(tmp / SUMMARY_FILE, summary)
    return final


def pretrain(cfg: PretrainConfig) -> PretrainResult:
    """Run (or resume) both phases; returns where the model and checkpoints are."""
    _check(cfg)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise CleanDIFTError(f"--out '{out}' exists and is not a folder")
    state = None
    if cfg.resume:
        state = latest_state(out)
        if state is None:
            raise CleanDIFTError(f"no checkpoint in '{out / 'checkpoints'}' to resume from")
    elif list_checkpoints(out):
        raise CleanDIFTError(
            f"'{out}' already holds checkpoints: pass --resume to continue, or another --out"
        )
    recipe = {k: getattr(cfg, k) for k in RECIPE_KEYS}
    if state is not None:
        changed = [k for k in RECIPE_KEYS if state.config["recipe"].get(k) != recipe[k]]
        if changed:
            raise CleanDIFTError(
                f"cannot resume '{state.path}': it was trained with other "
                f"{', '.join('--' + k.replace('_', '-') for k in changed)}"
            )
    device = resolve_device(cfg.device)
    photos = training_photos(cfg.images)
    out.mkdir(parents=True, exist_ok=True)

    vae, unet, context = build_networks(cfg.seed)
    init_hashes = None
    if cfg.init is not None:
        context, init_hashes = load_init(cfg.init, vae, unet)
    nets = torch.nn.ModuleDict({"vae": vae, "unet": unet}).to(device)
    context = context.to(device)
    step = 0
    if state is not None:
        nets.load_state_dict(state.model, strict=True)
        step = state.step
    total = cfg.vae_steps + cfg.unet_steps
    logger = MetricsLogger(out, step if state else None, tensorboard=False)
    alphas = sd_alphas_cumprod().to(device)
    result = PretrainResult(step=step, interrupted=False)
    summary = dict(state.config.get("summary", {})) if state else {}
    if init_hashes is not None:
        summary["init_sha256"] = init_hashes
    scale = None

    with StopFlag() as stop:
        for phase in PHASES:
            first = 0 if phase == "vae" else cfg.vae_steps
            last = cfg.vae_steps if phase == "vae" else total
            if step >= last:
                continue
            net = nets[phase]
            nets.train(False)
            net.train(True)
            nets.requires_grad_(False)
            net.requires_grad_(True)
            lr = cfg.vae_lr if phase == "vae" else cfg.unet_lr
            optimizer = torch.optim.Adam(net.parameters(), lr=lr)
            scheduler = _schedule(optimizer, cfg.warmup, last - first)
            if state is not None and first < state.step <= last and state.step == step:
                optimizer.load_state_dict(state.optimizer)
                scheduler.load_state_dict(state.scheduler)
                restore_rng(state.rng["tensors"], state.rng)
            if phase == "unet":
                scale = latent_scaling_factor(nets["vae"], photos, cfg, device)
                nets["vae"].register_to_config(scaling_factor=scale)
            began, window = time.perf_counter(), []
            bar = tqdm(
                total=last - first,
                initial=step - first,
                desc=f"pretrain {phase}",
                unit="step",
                disable=not cfg.progress,
                dynamic_ncols=True,
            )
            while step < last:
                rng, gen = _generators(cfg.seed, phase, step)
                batch = cfg.vae_batch if phase == "vae" else cfg.unet_batch
                crop = cfg.vae_crop if phase == "vae" else cfg.unet_crop
                x = _unit(random_crops(photos, batch, crop, rng), device)
                if phase == "vae":
                    loss, parts = vae_loss(net, x, gen, cfg)
                else:
                    loss = unet_loss(net, nets["vae"], context, x, scale, gen, alphas)
                    parts = {}
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                window.append(loss.detach())  # no host sync per step
                bar.update(1)
                if step % cfg.log_every == 0 or step == last:
                    mean = torch.stack(window).mean().item()
                    logger.log(
                        {
                            "kind": phase,
                            "step": step,
                            "loss": mean,
                            "grad_norm": float(grad_norm),
                            "lr": scheduler.get_last_lr()[0],
                            **{k: float(v) for k, v in parts.items()},
                        }
                    )
                    bar.set_postfix(loss=f"{mean:.4f}")
                    result.losses[phase] = mean
                    window = []
                if stop.set or step % cfg.save_every == 0 or step == last:
                    seconds = summary.get(f"{phase}_seconds", 0.0) + time.perf_counter() - began
                    summary[f"{phase}_seconds"], began = seconds, time.perf_counter()
                    summary[f"{phase}_loss"] = result.losses.get(phase)
                    config = {"recipe": recipe, "summary": summary}
                    result.checkpoint = str(
                        save_state(out, step, nets, optimizer, scheduler, config, cfg.keep)
                    )
                if stop.set:
                    bar.close()
                    result.step, result.interrupted = step, True
                    tqdm.write(
                        f"interrupted at step {step}: state saved to {result.checkpoint}; "
                        "rerun with --resume",
                        file=sys.stderr,
                    )
                    logger.close()
                    return result
            bar.close()
    logger.close()
    if scale is None:  # resumed after the last step: recompute from the trained VAE
        scale = latent_scaling_factor(nets["vae"], photos, cfg, device)
        nets["vae"].register_to_config(scaling_factor=scale)
    summary |= {"scaling_factor": scale, "recipe": recipe, "photos": [n for n, _ in photos]}
    nets.cpu()
    folder = save_model_folder(out, nets["vae"], nets["unet"], context.cpu(), summary)
    result.step, result.model_dir, result.scaling_factor = step, str(folder), scale
    result.seconds = {p: summary.get(f"{p}_seconds", 0.0) for p in PHASES}
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--out", required=True, help="Run folder: checkpoints, metrics, model/.")
@click.option("--vae-steps", type=int, default=PretrainConfig.vae_steps)
@click.option("--unet-steps", type=int, default=PretrainConfig.unet_steps)
@click.option("--vae-batch", type=int, default=PretrainConfig.vae_batch)
@click.option("--unet-batch", type=int, default=PretrainConfig.unet_batch)
@click.option("--vae-crop", type=int, default=PretrainConfig.vae_crop, help="VAE crop side (px).")
@click.option(
    "--unet-crop", type=int, default=PretrainConfig.unet_crop, help="U-Net crop side (px)."
)
@click.option("--vae-lr", type=float, default=PretrainConfig.vae_lr)
@click.option("--unet-lr", type=float, default=PretrainConfig.unet_lr)
@click.option("--warmup", type=int, default=PretrainConfig.warmup, help="Warm-up steps per phase.")
@click.option("--kl-weight", type=float, default=PretrainConfig.kl_weight)
@click.option("--edge-weight", type=float, default=PretrainConfig.edge_weight)
@click.option("--seed", type=int, default=0, help="Seed of the weights, crops and noise.")
@click.option("--images", default=None, help="Extra image folder to train on.")
@click.option("--init", default=None, help="Continue from this toy SD folder (unet/, vae/).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out.")
@click.option("--log-every", type=int, default=PretrainConfig.log_every)
@click.option("--save-every", type=int, default=PretrainConfig.save_every)
@click.option("--keep", type=int, default=PretrainConfig.keep, help="Checkpoints kept (0: all).")
@click.option("--device", default="auto", help="auto, cpu or cuda[:N].")
@click.option("--progress/--no-progress", default=True, help="Progress bars on stderr.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def cli(as_json: bool, **flags) -> None:
    """Pretrain the toy Stable Diffusion (VAE, then U-Net) on the bundled photos."""
    result = pretrain(PretrainConfig(**flags))
    scale = result.scaling_factor
    done = f"toy model: {result.model_dir} (latent scale {scale:.4f})" if scale else ""
    report_run(result, as_json, done)


def main(argv: list[str] | None = None) -> None:
    from cleandift_rt.console import run_console

    run_console(cli, argv, "python -m training.pretrain_toy")


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=FutureWarning)
    main()
