"""CDiffuSE integration: conditioner, conditional forward process, reverse coefficients, oracle
chains, training with a tiny DiffWave, and checkpoint loading.

Reference numbers are computed here in float64 numpy straight from the paper (Lu et al., ICASSP
2022, Sec. 3), by a different route than the module's vectorised torch code.
"""

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch

from restoregrad_adapter import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6, RestoreGradLoss
from restoregrad_adapter.integrations import cdiffuse
from restoregrad_adapter.integrations.cdiffuse import (
    CDiffuSEDenoiser,
    CDiffuSERestoreGrad,
    load_checkpoint,
    log_magnitude_spectrogram,
    reverse_schedule,
    wrap,
)
from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

TRAIN_BETAS = np.linspace(1e-4, 0.035, 50)


@pytest.fixture(autouse=True)
def one_thread():
    """The networks here are tiny: one intra-op thread is fastest, even on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
SCHEDULES = {"full": None, "fast6": FAST_INFERENCE_BETAS_6, "fast3": FAST_INFERENCE_BETAS_3}


def schedule_option(name):
    """``restore``'s ``inference_betas`` for a schedule of :data:`SCHEDULES` ("all": every training step)."""
    return "all" if SCHEDULES[name] is None else SCHEDULES[name]


def tiny_diffwave(seed=0):
    torch.manual_seed(seed)
    return DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)


def noisy_sinusoids(batch, frames=4, seed=0):
    """Clean sums of two sinusoids and noisy versions, (B, 1, 256 * frames) each."""
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(256 * frames, dtype=torch.float32)
    freq = torch.rand(batch, 2, 1, generator=g) * 0.04 + 0.005
    amp = torch.rand(batch, 2, 1, generator=g) * 0.3 + 0.1
    x0 = (amp * torch.sin(2 * math.pi * freq * n)).sum(1, keepdim=True)
    return x0, x0 + 0.1 * torch.randn(x0.shape, generator=g)


def paper_m_delta(abar):
    """m_t = sqrt((1 - abar_t) / sqrt(abar_t)) and delta_t = 1 - (1 + m_t^2) abar_t, as printed."""
    m = math.sqrt((1.0 - abar) / math.sqrt(abar))
    return m, 1.0 - (1.0 + m * m) * abar


# ---------------------------------------------------------------------- conditioner
def numpy_log_magnitude(audio, peak_normalize=False):
    """Centred STFT written out: reflect-pad 512, 1024-sample frames every 256, symmetric Hamming."""
    x = np.asarray(audio, dtype=np.float64)
    if peak_normalize:
        x = x / np.abs(x).max()
    padded = np.pad(x, 512, mode="reflect")
    window = scipy.signal.windows.hamming(1024, sym=True)
    frames = [padded[k * 256:k * 256 + 1024] * window for k in range(len(x) // 256 + 1)]
    spectrum = np.abs(np.fft.rfft(np.stack(frames), axis=-1)).T  # (513, F + 1)
    return np.log1p(spectrum)


def test_spectrogram_equals_a_numpy_stft_and_drops_the_frame_past_the_end():
    g = torch.Generator().manual_seed(0)
    audio = 0.3 * torch.randn(2, 256 * 6, generator=g, dtype=torch.float64)
    full = np.stack([numpy_log_magnitude(a) for a in audio.numpy()])
    assert full.shape == (2, 513, 7)
    ours = log_magnitude_spectrogram(audio)
    assert ours.shape == (2, 513, 6) and ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), full[..., :6], atol=1e-10)
    as_float32 = log_magnitude_spectrogram(audio.float().unsqueeze(1))
    assert as_float32.dtype == torch.float32
    np.testing.assert_allclose(as_float32.numpy(), full[..., :6], atol=1e-4)
    normalised = log_magnitude_spectrogram(audio, peak_normalize=True)
    expected = np.stack([numpy_log_magnitude(a, peak_normalize=True) for a in audio.numpy()])[..., :6]
    np.testing.assert_allclose(normalised.numpy(), expected, atol=1e-10)
    assert torch.equal(log_magnitude_spectrogram(torch.zeros(1, 1024), peak_normalize=True), torch.zeros(1, 513, 4))


def test_spectrogram_rejects_bad_input():
    with pytest.raises(ValueError, match="multiple of 256"):
        log_magnitude_spectrogram(torch.zeros(1, 1000))
    with pytest.raises(ValueError, match="too short"):
        log_magnitude_spectrogram(torch.zeros(1, 512))
    assert log_magnitude_spectrogram(torch.zeros(1, 256), pad_mode="constant").shape == (1, 513, 1)
    with pytest.raises(ValueError, match=r"\(B, L\) or \(B, 1, L\)"):
        log_magnitude_spectrogram(torch.zeros(1, 2, 1024))
    with pytest.raises(ValueError, match="floating-point"):
        log_magnitude_spectrogram(torch.zeros(1, 1024, dtype=torch.long))


def test_wrapper_feeds_the_model_the_noisy_spectrogram():
    model = tiny_diffwave()
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)
    x0, y = noisy_sinusoids(2)
    x_t, t = torch.randn_like(y), torch.tensor([3, 41])
    denoiser = wrap(model)
    assert isinstance(denoiser, CDiffuSEDenoiser) and denoiser.model is model
    expected = model(x_t[:, 0], log_magnitude_spectrogram(y / y.abs().amax(-1, keepdim=True)), t)
    assert torch.equal(denoiser(x_t, y, t), expected)
    raw = CDiffuSEDenoiser(model, peak_normalize=False)
    assert torch.equal(raw(x_t, y, t), model(x_t[:, 0], log_magnitude_spectrogram(y), t))
    with pytest.raises(ValueError, match=r"\(B, 1, L\)"):
        denoiser(x_t[:, 0], y, t)
    with pytest.raises(ValueError, match="same shape"):
        denoiser(x_t[..., :512], y, t)
    with pytest.raises(ValueError, match="callable"):
        wrap("not a model")


