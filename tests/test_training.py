"""Distillation training (`training/`) on the tiny model: CPU, small images, a few steps."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from cleandift_rt.errors import CleanDIFTError
from training.data import StepBatchSampler, read_caption, scan_images, split_holdout
from training.distill import TrainConfig, main, train
from training.heads import FeatureHeads
from training.objective import Student, Teacher, cosine_loss, stratified_timesteps
from training.state import latest_state, list_checkpoints, save_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread

REPO = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def write_photos(folder: Path, size: int = 96) -> Path:
    """Four scikit-image photos (one nested, one captioned) plus a corrupt and a tiny file."""
    from skimage import data

    (folder / "nested").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(PHOTOS):
        image = Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size))
        path = folder / ("nested" if i == 3 else "") / f"{name}.{'png' if i % 2 else 'jpg'}"
        image.save(path)
    (folder / "astronaut.json").write_text(json.dumps({"caption": "an astronaut"}))
    (folder / "corrupt.jpg").write_bytes(b"not an image")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "tiny.png")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    """A few-second tiny run: 64 px, global batch 2, two taps, large lr."""
    base = dict(
        teacher="tiny",
        data=str(data),
        out=str(out),
        steps=4,
        batch_size=2,
        resolution=64,
        lr=1e-3,
        warmup=0,
        taps="mid,us3",
        seed=0,
        log_every=1,
        save_every=100,
        val_every=100,
        val_images=1,
        workers=0,
        progress=False,
        tensorboard=False,
    )
    return TrainConfig(**{**base, **overrides})


def read_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def records(out: Path, kind: str) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


@pytest.fixture(scope="module")
def straight_run(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return out, train(config(photos, out))


# ---------------------------------------------------------------- units


def test_heads_start_as_identity_and_depend_on_t():
    torch.manual_seed(0)
    heads = FeatureHeads({"mid": 16, "us3": 8})
    feats = {"mid": torch.randn(3, 16, 2, 2), "us3": torch.randn(3, 8, 4, 4)}
    t = torch.tensor([5.0, 500.0, 990.0])
    out = heads(feats, t)
    for tap in feats:
        torch.testing.assert_close(out[tap], feats[tap], rtol=0, atol=0)
    for p in heads.parameters():  # move the zero-initialised layers: the output depends on t
        torch.nn.init.normal_(p, std=0.2)
    out = heads({"mid": feats["mid"][:1].expand(3, -1, -1, -1)}, t)["mid"]
    assert not torch.allclose(out[0], out[1]) and out.shape == (3, 16, 2, 2)


def reference_timesteps(u: torch.Tensor, t_min: int = 1, t_max: int = 999) -> torch.Tensor:
    """CompVis/cleandift's stratified draw for uniform u (B, N) in [0, 1): bin width
    (t_max − t_min) / N, t = long(t_min + u · width + k · width) for bin k."""
    width = (t_max - t_min) / u.shape[1]
    return (t_min + u * width + torch.arange(u.shape[1], dtype=u.dtype) * width).long()


def test_stratified_timesteps_follow_the_reference_rule():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    t = stratified_timesteps(20000, 3, gen()).view(20000, 3)
    u = torch.rand(20000, 3, generator=gen(), dtype=torch.float64)  # the draws it consumed
    assert t.dtype == torch.int64 and torch.equal(t, reference_timesteps(u))
    # the reference's bins for 3 bins over [1, 999]: every value reached, 999 never drawn
    ranges = [(int(t[:, k].min()), int(t[:, k].max())) for k in range(3)]
    assert ranges == [(1, 333), (333, 666), (666, 998)]
    assert t[:, 0].unique().numel() == 333  # uniform within the bin, not a constant


def test_stratified_timesteps_respect_a_smaller_range():
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    t = stratified_timesteps(4000, 4, gen(), t_max=400).view(4000, 4)
    u = torch.rand(4000, 4, generator=gen(), dtype=torch.float64)
    assert torch.equal(t, reference_timesteps(u, t_max=400))
    ranges = [(int(t[:, k].min()), int(t[:, k].max())) for k in range(4)]
    assert ranges == [(1, 100), (100, 200), (200, 300), (300, 399)]  # width 399 / 4


def test_warmup_is_constant_with_warmup_from_lr_zero():
    from transformers import get_constant_schedule_with_warmup

    from training.objective import constant_with_warmup

    def lrs(make_scheduler, steps=6):
        optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-5)
        scheduler = make_scheduler(optimizer)
        used = []
        for _ in range(steps):  # the lr each optimiser step runs with
            used.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return used

    ours = lrs(lambda o: constant_with_warmup(o, 4))
    # the definition: lr · step / warmup while step < warmup, then lr; steps count from 0
    assert ours == pytest.approx([1e-5 * s / 4 for s in range(4)] + [1e-5, 1e-5], abs=0)
    assert ours[0] == 0.0
    assert ours == pytest.approx(lrs(lambda o: get_constant_schedule_with_warmup(o, 4)), abs=0)
    assert lrs(lambda o: constant_with_warmup(o, 0), 2) == [1e-5, 1e-5]


def _reference_rms_norm(x, scale, eps=1e-6):
    return x * (scale * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _reference_ffn(x, norm_scale, w_up, w_down):
    """CompVis' FeedForwardBlock: skip + down(LinearSwiGLU(norm(x))), value half · SiLU(gate)."""
    value, gate = (_reference_rms_norm(x, norm_scale) @ w_up.T).chunk(2, dim=-1)
    return x + (value * torch.nn.functional.silu(gate)) @ w_down.T


