"""DIFT baseline: SD's noise schedule, seeded determinism, the ensemble average."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from cleandift_rt.models.noise import add_noise, sd_alphas_cumprod


def images(seed=0, shape=(2, 128, 128, 3)):
    return torch.randint(
        0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_schedule_and_noising_equal_diffusers_ddpm():
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          num_train_timesteps=1000)  # fmt: skip
    torch.testing.assert_close(sd_alphas_cumprod(), sched.alphas_cumprod, rtol=0, atol=0)
    x0, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 261, 999])
    torch.testing.assert_close(add_noise(x0, eps, t, sd_alphas_cumprod()),
                               sched.add_noise(x0, eps, t))  # fmt: skip


def test_same_seed_same_features_other_seed_differs(tiny):
    dift = tiny.dift(["us6", "mid"], ensemble=4)
    x = images()
    a, b, c = dift(x, seed=7), dift(x, seed=7), dift(x, seed=8)
    for fa, fb, fc in zip(a, b, c):
        assert torch.equal(fa, fb)
        assert not torch.allclose(fa, fc)


def test_ensemble_is_the_mean_of_single_noisy_passes(tiny):
    """N copies averaged == the mean of N separate passes fed the same noises."""
    n, t = 3, 261
    dift = tiny.dift(["us6"], t=t, ensemble=n)
    x = images(1, (1, 128, 128, 3))
    (averaged,) = dift(x, seed=3)

    # replay the generator: VAE noises (1, n, ...) first, then the DDPM noises
    gen = torch.Generator().manual_seed(3)
    net = dift.encoder
    with torch.no_grad():
        mean, logvar = net.moments(x.permute(0, 3, 1, 2).float() / 127.5 - 1)
        eps_vae = torch.randn((1, n, *mean.shape[1:]), generator=gen)
        eps = torch.randn((1, n, *mean.shape[1:]), generator=gen)
        singles = []
        for i in range(n):
            z = (mean + torch.exp(0.5 * logvar) * eps_vae[:, i]) * net.scaling_factor
            zt = add_noise(z, eps[:, i], torch.tensor([t]), sd_alphas_cumprod())
            singles.append(dift.unet(zt, torch.tensor(float(t)), dift.context)[0])
    torch.testing.assert_close(averaged, torch.stack(singles).mean(0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{"chunk": 3}, {"encode_each_copy": True}])
def test_memory_and_reference_options_do_not_change_the_result(tiny, options):
    x = images(2)
    ref = tiny.dift(["us9"], ensemble=4)(x, seed=5)[0]
    other = tiny.dift(["us9"], ensemble=4, **options)(x, seed=5)[0]
    torch.testing.assert_close(other, ref, rtol=1e-4, atol=1e-5)


def test_bad_parameters():
    from cleandift_rt.models import load_model

    with pytest.raises(ValueError):
        load_model("tiny").dift(["us6"], t=1000)
