"""The WeatherDiff integration: patch wrapper, training crops, overlapping-patch DDIM, checkpoints."""

import argparse
import math
from pathlib import Path

import pytest
import torch

from restoregrad_adapter import LearnedPriorScheduler, RestoreGrad
from restoregrad_adapter.integrations.weatherdiff import (
    WeatherDiffDenoiser,
    antithetic_timesteps,
    averaged_patch_eps,
    ddim_scheduler,
    grid_positions,
    load_checkpoint,
    overlap_counts,
    random_patch_pairs,
    restore_image,
    sampling_timesteps,
    wrap,
)
from restoregrad_adapter.contrib.reference_nets import WeatherUNet


def tiny_unet(image_size=32, seed=0):
    torch.manual_seed(seed)
    return WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=image_size)


def randomise_prior(adapter, std=0.05, seed=1):
    """Give the Prior Net a non-trivial sigma map (an untrained head gives sigma = 1)."""
    torch.manual_seed(seed)
    for net in (adapter.prior_net, adapter.posterior_net):
        torch.nn.init.normal_(net.encoder.head.weight, std=std)


def make_adapter(denoiser, T=50, seed=0, **kwargs):
    torch.manual_seed(seed)
    adapter = RestoreGrad.with_encoders(denoiser, dims=2, in_channels=3, size="tiny",
                                        scheduler=LearnedPriorScheduler(num_train_timesteps=T), **kwargs)
    randomise_prior(adapter)
    return adapter.eval()