def test_heads_gate_with_silu_as_the_reference():
    import math

    torch.manual_seed(0)
    heads = FeatureHeads({"us3": 8})
    for p in heads.parameters():  # every layer non-zero, so every gate matters
        torch.nn.init.normal_(p, std=0.3)
    t = torch.tensor([1.0, 261.0, 998.0])
    c = heads.conditioner
    # the reference conditioner: Fourier features of t / 999 → Linear → MappingNetwork
    f = 2 * math.pi * (t[:, None] / 999.0) @ c.fourier.weight.T
    x = torch.cat([f.cos(), f.sin()], dim=-1) @ c.proj.weight.T
    x = _reference_rms_norm(x, c.norm_in.scale)
    for block in c.blocks:
        x = _reference_ffn(x, block.norm.scale, block.up.weight, block.down.weight)
    cond = _reference_rms_norm(x, c.norm_out.scale)
    torch.testing.assert_close(c(t), cond, rtol=1e-5, atol=1e-6)

    # the reference head: 3 FeedForwardBlocks with AdaRMSNorm (scale 1 + Linear(cond)) per pixel
    feats = torch.randn(3, 8, 4, 4)
    h = feats.permute(0, 2, 3, 1).reshape(3, 16, 8)  # (B, h·w, C) as the reference's tokens
    for block in heads.heads["us3"].blocks:
        scale = 1 + (cond @ block.modulation.weight.T)[:, None, :]
        h = _reference_ffn(h, scale, block.up.weight, block.down.weight)
    expected = h.reshape(3, 4, 4, 8).permute(0, 3, 1, 2)
    torch.testing.assert_close(heads({"us3": feats}, t)["us3"], expected, rtol=1e-5, atol=1e-5)


def test_training_latent_is_one_posterior_sample_shared_by_teacher_and_student(tiny):
    import copy

    from training.objective import distillation_step

    torch.manual_seed(0)
    student = Student(copy.deepcopy(tiny.unet), "mid", 261.0)
    teacher = Teacher(copy.deepcopy(tiny.vae), copy.deepcopy(tiny.unet), "mid")  # freezes them
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    eps = torch.randn(2, 4, 8, 8)
    # the reference: diffusers' posterior sample μ + σ·ε, times SD's scaling factor
    with torch.no_grad():
        posterior = tiny.vae.encode(images.permute(0, 3, 1, 2).float() / 127.5 - 1).latent_dist
    expected = (posterior.mean + posterior.std * eps) * 0.18215
    torch.testing.assert_close(teacher.latents(images, eps), expected, rtol=1e-5, atol=1e-5)
    mean = teacher.latents(images)
    torch.testing.assert_close(mean, posterior.mean * 0.18215, rtol=1e-5, atol=1e-5)

    seen = {}

    def recording(name, features):
        def record(latent, *args):
            seen[name] = latent
            return features(latent, *args)

        return record

    teacher.features = recording("teacher", teacher.features)
    student.features = recording("student", student.features)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    t, noise = torch.tensor([100, 500, 900, 100, 500, 900]), torch.randn(6, 4, 8, 8)
    distillation_step(
        teacher, student, optimizer, scheduler, images, tiny.context, t, noise,
        contextlib.nullcontext(), eps,
    )  # fmt: skip
    sample = teacher.latents(images, eps)
    torch.testing.assert_close(seen["student"], sample)  # the clean sample, once per image
    torch.testing.assert_close(seen["teacher"], sample.repeat_interleave(3, 0))  # same, per bin
    assert (sample - mean).abs().max() > 1e-3


