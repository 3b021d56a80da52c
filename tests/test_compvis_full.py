"""CompVis' *_full.safetensors: the reference training module's state dict, written here from
``tiny`` weights under the reference's key names (CompVis/cleandift ``src/``), loads wherever a
model is accepted and runs the student at the file's learned timestep; its heads initialise a
distillation and compute the reference's head function."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from cleandift_rt import cli
from cleandift_rt.models import load_model, read_student_file

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread

LEARNED_T = 250.0
TAPS = ["mid"] + [f"us{i}" for i in range(1, 11)]  # the reference's feature_dims
X = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip


def perturbed(module, seed: int):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return module


def reference_heads(channels: dict[str, int], seed: int = 5) -> dict[str, torch.Tensor]:
    """Random (non-zero) head tensors under the reference's names and shapes: FourierFeatures
    (1 → 256), time_in_proj 256→256, MappingNetwork(depth 2, width 256, d_ff 768) and one
    FFNStack(depth 3, ffn_expansion 1, dim_cond 256) of AdaRMSNorm + LinearSwiGLU per tap."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.1):
        return (scale * torch.randn(*shape, generator=gen)).contiguous()

    t = {"time_emb.weight": rnd(128, 1, scale=1.0), "time_in_proj.weight": rnd(256, 256)}
    t["mapping.in_norm.scale"] = 1 + rnd(256)
    t["mapping.out_norm.scale"] = 1 + rnd(256)
    for i in range(2):
        t[f"mapping.blocks.{i}.norm.scale"] = 1 + rnd(256)
        t[f"mapping.blocks.{i}.up_proj.weight"] = rnd(2 * 768, 256)
        t[f"mapping.blocks.{i}.down_proj.weight"] = rnd(256, 768)
    for tap, c in channels.items():
        for j in range(3):
            t[f"adapters.{tap}.layers.{j}.norm.linear.weight"] = rnd(c, 256)
            t[f"adapters.{tap}.layers.{j}.up_proj.weight"] = rnd(2 * c, c)
            t[f"adapters.{tap}.layers.{j}.down_proj.weight"] = rnd(c, c)
    return t


def tap_channels(unet) -> dict[str, int]:
    from cleandift_rt.models.unet import TruncatedUNet

    return {s.name: s.channels for s in TruncatedUNet(unet, TAPS, 8).specs}


@pytest.fixture(scope="module")
def compvis_full(tmp_path_factory):
    """(path, student U-Net, file VAE, head tensors): student and VAE are perturbed tiny ones,
    the frozen teacher is tiny's U-Net, so reading the wrong one changes the features."""
    tiny = load_model("tiny")
    student = perturbed(load_model("tiny").unet, 1)
    vae = perturbed(load_model("tiny").vae, 2)
    tensors = {f"unet_feature_extractor_cleandift.{k}": v for k, v in student.state_dict().items()}
    tensors |= {f"unet_feature_extractor_base.{k}": v for k, v in tiny.unet.state_dict().items()}
    tensors |= {f"ae.ae.{k}": v for k, v in vae.state_dict().items()}
    tensors["timestep"] = torch.tensor(LEARNED_T)
    heads = reference_heads(tap_channels(tiny.unet))
    tensors |= heads
    path = tmp_path_factory.mktemp("compvis") / "cleandift_tiny_full.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path, student, vae, heads


def expected_features(student, vae, t: float):
    model = load_model("tiny")
    model.unet, model.vae, model.timestep = student, vae, t
    with torch.no_grad():
        return model.feature_net(["us3"])(X)[0]


def test_compvis_full_runs_the_student_at_its_learned_timestep(compvis_full):
    path, student, vae, _ = compvis_full
    weights = read_student_file(path)
    assert weights.layout == "compvis-full" and weights.timestep == LEARNED_T
    loaded = load_model(path, base="tiny")
    assert loaded.timestep == LEARNED_T
    with torch.no_grad():
        got = loaded.feature_net(["us3"])(X)[0]
    torch.testing.assert_close(got, expected_features(student, vae, LEARNED_T), rtol=0, atol=0)
    assert not torch.allclose(got, expected_features(student, vae, 261.0))  # t matters


