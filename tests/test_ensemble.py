"""The geometric self-ensemble (the eight symmetries, their inverses, the mean, its use in restoration) and
the DDIM timestep spacings that go with it for super-resolution."""

import numpy as np
import pytest
import torch
from PIL import Image

from restoregrad_adapter.cli import main
from restoregrad_adapter.ensemble import DIHEDRAL, dihedral, dihedral_ensemble, undo_dihedral
from diffusers import DDIMScheduler

from restoregrad_adapter.integrations.weatherdiff import TIMESTEP_SPACINGS, ddim_scheduler, restore_image, wrap
from test_weatherdiff import Recording, image, make_adapter, tiny_unet


def numpy_dihedral(array, turns, mirror):
    """The same symmetry written with numpy on the last two axes (an independent reference)."""
    array = np.rot90(array, turns, axes=(-2, -1))
    return array[..., ::-1] if mirror else array


def test_the_eight_symmetries_are_distinct_and_undone():
    y = image((2, 3, 5, 7), seed=3)
    seen = set()
    for turns, mirror in DIHEDRAL:
        turned = dihedral(y, turns, mirror)
        assert turned.shape == ((2, 3, 7, 5) if turns % 2 else (2, 3, 5, 7))
        assert np.array_equal(turned.numpy(), numpy_dihedral(y.numpy(), turns, mirror))
        assert torch.equal(undo_dihedral(turned, turns, mirror), y)
        seen.add(turned.numpy().tobytes())
    assert len(DIHEDRAL) == 8 and len(seen) == 8


def test_the_ensemble_is_the_mean_of_the_turned_back_restorations():
    y = image((1, 3, 6, 9), seed=4)
    # an equivariant restoration (pointwise) is reproduced exactly
    assert torch.allclose(dihedral_ensemble(lambda z: 0.5 * z.tanh(), y), 0.5 * y.tanh(), atol=1e-7)

    # a restoration that adds a fixed gradient along its input's width: the closed form is the mean of
    # that gradient seen from the eight orientations
    def add_ramp(z):
        return z + torch.linspace(0, 1, z.shape[-1])

    total = np.zeros(y.shape)
    for turns, mirror in DIHEDRAL:
        turned = numpy_dihedral(y.numpy(), turns, mirror)
        restored = turned + np.linspace(0, 1, turned.shape[-1])
        back = restored[..., ::-1] if mirror else restored
        total += np.rot90(back, -turns, axes=(-2, -1))
    expected = total / 8
    got = dihedral_ensemble(add_ramp, y)
    assert got.dtype == torch.float32 and np.allclose(got.numpy(), expected, atol=1e-6)
    # the ramp's mean over the eight orientations is 0.5 everywhere: rows and columns both run 0 -> 1 and 1 -> 0
    assert np.allclose(expected - y.numpy(), 0.5, atol=1e-6)


def test_restore_image_self_ensemble_averages_eight_seeded_restorations():
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    y = image((1, 3, 20, 27), seed=5)
    generator = torch.Generator().manual_seed(0)
    got = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=2, generator=generator,
                        progress=False, self_ensemble=True)
    generator = torch.Generator().manual_seed(0)  # the eight restorations draw from it in DIHEDRAL's order
    runs = [undo_dihedral(restore_image(adapter, dihedral(y, k, m), patch_size=16, stride=8, num_inference_steps=2,
                                        generator=generator, progress=False), k, m) for k, m in DIHEDRAL]
    assert got.shape == y.shape
    assert torch.allclose(got, torch.stack(runs).double().mean(0).float(), atol=1e-6)
    single = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=2,
                           generator=torch.Generator().manual_seed(0), progress=False)
    assert not torch.allclose(got, single, atol=1e-3)  # it is not one restoration