class TableStepModel(torch.nn.Module):
    """Duck-typed stand-in with CDiffuSE's step embedding: integer steps index a float32 table,
    fractional steps interpolate it (so a float64 step would not reach its float32 layers)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.linspace(0.0, 1.0, 50).unsqueeze(1), persistent=False)
        self.scale = torch.nn.Linear(1, 1)
        self.seen = []

    def forward(self, audio, spectrogram, diffusion_step):
        self.seen.append(diffusion_step.dtype)
        if diffusion_step.dtype in (torch.int32, torch.int64):
            embedding = self.table[diffusion_step]
        else:
            low, high = torch.floor(diffusion_step).long(), torch.ceil(diffusion_step).long()
            embedding = self.table[low] + (self.table[high] - self.table[low]) * (diffusion_step - low).unsqueeze(1)
        gain = self.scale(embedding)  # (B, 1): float32 only
        return (gain * audio + spectrogram.mean(dim=(1, 2)).unsqueeze(1)).unsqueeze(1)


def test_wrapper_passes_integer_and_fractional_steps_in_the_models_precision():
    adapter = CDiffuSERestoreGrad.from_model(TableStepModel(), size="tiny", mode="ddpm")
    x0, y = noisy_sinusoids(2)
    assert torch.isfinite(adapter.training_loss(x0, y, generator=torch.Generator().manual_seed(0)).loss)
    restored = adapter.restore(y.double(), generator=torch.Generator().manual_seed(0))
    assert restored.dtype == torch.float64 and torch.isfinite(restored).all()
    assert adapter.denoiser.model.seen == [torch.int64] + [torch.float32] * 6


# ---------------------------------------------------------------------- forward process
def test_forward_process_and_target_equal_the_paper_at_every_training_step():
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny", mode="ddpm")
    assert np.allclose(adapter.training_betas().numpy(), TRAIN_BETAS, rtol=0, atol=0)
    g = torch.Generator().manual_seed(1)
    x0, y, eps = (torch.randn(50, 1, 8, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.arange(50)
    x_t = adapter.add_noise(x0, y, eps, t).numpy()
    target = adapter.noise_target(x0, y, eps, t).numpy()
    abar = np.cumprod(1.0 - TRAIN_BETAS)
    for step in range(50):
        m, delta = paper_m_delta(abar[step])
        xs, ys, es = x0[step].numpy(), y[step].numpy(), eps[step].numpy()
        expected = (1 - m) * math.sqrt(abar[step]) * xs + m * math.sqrt(abar[step]) * ys + math.sqrt(delta) * es
        np.testing.assert_allclose(x_t[step], expected, rtol=1e-9, atol=1e-12)
        # Algorithm 1's target: (m sqrt(abar) (y - x0) + sqrt(delta) eps) / sqrt(1 - abar) ...
        combined = (m * math.sqrt(abar[step]) * (ys - xs) + math.sqrt(delta) * es) / math.sqrt(1 - abar[step])
        np.testing.assert_allclose(target[step], combined, rtol=1e-9, atol=1e-12)
        # ... which is the noise of the DDPM-form identity x_t = sqrt(abar) x0 + sqrt(1 - abar) C.
        np.testing.assert_allclose(x_t[step], math.sqrt(abar[step]) * xs + math.sqrt(1 - abar[step]) * combined,
                                   rtol=1e-9, atol=1e-12)


def test_conditional_forward_process_with_a_sigma_map_mean_and_variance():
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny", mode="ddpm")
    L, n = 64, 40000
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 1, L, generator=g, dtype=torch.float64).expand(n, 1, L)
    y = torch.randn(1, 1, L, generator=g, dtype=torch.float64).expand(n, 1, L)
    sigma = (0.1 + torch.rand(1, 1, L, generator=g, dtype=torch.float64)).expand(n, 1, L)
    abar = np.cumprod(1.0 - TRAIN_BETAS)
    for step in (0, 17, 49):
        z = torch.randn(n, 1, L, generator=g, dtype=torch.float64)
        t = torch.full((n,), step)
        x_t = adapter.add_noise(x0, y, sigma * z, t)
        m, delta = paper_m_delta(abar[step])
        mean = (1 - m) * math.sqrt(abar[step]) * x0[0, 0] + m * math.sqrt(abar[step]) * y[0, 0]
        variance = delta * sigma[0, 0] ** 2
        # By the formula: x_t minus its mean is exactly sqrt(delta_t) * sigma * z.
        assert torch.allclose(x_t - mean, math.sqrt(delta) * sigma * z, rtol=1e-7, atol=1e-12)
        # By Monte Carlo: standard errors sqrt(var / n) for the mean, sqrt(2 / (n - 1)) for var ratios.
        sample_mean, sample_var = x_t[:, 0].mean(0), x_t[:, 0].var(0)
        assert ((sample_mean - mean).abs() / (variance / n).sqrt()).max() < 5
        assert ((sample_var / variance - 1).abs() / math.sqrt(2 / (n - 1))).max() < 5


def test_training_loss_uses_the_conditional_process_and_combined_noise():
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny")
    for net in (adapter.prior_net, adapter.posterior_net):
        torch.nn.init.normal_(net.encoder.head.weight, std=0.05)
    torch.nn.init.normal_(adapter.denoiser.model.output_projection.weight, std=0.1)
    x0, y = noisy_sinusoids(3, seed=3)
    z, t = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 25, 49])
    out = adapter.training_loss(x0, y, noise=z, timesteps=t)

    sigma_prior, sigma_post = adapter.prior_net(y), adapter.posterior_net(x0, y)
    coefficients = [paper_m_delta(np.cumprod(1.0 - TRAIN_BETAS)[step]) for step in t.tolist()]
    abar = torch.tensor(np.cumprod(1.0 - TRAIN_BETAS)[t.numpy()], dtype=torch.float32).view(-1, 1, 1)
    m, delta = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) for v in zip(*coefficients))
    eps = sigma_post * z
    x_t = (1 - m) * abar.sqrt() * x0 + m * abar.sqrt() * y + delta.sqrt() * eps
    combined = (m * abar.sqrt() * (y - x0) + delta.sqrt() * eps) / (1 - abar).sqrt()
    expected = RestoreGradLoss()(adapter.denoiser(x_t, y, t), combined, x0, sigma_prior, sigma_post,
                                 adapter.scheduler.alpha_bar_T)
    for name in ("loss", "latent_reg", "denoise", "prior_match"):
        assert torch.allclose(getattr(out, name), getattr(expected, name), rtol=1e-5), name


# ---------------------------------------------------------------------- reverse coefficients
def paper_reverse_coefficients(betas):
    """Sec. 3.3 of the paper, one step at a time: (c1, c2, c3, delta_bar) for t = 1..N, with the
    released code's m_N = 1 and the corrected eq. 17 (delta_{t|t-1} delta_{t-1} / delta_t)."""
    betas = [float(b) for b in betas]
    abar, product = [], 1.0
    for b in betas:
        product *= 1.0 - b
        abar.append(product)
    N = len(betas)
    out = {"c1": [], "c2": [], "c3": [], "delta_bar": []}
    for t in range(1, N + 1):
        alpha, abar_t = 1.0 - betas[t - 1], abar[t - 1]
        m_t, delta_t = paper_m_delta(abar_t)
        if t == N:
            m_t, delta_t = 1.0, 1.0 - 2.0 * abar_t
        if t == 1:
            # The last reverse step is DDPM's: x0 = (x_1 - sqrt(1 - abar_1) C) / sqrt(alpha_1).
            out["c1"].append(1.0 / math.sqrt(alpha))
            out["c2"].append(0.0)
            out["c3"].append(betas[0] / (math.sqrt(alpha) * math.sqrt(1.0 - abar_t)))
            out["delta_bar"].append(0.0)
            continue
        abar_prev = abar[t - 2]
        m_prev, delta_prev = paper_m_delta(abar_prev)
        ratio = (1.0 - m_t) / (1.0 - m_prev)
        delta_cond = delta_t - ratio**2 * alpha * delta_prev
        c_xt = (ratio * delta_prev / delta_t * math.sqrt(alpha)
                + (1.0 - m_prev) * delta_cond / delta_t / math.sqrt(alpha))
        c_yt = (m_prev * delta_t - m_t * ratio * alpha * delta_prev) * math.sqrt(abar_prev) / delta_t
        c_et = (1.0 - m_prev) * delta_cond / delta_t * math.sqrt(1.0 - abar_t) / math.sqrt(alpha)
        out["c1"].append(c_xt)
        out["c2"].append(c_yt)
        out["c3"].append(c_et)
        out["delta_bar"].append(delta_cond * delta_prev / delta_t)
    return {k: np.array(v) for k, v in out.items()}, np.array(abar)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_reverse_coefficients_equal_the_papers_equations(name):
    betas = TRAIN_BETAS if SCHEDULES[name] is None else np.array(SCHEDULES[name])
    expected, abar = paper_reverse_coefficients(betas)
    schedule = reverse_schedule(TRAIN_BETAS, SCHEDULES[name])
    assert len(schedule) == len(betas)
    for key, values in expected.items():
        np.testing.assert_allclose(getattr(schedule, key).numpy(), values, rtol=1e-7, atol=1e-15, err_msg=key)
    # The model's step: the fractional training step with the same sqrt(abar), interpolated linearly.
    train = np.sqrt(np.cumprod(1.0 - TRAIN_BETAS))
    for n, target in enumerate(np.sqrt(abar)):
        step = schedule.timesteps[n].item()
        low = min(int(math.floor(step)), 48)
        assert train[low] >= target - 1e-12
        assert np.interp(step, np.arange(50), train) == pytest.approx(target, rel=1e-12)
    if name == "full":
        assert schedule.timesteps.tolist() == list(range(50))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_reverse_step_is_the_gaussian_posterior(name):
    """Condition the joint Gaussian of (x_{t-1}, x_t) given (x0, y) by the generic formula."""
    schedule = reverse_schedule(TRAIN_BETAS, SCHEDULES[name])
    abar, m, delta = (getattr(schedule, k).numpy() for k in ("alphas_cumprod", "m", "delta"))
    for n in range(1, len(schedule)):
        # x_{t-1} = mu_prev + sqrt(delta_prev) e1, x_t = A x_{t-1} + (y term) + noise with var delta_t - A^2 delta_prev
        alpha = abar[n] / abar[n - 1]
        A = (1 - m[n]) / (1 - m[n - 1]) * math.sqrt(alpha)
        cov, var_t = A * delta[n - 1], delta[n]
        gain = cov / var_t
        # E[x_{t-1} | x_t] = mu_prev + gain (x_t - mu_t), with mu = (1 - m) sqrt(abar) x0 + m sqrt(abar) y.
        c_x = gain
        c_x0 = (1 - m[n - 1]) * math.sqrt(abar[n - 1]) - gain * (1 - m[n]) * math.sqrt(abar[n])
        c_y = m[n - 1] * math.sqrt(abar[n - 1]) - gain * m[n] * math.sqrt(abar[n])
        # With x0 = (x_t - sqrt(1 - abar_t) C) / sqrt(abar_t):
        assert schedule.c1[n].item() == pytest.approx(c_x + c_x0 / math.sqrt(abar[n]), rel=1e-9)
        assert schedule.c2[n].item() == pytest.approx(c_y, rel=1e-9, abs=1e-12)
        assert schedule.c3[n].item() == pytest.approx(c_x0 * math.sqrt(1 - abar[n]) / math.sqrt(abar[n]), rel=1e-9)
        assert schedule.delta_bar[n].item() == pytest.approx(delta[n - 1] - cov**2 / var_t, rel=1e-7)