def image(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class Pointwise(torch.nn.Module):
    """eps = f(x_t, y, t) elementwise: the same estimate whichever patch a pixel is seen in."""

    def forward(self, x_t, y, t):
        # Single correctly rounded operations: bitwise the same on any memory layout.
        return 0.6 * x_t / (1 + x_t * x_t) + 0.3 * y + (t.float() / 100.0).view(-1, 1, 1, 1)


class Recording(torch.nn.Module):
    """Wraps a denoiser and records the batch sizes and timesteps it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batches, self.timesteps = [], []

    def forward(self, x_t, y, t):
        self.batches.append(x_t.shape[0])
        self.timesteps.append(int(t[0]))
        assert (t == t[0]).all()
        return self.inner(x_t, y, t)


# ---------------------------------------------------------------------- wrapper
def test_wrapper_calls_the_model_on_y_then_x_t_with_float_steps():
    net = tiny_unet(16)
    x_t, y, t = image((2, 3, 16, 16), 1), image((2, 3, 16, 16), 2), torch.tensor([3, 40])
    assert torch.equal(wrap(net, patch_size=16)(x_t, y, t), net(torch.cat([y, x_t], 1), t.float()))

    calls = []

    def duck(inputs, steps):  # any callable with WeatherDiff's signature
        calls.append((inputs.shape, steps.dtype))
        return inputs[:, 3:] * 2

    assert torch.equal(WeatherDiffDenoiser(duck, patch_size=16)(x_t, y, t), 2 * x_t)
    assert calls == [((2, 6, 16, 16), torch.float32)]


def test_wrapper_refuses_inputs_that_are_not_a_patch():
    denoiser = wrap(tiny_unet(16), patch_size=16)
    with pytest.raises(ValueError, match=r"16 x 16 patches"):
        denoiser(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32), torch.tensor([1]))
    with pytest.raises(ValueError, match="patch_size"):
        wrap(tiny_unet(16), patch_size=0)


# ---------------------------------------------------------------------- grid
def test_grid_adds_a_last_patch_flush_with_the_border():
    assert grid_positions(70, 32, 16) == [0, 16, 32, 38]
    assert grid_positions(32, 32, 16) == [0]
    assert grid_positions(90, 32, 16) == [0, 16, 32, 48, 58]
    # Sizes the original handles (p + k r): exactly its grid range(0, h - p + 1, r).
    for size in (64, 80, 256, 496):
        assert grid_positions(size, 64, 16) == list(range(0, size - 64 + 1, 16))
    with pytest.raises(ValueError, match="smaller than"):
        grid_positions(20, 32, 16)


def test_overlap_counts_match_a_hand_computed_profile():
    # Rows of a 70-pixel side with patches at 0, 16, 32, 38 (side 32), worked out by hand.
    rows = [1] * 16 + [2] * 16 + [2] * 6 + [3] * 10 + [2] * 16 + [1] * 6
    # Columns of a 90-pixel side with patches at 0, 16, 32, 48, 58.
    cols = [1] * 16 + [2] * 16 + [2] * 16 + [2] * 10 + [3] * 6 + [2] * 16 + [1] * 10
    counts = overlap_counts(70, 90, 32, 16)
    assert torch.equal(counts, torch.tensor(rows, dtype=torch.float32)[:, None] * torch.tensor(cols)[None, :])
    assert counts.sum() == 4 * 5 * 32 * 32 and counts.min() >= 1


def test_averaged_eps_is_the_per_pixel_mean_of_the_patch_estimates():
    x_t, y = image((2, 3, 40, 45), 3), image((2, 3, 40, 45), 4)
    p, r = 16, 12

    def patch_mean(x, c, t):  # one constant per patch and channel: the patch's own mean
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x) + 0.0 * c

    got = averaged_patch_eps(patch_mean, x_t, y, torch.tensor(7), patch_size=p, stride=r, patch_batch_size=5)
    # Independent: loop over every corner of the grid written out here, sum and count per pixel.
    rows, cols = [0, 12, 24], [0, 12, 24, 29]
    total, count = torch.zeros_like(x_t, dtype=torch.float64), torch.zeros(40, 45, dtype=torch.float64)
    for i in rows:
        for j in cols:
            patch = x_t[:, :, i:i + p, j:j + p].double()
            total[:, :, i:i + p, j:j + p] += patch.mean(dim=(2, 3), keepdim=True)
            count[i:i + p, j:j + p] += 1
    assert torch.allclose(got.double(), total / count, atol=1e-6)

    # An estimate that is the same in every patch is reproduced exactly.
    assert torch.equal(averaged_patch_eps(lambda x, c, t: 2 * x - c, x_t, y, 3, p, r), 2 * x_t - y)


# ---------------------------------------------------------------------- sampler
@pytest.mark.parametrize("shape", [(1, 3, 70, 90), (2, 3, 20, 25), (1, 3, 32, 32)])
def test_restores_images_of_any_size(shape):
    adapter = make_adapter(wrap(tiny_unet(32), patch_size=32))
    y = image(shape, 5)
    out = restore_image(adapter, y, patch_size=32, stride=16, num_inference_steps=3,
                        generator=torch.Generator().manual_seed(0), progress=False)
    assert out.shape == y.shape and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_ddim_scheduler_and_timesteps_are_the_originals():
    adapter = make_adapter(Pointwise(), T=50)
    ddim = ddim_scheduler(adapter.scheduler)
    assert torch.equal(ddim.alphas_cumprod, adapter.scheduler.alphas_cumprod)
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is True
    sigmoid = ddim_scheduler(LearnedPriorScheduler(num_train_timesteps=40, beta_schedule="sigmoid"))
    assert torch.equal(sigmoid.alphas_cumprod, LearnedPriorScheduler(40, beta_schedule="sigmoid").alphas_cumprod)

    assert sampling_timesteps(1000, 10) == list(range(900, -1, -100))
    assert sampling_timesteps(1000, 3) == [999, 666, 333, 0]  # the original's range(0, T, T // S)
    for S in (10, 7):  # 7 does not divide 50: range(0, 50, 7) has 8 steps
        recording = Recording(Pointwise())
        adapter.denoiser = recording
        restore_image(adapter, image((1, 3, 20, 20)), patch_size=16, stride=8, num_inference_steps=S,
                      generator=torch.Generator().manual_seed(0), progress=False)
        expected = list(reversed(range(0, 50, 50 // S)))
        assert sorted(set(recording.timesteps), reverse=True) == expected
        if S == 10:
            ddim.set_timesteps(S)
            assert ddim.timesteps.tolist() == expected  # diffusers' leading spacing, when S divides T


def closed_form_sampler(f, y, sigma, timesteps, abar, eta, generator):
    """WeatherDiff's DDIM (utils/sampling.py) written out, with x_T = sigma z and noise sigma z'."""
    x = sigma * torch.randn(y.shape, generator=generator)
    nexts = timesteps[1:] + [-1]
    for t, s in zip(timesteps, nexts):
        at, an = abar[t], (abar[s] if s >= 0 else torch.tensor(1.0))
        eps = f(x, y, torch.tensor([t]))
        x0 = (x - eps * (1 - at).sqrt()) / at.sqrt()
        c1 = eta * ((1 - at / an) * (1 - an) / (1 - at)).sqrt()
        c2 = ((1 - an) - c1**2).sqrt()
        noise = torch.randn(y.shape, generator=generator) if eta > 0 else 0.0
        x = an.sqrt() * x0 + c1 * sigma * noise + c2 * eps
    return x


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_patch_sampler_equals_whole_image_sampling_for_a_pointwise_denoiser(eta):
    adapter = make_adapter(Pointwise(), T=50)
    y = image((2, 3, 40, 50), 6)
    sigma = adapter.prior_std(y)
    assert sigma.std() > 0.01 and (sigma - 1).abs().max() > 0.05  # a learned, non-trivial prior
    patched = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=10, eta=eta,
                            generator=torch.Generator().manual_seed(3), patch_batch_size=9, progress=False)
    whole = adapter.restore(y, num_inference_steps=10, generator=torch.Generator().manual_seed(3),
                            scheduler=ddim_scheduler(adapter.scheduler), eta=eta)
    assert torch.equal(patched, whole)  # the per-pixel mean of identical float32 estimates is exact

    # And both are the closed-form sampler of the original with whitened noise.
    expected = closed_form_sampler(adapter.denoiser, y, sigma, sampling_timesteps(50, 10),
                                   adapter.scheduler.alphas_cumprod, eta, torch.Generator().manual_seed(3))
    torch.testing.assert_close(patched, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["DDPMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_patch_sampler_with_any_scheduler_equals_whole_image_sampling(name):
    import diffusers

    adapter = make_adapter(Pointwise(), T=50)
    y = image((1, 3, 24, 40), 12)
    options = dict(clip_sample=False)  # keyword overrides: from_config drops keys that were defaults
    if name == "DPMSolverMultistepScheduler":
        options["algorithm_type"] = "dpmsolver++"

    def build():
        return getattr(diffusers, name).from_config(adapter.scheduler.config, **options)

    patched = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=6,
                            generator=torch.Generator().manual_seed(5), progress=False, scheduler=build())
    whole = adapter.restore(y, num_inference_steps=6, generator=torch.Generator().manual_seed(5), scheduler=build())
    assert torch.equal(patched, whole)
    assert patched.shape == y.shape and torch.isfinite(patched).all()


def test_patch_sampler_given_weatherdiffs_ddim_is_the_default():
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    y = image((1, 3, 24, 24), 13)
    default = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=10, eta=0.5,
                            generator=torch.Generator().manual_seed(2), progress=False)
    given = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=10, eta=0.5,
                          generator=torch.Generator().manual_seed(2), progress=False,
                          scheduler=ddim_scheduler(adapter.scheduler))
    assert torch.equal(default, given)  # S divides T: "leading" spacing is the original's sequence


def test_patch_sampler_scheduler_errors():
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    adapter = make_adapter(Pointwise(), T=50)
    y = image((1, 3, 16, 16))
    config = adapter.scheduler.config
    with pytest.raises(ValueError, match="eta"):
        restore_image(adapter, y, patch_size=16, eta=0.5, progress=False,
                      scheduler=DPMSolverMultistepScheduler.from_config(config))
    with pytest.raises(ValueError, match="training schedule"):
        restore_image(adapter, y, patch_size=16, progress=False,
                      scheduler=DDPMScheduler.from_config(config, num_train_timesteps=60, clip_sample=False))
    with pytest.raises(ValueError, match="epsilon"):
        restore_image(adapter, y, patch_size=16, progress=False,
                      scheduler=DDPMScheduler.from_config(config, prediction_type="v_prediction", clip_sample=False))
    with pytest.raises(ValueError, match="clip"):
        restore_image(adapter, y, patch_size=16, progress=False,
                      scheduler=DDPMScheduler.from_config(config, clip_sample=True))
    with pytest.raises(ValueError, match="diffusers scheduler"):
        restore_image(adapter, y, patch_size=16, progress=False, scheduler="ddim")


class PatchOracle(torch.nn.Module):
    """The exact noise of each patch: finds where the degraded patch sits in the whole image, then
    inverts the forward process with the clean image there. The noise ``eps ~ N(0, Sigma)`` is in
    signal units whatever the prior (paper eq. 3: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps), so
    eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t); the prior enters only through the sampler."""

    def __init__(self, clean, degraded, alphas_cumprod):
        super().__init__()
        self.clean, self.degraded, self.alphas_cumprod = clean, degraded, alphas_cumprod

    def locate(self, patch):
        p = patch.shape[-1]
        windows = self.degraded[0].unfold(1, p, 1).unfold(2, p, 1)  # (C, rows, cols, p, p)
        distance = (windows - patch[:, None, None]).abs().amax(dim=(0, 3, 4))
        row, col = divmod(int(distance.argmin()), distance.shape[1])
        assert distance[row, col] == 0  # random images: every patch occurs exactly once
        return row, col

    def forward(self, x_t, y, t):
        p, eps = x_t.shape[-1], torch.empty_like(x_t)
        for b in range(x_t.shape[0]):
            i, j = self.locate(y[b])
            abar = self.alphas_cumprod[t[b]].double()
            x0 = self.clean[0, :, i:i + p, j:j + p].double()
            eps[b] = ((x_t[b].double() - abar.sqrt() * x0) / (1 - abar).sqrt()).float()
        return eps


@pytest.mark.parametrize("mode", ["ddpm", "restoregrad"])
@pytest.mark.parametrize("sampler", ["weatherdiff_ddim", "DDPMScheduler", "DPMSolverMultistepScheduler"])
def test_an_oracle_denoiser_restores_the_clean_image(mode, sampler):
    """With the exact noise every patch estimate agrees, so every sampler lands on x0: the patch
    bookkeeping, the whitening and the PSNR the benchmarks report are right end to end."""
    import diffusers

    from restoregrad_adapter.contrib.metrics import psnr_y

    adapter = make_adapter(Pointwise(), T=50)
    adapter.mode = mode
    clean, degraded = image((1, 3, 24, 40), 21), image((1, 3, 24, 40), 22)
    sigma = adapter.prior_std(degraded)
    assert (mode == "ddpm") == bool((sigma == 1).all())  # the learned prior is a non-trivial map
    adapter.denoiser = PatchOracle(clean, degraded, adapter.scheduler.alphas_cumprod)
    scheduler = None
    if sampler != "weatherdiff_ddim":
        options = dict(clip_sample=False)
        if sampler == "DPMSolverMultistepScheduler":
            options["algorithm_type"] = "dpmsolver++"
        scheduler = getattr(diffusers, sampler).from_config(adapter.scheduler.config, **options)
    restored = restore_image(adapter, degraded, patch_size=16, stride=8, num_inference_steps=5,
                             generator=torch.Generator().manual_seed(4), progress=False, scheduler=scheduler)
    torch.testing.assert_close(restored, clean, rtol=0, atol=2e-4)
    assert float(psnr_y((restored.clamp(-1, 1) + 1) / 2, (clean + 1) / 2)) > 70


def test_closed_form_with_the_originals_longer_sequence():
    adapter = make_adapter(Pointwise(), T=50)
    y = image((1, 3, 24, 30), 7)
    out = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=7,
                        generator=torch.Generator().manual_seed(4), progress=False)
    expected = closed_form_sampler(adapter.denoiser, y, adapter.prior_std(y), sampling_timesteps(50, 7),
                                   adapter.scheduler.alphas_cumprod, 0.0, torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_deterministic_for_eta_zero_and_stochastic_otherwise():
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    y = image((1, 3, 24, 24), 8)

    def run(seed, eta):
        return restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=4, eta=eta,
                             generator=torch.Generator().manual_seed(seed), progress=False)

    assert torch.equal(run(0, 0.0), run(0, 0.0))
    assert torch.equal(run(0, 1.0), run(0, 1.0))
    assert not torch.allclose(run(0, 1.0), run(0, 0.0))
    assert not torch.allclose(run(0, 0.0), run(1, 0.0))


@pytest.mark.parametrize("network", ["unet", "pointwise"])
def test_patch_batch_bounds_the_model_batch_and_not_the_result(network):
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16) if network == "unet" else Pointwise())
    y = image((2, 3, 40, 40), 9)  # 4 x 4 corners (0, 8, 16, 24) per image: 32 patches per step
    results = {}
    for size in (1, 7, 1000):
        recording = Recording(adapter.denoiser)
        adapter.denoiser, inner = recording, adapter.denoiser
        results[size] = restore_image(adapter, y, patch_size=16, stride=8, num_inference_steps=5,
                                      generator=torch.Generator().manual_seed(0), patch_batch_size=size,
                                      progress=False)
        adapter.denoiser = inner
        assert max(recording.batches) == min(size, 32)
        assert sum(recording.batches) == 5 * 32
    if network == "pointwise":  # the accumulation order does not depend on the patch batch
        assert torch.equal(results[1], results[7]) and torch.equal(results[1], results[1000])
    else:  # batched convolutions may round differently with the batch size
        torch.testing.assert_close(results[1], results[7], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(results[1], results[1000], rtol=1e-5, atol=1e-5)


def test_restore_image_errors():
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    y = image((1, 3, 20, 20))
    with pytest.raises(ValueError, match="patch_size"):
        restore_image(adapter, y, patch_size=32, progress=False)
    with pytest.raises(ValueError, match="stride"):
        restore_image(adapter, y, patch_size=16, stride=17, progress=False)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        restore_image(adapter, y[0], patch_size=16, progress=False)
    with pytest.raises(ValueError, match="num_inference_steps"):
        restore_image(adapter, y, patch_size=16, num_inference_steps=51, progress=False)


# ---------------------------------------------------------------------- training
def test_random_patch_pairs_are_aligned_crops():
    b, h, w, p, n = 2, 30, 41, 16, 5
    rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(b, 3, h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(b, 3, h, w)
    x0 = (rows * 100 + cols + torch.arange(b).view(b, 1, 1, 1) * 10000) / 1e5
    y = x0 + 1
    xp, yp = random_patch_pairs(x0, y, patch_size=p, patches_per_image=n, generator=torch.Generator().manual_seed(0))
    assert xp.shape == yp.shape == (b * n, 3, p, p)
    assert torch.equal(yp, xp + 1)
    for k in range(b * n):
        code = round(xp[k, 0, 0, 0].item() * 1e5)
        image_index, i, j = code // 10000, code % 10000 // 100, code % 100
        assert image_index == k // n and 0 <= i <= h - p and 0 <= j <= w - p
        assert torch.equal(xp[k], x0[image_index, :, i:i + p, j:j + p])
    again = random_patch_pairs(x0, y, p, n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], xp)
    with pytest.raises(ValueError, match="smaller than"):
        random_patch_pairs(x0, y, patch_size=31)


def test_antithetic_timesteps_mirror_each_other():
    t = antithetic_timesteps(9, 1000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (9,) and t.dtype == torch.int64 and ((t >= 0) & (t < 1000)).all()
    assert torch.equal(t[:4] + t[5:], torch.full((4,), 999))


def test_training_on_random_crops_reaches_all_three_networks():
    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16), T=100)
    adapter.train()
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    clean = image((2, 3, 28, 36), 10) * 0.5
    degraded = (clean + 0.4 * image((2, 3, 28, 36), 11)).clamp(-1, 1)
    for _ in range(3):
        x0, y = random_patch_pairs(clean, degraded, patch_size=16, patches_per_image=4, generator=generator)
        t = antithetic_timesteps(x0.shape[0], 100, generator=generator)
        out = adapter.training_loss(x0, y, generator=generator, timesteps=t)
        optimizer.zero_grad()
        out.loss.backward()
        assert torch.isfinite(out.loss)
        for name in ("prior_net", "posterior_net", "denoiser"):
            grads = [p.grad for p in getattr(adapter, name).parameters() if p.grad is not None]
            assert grads and all(torch.isfinite(g).all() for g in grads), name
            assert sum(g.abs().sum() for g in grads) > 0, name
        optimizer.step()


# ---------------------------------------------------------------------- checkpoints
class NotAWeight:
    """A custom class: pickled objects like this must never be unpickled."""

    def __init__(self):
        self.payload = 1


def save_original_format(path, weights, shadow, shadow_prefix="", extra=None):
    """A checkpoint laid out as WeatherDiff's DenoisingDiffusion.train saves it."""
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    config = argparse.Namespace(data=argparse.Namespace(image_size=16, channels=3, dataset="AllWeather"),
                                model=argparse.Namespace(ch=16, ch_mult=[1, 2], ema_rate=0.999),
                                device=torch.device("cpu"))
    checkpoint = {
        "epoch": 3,
        "step": 1200,
        "state_dict": {"module." + k: v for k, v in weights.items()},
        "optimizer": optimizer.state_dict(),
        "ema_helper": {shadow_prefix + k: v for k, v in shadow.items()},
        "params": argparse.Namespace(config="allweather.yml", resume="", sampling_timesteps=25, seed=61),
        "config": config,
    }
    checkpoint.update(extra or {})
    torch.save(checkpoint, path)