def test_bad_self_ensemble_arguments_are_named():
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    with pytest.raises(ValueError, match="`self_ensemble` must be True or False"):
        restore_image(adapter, image((1, 3, 16, 16)), patch_size=16, progress=False, self_ensemble="yes")
    with pytest.raises(ValueError, match="`restore` must return a tensor of its input's shape"):
        dihedral_ensemble(lambda z: z[..., :-1], image((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="`turns` must be 0, 1, 2 or 3"):
        dihedral(image((1, 3, 8, 8)), 4, False)
    with pytest.raises(ValueError, match="`y`"):
        dihedral_ensemble(lambda z: z, torch.zeros(3, 8, 8))


def test_the_restore_command_self_ensemble(tmp_path):
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    folder = adapter.save_pretrained(tmp_path / "adapter")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (18, 23, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    for flag, out in (([], "plain"), (["--self-ensemble"], "ensemble")):
        assert main(["restore", "--adapter", str(folder), str(tmp_path / "a.png"), "-o", str(tmp_path / out),
                     "--steps", "2", "--quiet", *flag]) == 0
    y = torch.from_numpy(np.asarray(Image.open(tmp_path / "a.png"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = restore_image(adapter, y * 2 - 1, patch_size=16, stride=4, num_inference_steps=2,
                             generator=torch.Generator().manual_seed(0), progress=False, self_ensemble=True)
    expected = np.round(((expected[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy() * 255)
    written = np.asarray(Image.open(tmp_path / "ensemble" / "a.png"), dtype=np.float64)
    assert np.abs(written - expected).max() <= 1  # 8-bit rounding
    assert not np.array_equal(written, np.asarray(Image.open(tmp_path / "plain" / "a.png")))


@pytest.mark.parametrize("steps", [1, 2, 3, 7])
def test_the_timestep_spacings_of_the_ddim_sampler(steps):
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16), T=50)
    leading = ddim_scheduler(adapter.scheduler)
    leading.set_timesteps(steps)
    assert leading.timesteps.tolist() == list(reversed(range(0, 50, 50 // steps)))  # WeatherDiff's, as before
    for spacing in ("linspace", "trailing"):
        ours = ddim_scheduler(adapter.scheduler, timestep_spacing=spacing)
        stock = DDIMScheduler(num_train_timesteps=50, clip_sample=False, set_alpha_to_one=True,
                              timestep_spacing=spacing)
        ours.set_timesteps(steps)
        stock.set_timesteps(steps)
        assert torch.equal(ours.timesteps, stock.timesteps) and torch.equal(ours.alphas_cumprod, stock.alphas_cumprod)
    trailing = ddim_scheduler(adapter.scheduler, timestep_spacing="trailing")
    trailing.set_timesteps(steps)
    assert trailing.timesteps[0] == 49  # the first step is from pure noise
    assert TIMESTEP_SPACINGS == ("leading", "linspace", "trailing")
    with pytest.raises(ValueError, match="`timestep_spacing` must be one of"):
        ddim_scheduler(adapter.scheduler, timestep_spacing="leadin")


def test_restore_image_timestep_spacing_is_that_ddim():
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16), T=50)
    y = image((1, 3, 20, 20), seed=6)
    recording = Recording(adapter.denoiser)
    adapter.denoiser = recording
    got = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=2, progress=False,
                        generator=torch.Generator().manual_seed(0), timestep_spacing="trailing")
    assert sorted(set(recording.timesteps), reverse=True) == [49, 24]
    stock = DDIMScheduler.from_config(ddim_scheduler(adapter.scheduler).config, timestep_spacing="trailing")
    expected = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=2, progress=False,
                             generator=torch.Generator().manual_seed(0), scheduler=stock)
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="give `scheduler` or `timestep_spacing`, not both"):
        restore_image(adapter, y, patch_size=16, progress=False, scheduler=stock, timestep_spacing="trailing")


def test_the_restore_command_timestep_spacing(tmp_path):
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    folder = adapter.save_pretrained(tmp_path / "adapter")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (16, 21, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["restore", "--adapter", str(folder), str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
                 "--steps", "1", "--timestep-spacing", "trailing", "--quiet"]) == 0
    y = torch.from_numpy(np.asarray(Image.open(tmp_path / "a.png"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    expected = restore_image(adapter, y * 2 - 1, patch_size=16, stride=4, num_inference_steps=1,
                             generator=torch.Generator().manual_seed(0), progress=False, timestep_spacing="trailing")
    expected = np.round(((expected[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy() * 255)
    written = np.asarray(Image.open(tmp_path / "out" / "a.png"), dtype=np.float64)
    assert np.abs(written - expected).max() <= 1  # 8-bit rounding