def test_reverse_schedule_rejects_degenerate_schedules():
    with pytest.raises(ValueError, match="1/2"):
        reverse_schedule(TRAIN_BETAS, [1e-4, 1e-3, 0.01])
    with pytest.raises(ValueError, match="before its last step"):
        reverse_schedule(np.linspace(1e-4, 0.05, 50), [0.3, 0.4, 0.5, 0.2])
    with pytest.raises(ValueError, match="outside the training range"):
        reverse_schedule(TRAIN_BETAS, [0.3, 0.6])
    with pytest.raises(ValueError, match="inference_betas"):
        reverse_schedule(TRAIN_BETAS, [0.2, 1.5])


# ---------------------------------------------------------------------- reverse chains
class Oracle(torch.nn.Module):
    """Knows x0: returns the exact combined noise (x_t - sqrt(abar) x0) / sqrt(1 - abar), with
    abar read off the training schedule at the (fractional) step t by linear interpolation."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0
        self.sqrt_abar = np.sqrt(np.cumprod(1.0 - TRAIN_BETAS))
        self.steps = []

    def forward(self, x_t, y, t):
        step = t[0].item()
        assert torch.all(t == t[0])
        self.steps.append(step)
        s = float(np.interp(step, np.arange(50), self.sqrt_abar))
        return (x_t - s * self.x0) / math.sqrt(1 - s * s)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_oracle_chain_walks_the_forward_marginals_and_ends_at_x0(name):
    """With the exact noise, x_N ~ p(x_N | y) and each step samples q(x_{t-1} | x_t, x0, y), so every
    x_t of the chain has the forward marginal N((1 - m_t) sqrt(abar_t) x0 + m_t sqrt(abar_t) y,
    delta_t sigma^2) (a wrong c1, c2, c3 or delta_bar shifts a mean or a variance), and the last
    step returns x0 exactly."""
    L, n = 16, 20000
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(1, 1, L, generator=g, dtype=torch.float64)
    y = x0 + 0.5 * torch.randn(1, 1, L, generator=g, dtype=torch.float64)
    sigma_map = 0.2 + torch.rand(1, 1, L, generator=g)
    oracle = Oracle(x0.expand(n, 1, L))
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny", mode="priorgrad",
                                             handcrafted_prior=lambda y: sigma_map.expand(y.shape))
    adapter.denoiser = oracle
    sigma = sigma_map[0, 0].double()
    schedule = reverse_schedule(TRAIN_BETAS, SCHEDULES[name])
    abar, m, delta = (getattr(schedule, k).numpy() for k in ("alphas_cumprod", "m", "delta"))
    seen = []

    def check(t, x):
        seen.append(t)
        if t == 0:
            return
        mean = (1 - m[t - 1]) * math.sqrt(abar[t - 1]) * x0[0, 0] + m[t - 1] * math.sqrt(abar[t - 1]) * y[0, 0]
        variance = delta[t - 1] * sigma**2
        assert ((x[:, 0].mean(0) - mean).abs() / (variance / n).sqrt()).max() < 5, t
        assert ((x[:, 0].var(0) / variance - 1).abs() / math.sqrt(2 / (n - 1))).max() < 5, t

    out = adapter.restore(y.expand(n, 1, L), inference_betas=schedule_option(name),
                          generator=torch.Generator().manual_seed(6), callback=check)
    N = len(schedule)
    assert seen == list(range(N, -1, -1))
    assert oracle.steps == schedule.timesteps.flip(0).tolist()
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, x0.expand(n, 1, L), rtol=0, atol=1e-9)


def test_restore_options_initial_mix_and_clamp():
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny", mode="ddpm")
    torch.nn.init.normal_(adapter.denoiser.model.output_projection.weight, std=0.1)
    _, y = noisy_sinusoids(2, seed=7)
    starts = []
    plain = adapter.restore(y, generator=torch.Generator().manual_seed(0))
    mixed = adapter.restore(y, generator=torch.Generator().manual_seed(0), mix_noisy=True)
    torch.testing.assert_close(mixed, 0.8 * plain + 0.2 * y)
    torch.testing.assert_close(adapter.restore(y, generator=torch.Generator().manual_seed(0), mix_noisy=0.5),
                               0.5 * plain + 0.5 * y)
    adapter.restore(y, inference_betas=FAST_INFERENCE_BETAS_3, initial="noisy", callback=lambda t, x: starts.append((t, x.clone())))
    # the chain runs on the whole utterance's frames: y zero-padded to 256 (1 + L // 256) samples
    assert starts[0][0] == 3 and torch.equal(starts[0][1], torch.nn.functional.pad(y, (0, 256)))
    loud = adapter.restore(4 * y, generator=torch.Generator().manual_seed(0), clamp=True)
    assert loud.abs().max() <= 1.0
    for bad in ({"initial": "zeros"}, {"mix_noisy": 1.5}):
        with pytest.raises(ValueError):
            adapter.restore(y, **bad)


# ---------------------------------------------------------------------- training and modes
def test_a_few_training_steps_lower_the_loss_and_reach_every_network():
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny", latent_weight=0.1, prior_matching_weight=0.5)
    assert adapter.scheduler.config.num_train_timesteps == 50
    optimizer = torch.optim.Adam(adapter.parameters(), lr=3e-3)
    x0, y = noisy_sinusoids(4, seed=8)
    t = torch.tensor([5, 20, 35, 49])
    losses = []
    for step in range(25):
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(step % 2))
        out = adapter.training_loss(x0, y, noise=z, timesteps=t)
        optimizer.zero_grad()
        out.loss.backward()
        assert torch.isfinite(out.loss)
        if step == 3:  # zero-initialised output layers pass gradients on one step at a time
            for part in (adapter.prior_net, adapter.posterior_net, adapter.denoiser):
                grads = [p.grad.abs().sum().item() for p in part.parameters() if p.grad is not None]
                assert grads and all(math.isfinite(v) for v in grads) and sum(grads) > 0, type(part).__name__
            assert adapter.denoiser.model.residual_blocks[0].dilated_conv.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(out.loss.item())
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5]), losses
    restored = adapter.restore(y, generator=torch.Generator().manual_seed(0))
    assert restored.shape == y.shape and restored.dtype == torch.float32 and torch.isfinite(restored).all()


@pytest.mark.parametrize("mode", ["ddpm", "priorgrad", "restoregrad", "restoregrad_no_posterior"])
def test_every_mode_trains_and_restores(mode):
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny", mode=mode)
    x0, y = noisy_sinusoids(2, frames=3, seed=9)
    out = adapter.training_loss(x0, y, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    schedules = (FAST_INFERENCE_BETAS_6, FAST_INFERENCE_BETAS_3, None) if mode == "ddpm" else (FAST_INFERENCE_BETAS_6,)
    for betas in schedules:
        restored = adapter.restore(y, inference_betas=betas, generator=torch.Generator().manual_seed(1))
        assert restored.shape == y.shape and torch.isfinite(restored).all()


def test_training_loss_rejects_bad_timesteps():
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(), size="tiny", mode="ddpm")
    x0, y = noisy_sinusoids(2)
    with pytest.raises(ValueError, match="timesteps"):
        adapter.training_loss(x0, y, timesteps=torch.tensor([0, 50]))
    with pytest.raises(ValueError, match="timesteps"):
        adapter.training_loss(x0, y, timesteps=torch.tensor([0.5, 2.0]))


# ---------------------------------------------------------------------- checkpoints
def original_checkpoint(model, step=10):
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    model(torch.zeros(1, 1024), torch.zeros(1, 513, 4), torch.tensor([1])).sum().backward()
    optimizer.step()
    return {"step": step, "model": {k: v.cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "params": {"noise_schedule": TRAIN_BETAS.tolist(), "residual_layers": 2, "n_mels": 513},
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0}}


class Custom:
    pass


def test_load_checkpoint_restores_identical_outputs(tmp_path):
    trained = tiny_diffwave(seed=1)
    torch.nn.init.normal_(trained.output_projection.weight, std=0.1)
    path = tmp_path / "weights-10.pt"
    torch.save(original_checkpoint(trained), path)

    fresh = tiny_diffwave(seed=2)
    assert load_checkpoint(fresh, path) == 10
    x0, y = noisy_sinusoids(2)
    x_t, t = torch.randn_like(y), torch.tensor([2.5, 30.0])
    assert torch.equal(wrap(fresh)(x_t, y, t), wrap(trained)(x_t, y, t))
    adapter = CDiffuSERestoreGrad.from_model(tiny_diffwave(seed=3), size="tiny", mode="ddpm")
    assert load_checkpoint(adapter, path) == 10  # the adapter's network is loaded
    reference = CDiffuSERestoreGrad.from_model(trained, size="tiny", mode="ddpm")
    assert torch.equal(adapter.restore(y, generator=torch.Generator().manual_seed(0)),
                       reference.restore(y, generator=torch.Generator().manual_seed(0)))
    without_step = tmp_path / "no_step.pt"
    torch.save({"model": trained.state_dict()}, without_step)
    assert load_checkpoint(tiny_diffwave(), without_step) is None


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    checkpoint = original_checkpoint(tiny_diffwave())
    checkpoint["params"] = Custom()
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="weights-only") as info:
        load_checkpoint(tiny_diffwave(), path)
    assert "Custom" in str(info.value) and "'model'" in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)


def test_load_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    checkpoint = original_checkpoint(tiny_diffwave())
    del checkpoint["model"]["skip_projection.weight"]
    checkpoint["model"]["residual_layers.0.output_residual.weight"] = torch.zeros(8, 8, 1)
    path = tmp_path / "mismatch.pt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="missing keys: 'skip_projection.weight'") as info:
        load_checkpoint(tiny_diffwave(), path)
    assert "unexpected keys: 'residual_layers.0.output_residual.weight'" in str(info.value)

    torch.save({"step": 3, "weights": {}}, path)
    with pytest.raises(ValueError, match="no 'model' entry"):
        load_checkpoint(tiny_diffwave(), path)
    wider = DiffWaveDenoiser(residual_channels=16, residual_layers=2, embedding_dim=32)
    torch.save({"model": wider.state_dict()}, path)
    with pytest.raises(ValueError, match="shapes"):
        load_checkpoint(tiny_diffwave(), path)
    with pytest.raises(ValueError, match="nn.Module"):
        load_checkpoint(lambda *a: a, path)


def test_module_constants_match_cdiffuse():
    assert (cdiffuse.N_FFT, cdiffuse.HOP_LENGTH, cdiffuse.N_FREQ, cdiffuse.NOISY_MIX_WEIGHT) == (1024, 256, 513, 0.2)
    scheduler = cdiffuse.cdiffuse_scheduler()
    assert np.allclose(scheduler.betas.numpy(), TRAIN_BETAS)


# ---------------------------------------------------------------------- the example
def test_example_runs_on_a_folder_of_wav_pairs(tmp_path):
    import importlib.util

    soundfile = pytest.importorskip("soundfile")
    pytest.importorskip("matplotlib")
    path = Path(__file__).resolve().parents[1] / "guides" / "cdiffuse_enhance.py"
    spec = importlib.util.spec_from_file_location("cdiffuse_enhance_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    main = example.main

    rng = np.random.default_rng(0)
    for folder in ("clean", "noisy"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    n = np.arange(8000) / 16000
    for i in range(3):
        clean = (0.3 * np.sin(2 * np.pi * (150 + 50 * i) * n)).astype(np.float32)
        soundfile.write(tmp_path / "data" / "clean" / f"utt{i}.wav", clean, 16000)
        soundfile.write(tmp_path / "data" / "noisy" / f"utt{i}.wav", clean + 0.05 * rng.standard_normal(8000), 16000)
    out = tmp_path / "out"
    result = main(["--steps", "2", "--residual_channels", "8", "--residual_layers", "2",
                   "--data_dir", str(tmp_path / "data"), "--output_dir", str(out)])
    assert all(math.isfinite(v) for v in result.values())
    for name in ("noisy.wav", "enhanced.wav", "clean.wav", "cdiffuse_enhance.png"):
        assert (out / name).stat().st_size > 0
    audio, rate = soundfile.read(out / "enhanced.wav")
    assert rate == 16000 and len(audio) == 8000 // 256 * 256


# ---------------------------------------------------------------------- the released inference, exactly
class ReleasedSignatureNet(torch.nn.Module):
    """A tiny network with the released DiffuSE model's call signature and step embedding, written from
    the published description (DiffWave, Kong et al. 2021; CDiffuSE, Lu et al. 2022):
    ``model(audio[B, L], spectrogram[B, 513, F], diffusion_step) -> [B, 1, L]`` with ``L = 256 F``.

    The step embedding is a table of 128 sinusoids per integer step; an integer step tensor indexes
    it, a float one is interpolated linearly between its neighbours. As in the released model, the
    interpolation multiplies the ``(n, 128)`` rows by the ``(n,)`` fractions, which only broadcasts for
    one step ``(1,)`` (or n = 128): a ``(B,)`` float step of another size fails.
    """

    def __init__(self, channels=8, layers=2, max_steps=50, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        steps = torch.arange(max_steps, dtype=torch.float32)[:, None]
        frequencies = 10.0 ** (torch.arange(64, dtype=torch.float32)[None] * 4.0 / 63.0)
        self.register_buffer("table", torch.cat([torch.sin(steps * frequencies), torch.cos(steps * frequencies)], 1),
                             persistent=False)
        self.step_mlp = torch.nn.Sequential(torch.nn.Linear(128, 32), torch.nn.SiLU(), torch.nn.Linear(32, 32),
                                            torch.nn.SiLU())
        # Two transposed convolutions, x16 each in time: F frames -> 256 F samples.
        self.upsample = torch.nn.ModuleList(torch.nn.ConvTranspose2d(1, 1, (3, 32), stride=(1, 16), padding=(1, 8))
                                            for _ in range(2))
        self.inp = torch.nn.Conv1d(1, channels, 1)
        self.step_proj = torch.nn.ModuleList(torch.nn.Linear(32, channels) for _ in range(layers))
        self.cond_proj = torch.nn.ModuleList(torch.nn.Conv1d(513, 2 * channels, 1) for _ in range(layers))
        self.dilated = torch.nn.ModuleList(torch.nn.Conv1d(channels, 2 * channels, 3, padding=2**i, dilation=2**i)
                                           for i in range(layers))
        self.out = torch.nn.Conv1d(channels, 1, 1)
        torch.nn.init.normal_(self.out.weight, std=0.6)  # large outputs: x0 leaves [-1, 1], the clamps act

    def embed(self, step):
        if step.dtype in (torch.int32, torch.int64):
            return self.table[step]
        low, high = torch.floor(step).long(), torch.ceil(step).long()
        return self.table[low] + (self.table[high] - self.table[low]) * (step - low)  # (n, 128) * (n,)

    def forward(self, audio, spectrogram, diffusion_step):
        step = self.step_mlp(self.embed(diffusion_step))
        condition = spectrogram.unsqueeze(1)
        for layer in self.upsample:
            condition = torch.nn.functional.leaky_relu(layer(condition), 0.4)
        condition = condition.squeeze(1)
        x = torch.relu(self.inp(audio.unsqueeze(1)))
        skip = 0
        for proj, cond, dilated in zip(self.step_proj, self.cond_proj, self.dilated):
            h = dilated(x + proj(step).unsqueeze(-1)) + cond(condition)
            gate, filt = h.chunk(2, dim=1)
            h = torch.sigmoid(gate) * torch.tanh(filt)
            x, skip = (x + h) / math.sqrt(2.0), skip + h
        return self.out(skip)


def released_fractional_steps(betas):
    """The training step the released inference gives the model at each sampling step: the t (a float32)
    where sqrt(abar) of the 50 training steps, interpolated linearly, equals the sampling step's."""
    train = np.cumprod(1.0 - TRAIN_BETAS)
    steps = []
    for target in np.cumprod(1.0 - np.asarray(betas, dtype=np.float64)):
        for t in range(len(train) - 1):
            if train[t + 1] <= target <= train[t]:
                steps.append(t + (train[t] ** 0.5 - target**0.5) / (train[t] ** 0.5 - train[t + 1] ** 0.5))
                break
    return np.array(steps, dtype=np.float32)


