"""RestoreGradConfig: one typed config object, saved as it is, older folders read through one migration;
checks at the entry points, with one host synchronisation per training step."""

from __future__ import annotations

import contextlib
import inspect
import json

import pytest
import torch
from conftest import TinyConvDenoiser

from restoregrad_adapter import EncoderConfig, LearnedPriorScheduler, RestoreGrad, RestoreGradConfig
from restoregrad_adapter.config import FORMAT_VERSION, migrate_config
from restoregrad_adapter.integrations import cdiffuse

T = 50


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def waveform_adapter(**fields):
    torch.manual_seed(0)
    adapter = RestoreGrad(TinyConvDenoiser(), RestoreGradConfig(encoder=EncoderConfig(dims=1, in_channels=1,
                                                                                      size="tiny"), **fields),
                          scheduler=LearnedPriorScheduler(num_train_timesteps=T))
    torch.nn.init.normal_(adapter.prior_net.encoder.head.weight, std=0.05)
    return adapter


def pair(batch=2, length=64):
    g = seeded(1)
    x0 = torch.randn(batch, 1, length, generator=g)
    return x0, x0 + 0.1 * torch.randn(batch, 1, length, generator=g)


# ---------------------------------------------------------------------- the config object
def test_the_config_round_trips_and_builds_what_it_describes():
    config = RestoreGradConfig(encoder=EncoderConfig(dims=2, in_channels=3, size="tiny", sigma_min=0.2,
                                                     architecture="paper"),
                               mode="restoregrad_no_posterior", prediction_type="sample", residual=True,
                               latent_weight=0.01, prior_matching_weight=1.0, weighting="x0", sample_rate=None)
    assert RestoreGradConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    adapter = RestoreGrad(lambda x_t, y, t: x_t, config)
    assert adapter.config == config and adapter.mode == "restoregrad_no_posterior" and adapter.residual
    assert adapter.scheduler.config.prediction_type == "sample"
    assert (adapter.loss_fn.latent_weight, adapter.loss_fn.prior_matching_weight, adapter.loss_fn.weighting) == (
        0.01, 1.0, "x0")
    assert adapter.prior_net.config.sigma_min == 0.2 and adapter.prior_net.config.downsample == 1  # the paper's
    assert EncoderConfig.of(adapter.prior_net) == config.encoder
    # The same encoders, in the same order of random initialisation, as with_encoders builds.
    torch.manual_seed(3)
    a = RestoreGrad(lambda x_t, y, t: x_t, config)
    torch.manual_seed(3)
    b = RestoreGrad.with_encoders(lambda x_t, y, t: x_t, dims=2, in_channels=3, size="tiny", sigma_min=0.2,
                                  encoder="paper", mode="restoregrad_no_posterior", prediction_type="sample",
                                  residual=True, latent_weight=0.01, prior_matching_weight=1.0, weighting="x0")
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("fields, message", [
    ({"mode": "gan"}, "`mode` must be one of"),
    ({"prediction_type": "score"}, "`prediction_type` must be one of"),
    ({"residual": "yes"}, "`residual` must be a bool"),
    ({"input_peak": 0.0}, "`input_peak`"),
    ({"latent_weight": -1.0}, "`latent_weight`"),
    ({"weighting": "lpips"}, "`weighting` must be one of"),
    ({"weighting": "min_snr", "snr_gamma": 0.0}, "`snr_gamma`"),
    ({"encoder": {"dims": 3, "in_channels": 1}}, "`encoder.dims` must be one of"),
    ({"encoder": {"dims": 1, "in_channels": 0}}, "`encoder.in_channels`"),
    ({"encoder": {"dims": 1, "in_channels": 1, "size": "huge"}}, "`encoder.size`"),
    ({"encoder": 3}, "`encoder` must be an EncoderConfig"),
    ({"restoration": [1]}, "`restoration` must be a dict"),
    ({"sample_rate": 0}, "`sample_rate`"),
])
def test_a_bad_config_field_is_named(fields, message):
    with pytest.raises(ValueError, match=message):
        RestoreGradConfig(**fields)


