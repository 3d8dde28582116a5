"""RestoreGrad: Algorithm 1 and 2 end to end, the four modes, toy training, autocast, errors."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyConvDenoiser, toy_waveforms
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet1DModel, UNet2DModel

from restoregrad_adapter import (
    FAST_INFERENCE_BETAS_6,
    LearnedPriorScheduler,
    PosteriorNet,
    PriorNet,
    RestoreGrad,
    RestoreGradLoss,
    energy_prior,
)
from restoregrad_adapter.integrations.diffusers import wrap


def make_adapter(mode="restoregrad", seed=0, **kwargs):
    torch.manual_seed(seed)
    scheduler = kwargs.pop("scheduler", LearnedPriorScheduler(num_train_timesteps=50, beta_end=0.05))
    return RestoreGrad.with_encoders(TinyConvDenoiser(), dims=1, in_channels=1, size="tiny", mode=mode,
                                     scheduler=scheduler, **kwargs)


def randomise_heads(adapter):
    """Give the encoders non-trivial outputs (an untrained head gives sigma = 1 everywhere)."""
    for net in (adapter.prior_net, adapter.posterior_net):
        torch.nn.init.normal_(net.encoder.head.weight, std=0.05)


def test_training_loss_is_algorithm_1():
    adapter = make_adapter()
    randomise_heads(adapter)
    x0, y = toy_waveforms(3, generator=torch.Generator().manual_seed(0))
    z, t = torch.randn_like(x0), torch.tensor([0, 17, 49])
    out = adapter.training_loss(x0, y, noise=z, timesteps=t)

    sigma_prior, sigma_post = adapter.prior_net(y), adapter.posterior_net(x0, y)
    abar = adapter.scheduler.alphas_cumprod
    eps = sigma_post * z
    x_t = abar[t].sqrt().view(-1, 1, 1) * x0 + (1 - abar[t]).sqrt().view(-1, 1, 1) * eps
    eps_hat = adapter.denoiser(x_t, y, t)
    expected = RestoreGradLoss()(eps_hat, eps, x0, sigma_prior, sigma_post, abar[-1])
    for name in ("loss", "latent_reg", "denoise", "prior_match"):
        assert torch.allclose(getattr(out, name), getattr(expected, name), rtol=1e-6), name
    assert out.prior_match > 0 and out.latent_reg != 0


def test_no_posterior_mode_uses_the_prior_for_the_noise():
    adapter = make_adapter("restoregrad_no_posterior")
    randomise_heads(adapter)
    x0, y = toy_waveforms(2, generator=torch.Generator().manual_seed(1))
    z, t = torch.randn_like(x0), torch.tensor([5, 30])
    out = adapter.training_loss(x0, y, noise=z, timesteps=t)
    sigma = adapter.prior_net(y)
    x_t = adapter.scheduler.add_noise(x0, sigma * z, t)
    expected = RestoreGradLoss()(adapter.denoiser(x_t, y, t), sigma * z, x0, sigma, None, adapter.scheduler.alpha_bar_T)
    assert torch.allclose(out.loss, expected.loss, rtol=1e-6)
    assert out.prior_match.item() == 0.0


def test_ddpm_mode_is_the_plain_diffusers_mse_recipe():
    adapter = make_adapter("ddpm", scheduler=LearnedPriorScheduler())
    x0, y = toy_waveforms(4, generator=torch.Generator().manual_seed(2))
    z, t = torch.randn_like(x0), torch.tensor([0, 10, 500, 999])
    out = adapter.training_loss(x0, y, noise=z, timesteps=t)
    x_t = DDPMScheduler().add_noise(x0, z, t)
    assert torch.equal(out.loss, F.mse_loss(adapter.denoiser(x_t, y, t), z))


def test_priorgrad_mode_uses_the_energy_prior():
    adapter = make_adapter("priorgrad")
    x0, y = toy_waveforms(2, length=600, generator=torch.Generator().manual_seed(3))
    z, t = torch.randn_like(x0), torch.tensor([3, 40])
    out = adapter.training_loss(x0, y, noise=z, timesteps=t)
    sigma = energy_prior(y)
    x_t = adapter.scheduler.add_noise(x0, sigma * z, t)
    expected = (((sigma * z - adapter.denoiser(x_t, y, t)) / sigma) ** 2).mean()
    assert torch.allclose(out.loss, expected, rtol=1e-6)


def test_energy_prior_closed_form():
    y = torch.zeros(1, 1, 600)
    y[..., :256] = 0.5           # frame 0: rms 0.5 -> 1.0 after normalising
    y[..., 256:512] = 0.1        # frame 1: rms 0.1 -> 0.2
    y[..., 512:] = 0.0           # frame 2 (partial, 88 samples): 0 -> clipped at 0.1
    sigma = energy_prior(y)
    assert sigma.shape == y.shape
    assert torch.allclose(sigma[..., :256], torch.tensor(1.0))
    assert torch.allclose(sigma[..., 256:512], torch.tensor(0.2))
    assert torch.allclose(sigma[..., 512:], torch.tensor(0.1))
    image = torch.zeros(1, 3, 10, 12)
    image[:, :, :8, :8] = 1.0
    s2 = energy_prior(image)
    assert s2.shape == image.shape and s2[0, 0, 0, 0] == 1.0 and s2[0, 0, 9, 11] == pytest.approx(0.1)


def test_gradients_reach_both_encoders_and_the_denoiser():
    adapter = make_adapter()
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-3)
    x0, y = toy_waveforms(4, generator=torch.Generator().manual_seed(4))
    # Both encoders start at sigma = 1, where the prior-matching term is stationary in sigma_prior,
    # and the zero-initialised layers pass gradients on one step at a time: four steps reach all.
    for step in range(4):
        optimizer.zero_grad()
        adapter.training_loss(x0, y, generator=torch.Generator().manual_seed(step)).loss.backward()
        optimizer.step()
    for part in (adapter.prior_net, adapter.posterior_net, adapter.denoiser):
        grads = [p.grad.abs().sum().item() for p in part.parameters() if p.grad is not None]
        assert len(grads) == len(list(part.parameters())) and all(g > 0 for g in grads), type(part).__name__


def test_toy_training_200_steps_loss_falls():
    adapter = make_adapter()
    optimizer = torch.optim.Adam(adapter.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        x0, y = toy_waveforms(16, generator=generator)
        out = adapter.training_loss(x0, y, generator=generator)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    print(f"toy loss: first 20 steps {first:.4f}, last 20 steps {last:.4f}")
    assert last < 0.7 * first


def test_bf16_autocast_training_step_is_finite():
    adapter = make_adapter()
    x0, y = toy_waveforms(4, generator=torch.Generator().manual_seed(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = adapter.training_loss(x0, y, generator=torch.Generator().manual_seed(0))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in adapter.parameters() if p.grad is not None)


def test_restore_in_ddpm_mode_reproduces_a_diffusers_ddpm_loop():
    adapter = make_adapter("ddpm", scheduler=LearnedPriorScheduler(num_train_timesteps=50, beta_end=0.05))
    _, y = toy_waveforms(2, generator=torch.Generator().manual_seed(6))
    ours = adapter.restore(y, num_inference_steps=10, generator=torch.Generator().manual_seed(0))

    stock = DDPMScheduler(num_train_timesteps=50, beta_end=0.05, clip_sample=False)
    stock.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(y.shape, generator=generator)
    with torch.no_grad():
        for t in stock.timesteps:
            x = stock.step(adapter.denoiser(x, y, t.expand(2)), t, x, generator=generator).prev_sample
    assert torch.allclose(ours, x, atol=1e-6)


def test_restore_with_a_learned_prior_is_algorithm_2():
    adapter = make_adapter()
    randomise_heads(adapter)
    _, y = toy_waveforms(2, generator=torch.Generator().manual_seed(7))
    ours = adapter.restore(y, num_inference_steps=5, generator=torch.Generator().manual_seed(1))
    sigma = adapter.prior_net(y).detach()
    scheduler = LearnedPriorScheduler(num_train_timesteps=50, beta_end=0.05)
    scheduler.set_timesteps(5)
    abar = scheduler.alphas_cumprod
    generator = torch.Generator().manual_seed(1)
    x = sigma * torch.randn(y.shape, generator=generator)
    timesteps = scheduler.timesteps.tolist()
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            abar_prev = abar[prev] if prev >= 0 else torch.tensor(1.0)
            alpha, eps = abar[t] / abar_prev, adapter.denoiser(x, y, torch.tensor([t, t]))
            z = torch.randn(y.shape, generator=generator)
            x = (x - (1 - alpha) / (1 - abar[t]).sqrt() * eps) / alpha.sqrt()
            if t > 0:
                x = x + ((1 - abar_prev) / (1 - abar[t]) * (1 - alpha)).sqrt() * sigma * z
    assert torch.allclose(ours, x, atol=1e-5)
    assert not torch.allclose(sigma, torch.ones_like(sigma))


def test_restore_with_fast_sampling_and_stock_schedulers():
    adapter = make_adapter(scheduler=LearnedPriorScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.035))
    randomise_heads(adapter)
    _, y = toy_waveforms(2, generator=torch.Generator().manual_seed(8))
    fast = adapter.restore(y, inference_betas=FAST_INFERENCE_BETAS_6, generator=torch.Generator().manual_seed(0))
    assert fast.shape == y.shape and torch.isfinite(fast).all()
    for stock in (DDIMScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.035, clip_sample=False),
                  DPMSolverMultistepScheduler(num_train_timesteps=50, beta_start=1e-4, beta_end=0.035)):
        out = adapter.restore(y, num_inference_steps=6, scheduler=stock, generator=torch.Generator().manual_seed(0))
        assert out.shape == y.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="clip_sample"):
        adapter.restore(y, num_inference_steps=4, scheduler=DDIMScheduler(num_train_timesteps=50))


def test_restore_is_deterministic_for_a_generator_and_shows_progress(capsys):
    adapter = make_adapter()
    _, y = toy_waveforms(1, generator=torch.Generator().manual_seed(9))
    a = adapter.restore(y, num_inference_steps=4, generator=torch.Generator().manual_seed(3), progress=True)
    b = adapter.restore(y, num_inference_steps=4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert "restoring" in capsys.readouterr().err


def test_mode_switch_on_one_object():
    adapter = make_adapter()
    randomise_heads(adapter)
    x0, y = toy_waveforms(2, length=1024, generator=torch.Generator().manual_seed(10))
    y[..., :512] *= 0.2  # a quiet half, so the energy prior differs from 1
    losses = {}
    for mode in ("restoregrad", "restoregrad_no_posterior", "priorgrad", "ddpm"):
        adapter.mode = mode
        losses[mode] = adapter.training_loss(x0, y, generator=torch.Generator().manual_seed(0)).loss.item()
    assert len(set(losses.values())) == 4


def test_diffusers_unets_as_denoisers():
    torch.manual_seed(0)
    unet2d = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1,
                         block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    adapter = RestoreGrad.with_encoders(wrap(unet2d), dims=2, in_channels=3, size="tiny",
                                        scheduler=LearnedPriorScheduler(num_train_timesteps=100))
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    y = x0 + 0.2 * torch.randn_like(x0)
    out = adapter.training_loss(x0, y, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and any(p.grad is not None for p in unet2d.parameters())
    restored = adapter.restore(y, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert restored.shape == y.shape and torch.isfinite(restored).all()

    # A small Dance-Diffusion-style UNet1DModel: the Fourier time embedding (2 x 8 channels) is
    # concatenated to the input, so extra_in_channels = 16.
    unet1d = UNet1DModel(sample_size=64, in_channels=2, out_channels=1, extra_in_channels=16,
                         block_out_channels=(8, 32, 32), layers_per_block=1, use_timestep_embedding=False,
                         time_embedding_type="fourier", flip_sin_to_cos=True, act_fn=None, out_block_type=None,
                         down_block_types=("DownBlock1DNoSkip", "DownBlock1D", "AttnDownBlock1D"),
                         up_block_types=("AttnUpBlock1D", "UpBlock1D", "UpBlock1DNoSkip"),
                         mid_block_type="UNetMidBlock1D")
    adapter1d = RestoreGrad.with_encoders(wrap(unet1d), dims=1, in_channels=1, size="tiny",
                                          scheduler=LearnedPriorScheduler(num_train_timesteps=100))
    x0, y = toy_waveforms(2, length=64, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(adapter1d.training_loss(x0, y, generator=torch.Generator().manual_seed(0)).loss)
    assert adapter1d.restore(y, num_inference_steps=2).shape == y.shape


def test_bad_inputs_raise_value_errors_naming_the_argument():
    adapter = make_adapter()
    x0, y = toy_waveforms(2, generator=torch.Generator().manual_seed(11))
    with pytest.raises(ValueError, match="`x0` and `y` must have the same shape"):
        adapter.training_loss(x0, y[..., :100])
    with pytest.raises(ValueError, match="in_channels=1"):
        adapter.training_loss(torch.cat([x0, x0], 1), torch.cat([y, y], 1))
    with pytest.raises(ValueError, match="`x0` must be a floating-point"):
        adapter.training_loss(x0.long(), y)
    bad = y.clone()
    bad[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="`y` contains non-finite"):
        adapter.training_loss(x0, bad)
    with pytest.raises(ValueError, match="`y` contains non-finite"):
        adapter.restore(bad.clone(), num_inference_steps=2)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        adapter.mode = "score_sde"
    with pytest.raises(ValueError, match="timesteps"):
        adapter.training_loss(x0, y, timesteps=torch.tensor([0, 50]))
    with pytest.raises(ValueError, match="noise"):
        adapter.training_loss(x0, y, noise=torch.randn(2, 1, 10))
    with pytest.raises(ValueError, match="posterior_net"):
        RestoreGrad(TinyConvDenoiser(), prior_net=PriorNet(dims=1, in_channels=1), mode="restoregrad").training_loss(x0, y)
    with pytest.raises(ValueError, match="prior_net"):
        RestoreGrad(TinyConvDenoiser(), mode="restoregrad_no_posterior")
    with pytest.raises(ValueError, match="denoiser"):
        RestoreGrad("not a model", mode="ddpm")
    with pytest.raises(ValueError, match="residual"):
        RestoreGrad(TinyConvDenoiser(), mode="ddpm", residual="yes")
    with pytest.raises(ValueError, match="prior_std"):
        LearnedPriorScheduler().step(x0, 3, x0, prior_std=-torch.ones_like(x0))
    assert RestoreGrad(TinyConvDenoiser(), prior_net=PriorNet(dims=1, in_channels=1),
                       posterior_net=PosteriorNet(dims=1, in_channels=1))