def released_inference(model, noisy, spectrogram, betas, noises):
    """The released CDiffuSE inference algorithm on one utterance ``noisy`` (L,), as its paper and
    code describe it: the chain runs on ``256 F`` samples (``F`` spectrogram frames) starting from
    the zero-padded noisy signal; each step n > 0 is ``c1 x + c2 y - c3 C_hat + sqrt(delta_bar) z``
    clipped to [-1, 1]; the last is ``c1 x - c3 C_hat``, blended ``0.8 x0 + 0.2 y`` and then clipped;
    the model sees one (1,) float step. ``noises[k]``: the fresh noise of the k-th noisy step (L_pad,).
    Returns the result cropped to L, and the largest |x0| before the final blend."""
    coefficients, _ = paper_reverse_coefficients(betas)
    steps = released_fractional_steps(betas)
    padded = torch.zeros(1, 256 * spectrogram.shape[-1])
    padded[0, : len(noisy)] = noisy
    audio = padded.clone()
    fresh = iter(noises)
    for n in range(len(betas) - 1, -1, -1):
        predicted = model(audio, spectrogram[None], torch.tensor([steps[n]])).squeeze(1)
        if n > 0:
            audio = (float(coefficients["c1"][n]) * audio + float(coefficients["c2"][n]) * padded
                     - float(coefficients["c3"][n]) * predicted)
            audio = audio + float(coefficients["delta_bar"][n]) ** 0.5 * next(fresh)[None]
        else:
            audio = float(coefficients["c1"][0]) * audio - float(coefficients["c3"][0]) * predicted
            x0_peak = audio.abs().max().item()
            audio = 0.8 * audio + 0.2 * padded
        audio = torch.clamp(audio, -1.0, 1.0)
    return audio[0, : len(noisy)], x0_peak


