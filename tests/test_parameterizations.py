"""What the denoiser predicts (epsilon, sample, v_prediction) and what is diffused (x0 or the residual
x0 - y): eq. 10 unchanged in noise space, closed-form weightings, and every sampler honouring both."""

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from restoregrad_adapter import MODES, LearnedPriorScheduler, PosteriorNet, PriorNet, RestoreGrad, RestoreGradLoss
from restoregrad_adapter import RestoreGradConfig, RestoreGradPipeline, sampling
from restoregrad_adapter.integrations.diffusers import wrap as wrap_diffusers

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
T = 50


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def coefficients(scheduler, t, like):
    abar = scheduler.alphas_cumprod.double()[torch.as_tensor(t).long()].view(-1, *([1] * (like.ndim - 1)))
    return abar.sqrt().to(like.dtype), (1 - abar).sqrt().to(like.dtype)


def as_prediction(kind, eps_hat, x_t, a, s):
    """The output in ``kind`` whose implied noise estimate is ``eps_hat`` (docs/design.md's conversions, inverted)."""
    if kind == "epsilon":
        return eps_hat
    if kind == "sample":
        return (x_t - s * eps_hat) / a
    return (eps_hat - s * x_t) / a  # v_hat, from eps_hat = s x_t + a v_hat


class NoiseFunction(torch.nn.Module):
    """A fixed smooth function eps_hat = g(x_t, y, t), reported in any prediction type."""

    def __init__(self, scheduler, kind):
        super().__init__()
        self.scheduler, self.kind = scheduler, kind
        self.scale = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x_t, y, t):
        eps_hat = self.scale * torch.tanh(x_t - 0.5 * y) + 0.01 * t.float().view(-1, 1, 1)
        a, s = coefficients(self.scheduler, t, x_t)
        return as_prediction(self.kind, eps_hat, x_t, a, s)


def pairs(batch=3, length=64):
    g = seeded(4)
    x0 = torch.sin(torch.linspace(0, 6, length)).expand(batch, 1, length) * torch.rand(batch, 1, 1, generator=g)
    return x0.contiguous(), x0 + 0.3 * torch.randn(batch, 1, length, generator=g)


def adapter_for(kind, mode, residual=False, weighting="elbo"):
    torch.manual_seed(0)
    scheduler = LearnedPriorScheduler(num_train_timesteps=T, prediction_type=kind)
    prior, posterior = PriorNet(dims=1, in_channels=1, size="tiny"), PosteriorNet(dims=1, in_channels=1, size="tiny")
    for net in (prior, posterior):
        torch.nn.init.normal_(net.encoder.head.weight, std=0.05)
    config = RestoreGradConfig(mode=mode, prediction_type=kind, residual=residual, latent_weight=0.1,
                               prior_matching_weight=0.5, weighting=weighting,
                               prior_std=0.4 if mode == "constant_prior" else None)
    return RestoreGrad(NoiseFunction(scheduler, kind), config, prior_net=prior, posterior_net=posterior,
                       scheduler=scheduler)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_the_loss_is_eq_10_in_noise_space_for_every_prediction_type(mode, kind):
    x0, y = pairs()
    t = torch.tensor([0, 17, 49])
    noise = torch.randn(x0.shape, generator=seeded(1))
    reference = adapter_for("epsilon", mode).training_loss(x0, y, noise=noise, timesteps=t)
    out = adapter_for(kind, mode).training_loss(x0, y, noise=noise, timesteps=t)
    for term in ("loss", "latent_reg", "denoise", "prior_match"):
        torch.testing.assert_close(getattr(out, term), getattr(reference, term), rtol=1e-5, atol=1e-6)
    out.loss.backward()  # gradients still reach every network through the conversion


def test_the_denoising_term_in_closed_form_for_each_weighting():
    x0, y = pairs()
    t = torch.tensor([3, 20, 44])
    noise = torch.randn(x0.shape, generator=seeded(2))
    scheduler = LearnedPriorScheduler(num_train_timesteps=T)
    a, s = coefficients(scheduler, t, x0)
    x_t = a * x0 + s * noise
    eps_hat = NoiseFunction(scheduler, "epsilon")(x_t, y, t).detach()
    x0_hat = (x_t - s * eps_hat) / a
    snr = (a / s).flatten() ** 2

    elbo = adapter_for("sample", "ddpm").training_loss(x0, y, noise=noise, timesteps=t).denoise
    torch.testing.assert_close(elbo, F.mse_loss(eps_hat, noise))  # sigma = 1: the plain noise MSE
    x0_loss = adapter_for("sample", "ddpm", weighting="x0").training_loss(x0, y, noise=noise, timesteps=t).denoise
    torch.testing.assert_close(x0_loss, F.mse_loss(x0_hat, x0), rtol=1e-4, atol=1e-7)
    min_snr = adapter_for("epsilon", "ddpm", weighting="min_snr").training_loss(x0, y, noise=noise, timesteps=t)
    expected = ((snr.clamp(max=5.0) / snr).view(-1, 1, 1) * (noise - eps_hat) ** 2).mean()
    torch.testing.assert_close(min_snr.denoise, expected, rtol=1e-5, atol=1e-7)
    for bad, match in (({"weighting": "l1"}, "`weighting`"), ({"weighting": "min_snr", "snr_gamma": 0}, "snr_gamma")):
        with pytest.raises(ValueError, match=match):
            RestoreGradLoss(**bad)
    with pytest.raises(ValueError, match="needs `snr`"):
        RestoreGradLoss(weighting="x0")(eps_hat, noise, x0, 1.0, learned_prior=False)


