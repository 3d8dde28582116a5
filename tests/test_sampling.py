"""One restoration loop: the same adapter, input and generator give the same output through every
entry point; integrations are plug-ins, and one defined outside the package saves, loads and restores."""

import json
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from restoregrad_adapter import LearnedPriorScheduler, RestoreGrad, RestoreGradPipeline, sampling
from restoregrad_adapter.cli import main
from restoregrad_adapter.integrations import (Integration, find_integration, get_integration, register_integration,
                                              registered_integrations)
from restoregrad_adapter.integrations import cdiffuse, weatherdiff
from restoregrad_adapter.integrations.diffusers import wrap as wrap_diffusers
from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser, WeatherUNet


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def write_png(path, height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def as_tensor(pixels):
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1


def as_pixels(restored):
    """What the command line writes for a restored image: 8-bit pixels of the clamped result."""
    return (((restored[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def randomise(adapter):
    torch.nn.init.normal_(adapter.prior_net.encoder.head.weight, std=0.05)
    return adapter.eval()


def run_cli(*arguments):
    assert main(["restore", *map(str, arguments), "--quiet"]) == 0


# ---------------------------------------------------------------------- every entry point, one output
def run_cli_with_factory(monkeypatch, folder, factory_source, inputs, output):
    """The command line, building the denoiser with ``factory:build`` written in the working directory."""
    (output.parent / "factory.py").write_text(factory_source)
    monkeypatch.chdir(output.parent)
    monkeypatch.delitem(sys.modules, "factory", raising=False)
    try:
        run_cli("--adapter", folder, "--model-factory", "factory:build", *inputs, "-o", output)
    finally:
        sys.modules.pop("factory", None)


def test_weatherdiff_adapter_restores_identically_through_every_entry_point(tmp_path, monkeypatch):
    torch.manual_seed(0)
    unet = WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16)
    adapter = randomise(RestoreGrad.with_encoders(weatherdiff.wrap(unet, patch_size=16), dims=2, in_channels=3,
                                                  size="tiny", scheduler=LearnedPriorScheduler(num_train_timesteps=50)))
    pixels = write_png(tmp_path / "rain.png", 23, 37)
    y = as_tensor(pixels)

    defaults = adapter.restoration_defaults().sampling_kwargs(adapter.scheduler)  # the wrapper's, passed explicitly
    through_loop = sampling.restore(adapter.denoiser, y, adapter.prior_std, adapter.scheduler, generator=seeded(),
                                    **defaults)
    through_adapter = adapter.restore(y, generator=seeded())
    through_restore_image = weatherdiff.restore_image(adapter, y, patch_size=16, stride=4, generator=seeded(),
                                                      progress=False)
    assert through_loop.shape == y.shape and torch.isfinite(through_loop).all()
    assert torch.equal(through_adapter, through_loop) and torch.equal(through_restore_image, through_loop)

    folder = adapter.save_pretrained(tmp_path / "adapter")
    loaded = RestoreGrad.from_pretrained(folder, denoiser=WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                                                      attn_resolutions=(), image_size=16))
    assert torch.equal(loaded.restore(y, generator=seeded()), through_loop)
    run_cli_with_factory(monkeypatch, folder, "from restoregrad_adapter.contrib.reference_nets import WeatherUNet\n\n"
                         "def build():\n    return WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, "
                         "attn_resolutions=(), image_size=16)\n", [tmp_path / "rain.png"], tmp_path / "out")
    written = np.asarray(Image.open(tmp_path / "out" / "rain.png"))
    assert np.array_equal(written, as_pixels(through_loop))


def test_diffusers_adapter_restores_identically_through_every_entry_point(tmp_path):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    adapter = randomise(RestoreGrad.with_encoders(wrap_diffusers(unet), dims=2, in_channels=3, size="tiny",
                                                  scheduler=LearnedPriorScheduler(num_train_timesteps=100)))
    pixels = write_png(tmp_path / "snow.png", 20, 28, seed=3)  # larger than the UNet's 16: overlapping patches
    y = as_tensor(pixels)

    defaults = adapter.restoration_defaults().sampling_kwargs(adapter.scheduler)  # the wrapper's, passed explicitly
    through_loop = sampling.restore(adapter.denoiser, y, adapter.prior_std, adapter.scheduler, generator=seeded(),
                                    **defaults)
    assert torch.equal(adapter.restore(y, generator=seeded()), through_loop)
    folder = adapter.save_pretrained(tmp_path / "adapter")
    pipe = RestoreGradPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(pipe(y, generator=seeded(), output_type="pt").images, through_loop.clamp(-1, 1))
    run_cli("--adapter", folder, tmp_path / "snow.png", "-o", tmp_path / "out")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "snow.png")), as_pixels(through_loop))
    # The documented defaults: 10 steps, patches of the UNet's sample_size, stride p // 4.
    explicit = adapter.restore(y, num_inference_steps=10, patch_size=16, stride=4, patch_batch_size=64,
                               generator=seeded())
    assert torch.equal(explicit, through_loop)


