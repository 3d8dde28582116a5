"""Mode "constant_prior": one sigma everywhere, a first-class baseline beside DDPM, PriorGrad and RestoreGrad;
its sigma given, or estimated from the data (data_prior_std, --prior_std auto)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import TinyConvDenoiser

from restoregrad_adapter import (EncoderConfig, LearnedPriorScheduler, RestoreGrad, RestoreGradConfig,
                                 data_prior_std)

T = 50


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def pair(batch=2, length=64):
    g = seeded(1)
    x0 = torch.randn(batch, 1, length, generator=g)
    return x0, x0 + 0.1 * torch.randn(batch, 1, length, generator=g)


def adapter_in(mode, **fields):
    torch.manual_seed(0)
    config = RestoreGradConfig(encoder=EncoderConfig(dims=1, in_channels=1, size="tiny"), mode=mode, **fields)
    return RestoreGrad(TinyConvDenoiser(), config, scheduler=LearnedPriorScheduler(num_train_timesteps=T))


def test_the_constant_prior_is_priorgrad_with_a_constant_map_and_its_loss_the_weighted_mse():
    sigma = 0.3
    constant = adapter_in("constant_prior", prior_std=sigma)
    handcrafted = adapter_in("priorgrad")
    handcrafted.handcrafted_prior = lambda y: torch.full_like(y, sigma)
    x0, y = pair()
    noise, t = torch.randn(x0.shape, generator=seeded(2)), torch.tensor([4, 33])
    out = constant.training_loss(x0, y, noise=noise, timesteps=t)
    assert torch.equal(out.loss, handcrafted.training_loss(x0, y, noise=noise, timesteps=t).loss)
    # Closed form: eps = sigma z, x_t = sqrt(abar) x0 + sqrt(1 - abar) eps, loss = mean((eps - eps_hat)^2) / sigma^2.
    abar = constant.scheduler.alphas_cumprod[t].view(-1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * sigma * noise
    expected = ((sigma * noise - constant.denoiser(x_t, y, t)) ** 2).mean() / sigma**2
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-7)
    assert out.latent_reg == 0 and out.prior_match == 0
    assert torch.equal(constant.prior_std(y), torch.full_like(y, sigma))
    constant.eval(), handcrafted.eval()
    assert torch.equal(constant.restore(y, num_inference_steps=4, generator=seeded()),
                       handcrafted.restore(y, num_inference_steps=4, generator=seeded()))


def test_the_constant_goes_with_its_mode_only():
    with pytest.raises(ValueError, match="`prior_std`.*goes with mode 'constant_prior'"):
        RestoreGradConfig(mode="constant_prior")
    with pytest.raises(ValueError, match="`prior_std`.*goes with mode 'constant_prior'"):
        RestoreGradConfig(mode="ddpm", prior_std=0.2)
    with pytest.raises(ValueError, match="`prior_std` must be a finite number > 0"):
        RestoreGradConfig(mode="constant_prior", prior_std=0.0)
    adapter = adapter_in("restoregrad")
    with pytest.raises(ValueError, match="set_constant_prior"):
        adapter.mode = "constant_prior"
    adapter.set_constant_prior(0.25)
    assert adapter.mode == "constant_prior" and adapter.config.prior_std == 0.25
    adapter.mode = "ddpm"  # leaving the mode drops its constant
    assert adapter.config.prior_std is None


def test_a_constant_prior_adapter_saves_loads_and_restores_identically(tmp_path):
    adapter = adapter_in("constant_prior", prior_std=0.2).eval()
    folder = adapter.save_pretrained(tmp_path / "adapter")
    assert json.loads((folder / "restoregrad_config.json").read_text())["config"]["prior_std"] == 0.2
    loaded = RestoreGrad.from_pretrained(folder, denoiser=TinyConvDenoiser())
    assert loaded.mode == "constant_prior" and loaded.config == adapter.config
    _, y = pair(1)
    assert torch.equal(loaded.restore(y, num_inference_steps=3, generator=seeded()),
                       adapter.restore(y, num_inference_steps=3, generator=seeded()))


def test_data_prior_std_is_the_rms_of_what_is_diffused():
    x0 = torch.tensor([[[3.0, 4.0]]])
    y = torch.tensor([[[3.0, 3.0]]])
    pairs = [(x0, y), (2 * x0, y)]
    # x0: (9 + 16 + 36 + 64) / 4 = 31.25; residual: (0 + 1 + 9 + 25) / 4 = 8.75.
    assert data_prior_std(pairs) == pytest.approx(31.25 ** 0.5)
    assert data_prior_std(pairs, residual=True) == pytest.approx(8.75 ** 0.5)
    assert data_prior_std([(0.01 * x0, 0.01 * x0)], residual=True, minimum=0.1) == 0.1
    with pytest.raises(ValueError, match="`pairs` is empty"):
        data_prior_std([])


@pytest.mark.parametrize("script", ["train_weather", "train_speech"])
def test_the_scripts_take_prior_std_with_its_mode_only(script, monkeypatch):
    monkeypatch.syspath_prepend("examples")
    module = __import__(script)
    with pytest.raises(SystemExit, match="--prior_std goes with --mode constant_prior"):
        module.parse_args(["--prior_std", "0.2"])
    with pytest.raises(SystemExit, match="--prior_std goes with --mode constant_prior"):
        module.parse_args(["--mode", "constant_prior"])
    with pytest.raises(SystemExit):
        module.parse_args(["--mode", "constant_prior", "--prior_std", "-1"])
    assert module.parse_args(["--mode", "constant_prior", "--prior_std", "auto"]).prior_std == "auto"
    assert module.parse_args(["--mode", "constant_prior", "--prior_std", "0.2"]).prior_std == 0.2
    sys.modules.pop(script, None)


def test_train_weather_estimates_prior_std_auto_from_its_training_crops(tmp_path):
    from test_train_scripts import TINY_WEATHER, run

    out = tmp_path / "run"
    log = run([sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--max_train_steps", "1",
               "--validation_steps", "100", "--mode", "constant_prior", "--prior_std", "auto",
               "--output_dir", str(out)])
    saved = json.loads((out / "adapter" / "restoregrad_config.json").read_text())["config"]
    assert saved["mode"] == "constant_prior" and f"--prior_std auto: sigma = {saved['prior_std']:.4f}" in log

    # The same estimate, recomputed from the script's own data and crops.
    sys.path.insert(0, "examples")
    try:
        import train_weather
        from restoregrad_adapter.contrib.data.readers import image_to_tensor
        from restoregrad_adapter.contrib.training import RandomCropDataset

        args = train_weather.parse_args([*TINY_WEATHER, "--mode", "constant_prior", "--prior_std", "auto"])
        pairs, _, _ = train_weather.load_data(args)
        dataset = RandomCropDataset(pairs, args.patch_size, args.seed, image_to_tensor, augment=args.augment)
        expected = data_prior_std((dataset[i] for i in range(train_weather.AUTO_PRIOR_EXAMPLES)),
                                  residual=args.residual, minimum=args.sigma_min)
    finally:
        sys.path.remove("examples")
        sys.modules.pop("train_weather", None)
    assert saved["prior_std"] == pytest.approx(expected, rel=1e-12)
