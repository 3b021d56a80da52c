"""FeatureNet / TruncatedUNet: exact parity with diffusers, truncation, FLOPs, dtypes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cleandift_rt.errors import TapError
from cleandift_rt.models import TruncatedUNet
from cleandift_rt.models.taps import TapLayout

ALL_TAPS = ["mid"] + [f"us{k}" for k in range(1, 13)]


def tap_modules(unet) -> dict:
    """The diffusers module whose forward output IS each tap (reference definition)."""
    mods = {"mid": unet.mid_block}
    for b, block in enumerate(unet.up_blocks):
        for i in range(len(block.resnets)):
            attn = getattr(block, "attentions", None)
            mod = attn[i] if attn is not None else block.resnets[i]
            if i == len(block.resnets) - 1 and block.upsamplers is not None:
                mod = block.upsamplers[-1]
            mods[f"us{b * len(block.resnets) + i + 1}"] = mod
    return mods


def hooked_forward(unet, latent, t, context) -> dict[str, torch.Tensor]:
    """Activations of every tap from the untruncated diffusers forward (forward hooks)."""
    acts, handles = {}, []
    for name, mod in tap_modules(unet).items():

        def hook(_m, _i, out, name=name):
            acts[name] = out[0] if isinstance(out, tuple) else out

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            unet(latent, t, encoder_hidden_states=context)
    finally:
        for h in handles:
            h.remove()
    return acts


@pytest.mark.parametrize("kind", ["sd21", "sd15"])
@pytest.mark.parametrize("taps", [("us6",), ("mid", "us3", "us9"), ("us12", "us1"), ("us4",)])
def test_taps_equal_diffusers_hooks(sd_shaped_unet, kind, taps):
    unet = sd_shaped_unet(kind)
    gen = torch.Generator().manual_seed(1)
    latent = torch.randn(2, 4, 16, 24, generator=gen)  # batch 2, non-square
    context = torch.randn(2, 77, 48, generator=gen)
    t = torch.tensor(261.0)
    reference = hooked_forward(unet, latent, t, context)
    with torch.no_grad():
        outs = TruncatedUNet(unet, taps)(latent, t, context)
    assert len(outs) == len(taps)
    for name, out in zip(taps, outs):
        torch.testing.assert_close(out, reference[name], rtol=1e-5, atol=1e-5)


def test_latent_not_divisible_by_upsampling_factor_matches_diffusers(sd_shaped_unet):
    """diffusers passes explicit upsample sizes for odd latents; so must the truncated net."""
    unet = sd_shaped_unet("sd21")
    latent = torch.randn(1, 4, 12, 20, generator=torch.Generator().manual_seed(2))
    context = torch.randn(1, 77, 48, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([500.0])
    reference = hooked_forward(unet, latent, t, context)
    with torch.no_grad():
        outs = TruncatedUNet(unet, ALL_TAPS)(latent, t, context)
    for name, out in zip(ALL_TAPS, outs):
        torch.testing.assert_close(out, reference[name], rtol=1e-5, atol=1e-5)


def test_tap_layout_matches_facts_table():
    """Channels and strides of SD 2.1 (FACTS.md): 768 px → mid 12², us3 24², us6 48², us9 96²."""
    from cleandift_rt.models.configs import SD21_UNET

    layout = TapLayout(SD21_UNET)
    expect = {"mid": (1280, 64), "us2": (1280, 64), "us3": (1280, 32), "us5": (1280, 32),
              "us6": (1280, 16), "us8": (640, 16), "us9": (640, 8), "us12": (320, 8)}  # fmt: skip
    for tap, (channels, stride) in expect.items():
        spec = layout.specs[tap]
        assert (spec.channels, spec.stride) == (channels, stride), tap
    assert layout.resolve("up0,UP1, up2,up3") == ("us3", "us6", "us9", "us12")
    assert layout.resolve(["us6", "up1", "mid"]) == ("us6", "mid")


def test_tap_strides_and_channels_match_outputs(tiny):
    net = tiny.feature_net(ALL_TAPS)
    x = torch.randint(0, 256, (1, 128, 192, 3), dtype=torch.uint8)
    with torch.no_grad():
        outs = net(x)
    shapes = net.output_shapes(1, 128, 192)
    for name, out in zip(net.taps, outs):
        assert tuple(out.shape) == shapes[name]


@pytest.mark.parametrize("bad", ["us13", "up4", "down1", "", "us6,,foo"])
def test_unknown_tap_is_an_error(sd_shaped_unet, bad):
    with pytest.raises(TapError, match="tap"):
        TapLayout(sd_shaped_unet("sd21").config).resolve(bad)


def executed_modules(module, run) -> list[str]:
    """Qualified names of the sub-modules whose forward ran during ``run()``."""
    names = {m: n for n, m in module.named_modules()}
    seen: list[str] = []
    handles = [m.register_forward_pre_hook(lambda m, _a: seen.append(names[m]))
               for m in names]  # fmt: skip
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize(
    "tap,first_dead",
    [("us6", "up_blocks.2"), ("us4", "up_blocks.1.resnets.1"), ("mid", "up_blocks.0")],
)
def test_nothing_after_the_deepest_tap_runs(sd_shaped_unet, tap, first_dead):
    unet = sd_shaped_unet("sd21")
    latent, context = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 48)
    net = TruncatedUNet(unet, [tap])
    ran = executed_modules(unet, lambda: net(latent, torch.tensor(261.0), context))
    assert not any(n == first_dead or n.startswith(first_dead + ".") for n in ran)
    assert not any(n.startswith(("conv_out", "conv_norm_out")) for n in ran)
    # and the full forward does run that module (the check above can fail)
    full = executed_modules(unet, lambda: unet(latent, 261, encoder_hidden_states=context))
    assert any(n.startswith(first_dead) for n in full)


def count_flops(fn) -> tuple[int, dict]:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops(), counter.get_flop_counts()


@pytest.mark.parametrize(
    "tap,dead",
    [
        ("us6", ["up_blocks.2", "up_blocks.3", "conv_out"]),
        ("us4", ["up_blocks.1.resnets.1", "up_blocks.1.attentions.1", "up_blocks.1.resnets.2",
                 "up_blocks.1.attentions.2", "up_blocks.1.upsamplers.0", "up_blocks.2",
                 "up_blocks.3", "conv_out"]),
    ],
)  # fmt: skip
def test_flops_are_those_of_the_truncated_part_only(sd_shaped_unet, tap, dead):
    """Truncated FLOPs = full U-Net FLOPs − FLOPs of the modules after the tap."""
    unet = sd_shaped_unet("sd21")
    latent, context = torch.randn(1, 4, 32, 32), torch.randn(1, 77, 48)
    t = torch.tensor(261.0)
    full, by_module = count_flops(lambda: unet(latent, t, encoder_hidden_states=context))
    truncated, _ = count_flops(lambda: TruncatedUNet(unet, [tap])(latent, t, context))
    prefix = type(unet).__name__ + "."
    dead_flops = sum(sum(by_module[prefix + d].values()) for d in dead)
    assert dead_flops > 0
    assert truncated == full - dead_flops


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_runs_without_nan_and_close_to_fp32(dtype):
    from cleandift_rt.models import load_model

    model = load_model("tiny")
    x = torch.randint(0, 256, (2, 128, 128, 3), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        ref = model.feature_net(["us6", "us9"])(x)
        model.to("cpu", dtype)
        low = model.feature_net(["us6", "us9"])(x)
    for r, o in zip(ref, low):
        assert o.dtype == dtype and torch.isfinite(o).all()
        cos = torch.nn.functional.cosine_similarity(r.flatten(1), o.float().flatten(1))
        assert (cos > 0.99).all()


def test_sd21_architecture_flops_match_the_published_counts():
    """FACTS.md (torch.utils.flop_counter, SD 2.1): VAE enc 2609, U-Net→us6 1126, full U-Net
    2149 GFLOP at 768²; counted here on meta tensors (shapes only, no arithmetic)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from cleandift_rt.models import build_feature_net
    from cleandift_rt.models.configs import SD21_UNET, SD_VAE

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD21_UNET), AutoencoderKL(**SD_VAE)
        context = torch.zeros(1, 77, 1024)
        image = torch.zeros(1, 768, 768, 3, dtype=torch.uint8)
        latent = torch.zeros(1, 4, 96, 96)
    net = build_feature_net(vae, unet, context, 261.0, ["us6"])
    total, by_module = count_flops(lambda: net(image))
    vae_flops = sum(by_module["FeatureNet.encoder"].values())
    full, _ = count_flops(lambda: unet(latent, 261, encoder_hidden_states=context))
    gflop = {"vae": vae_flops / 1e9, "unet_us6": (total - vae_flops) / 1e9, "full": full / 1e9}
    assert gflop["vae"] == pytest.approx(2609, abs=1)
    assert gflop["unet_us6"] == pytest.approx(1126, abs=1)
    assert gflop["full"] == pytest.approx(2149, abs=1)


def test_unknown_random_architecture():
    from cleandift_rt.errors import ModelError
    from cleandift_rt.models import load_model

    with pytest.raises(ModelError, match="random:sd21"):
        load_model("random:sd3")


def test_channels_last_runner_equals_default():
    import numpy as np

    from cleandift_rt.backends import TorchRunner
    from cleandift_rt.models import load_model

    tiny = load_model("tiny")  # channels_last re-lays out the (shared) weights in place
    x = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    plain = TorchRunner(tiny.feature_net(["us6"]), channels_last=False)(x)["us6"]
    nhwc = TorchRunner(tiny.feature_net(["us6"]), channels_last=True)(x)["us6"]
    torch.testing.assert_close(nhwc, plain, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="compile mode"):
        TorchRunner(tiny.feature_net(["us6"]), compile="fastest")