def test_cdiffuse_adapter_restores_identically_through_every_entry_point(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)
    adapter = randomise(cdiffuse.CDiffuSERestoreGrad.from_model(model, size="tiny"))
    audio = (0.3 * np.sin(np.arange(700) * 0.05) + 0.05 * np.random.default_rng(0).standard_normal(700))
    audio = audio.astype(np.float32)
    soundfile.write(tmp_path / "noisy.wav", audio, 16000, subtype="FLOAT")
    crop = torch.from_numpy(np.pad(audio, (0, (-700) % cdiffuse.HOP_LENGTH)))[None, None]  # whole frames
    scheduler = cdiffuse.CDiffuSEScheduler.from_training_scheduler(adapter.scheduler)
    defaults = adapter.restoration_defaults().sampling_kwargs(adapter.scheduler)  # the wrapper's, passed explicitly
    assert torch.equal(sampling.restore(adapter.denoiser, crop, adapter.prior_std, adapter.scheduler, generator=seeded(),
                                        **defaults),
                       sampling.restore(adapter.denoiser, crop, adapter.prior_std, adapter.scheduler,
                                        scheduler=cdiffuse.CDiffuSEScheduler.from_training_scheduler(adapter.scheduler),
                                        inference_betas=cdiffuse.FAST_INFERENCE_BETAS_6, generator=seeded())
                       )  # the integration's default sampler

    # A whole utterance (the adapter's framing): the loop on y zero-padded to 256 (1 + 700 // 256) samples,
    # conditioned on every frame of the unpadded utterance's spectrogram, cropped back to 700.
    y = torch.from_numpy(audio)[None, None]
    spectrogram = adapter.denoiser.spectrogram(y, whole_utterance=True)
    padded = torch.nn.functional.pad(y, (0, cdiffuse.utterance_length(700) - 700))
    through_loop = sampling.restore(lambda x_t, c, t: adapter.denoiser(x_t, c, t, spectrogram=spectrogram), padded,
                                    adapter.prior_std, adapter.scheduler, scheduler=scheduler,
                                    inference_betas=cdiffuse.FAST_INFERENCE_BETAS_6, generator=seeded())[..., :700]
    assert torch.equal(adapter.restore(y, generator=seeded()), through_loop)
    folder = adapter.save_pretrained(tmp_path / "adapter", sample_rate=16000)
    run_cli_with_factory(monkeypatch, folder, "from restoregrad_adapter.contrib.reference_nets import "
                         "DiffWaveDenoiser\n\ndef build():\n    return DiffWaveDenoiser(residual_channels=8, "
                         "residual_layers=2, embedding_dim=32)\n", [tmp_path / "noisy.wav"], tmp_path / "out")
    enhanced, rate = soundfile.read(tmp_path / "out" / "noisy.wav", dtype="float32")
    # The same samples, written in the command's WAV format.
    subtype = soundfile.info(tmp_path / "out" / "noisy.wav").subtype
    soundfile.write(tmp_path / "expected.wav", through_loop[0, 0, :700].numpy(), 16000, subtype=subtype)
    assert rate == 16000 and np.array_equal(enhanced, soundfile.read(tmp_path / "expected.wav", dtype="float32")[0])


def test_the_loop_validates_its_settings_once_with_named_errors():
    torch.manual_seed(0)
    adapter = randomise(RestoreGrad.with_encoders(weatherdiff.wrap(
        WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16), patch_size=16),
        dims=2, in_channels=3, size="tiny", scheduler=LearnedPriorScheduler(num_train_timesteps=50)))
    y = torch.zeros(1, 3, 20, 20)
    for kwargs, match in (({"num_inference_steps": 0}, "`num_inference_steps`"),
                          ({"num_inference_steps": 51}, "`num_inference_steps`"),
                          ({"stride": 17}, "`stride`"), ({"patch_batch_size": 0}, "`patch_batch_size`"),
                          ({"eta": -1.0}, "`eta`"), ({"generator": 3}, "`generator`"),
                          ({"num_inference_steps": 4, "inference_betas": (0.1, 0.2)}, "only one"),
                          ({"inference_betas": (0.1, 0.2)}, "strided steps|inference_betas")):
        with pytest.raises(ValueError, match=match):
            adapter.restore(y, **kwargs)
    # A scheduler with another training schedule or prediction type is refused.
    from diffusers import DDIMScheduler

    with pytest.raises(ValueError, match="training schedule"):
        adapter.restore(y, scheduler=DDIMScheduler(num_train_timesteps=40, clip_sample=False))
    with pytest.raises(ValueError, match="prediction_type"):
        adapter.restore(y, scheduler=DDIMScheduler.from_config(adapter.scheduler.config, clip_sample=False,
                                                               prediction_type="v_prediction"))