def loud_utterances(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    n = torch.arange(length, dtype=torch.float32)
    x0 = 0.5 * torch.sin(2 * math.pi * (0.01 + 0.02 * torch.rand(batch, 1, 1, generator=g)) * n)
    return (x0 + 0.3 * torch.randn(batch, 1, length, generator=g)).clamp(-0.999, 0.999)


def test_released_signature_net_embeds_only_one_fractional_step():
    net = ReleasedSignatureNet()
    audio, spectrogram = torch.zeros(2, 768), torch.zeros(2, 513, 3)
    assert net(audio, spectrogram, torch.tensor([1.5])).shape == (2, 1, 768)
    assert net(audio, spectrogram, torch.tensor([1, 7])).shape == (2, 1, 768)
    with pytest.raises(RuntimeError, match="must match"):
        net(audio, spectrogram, torch.tensor([1.5, 1.5]))


def test_whole_utterance_spectrogram_keeps_every_frame():
    y = loud_utterances(2, 256 * 5 + 77, seed=1)
    spectrogram = log_magnitude_spectrogram(y, peak_normalize=True, whole_utterance=True)
    assert spectrogram.shape == (2, 513, 1 + y.shape[-1] // 256) == (2, 513, 6)
    for i in range(2):
        np.testing.assert_allclose(spectrogram[i].numpy(), numpy_log_magnitude(y[i, 0].numpy(), peak_normalize=True),
                                   rtol=1e-4, atol=1e-4)
    assert cdiffuse.utterance_length(1357) == 1536 and cdiffuse.utterance_length(1280) == 1536
    with pytest.raises(ValueError, match="multiple of 256"):
        log_magnitude_spectrogram(y)


@pytest.mark.parametrize("length", [256 * 5 + 77, 256 * 5])
@pytest.mark.parametrize("name", ["fast6", "full"])
def test_restore_reproduces_the_released_inference_on_whole_utterances_and_batches(name, length):
    """mode="ddpm" with RELEASED_INFERENCE and the same noise is CDiffuSE's released inference, for a
    batch of three utterances of any length, each as it would be restored alone."""
    betas = SCHEDULES[name] if SCHEDULES[name] is not None else TRAIN_BETAS
    model = ReleasedSignatureNet()
    adapter = CDiffuSERestoreGrad.from_model(model, size="tiny", mode="ddpm")
    y = loud_utterances(3, length, seed=2)
    padded_length = cdiffuse.utterance_length(length)
    restored = adapter.restore(y, inference_betas=schedule_option(name), generator=torch.Generator().manual_seed(3),
                               **cdiffuse.RELEASED_INFERENCE)
    g = torch.Generator().manual_seed(3)  # the adapter's draws: one (B, 1, L_pad) noise per noisy step
    noises = [torch.randn(3, 1, padded_length, generator=g) for _ in range(len(betas) - 1)]
    assert restored.shape == y.shape
    for i in range(3):
        spectrogram = log_magnitude_spectrogram(y[i:i + 1], peak_normalize=True, whole_utterance=True)[0]
        expected, x0_peak = released_inference(model, y[i, 0], spectrogram, betas, [z[i, 0] for z in noises])
        torch.testing.assert_close(restored[i, 0], expected, rtol=1e-5, atol=1e-5)
        assert x0_peak > 1.0  # the final clip acts after the blend, not on x0
    assert (restored.abs() == 1.0).any()  # the clips are exercised
    one = adapter.restore(y[1:2], inference_betas=schedule_option(name), generator=torch.Generator().manual_seed(3),
                          **cdiffuse.RELEASED_INFERENCE)
    assert one.shape == (1, 1, length)


def test_fractional_steps_reach_the_model_as_one_step_or_one_example_at_a_time():
    model = ReleasedSignatureNet()
    denoiser = wrap(model)
    y = loud_utterances(3, 1024, seed=4)
    x_t = torch.randn_like(y)
    shared = denoiser(x_t, y, torch.full((3,), 17.25))
    spectrogram = log_magnitude_spectrogram(y / y.abs().amax(-1, keepdim=True))
    assert torch.equal(shared, model(x_t[:, 0], spectrogram, torch.tensor([17.25])))
    steps = torch.tensor([2.5, 17.25, 40.0])
    mixed = denoiser(x_t, y, steps)
    for i in range(3):
        torch.testing.assert_close(mixed[i:i + 1], model(x_t[i:i + 1, 0], spectrogram[i:i + 1], steps[i:i + 1]))
    with pytest.raises(ValueError, match="`spectrogram` must have shape"):
        denoiser(x_t, y, steps, spectrogram=spectrogram[..., :2])


@pytest.mark.parametrize("mode", ["restoregrad", "ddpm"])
def test_the_released_model_class_restores_a_batch_with_the_learned_prior(mode):
    adapter = CDiffuSERestoreGrad.from_model(ReleasedSignatureNet(), size="tiny", mode=mode)
    y = loud_utterances(2, 3000, seed=5)
    restored = adapter.restore(y, generator=torch.Generator().manual_seed(0))
    assert restored.shape == y.shape and torch.isfinite(restored).all()
    alone = adapter.restore(y[1:], generator=torch.Generator().manual_seed(0))
    assert alone.shape == (1, 1, 3000)


def test_an_adapters_restoration_settings_are_its_defaults_and_are_saved(tmp_path):
    settings = {"initial": "noisy", "clamp": True, "mix_noisy": True, "inference_betas": list(FAST_INFERENCE_BETAS_3)}
    adapter = CDiffuSERestoreGrad.from_model(ReleasedSignatureNet(), size="tiny", mode="ddpm", restoration=settings)
    assert adapter.restoration["mix_noisy"] == 0.2
    y = loud_utterances(1, 2000, seed=6)
    own = adapter.restore(y, generator=torch.Generator().manual_seed(0))
    explicit = adapter.restore(y, inference_betas=FAST_INFERENCE_BETAS_3, generator=torch.Generator().manual_seed(0),
                               **cdiffuse.RELEASED_INFERENCE)
    assert torch.equal(own, explicit)
    plain = CDiffuSERestoreGrad.from_model(adapter.denoiser, size="tiny", mode="ddpm")
    assert plain.restoration_settings() == cdiffuse.DEFAULT_RESTORATION
    assert not torch.equal(plain.restore(y, generator=torch.Generator().manual_seed(0)), own)
    # an argument given wins over the adapter's setting
    assert torch.equal(adapter.restore(y, generator=torch.Generator().manual_seed(0), mix_noisy=False, clamp=False,
                                       initial="prior"),
                       plain.restore(y, inference_betas=FAST_INFERENCE_BETAS_3, generator=torch.Generator().manual_seed(0)))
    folder = adapter.save_pretrained(tmp_path / "speech")
    loaded = CDiffuSERestoreGrad.from_pretrained(folder, denoiser=ReleasedSignatureNet(seed=1))
    assert loaded.restoration == adapter.restoration
    assert torch.equal(loaded.restore(y, generator=torch.Generator().manual_seed(0)), own)


@pytest.mark.parametrize("bad, message", [({"initial": "zeros"}, "`initial`"), ({"mix_noisy": 1.5}, "`mix_noisy`"),
                                          ({"clamp": "yes"}, "`clamp`"), ({"steps": 3}, "unknown settings"),
                                          ({"inference_betas": [0.5, 2.0]}, "`inference_betas`")])
def test_bad_restoration_settings_are_refused_by_name(bad, message):
    with pytest.raises(ValueError, match=message):
        CDiffuSERestoreGrad.from_model(ReleasedSignatureNet(), size="tiny", restoration=bad)