@pytest.mark.parametrize("shadow_prefix", ["", "module."])
def test_load_checkpoint_original_format_ema_and_raw(tmp_path, shadow_prefix):
    source = tiny_unet(16, seed=1)
    weights = {k: v.clone() for k, v in source.state_dict().items()}
    shadow = {k: v.detach() + 0.01 * torch.randn_like(v) for k, v in source.named_parameters()}
    path = tmp_path / "AllWeather_ddpm.pth.tar"
    save_original_format(path, weights, shadow, shadow_prefix)

    x, t = image((2, 6, 16, 16), 12), torch.tensor([10.0, 400.0])
    raw = load_checkpoint(tiny_unet(16, seed=2), path, ema=False)
    assert torch.equal(raw(x, t), source(x, t))

    ema_reference = tiny_unet(16, seed=3)
    ema_reference.load_state_dict({**weights, **shadow})
    ema = load_checkpoint(tiny_unet(16, seed=2), path, ema=True)
    assert torch.equal(ema(x, t), ema_reference(x, t))
    assert not torch.allclose(ema(x, t), raw(x, t))


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    source = tiny_unet(16)
    weights = source.state_dict()
    shadow = dict(source.named_parameters())
    path = tmp_path / "evil.pth.tar"
    save_original_format(path, weights, {k: v.detach() for k, v in shadow.items()}, extra={"extra": NotAWeight()})
    with pytest.raises(ValueError, match=r"(?s)pickled objects.*NotAWeight.*weights_only=False"):
        load_checkpoint(tiny_unet(16), path)