def test_sampler_is_a_function_of_step_and_shards_ranks():
    one = StepBatchSampler(5, 4, seed=3, start_step=0, end_step=6)
    ranks = [StepBatchSampler(5, 2, 3, 0, 6, rank=r, world=2) for r in range(2)]
    resumed = StepBatchSampler(5, 4, seed=3, start_step=4, end_step=6)
    full = list(one)
    assert [a + b for a, b in zip(*map(list, ranks))] == full
    assert list(resumed) == full[4:]
    stream = sum(full, [])
    assert sorted(stream[:5]) == list(range(5)) and sorted(stream[5:10]) == list(range(5))
    assert stream[:5] != stream[5:10]  # a new permutation each epoch


def test_scan_skips_and_counts_bad_files_and_reads_captions(photos, tmp_path):
    paths, report = scan_images(photos, min_size=64)
    assert len(paths) == 4 and report.usable == 4
    assert len(report.unreadable) == 1 and len(report.too_small) == 1
    assert read_caption(photos / "astronaut.jpg") == "an astronaut"
    assert read_caption(photos / "coffee.jpg") == ""
    train_paths, val_paths = split_holdout(paths, 1, seed=0)
    assert len(train_paths) == 3 and len(val_paths) == 1 and not set(train_paths) & set(val_paths)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CleanDIFTError, match="no usable image"):
        scan_images(tmp_path / "empty", min_size=64)


def test_teacher_and_vae_get_no_gradient(tiny):
    import copy

    student = Student(copy.deepcopy(tiny.unet), "mid,us3", 261.0)
    teacher = Teacher(tiny.vae, tiny.unet, "mid,us3")
    images = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    latent = teacher.latents(images)
    t = torch.tensor([100, 600, 200, 900])
    target = teacher.features(
        latent.repeat_interleave(2, 0), torch.randn(4, 4, 8, 8), t, tiny.context
    )
    loss, _ = cosine_loss(student(latent, tiny.context, t), target)
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None for p in tiny.vae.parameters())
    assert student.timestep.grad is not None and student.timestep.grad.abs() > 0
    assert student.unet.conv_in.weight.grad.abs().sum() > 0