def test_the_adapter_refuses_what_contradicts_its_config():
    with pytest.raises(ValueError, match="`config` must be a RestoreGradConfig"):
        RestoreGrad(TinyConvDenoiser(), {"mode": "ddpm"})
    with pytest.raises(ValueError, match="prediction_type"):
        RestoreGrad(TinyConvDenoiser(), RestoreGradConfig(mode="ddpm", prediction_type="sample"),
                    scheduler=LearnedPriorScheduler())
    with pytest.raises(ValueError, match="settings \\['steps'\\]"):
        RestoreGrad(TinyConvDenoiser(), RestoreGradConfig(mode="ddpm", restoration={"steps": 3}))
    consistent = RestoreGrad(cdiffuse.wrap(TinyConvDenoiser()), RestoreGradConfig(mode="ddpm", integration="cdiffuse"))
    assert consistent.config.integration == "cdiffuse"
    with pytest.raises(ValueError, match="`config.integration` is 'weatherdiff'.*wrapped for the 'cdiffuse'"):
        RestoreGrad(cdiffuse.wrap(TinyConvDenoiser()), RestoreGradConfig(mode="ddpm", integration="weatherdiff"))


def test_the_config_names_the_integration_of_a_wrapped_denoiser_and_wraps_a_bare_model():
    from diffusers import UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=6, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    adapter = RestoreGrad.from_unet(unet, size="tiny")
    assert adapter.config.integration == "diffusers" and adapter.config.encoder == EncoderConfig(dims=2,
                                                                                               in_channels=3,
                                                                                               size="tiny")
    assert adapter.denoiser.model is unet  # wrapped for channel concatenation
    speech = cdiffuse.CDiffuSERestoreGrad.from_model(TinyConvDenoiser(), size="tiny", peak_normalize=False)
    assert speech.config.integration == "cdiffuse" and speech.config.integration_kwargs == {"peak_normalize": False}
    wide = UNet2DModel(sample_size=8, in_channels=4, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(ValueError, match="6 input channels"):
        RestoreGrad.from_unet(wide)


# ---------------------------------------------------------------------- older folders
def format_1(saved: dict) -> dict:
    """The flat ``restoregrad_config.json`` that format 1 wrote for the same adapter."""
    config = saved["config"]
    flat = {key: saved[key] for key in ("library_version", "adapter_class", "integration_module", "denoiser_format",
                                         "denoiser_library", "denoiser_class", "has_posterior_net")}
    flat.update(saved["metadata"])
    flat.update(format_version=1, integration=config["integration"] or "custom",
                integration_kwargs=config["integration_kwargs"], signal_kind="waveform",
                channels=config["encoder"]["in_channels"], sigma_min=config["encoder"]["sigma_min"],
                eta=config["latent_weight"], lam=config["prior_matching_weight"],  # the first releases' names
                mode=config["mode"], residual=config["residual"], input_peak=config["input_peak"],
                restoration=config["restoration"] or None, prediction_type=config["prediction_type"],
                weighting=config["weighting"], snr_gamma=config["snr_gamma"], sample_rate=config["sample_rate"])
    return flat


def test_a_format_1_folder_loads_through_the_migration_and_restores_identically(tmp_path):
    from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

    torch.manual_seed(0)
    model = DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)
    adapter = cdiffuse.CDiffuSERestoreGrad.from_model(model, size="tiny", latent_weight=0.2, prior_matching_weight=0.3,
                                                      input_peak=0.9, restoration={"mix_noisy": 0.4}).eval()
    torch.nn.init.normal_(adapter.prior_net.encoder.head.weight, std=0.05)
    folder = adapter.save_pretrained(tmp_path / "adapter", sample_rate=16000, training_data="tones")
    saved = json.loads((folder / "restoregrad_config.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION == 2 and saved["config"]["sample_rate"] == 16000
    (folder / "restoregrad_config.json").write_text(json.dumps(format_1(saved)))

    migrated = migrate_config(format_1(saved))["config"]
    # Format 1 recorded the encoders' dims, channels and sigma_min only; loading reads the rest from the Prior Net.
    assert {k: v for k, v in migrated.items() if k != "encoder"} == {
        k: v for k, v in saved["config"].items() if k != "encoder"}
    loaded = cdiffuse.CDiffuSERestoreGrad.from_pretrained(folder, denoiser=DiffWaveDenoiser(
        residual_channels=8, residual_layers=2, embedding_dim=32))
    assert loaded.config == adapter.config.replace(sample_rate=16000)
    assert loaded.metadata["training_data"] == "tones"
    y = torch.sin(torch.arange(700.0) * 0.05)[None, None] * 0.3
    assert torch.equal(loaded.restore(y, generator=seeded()), adapter.restore(y, generator=seeded()))
    with pytest.raises(ValueError, match="format_version 7"):
        migrate_config({"format_version": 7})


# ---------------------------------------------------------------------- checks and host synchronisations
@contextlib.contextmanager
def counted_synchronisations(monkeypatch):
    """Count what makes a host wait for a device: a tensor read as a Python value."""
    count = [0]

    def counting(original):
        def call(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)
        return call

    for name in ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    for name in ("equal", "allclose", "is_nonzero"):
        monkeypatch.setattr(torch, name, counting(getattr(torch, name)))
    yield count
    monkeypatch.undo()


@pytest.mark.parametrize("mode", ["restoregrad", "restoregrad_no_posterior", "priorgrad", "ddpm"])
def test_a_training_step_makes_one_host_synchronisation(mode, monkeypatch):
    adapter = waveform_adapter(mode=mode)
    x0, y = pair()
    given = {"noise": torch.randn(x0.shape, generator=seeded(2)), "timesteps": torch.tensor([3, 41])}
    for kwargs in ({"generator": seeded(4)}, given):
        with counted_synchronisations(monkeypatch) as count:
            out = adapter.training_loss(x0, y, **kwargs)
        assert count[0] == 1, (mode, kwargs.keys(), count[0])
        out.loss.backward()
    # ... and that one synchronisation still catches every bad value, naming it.
    for kwargs, message in (({"noise": given["noise"] * float("nan")}, "`noise` contains non-finite"),
                            ({"timesteps": torch.tensor([3, T])}, r"values in \[0, 50\)")):
        with pytest.raises(ValueError, match=message):
            adapter.training_loss(x0, y, **kwargs)


def test_a_restoration_checks_once_not_at_every_step(monkeypatch):
    """The prior is checked once per restoration: a restoration's steps synchronise exactly as often as the
    scheduler's bare steps (which read the timestep, as diffusers' DDPM steps do), and a step that checks
    its prior (``validate_args=True``, a user's own loop) synchronises more."""
    from diffusers import DDPMScheduler

    adapter = waveform_adapter().eval()
    _, y = pair(batch=1)
    sigma = adapter.prior_std(y)

    def bare_loop(scheduler, steps, **step_kwargs):
        scheduler.set_timesteps(steps)
        x = torch.randn(y.shape, generator=seeded())
        with counted_synchronisations(monkeypatch) as count:
            for t in scheduler.timesteps:
                x = scheduler.step(adapter.denoiser(x, y, t.expand(1)), t, x, generator=seeded(),
                                   **step_kwargs).prev_sample
        return count[0]

    counts = {"restore": {}, "bare": {}, "checked": {}, "ddpm": {}}
    for steps in (2, 8):
        with counted_synchronisations(monkeypatch) as count:
            adapter.restore(y, num_inference_steps=steps, generator=seeded())
        counts["restore"][steps] = count[0]
        counts["bare"][steps] = bare_loop(adapter.scheduler, steps, prior_std=sigma, validate_args=False)
        counts["checked"][steps] = bare_loop(adapter.scheduler, steps, prior_std=sigma)
        counts["ddpm"][steps] = bare_loop(DDPMScheduler(num_train_timesteps=T), steps)
    per_step = {name: (c[8] - c[2]) / 6 for name, c in counts.items()}
    assert per_step["restore"] == per_step["bare"] <= per_step["ddpm"], counts
    assert per_step["checked"] > per_step["bare"], counts
    assert counts["restore"][2] - 2 * per_step["restore"] <= 2, counts  # y's values and the prior's, once


def test_every_restore_has_the_base_signature():
    def parameters(method):
        return [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]

    base, speech = parameters(RestoreGrad.restore), parameters(cdiffuse.CDiffuSERestoreGrad.restore)
    assert speech[:len(base)] == base  # names, order, kinds and defaults
    assert all(kind is inspect.Parameter.KEYWORD_ONLY for _, kind, _ in speech[len(base):])