def test_load_checkpoint_names_mismatched_and_missing_entries(tmp_path):
    source = tiny_unet(16)
    weights = {k: v.clone() for k, v in source.state_dict().items()}
    shadow = {k: v.detach().clone() for k, v in source.named_parameters()}

    renamed = dict(weights)
    renamed["conv_in.weight_renamed"] = renamed.pop("conv_in.weight")
    save_original_format(tmp_path / "a.pth.tar", renamed, shadow)
    with pytest.raises(ValueError, match=r"missing 'conv_in\.weight'.*unexpected 'conv_in\.weight_renamed'"):
        load_checkpoint(tiny_unet(16), tmp_path / "a.pth.tar", ema=False)

    partial = dict(shadow)
    partial.pop("conv_out.bias")
    save_original_format(tmp_path / "b.pth.tar", weights, partial)
    with pytest.raises(ValueError, match=r"missing EMA weights for 'conv_out\.bias'"):
        load_checkpoint(tiny_unet(16), tmp_path / "b.pth.tar", ema=True)

    with pytest.raises(ValueError, match="shape mismatch"):
        load_checkpoint(tiny_unet(16).__class__(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                                                image_size=16), tmp_path / "b.pth.tar", ema=False)

    torch.save({"state_dict": {"module." + k: v for k, v in weights.items()}}, tmp_path / "c.pth.tar")
    with pytest.raises(ValueError, match="no 'ema_helper'"):
        load_checkpoint(tiny_unet(16), tmp_path / "c.pth.tar", ema=True)
    load_checkpoint(tiny_unet(16), tmp_path / "c.pth.tar", ema=False)

    torch.save({"model": weights}, tmp_path / "d.pth.tar")
    with pytest.raises(ValueError, match="no 'state_dict'"):
        load_checkpoint(tiny_unet(16), tmp_path / "d.pth.tar")