def test_failed_write_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    import cleandift_rt.models.checkpoint as checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    save_state(tmp_path, 1, model, optimizer, scheduler, {"seed": 0}, keep=2)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def dies_mid_write(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial header")
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(checkpoint, "save_file", dies_mid_write)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        save_state(tmp_path, 2, model, optimizer, scheduler, {"seed": 0}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000001.safetensors"
    ]
    state = latest_state(tmp_path)
    assert state.step == 1 and state.optimizer["state"][0]["exp_avg"].shape == (2, 3)
    torch.testing.assert_close(state.model["weight"], saved["weight"], rtol=0, atol=0)

    monkeypatch.undo()
    for step in (2, 3, 4):
        save_state(tmp_path, step, model, optimizer, scheduler, {"seed": 0}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [3, 4]
    (tmp_path / "checkpoints" / "step-00000004.safetensors").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="cannot read checkpoint"):
        assert latest_state(tmp_path).step == 3


# ---------------------------------------------------------------- runs


@pytest.mark.slow
def test_loss_falls_and_cosine_rises(photos, tmp_path):
    out = tmp_path / "run"
    result = train(config(photos, out, steps=10, val_every=10))
    losses = [r["loss"] for r in records(out, "train")]
    val = records(out, "val")
    assert len(losses) == 10 and [r["step"] for r in val] == [0, 10]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.2, losses
    assert val[-1]["mean_cos"] > val[0]["mean_cos"] + 0.1, val
    assert result.timestep != 261.0 and result.skipped_images == 2
    first = records(out, "train")[0]
    assert set(first["cos"]) == {"mid", "us3"} and first["lr"] == 1e-3
    assert first["images_per_s"] > 0 and first["peak_memory_bytes"] > 0


@pytest.mark.slow
def test_resume_after_signal_reproduces_uninterrupted_run(photos, straight_run, tmp_path):
    out_a, straight = straight_run
    out_b = tmp_path / "interrupted"

    def interrupt(step, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train(config(photos, out_b), on_step=interrupt)
    assert stopped.interrupted and stopped.step == 2 and stopped.unet_file is None
    assert [s for s, _ in list_checkpoints(out_b)] == [2]
    with pytest.raises(CleanDIFTError, match="already holds checkpoints"):
        train(config(photos, out_b))
    with pytest.raises(CleanDIFTError, match="differs from the checkpoint"):
        train(config(photos, out_b, resume=True, lr=2e-3))
    resumed = train(config(photos, out_b, resume=True, workers=1))
    assert resumed.step == 4 and not resumed.interrupted

    a, _ = read_tensors(straight.full_file)
    b, _ = read_tensors(resumed.full_file)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in records(out_b, "train")]
    assert steps == [1, 2, 3, 4]  # the metrics log continues without duplicates
    assert [r["loss"] for r in records(out_b, "train")] == [
        r["loss"] for r in records(out_a, "train")
    ]


def test_first_step_runs_at_lr_zero_from_bf16_rounded_weights(photos, tmp_path, monkeypatch):
    import training.distill as distill
    from cleandift_rt.models import load_model

    eps_seen = []
    step = distill.distillation_step

    def recording_step(*args):
        eps_seen.append(args[-1])
        return step(*args)

    monkeypatch.setattr(distill, "distillation_step", recording_step)
    original = load_model("tiny").unet.state_dict()
    for rounded, latent in ((True, "sample"), (False, "mean")):
        out = tmp_path / latent
        result = train(
            config(photos, out, steps=1, warmup=2, init_bf16_round=rounded, latent=latent)
        )
        state, meta = read_tensors(result.unet_file)
        # lr 0 at the first step: the student is still its initial weights, bit for bit
        for key, value in original.items():
            expected = value.to(torch.bfloat16).float() if rounded else value
            assert torch.equal(state[key], expected), key
        assert result.timestep == 261.0 and records(out, "train")[0]["lr"] == 0.0
        recipe = json.loads(meta["recipe"])
        assert recipe["latent"] == latent and recipe["init_bf16_round"] is rounded
        assert recipe["revision"] == 2
    sample_eps, mean_eps = eps_seen
    assert sample_eps.shape == (2, 4, 8, 8) and mean_eps is None
    assert any(
        not torch.equal(v, v.to(torch.bfloat16).float()) for v in original.values()
    )  # the rounding is not a no-op on these weights


def test_checkpoint_of_the_older_recipe_is_refused_in_one_line(
    photos, straight_run, tmp_path, capsys
):
    from safetensors.torch import save_file

    out_a, _ = straight_run
    ((_, path),) = list_checkpoints(out_a)
    tensors, meta = read_tensors(path)
    state = json.loads(meta["state"])
    for key in ("revision", "latent", "init_bf16_round"):  # what revision-1 runs did not write
        del state["config"][key]
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    save_file(tensors, str(old / "checkpoints" / path.name), {**meta, "state": json.dumps(state)})
    args = ["--teacher", "tiny", "--data", str(photos), "--out", str(old), "--resume"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--steps", "6", "--resolution", "64", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: checkpoint ") and "recipe revision 1" in err[0]
    assert "new --out" in err[0]


@pytest.mark.slow
def test_student_files_load_strictly_and_through_from_pretrained(straight_run):
    from diffusers import UNet2DConditionModel

    from cleandift_rt import FeatureExtractor
    from cleandift_rt.models import load_model

    _, result = straight_run
    state, meta = read_tensors(result.unet_file)
    assert meta["format"] == "cleandift-rt.unet" and meta["base"] == "tiny"
    recipe = json.loads(meta["recipe"])
    assert recipe["lr"] == 1e-3 and recipe["bins"] == 3 and recipe["resolution"] == 64
    assert float(meta["timestep"]) == pytest.approx(result.timestep)
    unet = UNet2DConditionModel(**json.loads(meta["unet_config"]))
    unet.load_state_dict(state, strict=True)
    assert not torch.equal(state["conv_in.weight"], load_model("tiny").unet.conv_in.weight)

    images = np.stack([np.full((64, 64, 3), v, np.uint8) for v in (30, 200)])
    feats = {}
    for kind, path in (("unet", result.unet_file), ("full", result.full_file)):
        fx = FeatureExtractor.from_pretrained(path, taps=("us6",), device="cpu", dtype="fp32")
        assert fx.runner.net.timestep.item() == pytest.approx(result.timestep)
        feats[kind] = fx(list(images))["us6"]
    torch.testing.assert_close(feats["unet"], feats["full"])
    full, _ = read_tensors(result.full_file)
    assert any(k.startswith("heads.") for k in full) and "context" in full


def test_cli_errors_are_one_line(photos, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--data", str(empty), "--out", str(tmp_path / "o1")], "no usable image"),
        (["--data", str(photos), "--out", str(tmp_path / "o2"), "--resume"], "no checkpoint"),
        (["--data", str(photos), "--out", str(tmp_path / "o3"), "--steps", "0"], "--steps"),
        (["--data", str(photos), "--out", str(tmp_path / "o4"), "--resolution", "100"], "64"),
        (["--data", str(photos), "--out", str(tmp_path / "o5"), "--teacher-t-max", "2"], "t-max"),
    ]
    for args, expected in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["--teacher", "tiny", "--no-progress", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not any((tmp_path / f"o{i}" / "checkpoints").exists() for i in range(1, 6))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process(photos, straight_run, tmp_path):
    out_a, _ = straight_run
    out = tmp_path / "ddp"
    args = [
        *("--teacher", "tiny", "--data", str(photos), "--out", str(out), "--steps", "4"),
        *("--batch-size", "2", "--resolution", "64", "--lr", "1e-3", "--warmup", "0"),
        *("--taps", "mid,us3", "--log-every", "1", "--save-every", "100", "--val-every", "100"),
        *("--val-images", "1", "--workers", "0", "--no-progress", "--no-tensorboard", "--json"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    proc = subprocess.run(
        [*command, "-m", "training.distill", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # rank 0 only prints
    assert summary["step"] == 4 and Path(summary["unet_file"]).is_file()
    ddp_losses = [r["loss"] for r in records(out, "train")]
    single = [r["loss"] for r in records(out_a, "train")]
    np.testing.assert_allclose(ddp_losses, single, atol=2e-3)


@pytest.mark.slow
def test_exported_student_file_goes_through_cleandift_rt_export(straight_run, tmp_path):
    import onnx  # noqa: F401  (the export test dependency; missing → fail, not skip)

    from cleandift_rt.cli import main as cleandift_cli

    _, result = straight_run
    with pytest.raises(SystemExit) as exit_info:
        cleandift_cli(
            [
                *("export", "--model", result.unet_file, "--taps", "us3", "--resolution", "64"),
                *("--precision", "fp32", "--format", "onnx", "--device", "cpu"),
                *("--out", str(tmp_path), "--no-validate", "--json"),
            ]
        )
    assert exit_info.value.code == 0
    (sidecar,) = tmp_path.glob("*.onnx.json")
    assert json.loads(sidecar.read_text())["timestep"] == pytest.approx(result.timestep)


@pytest.mark.slow
def test_grad_checkpointing_matches_and_bf16_runs(photos, straight_run, tmp_path):
    out_a, _ = straight_run
    checkpointed = train(config(photos, tmp_path / "ckpt", steps=2, grad_checkpointing=True))
    assert checkpointed.step == 2
    losses = [r["loss"] for r in records(tmp_path / "ckpt", "train")]
    np.testing.assert_allclose(losses, [r["loss"] for r in records(out_a, "train")][:2], atol=1e-4)
    bf16 = train(config(photos, tmp_path / "bf16", steps=2, precision="bf16"))
    assert bf16.step == 2 and np.isfinite(bf16.loss)


@pytest.mark.slow
def test_ctrl_c_on_the_cli_saves_a_resumable_checkpoint(photos, tmp_path):
    import time

    out = tmp_path / "cli"
    args = [
        *("--teacher", "tiny", "--data", str(photos), "--out", str(out), "--steps", "10000"),
        *("--batch-size", "2", "--resolution", "64", "--taps", "us3", "--log-every", "1"),
        *("--val-images", "0", "--workers", "2", "--no-progress", "--no-tensorboard"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.distill", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = out / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: main process and DataLoader workers
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "rerun with --resume" in stderr and "Traceback" not in stderr
    ((step, _),) = list_checkpoints(out)
    assert step >= 2 and latest_state(out).step == step


def test_init_from_heads_of_the_older_recipe_warns(straight_run, tmp_path):
    import copy

    from safetensors.torch import save_file

    from cleandift_rt.models import load_model
    from training.student_init import init_student

    _, result = straight_run
    tensors, meta = read_tensors(result.full_file)
    recipe = json.loads(meta["recipe"])
    del recipe["revision"]  # as written before the reference recipe (GELU mapping gate)
    old = tmp_path / "old_full.safetensors"
    save_file(tensors, str(old), {**meta, "recipe": json.dumps(recipe)})
    for path, warned in ((result.full_file, False), (old, True)):
        student = Student(copy.deepcopy(load_model("tiny").unet), "mid,us3", 261.0)
        lines = []
        init_student(student, path, lines.append)
        assert any(line.startswith("warning: ") and "GELU" in line for line in lines) is warned
