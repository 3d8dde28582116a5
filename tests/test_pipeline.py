"""RestoreGradPipeline: loading adapter folders, equality with RestoreGrad.restore, inputs, outputs, patches."""

import json
import shutil
import socket
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DModel
from PIL import Image
from test_hub import custom_adapter, diffusers_adapter, seed_hub_cache

import restoregrad_adapter
from restoregrad_adapter import LearnedPriorScheduler, PriorNet, RestoreGrad, RestoreGradPipeline
from restoregrad_adapter.integrations.diffusers import wrap as wrap_diffusers
from restoregrad_adapter.integrations.weatherdiff import restore_image

STEPS = 4  # divides the tiny adapter's 100 training steps: "leading" spacing = WeatherDiff's DDIM steps


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny diffusers adapter of test_hub (16-pixel UNet2DModel, 100 steps) and its saved folder."""
    adapter = diffusers_adapter().eval()
    return adapter, adapter.save_pretrained(tmp_path_factory.mktemp("adapter") / "rain")


@pytest.fixture
def pipe(saved):
    pipeline = RestoreGradPipeline.from_pretrained(saved[1])
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def images(batch=2, height=16, width=16, seed=0):
    """Degraded images as uint8 pixels, exactly representable as PIL, numpy and tensor input."""
    return torch.randint(0, 256, (batch, height, width, 3), generator=seeded(seed), dtype=torch.uint8).numpy()


def as_tensor(pixels):
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(0, 3, 1, 2) * 2 - 1


def test_the_adapter_folder_is_a_pipeline_and_restores_like_the_adapter(saved, pipe):
    adapter, folder = saved
    assert isinstance(pipe.denoiser, UNet2DModel) and isinstance(pipe.prior_net, PriorNet)
    assert isinstance(pipe.scheduler, LearnedPriorScheduler)
    assert restoregrad_adapter.RestoreGradPipeline is RestoreGradPipeline
    assert "RestoreGradPipeline" in dir(restoregrad_adapter)

    # model_index.json names the components exactly as the pipeline's own save_pretrained does.
    index = json.loads((folder / "model_index.json").read_text())
    resaved = folder.parent / "resaved"
    pipe.save_pretrained(resaved)
    again = json.loads((resaved / "model_index.json").read_text())
    for name in ("_class_name", "denoiser", "prior_net", "scheduler"):
        assert index[name] == again[name]
    assert index["prior_net"] == ["restoregrad_adapter.encoders", "PriorNet"]
    assert RestoreGradPipeline.from_pretrained(resaved).config.prior_net == ("restoregrad_adapter.encoders", "PriorNet")

    y = as_tensor(images())
    expected = adapter.restore(y, num_inference_steps=STEPS, generator=seeded()).clamp(-1, 1)
    out = pipe(y, num_inference_steps=STEPS, generator=seeded(), output_type="pt")
    assert torch.equal(out.images, expected)
    loaded = RestoreGrad.from_pretrained(folder)
    assert torch.equal(out.images, loaded.restore(y, num_inference_steps=STEPS, generator=seeded()).clamp(-1, 1))
    # Deterministic given the generator; another seed gives another sample.
    assert torch.equal(pipe(y, num_inference_steps=STEPS, generator=seeded(), output_type="pt").images, expected)
    assert not torch.equal(pipe(y, num_inference_steps=STEPS, generator=seeded(1), output_type="pt").images, expected)


@pytest.fixture
def isolated_modules_cache(tmp_path, monkeypatch):
    """diffusers copies custom pipeline files into HF_MODULES_CACHE: keep that copy inside tmp_path."""
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("diffusers_modules"):
            del sys.modules[name]


def test_diffusion_pipeline_from_pretrained_with_the_custom_pipeline_file(saved, pipe, isolated_modules_cache):
    adapter, folder = saved
    import restoregrad_adapter.pipeline as module

    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder, custom_pipeline=module.__file__)
    loaded = DiffusionPipeline.from_pretrained(folder, custom_pipeline=module.__file__, trust_remote_code=True)
    assert type(loaded) is RestoreGradPipeline  # the installed class, not a copy
    assert isinstance(loaded.prior_net, PriorNet) and isinstance(loaded.scheduler, LearnedPriorScheduler)
    loaded.set_progress_bar_config(disable=True)
    y = as_tensor(images(1))
    a = loaded(y, num_inference_steps=STEPS, generator=seeded(), output_type="pt").images
    b = pipe(y, num_inference_steps=STEPS, generator=seeded(), output_type="pt").images
    assert torch.equal(a, b)
    assert torch.equal(a, adapter.restore(y, num_inference_steps=STEPS, generator=seeded()).clamp(-1, 1))


def test_input_and_output_types(pipe):
    pixels = images(2, 16, 16)
    run = lambda degraded, output_type="pt": pipe(degraded, num_inference_steps=2, generator=seeded(),  # noqa: E731
                                                   output_type=output_type).images
    reference = run(as_tensor(pixels))
    assert reference.shape == (2, 3, 16, 16) and reference.dtype == torch.float32
    assert reference.min() >= -1 and reference.max() <= 1
    # The same images as a list of PIL images, a batch array in [0, 1], and one by one.
    assert torch.equal(run([Image.fromarray(p) for p in pixels]), reference)
    assert torch.equal(run(pixels.astype(np.float32) / 255.0), reference)
    single = run(pixels[1].astype(np.float32) / 255.0)
    assert single.shape == (1, 3, 16, 16)
    assert torch.equal(run(Image.fromarray(pixels[1])), single)

    array = run(as_tensor(pixels), "np")
    assert isinstance(array, np.ndarray) and array.shape == (2, 16, 16, 3) and array.dtype == np.float32
    assert array.min() >= 0 and array.max() <= 1
    np.testing.assert_allclose(array, ((reference + 1) / 2).permute(0, 2, 3, 1).numpy(), atol=1e-7)
    pil = run(as_tensor(pixels), "pil")
    assert isinstance(pil, list) and len(pil) == 2
    assert all(isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (16, 16) for im in pil)
    np.testing.assert_array_equal(np.asarray(pil[0]), (array[0] * 255).round().astype(np.uint8))

    out = pipe(as_tensor(pixels), num_inference_steps=2, generator=seeded(), output_type="pt", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1 and torch.equal(out[0], reference)


def test_swapped_schedulers_sample_the_learned_prior_by_whitening(saved, pipe):
    adapter, _ = saved
    y = as_tensor(images())
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    assert pipe.config.scheduler == ("diffusers", "DDIMScheduler")
    ddim = DDIMScheduler.from_config(adapter.scheduler.config, clip_sample=False)
    expected = adapter.restore(y, num_inference_steps=STEPS, generator=seeded(), scheduler=ddim).clamp(-1, 1)
    assert torch.equal(pipe(y, num_inference_steps=STEPS, generator=seeded(), output_type="pt").images, expected)
    # DDIM with eta > 0 draws fresh noise from the prior: still reproducible.
    a = pipe(y, num_inference_steps=STEPS, generator=seeded(), eta=0.5, output_type="pt").images
    b = adapter.restore(y, num_inference_steps=STEPS, generator=seeded(), scheduler=ddim, eta=0.5).clamp(-1, 1)
    assert torch.equal(a, b) and not torch.equal(a, expected)

    dpm = lambda: DPMSolverMultistepScheduler.from_config(adapter.scheduler.config,  # noqa: E731
                                                         algorithm_type="dpmsolver++")
    pipe.scheduler = dpm()
    expected = adapter.restore(y, num_inference_steps=STEPS, generator=seeded(), scheduler=dpm()).clamp(-1, 1)
    assert torch.equal(pipe(y, num_inference_steps=STEPS, generator=seeded(), output_type="pt").images, expected)

    # Clipping would act in whitened units; eta means nothing to a scheduler without it.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True)
    with pytest.raises(ValueError, match="clip_sample"):
        pipe(y, num_inference_steps=STEPS)
    pipe.scheduler = LearnedPriorScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="`eta`"):
        pipe(y, num_inference_steps=STEPS, eta=0.5)


def test_large_images_are_restored_from_overlapping_patches(saved, pipe):
    adapter, _ = saved
    y = as_tensor(images(1, 40, 50))
    out = pipe(y, num_inference_steps=STEPS, generator=seeded(), stride=8, output_type="pt").images
    assert out.shape == (1, 3, 40, 50) and torch.isfinite(out).all()
    assert torch.equal(out, pipe(y, num_inference_steps=STEPS, generator=seeded(), stride=8, output_type="pt").images)
    pil = pipe(Image.fromarray(images(1, 40, 50)[0]), num_inference_steps=2, generator=seeded()).images
    assert pil[0].size == (50, 40)

    # With DDIM the patch path is WeatherDiff's overlapping-patch sampler (restore_image), bit for bit.
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    expected = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=STEPS, generator=seeded(),
                             patch_batch_size=5, progress=False).clamp(-1, 1)
    got = pipe(y, num_inference_steps=STEPS, generator=seeded(), stride=8, patch_batch_size=5, output_type="pt").images
    assert torch.equal(got, expected)
    # An explicit patch size; a side shorter than the patch is padded and cropped again.
    thin = as_tensor(images(1, 40, 12))
    expected = restore_image(adapter, thin, patch_size=16, stride=4, num_inference_steps=STEPS, generator=seeded(),
                             progress=False).clamp(-1, 1)
    got = pipe(thin, num_inference_steps=STEPS, generator=seeded(), patch_size=16, stride=4, output_type="pt").images
    assert got.shape == (1, 3, 40, 12) and torch.equal(got, expected)


@pytest.mark.parametrize("kwargs, match", [
    ({"degraded": "rain.png"}, "`degraded` must be a PIL image"),
    ({"degraded": torch.zeros(3, 16, 16)}, r"`degraded`.*\(B, 3, H, W\).*degraded\[None\]"),
    ({"degraded": torch.zeros(1, 1, 16, 16)}, r"`degraded`.*\(B, 3, H, W\)"),
    ({"degraded": torch.full((1, 3, 16, 16), 2.0)}, r"`degraded`.*\[-1, 1\]"),
    ({"degraded": torch.zeros(1, 3, 16, 16, dtype=torch.int64)}, "`degraded`.*floating"),
    ({"degraded": torch.full((1, 3, 16, 16), float("nan"))}, "`degraded`.*non-finite"),
    ({"degraded": np.zeros((16, 16, 3), dtype=np.uint8)}, "`degraded`.*255"),
    ({"degraded": np.full((16, 16, 3), -0.5)}, r"`degraded`.*\[0, 1\]"),
    ({"degraded": np.zeros((3, 16, 16))}, r"`degraded`.*\(H, W, 3\)"),
    ({"degraded": []}, "`degraded` is an empty list"),
    ({"degraded": [np.zeros((16, 16, 3))]}, "`degraded` as a list must hold PIL images"),
    ({"degraded": [Image.new("RGB", (16, 16)), Image.new("RGB", (8, 8))]}, "images in `degraded` must share one size"),
    ({"degraded": Image.new("RGBA", (16, 16))}, r"`degraded`.*'RGBA'.*convert\('RGB'\)"),
    ({"output_type": "latent"}, "`output_type`"),
    ({"num_inference_steps": 0}, "`num_inference_steps`"),
    ({"num_inference_steps": 1000}, "`num_inference_steps`"),
    ({"num_inference_steps": 2.5}, "`num_inference_steps`"),
    ({"patch_size": 0}, "`patch_size`"),
    ({"stride": -1}, "`stride`"),
    ({"patch_size": 8, "stride": 16}, "`stride`"),
    ({"patch_batch_size": 0}, "`patch_batch_size`"),
    ({"eta": -1.0}, "`eta`"),
    ({"generator": 0}, "`generator`"),
])
def test_bad_arguments_raise_value_errors_naming_them(pipe, kwargs, match):
    arguments = {"degraded": torch.zeros(1, 3, 16, 16), "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**arguments)


def test_folders_that_are_not_pipelines_say_why(saved, tmp_path):
    custom = custom_adapter().save_pretrained(tmp_path / "custom")
    assert not (custom / "model_index.json").exists()  # a waveform denoiser of your own: no pipeline
    with pytest.raises(ValueError, match="'custom' integration"):
        RestoreGradPipeline.from_pretrained(custom)
    old = tmp_path / "old"
    shutil.copytree(saved[1], old)
    (old / "model_index.json").unlink()
    with pytest.raises(ValueError, match="save it again"):
        RestoreGradPipeline.from_pretrained(old)
    loaded = RestoreGrad.from_pretrained(old)
    loaded.save_pretrained(old)
    assert (old / "model_index.json").is_file() and RestoreGradPipeline.from_pretrained(old) is not None


def test_loading_from_a_seeded_hub_cache_offline(saved, tmp_path, monkeypatch):
    adapter, folder = saved
    cache = tmp_path / "hub"
    seed_hub_cache(cache, "org/restoregrad-pipeline", folder)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    pipe = RestoreGradPipeline.from_pretrained("org/restoregrad-pipeline", cache_dir=cache)
    pipe.set_progress_bar_config(disable=True)
    y = as_tensor(images(1))
    expected = adapter.restore(y, num_inference_steps=STEPS, generator=seeded()).clamp(-1, 1)
    assert torch.equal(pipe(y, num_inference_steps=STEPS, generator=seeded(), output_type="pt").images, expected)
    with pytest.raises(OSError):
        RestoreGradPipeline.from_pretrained("org/not-cached", cache_dir=cache)


def test_a_pipeline_built_from_components_restores_grayscale_images():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=2, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    prior = PriorNet(dims=2, in_channels=1, size="tiny")
    scheduler = LearnedPriorScheduler(num_train_timesteps=50)
    pipe = RestoreGradPipeline(denoiser=unet, prior_net=prior, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    adapter = RestoreGrad(wrap_diffusers(unet), prior_net=prior, scheduler=scheduler, mode="restoregrad_no_posterior")
    pixels = images(1)[..., :1]
    y = as_tensor(pixels)
    expected = adapter.restore(y, num_inference_steps=5, generator=seeded()).clamp(-1, 1)
    assert torch.equal(pipe(y, num_inference_steps=5, generator=seeded(), output_type="pt").images, expected)
    gray = pipe(Image.fromarray(pixels[0, ..., 0]), num_inference_steps=5, generator=seeded()).images[0]
    assert gray.mode == "L" and gray.size == (16, 16)
    with pytest.raises(ValueError, match=r"`degraded`.*'RGB'.*convert\('L'\)"):
        pipe(Image.new("RGB", (16, 16)), num_inference_steps=2)

    with pytest.raises(ValueError, match="`denoiser`.*wrapper"):
        RestoreGradPipeline(denoiser=wrap_diffusers(unet), prior_net=prior, scheduler=scheduler)(y)
    wide = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    with pytest.raises(ValueError, match="`denoiser` takes 6 input channels"):
        RestoreGradPipeline(denoiser=wide, prior_net=prior, scheduler=scheduler)(y)
    # A v-predicting denoiser restores through its own scheduler, in the pipeline as in the adapter.
    v = LearnedPriorScheduler(num_train_timesteps=50, prediction_type="v_prediction")
    v_pipe = RestoreGradPipeline(denoiser=unet, prior_net=prior, scheduler=v)
    v_pipe.set_progress_bar_config(disable=True)
    v_adapter = RestoreGrad(wrap_diffusers(unet), prior_net=prior, scheduler=v, mode="restoregrad_no_posterior",
                            prediction_type="v_prediction")
    assert torch.equal(v_pipe(y, num_inference_steps=5, generator=seeded(), output_type="pt").images,
                       v_adapter.restore(y, num_inference_steps=5, generator=seeded()).clamp(-1, 1))