@pytest.mark.parametrize("mode", MODES)
def test_residual_training_is_eq_10_on_r0(mode):
    x0, y = pairs()
    t = torch.tensor([1, 25, 48])
    noise = torch.randn(x0.shape, generator=seeded(3))
    residual = adapter_for("epsilon", mode, residual=True).training_loss(x0, y, noise=noise, timesteps=t)
    on_r0 = adapter_for("epsilon", mode).training_loss(x0 - y, y, noise=noise, timesteps=t)
    for term in ("loss", "latent_reg", "denoise", "prior_match"):
        torch.testing.assert_close(getattr(residual, term), getattr(on_r0, term))


class Oracle(torch.nn.Module):
    """Knows the clean target of one batch: predicts it exactly in any parameterization."""

    def __init__(self, scheduler, kind, target, y):
        super().__init__()
        self.scheduler, self.kind, self.target, self.y = scheduler, kind, target, y

    def forward(self, x_t, y, t):
        assert torch.equal(y, self.y)
        a, s = coefficients(self.scheduler, t.round() if t.is_floating_point() else t, x_t)
        eps = (x_t - a * self.target) / s
        return as_prediction(self.kind, eps, x_t, a, s)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("kind", PREDICTION_TYPES)
def test_every_sampler_honours_the_prediction_type_and_the_residual(kind, residual):
    x0, y = pairs(batch=2)
    scheduler = LearnedPriorScheduler(num_train_timesteps=T, prediction_type=kind)
    target = x0 - y if residual else x0
    prior = PriorNet(dims=1, in_channels=1, size="tiny")
    torch.nn.init.normal_(prior.encoder.head.weight, std=0.05)
    adapter = RestoreGrad(Oracle(scheduler, kind, target, y), prior_net=prior, scheduler=scheduler,
                          mode="restoregrad_no_posterior", prediction_type=kind, residual=residual).eval()
    samplers = {
        "own": None,
        "ddim": DDIMScheduler.from_config(scheduler.config, clip_sample=False),
        "dpm++": DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++"),
    }
    for name, sampler in samplers.items():
        restored = adapter.restore(y, num_inference_steps=10, scheduler=sampler, generator=seeded())
        torch.testing.assert_close(restored, x0, rtol=0, atol=2e-4, msg=name)
    # The loop itself samples r0; the adapter adds y back.
    r0 = sampling.restore(adapter.denoiser, y, adapter.prior_std, scheduler, num_inference_steps=10,
                          generator=seeded())
    torch.testing.assert_close(r0 + (y if residual else 0), x0, rtol=0, atol=2e-4)


def test_a_scheduler_of_another_prediction_type_is_refused_at_every_entry_point(tmp_path):
    from diffusers import UNet2DModel

    from restoregrad_adapter.integrations.weatherdiff import restore_image

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=6, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    scheduler = LearnedPriorScheduler(num_train_timesteps=T, prediction_type="v_prediction")
    adapter = RestoreGrad.with_encoders(wrap_diffusers(unet), dims=2, in_channels=3, size="tiny", scheduler=scheduler,
                                        residual=True).eval()
    y = torch.rand(1, 3, 8, 8) * 2 - 1
    wrong = DDIMScheduler.from_config(scheduler.config, clip_sample=False, prediction_type="epsilon")
    for call in (lambda: adapter.restore(y, scheduler=wrong),
                 lambda: restore_image(adapter, y, patch_size=8, stride=4, scheduler=wrong, progress=False)):
        with pytest.raises(ValueError, match="prediction_type"):
            call()
    # The residual and the prediction type travel with the adapter folder and its pipeline.
    folder = adapter.save_pretrained(tmp_path / "adapter")
    loaded = RestoreGrad.from_pretrained(folder)
    assert loaded.residual and loaded.scheduler.config.prediction_type == "v_prediction"
    pipe = RestoreGradPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.residual is True
    expected = adapter.restore(y, generator=seeded()).clamp(-1, 1)
    assert torch.equal(pipe(y, generator=seeded(), output_type="pt").images, expected)
    assert torch.equal(loaded.restore(y, generator=seeded()).clamp(-1, 1), expected)