# ---------------------------------------------------------------------- example
def load_example():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "guides" / "weatherdiff_restore.py"
    spec = importlib.util.spec_from_file_location("weatherdiff_restore_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_on_builtin_data(tmp_path):
    result = load_example().main(["--steps", "2", "--sampling_steps", "2", "--output_dir", str(tmp_path)])
    assert (tmp_path / "weatherdiff_restore.png").stat().st_size > 0
    assert all(math.isfinite(v) for v in result.values())


def test_example_reads_a_data_dir(tmp_path):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for folder in ("input", "gt"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for name in ("a.png", "b.png"):
        clean = (torch.rand(40, 44, 3, generator=rng) * 255).to(torch.uint8)
        noisy = (clean.float() * 0.8 + 20).to(torch.uint8)
        Image.fromarray(clean.numpy()).save(tmp_path / "data" / "gt" / name)
        Image.fromarray(noisy.numpy()).save(tmp_path / "data" / "input" / name)
    result = load_example().main(["--steps", "1", "--sampling_steps", "2", "--data_dir", str(tmp_path / "data"),
                                  "--output_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "weatherdiff_restore.png").exists()
    assert math.isfinite(result["psnr_degraded"]) and math.isfinite(result["psnr_restored"])


# ---------------------------------------------------------------------- larger patches, consistency
def test_unet_without_fixed_size_is_the_same_network_at_any_size():
    # The same weights at image_size 32 (fixed) and 16 (any size) give the same noise on a 32 x 32 input:
    # nothing in the network depends on the input size.
    strict, resizable = tiny_unet(32), tiny_unet(16)
    resizable = WeatherUNet(**{**dict(resizable.config), "fixed_size": False})
    resizable.load_state_dict(strict.state_dict())
    x, t = image((2, 6, 32, 32)), torch.tensor([3.0, 40.0])
    torch.testing.assert_close(resizable(x, t), strict(x, t), atol=1e-5, rtol=1e-5)
    assert resizable(image((1, 6, 24, 40)), t[:1]).shape == (1, 3, 24, 40)
    with pytest.raises(ValueError, match="multiples of 2"):
        resizable(image((1, 6, 24, 41)), t[:1])
    with pytest.raises(ValueError, match="fixed_size"):
        WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16, fixed_size="no")


def test_restore_image_with_larger_patches_than_the_training_crops(tmp_path):
    # A fully convolutional wrapper of a 16-pixel model restores with 32-pixel patches exactly as a wrapper
    # built for 32-pixel patches around the same weights does.
    unet = WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16, fixed_size=False)
    resizable = make_adapter(wrap(unet, patch_size=16, fully_convolutional=True))
    fixed32 = make_adapter(wrap(unet, patch_size=32))
    fixed32.load_state_dict(resizable.state_dict())
    y = image((1, 3, 40, 36))
    kwargs = dict(patch_size=32, stride=8, num_inference_steps=3, progress=False)
    ours = restore_image(resizable, y, generator=torch.Generator().manual_seed(0), **kwargs)
    reference = restore_image(fixed32, y, generator=torch.Generator().manual_seed(0), **kwargs)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    assert not torch.allclose(ours, restore_image(resizable, y, generator=torch.Generator().manual_seed(0),
                                                  **{**kwargs, "patch_size": 16}))
    # The wrapper's and the network's flags are saved with the adapter and come back.
    loaded = RestoreGrad.from_pretrained(resizable.save_pretrained(tmp_path / "adapter")).eval()
    assert loaded.denoiser.fully_convolutional and loaded.denoiser.patch_size == 16
    assert loaded.denoiser.model.config.fixed_size is False
    torch.testing.assert_close(restore_image(loaded, y, generator=torch.Generator().manual_seed(0), **kwargs), ours,
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="fully_convolutional"):
        wrap(unet, patch_size=16, fully_convolutional=1)


def test_restore_image_projects_onto_the_low_resolution_input():
    from restoregrad_adapter.consistency import bicubic_downsample_tensor, project_to_low_resolution

    adapter = make_adapter(wrap(tiny_unet(16), patch_size=16))
    y, low = image((2, 3, 24, 32)), image((2, 3, 6, 8), seed=1)
    kwargs = dict(patch_size=16, stride=8, num_inference_steps=2, progress=False)
    plain = restore_image(adapter, y, generator=torch.Generator().manual_seed(0), **kwargs)
    projected = restore_image(adapter, y, generator=torch.Generator().manual_seed(0), low_resolution=low, **kwargs)
    torch.testing.assert_close(projected, project_to_low_resolution(plain, low), atol=1e-6, rtol=0)
    torch.testing.assert_close(bicubic_downsample_tensor(projected, 4), low, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="integer factor"):
        restore_image(adapter, y, low_resolution=image((2, 3, 5, 8)), **kwargs)
    with pytest.raises(ValueError, match="batch and channel"):
        restore_image(adapter, y, low_resolution=image((1, 3, 6, 8)), **kwargs)
    with pytest.raises(ValueError, match="low_resolution"):
        restore_image(adapter, y, low_resolution=low[0], **kwargs)