# ---------------------------------------------------------------------- integrations as plug-ins
PLUGIN = textwrap.dedent('''
    """An integration defined outside restoregrad_adapter: a scaled concatenation denoiser."""
    import torch
    from torch import nn

    from restoregrad_adapter.integrations import Integration, register_integration
    from restoregrad_adapter.sampling import RestorationDefaults


    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 3, 3, padding=1)

        def forward(self, inputs, t):
            return self.conv(inputs) * (1 + t.float()[:, None, None, None] / 100)


    class ScaledDenoiser(nn.Module):
        def __init__(self, model, scale=1.0):
            super().__init__()
            self.model, self.scale = model, float(scale)

        def forward(self, x_t, y, t):
            return self.scale * self.model(torch.cat([x_t, y], 1), t)

        def restoration_defaults(self):
            return RestorationDefaults(num_inference_steps=3, patch_size=8)


    def build():
        return TinyNet()


    INTEGRATION = register_integration(Integration(
        name="scaled_concat",
        wrapper_class=ScaledDenoiser,
        wrap=ScaledDenoiser,
        wrapper_kwargs=lambda wrapper: {"scale": wrapper.scale},
    ))
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("my_plugin")
    yield module
    sys.modules.pop("my_plugin", None)
    from restoregrad_adapter import integrations

    integrations._REGISTRY.pop("scaled_concat", None)


def test_a_user_integration_saves_loads_and_restores_through_from_pretrained_and_the_cli(plugin, tmp_path,
                                                                                         monkeypatch):
    torch.manual_seed(0)
    adapter = randomise(RestoreGrad.with_encoders(plugin.ScaledDenoiser(plugin.build(), scale=0.5), dims=2,
                                                  in_channels=3, size="tiny",
                                                  scheduler=LearnedPriorScheduler(num_train_timesteps=20)))
    assert find_integration(adapter.denoiser) is plugin.INTEGRATION
    assert "scaled_concat" in registered_integrations() and "weatherdiff" in registered_integrations()
    pixels = write_png(tmp_path / "drops.png", 12, 13, seed=5)
    y = as_tensor(pixels)
    expected = adapter.restore(y, generator=seeded())
    # The plug-in's defaults are honoured: 3 steps over 8-pixel patches (stride 2).
    assert torch.equal(expected, adapter.restore(y, num_inference_steps=3, patch_size=8, stride=2, generator=seeded()))

    folder = adapter.save_pretrained(tmp_path / "adapter")
    config = json.loads((folder / "restoregrad_config.json").read_text())
    assert config["config"]["integration"] == "scaled_concat" and config["config"]["integration_kwargs"] == {"scale": 0.5}
    assert config["integration_module"] == "my_plugin"
    loaded = RestoreGrad.from_pretrained(folder, denoiser=plugin.build())
    assert isinstance(loaded.denoiser, plugin.ScaledDenoiser) and loaded.denoiser.scale == 0.5
    assert torch.equal(loaded.restore(y, generator=seeded()), expected)
    assert "adapter.restore(degraded)" in (folder / "README.md").read_text()

    monkeypatch.chdir(tmp_path)
    run_cli("--adapter", folder, "--model-factory", "my_plugin:build", tmp_path / "drops.png", "-o", tmp_path / "out")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "drops.png")), as_pixels(expected))


def test_unknown_and_conflicting_integrations_say_what_to_do(plugin, tmp_path):
    torch.manual_seed(0)
    adapter = randomise(RestoreGrad.with_encoders(plugin.ScaledDenoiser(plugin.build()), dims=2, in_channels=3,
                                                  size="tiny", scheduler=LearnedPriorScheduler(num_train_timesteps=20)))
    folder = adapter.save_pretrained(tmp_path / "adapter")
    from restoregrad_adapter import integrations

    integrations._REGISTRY.pop("scaled_concat")  # as in a fresh process that never imported my_plugin
    with pytest.raises(ValueError, match=r"unknown integration 'scaled_concat'.*'my_plugin'.*import the module"):
        RestoreGrad.from_pretrained(folder, denoiser=plugin.build())
    with pytest.raises(ValueError, match="unknown integration 'nope'"):
        get_integration("nope")

    class Other(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_integration(Integration(name="weatherdiff", wrapper_class=Other, wrap=Other))
    with pytest.raises(ValueError, match="`integration.name`"):
        register_integration(Integration(name="custom", wrapper_class=Other, wrap=Other))


def test_the_core_names_no_integration():
    """hub, the command line, the pipeline, the adapter and the loop find integrations through the registry."""
    from pathlib import Path

    package = Path(sampling.__file__).parent
    for name in ("adapter.py", "hub.py", "cli.py", "pipeline.py", "sampling.py", "patches.py", "scheduler.py"):
        text = (package / name).read_text()
        for integration in ("integrations.weatherdiff", "integrations.cdiffuse", "integrations.diffusers",
                            "integrations import weatherdiff", "integrations import cdiffuse",
                            "integrations import diffusers", '"weatherdiff"', '"cdiffuse"'):
            assert integration not in text, f"{name} names an integration: {integration}"