@pytest.mark.parametrize("kind", ["sample", "v_prediction"])
def test_cdiffuse_trains_and_samples_every_prediction_type_through_its_combined_noise(kind):
    """CDiffuSE's x_t = sqrt(abar) x0 + sqrt(1 - abar) C_t: DDPM's conversions hold with C_t for the noise."""
    from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad, cdiffuse_scheduler

    def speech_adapter(prediction_type):
        torch.manual_seed(0)
        schedule = LearnedPriorScheduler.from_config(cdiffuse_scheduler().config, prediction_type=prediction_type)
        prior, posterior = PriorNet(dims=1, in_channels=1, size="tiny"), PosteriorNet(dims=1, in_channels=1, size="tiny")
        for net in (prior, posterior):
            torch.nn.init.normal_(net.encoder.head.weight, std=0.05)
        config = RestoreGradConfig(prediction_type=prediction_type, latent_weight=0.1, prior_matching_weight=0.5)
        return CDiffuSERestoreGrad(NoiseFunction(schedule, prediction_type), config, prior_net=prior,
                                   posterior_net=posterior, scheduler=schedule).eval()

    x0, y = pairs()
    t = torch.tensor([0, 21, 49])
    noise = torch.randn(x0.shape, generator=seeded(5))
    reference, converted = speech_adapter("epsilon"), speech_adapter(kind)
    expected = reference.training_loss(x0, y, noise=noise, timesteps=t)
    out = converted.training_loss(x0, y, noise=noise, timesteps=t)
    for term in ("loss", "latent_reg", "denoise", "prior_match"):
        torch.testing.assert_close(getattr(out, term), getattr(expected, term), rtol=1e-5, atol=1e-6)
    # Full sampling evaluates the model at the integer training steps, where NoiseFunction's
    # conversion and the reverse step's use the same abar: the chains agree step by step.
    torch.testing.assert_close(converted.restore(y, inference_betas="all", generator=seeded()),
                               reference.restore(y, inference_betas="all", generator=seeded()), rtol=1e-4, atol=1e-5)


def test_cdiffuse_refuses_residual_diffusion():
    from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad
    from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

    model = DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)
    with pytest.raises(ValueError, match="residual"):
        CDiffuSERestoreGrad.from_model(model, size="tiny", residual=True)


def test_the_training_level_is_applied_and_undone_at_any_input_level(tmp_path):
    from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad
    from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

    torch.manual_seed(0)
    model = DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)
    speech = CDiffuSERestoreGrad.from_model(model, size="tiny", input_peak=0.95).eval()
    torch.nn.init.normal_(speech.prior_net.encoder.head.weight, std=0.05)
    _, y = pairs(batch=2, length=1024)
    loud = speech.restore(y, generator=seeded())
    # A quieter copy is brought to the same level, restored identically, and given back at its own level.
    assert torch.equal(speech.restore(0.5 * y, generator=seeded()), 0.5 * loud)
    assert torch.equal(speech.restore(0.5 * y, generator=seeded(), mix_noisy=True),
                       0.5 * speech.restore(y, generator=seeded(), mix_noisy=True))
    # Without a recorded level the input is used as it is: the level changes the result.
    plain = CDiffuSERestoreGrad.from_model(copy.deepcopy(model), size="tiny").eval()
    assert not torch.allclose(plain.restore(0.5 * y, generator=seeded()), 0.5 * plain.restore(y, generator=seeded()))
    # The level travels with the adapter folder.
    loaded = CDiffuSERestoreGrad.from_pretrained(speech.save_pretrained(tmp_path / "speech"), denoiser=copy.deepcopy(model))
    assert loaded.input_peak == 0.95
    assert torch.equal(loaded.restore(0.25 * y, generator=seeded()), 0.25 * loud)
    generic = adapter_for("epsilon", "ddpm")
    generic.input_peak = 0.5
    y = y[..., :64]
    assert torch.equal(generic.restore(2 * y, num_inference_steps=5, generator=seeded()),
                       2 * generic.restore(y, num_inference_steps=5, generator=seeded()))
    with pytest.raises(ValueError, match="input_peak"):
        RestoreGrad(NoiseFunction(LearnedPriorScheduler(), "epsilon"), mode="ddpm", input_peak=0.0)