def test_compvis_full_through_the_cli(compvis_full, tmp_path, capsys):
    from PIL import Image

    path, student, vae, _ = compvis_full
    image = tmp_path / "img.png"
    Image.fromarray(X[0].numpy()).save(image)
    out = tmp_path / "f.safetensors"
    args = ["extract", image, "--model", path, "--base", "tiny", "--taps", "us3",
            "--resolution", "64", "--out", out, "--json"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    assert info.value.code in (0, None), capsys.readouterr().err
    with safe_open(str(out), framework="pt") as f:
        got = f.get_tensor("us3")
    torch.testing.assert_close(got, expected_features(student, vae, LEARNED_T), rtol=0, atol=0)


def _rms_norm(x, scale, eps=1e-6):  # the reference's rms_norm (src/layers.py), in fp32
    return x * (scale * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _swiglu(x, weight):
    a, gate = (x @ weight.T).chunk(2, dim=-1)
    return a * F.silu(gate)


def reference_adapter(h, tap, cond, heads):
    """FFNStack.forward: 3 × [x + down(SwiGLU(up(AdaRMSNorm(x, cond))))], x (B, H·W, C)."""
    for j in range(3):
        p = f"adapters.{tap}.layers.{j}."
        scale = (cond @ heads[p + "norm.linear.weight"].T)[:, None, :] + 1
        h = (
            h
            + _swiglu(_rms_norm(h, scale), heads[p + "up_proj.weight"])
            @ heads[p + "down_proj.weight"].T
        )
    return h


def reference_conditioner(t, heads):
    """mapping(time_in_proj(time_emb(t / 999))) with the reference's SiLU-gated blocks."""
    f = 2 * math.pi * (t[:, None] / 999.0) @ heads["time_emb.weight"].T
    x = torch.cat([f.cos(), f.sin()], dim=-1) @ heads["time_in_proj.weight"].T
    x = _rms_norm(x, heads["mapping.in_norm.scale"])
    for i in range(2):
        p = f"mapping.blocks.{i}."
        up = _swiglu(_rms_norm(x, heads[p + "norm.scale"]), heads[p + "up_proj.weight"])
        x = x + up @ heads[p + "down_proj.weight"].T
    return _rms_norm(x, heads["mapping.out_norm.scale"])


@pytest.fixture(scope="module")
def initialised_student(compvis_full):
    from training.objective import Student
    from training.student_init import init_student

    path, _, _, _ = compvis_full
    student = Student(load_model("tiny").unet, ["mid", "us3", "us10"], 261.0)
    logs = []
    init_student(student, path, logs.append)
    return student, logs


def test_init_from_loads_student_timestep_and_heads(compvis_full, initialised_student):
    _, unet, _, _ = compvis_full
    student, logs = initialised_student
    assert float(student.timestep.detach()) == LEARNED_T and "compvis-full" in logs[0]
    for k, v in unet.state_dict().items():
        torch.testing.assert_close(student.unet.state_dict()[k], v, rtol=0, atol=0)


def test_compvis_adapters_compute_the_reference_heads(compvis_full, initialised_student):
    _, _, _, heads = compvis_full
    student, _ = initialised_student
    gen = torch.Generator().manual_seed(3)
    cond = torch.randn(2, 256, generator=gen)
    for tap in student.taps:
        c = student.channels[tap]
        x = torch.randn(2, c, 3, 5, generator=gen)
        with torch.no_grad():
            got = student.heads.heads[tap](x, cond)
        ref = reference_adapter(x.flatten(2).transpose(1, 2), tap, cond, heads)
        torch.testing.assert_close(got.flatten(2).transpose(1, 2), ref, rtol=1e-5, atol=1e-5)


def test_compvis_conditioner_computes_the_reference_mapping(compvis_full, initialised_student):
    _, _, _, heads = compvis_full
    student, _ = initialised_student
    t = torch.tensor([1.0, 261.0, 998.0])
    with torch.no_grad():
        got = student.heads.conditioner(t)
    torch.testing.assert_close(got, reference_conditioner(t, heads), rtol=1e-5, atol=1e-5)


def test_distill_init_from_a_compvis_full_file(compvis_full, tmp_path, capsys):
    """`python -m training.distill --init-from FILE`: the run starts from the file's student,
    timestep and heads (a 1-step run at a negligible lr leaves them in its outputs)."""
    from PIL import Image

    from training.distill import main

    path, unet, _, heads = compvis_full
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "run"
    args = ["--teacher", "tiny", "--data", data, "--out", out, "--init-from", path,
            "--steps", 1, "--batch-size", 1, "--resolution", 64, "--lr", 1e-12, "--warmup", 0,
            "--taps", "mid,us3", "--val-images", 0, "--workers", 0, "--no-progress",
            "--no-tensorboard", "--name", "s"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code in (0, None), capsys.readouterr().err
    with safe_open(str(out / "s_full.safetensors"), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    assert abs(float(saved["timestep"]) - LEARNED_T) < 1e-3
    torch.testing.assert_close(saved["unet.conv_in.weight"], unet.conv_in.weight, atol=1e-6, rtol=0)
    for ref_key, key in [("time_in_proj.weight", "heads.conditioner.proj.weight"),
                         ("adapters.us3.layers.2.up_proj.weight",
                          "heads.heads.us3.blocks.2.up.weight"),
                         ("mapping.blocks.1.down_proj.weight",
                          "heads.conditioner.blocks.1.down.weight")]:  # fmt: skip
        torch.testing.assert_close(saved[key], heads[ref_key], atol=1e-6, rtol=0)


def test_distill_start_flags_are_one_line_errors(compvis_full, tmp_path, capsys):
    from training.distill import main

    path = compvis_full[0]
    cases = [
        (["--init-from", path, "--resume"], "at most one"),
        (["--init-from", tmp_path / "nope.safetensors"], "does not exist"),
        (["--resume-from", tmp_path / "nope.safetensors"], "does not exist"),
    ]
    for extra, needle in cases:
        with pytest.raises(SystemExit) as info:
            main([str(a) for a in ["--teacher", "tiny", "--data", tmp_path, "--out",
                                   tmp_path / "o", "--no-progress", *extra]])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and needle in err[0], err
