"""Tiny models and data shared by the tests (CPU, no downloads)."""

import math
import socket

import pytest
import torch
from torch import nn


class TinyConvDenoiser(nn.Module):
    """A small conditional noise predictor eps(x_t, y, t) for (B, C, L) or (B, C, H, W) signals."""

    def __init__(self, channels: int = 1, dims: int = 1, width: int = 32, max_steps: float = 1000.0):
        super().__init__()
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.max_steps = max_steps
        self.inp = conv(2 * channels, width, 3, padding=1)
        self.time = nn.Linear(16, width)
        self.body = nn.Sequential(nn.SiLU(), conv(width, width, 3, padding=1), nn.SiLU(),
                                  conv(width, width, 3, padding=1), nn.SiLU())
        self.out = conv(width, channels, 3, padding=1)

    def forward(self, x_t, y, t):
        freqs = torch.arange(8, device=x_t.device, dtype=torch.float32)
        angle = t.float()[:, None] / self.max_steps * math.pi * (2.0 ** freqs)[None]
        emb = self.time(torch.cat([angle.sin(), angle.cos()], dim=1))
        h = self.inp(torch.cat([x_t, y], dim=1)) + emb.view(*emb.shape, *([1] * (x_t.ndim - 2)))
        return self.out(self.body(h))


def toy_waveforms(batch: int, length: int = 256, generator: torch.Generator | None = None):
    """Clean sums of two sinusoids and their noisy versions, (B, 1, L) each."""
    n = torch.arange(length, dtype=torch.float32)
    freq = torch.rand(batch, 2, 1, generator=generator) * 0.05 + 0.01
    amp = torch.rand(batch, 2, 1, generator=generator) * 0.4 + 0.1
    x0 = (amp * torch.sin(2 * math.pi * freq * n)).sum(1, keepdim=True)
    y = x0 + 0.3 * torch.randn(batch, 1, length, generator=generator)
    return x0, y


@pytest.fixture
def tiny_denoiser():
    return TinyConvDenoiser


@pytest.fixture
def no_network(monkeypatch):
    """Make any connection attempt fail: a test using it proves its code works offline."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def tiny_image_adapter():
    """A small WeatherDiff-wrapped UNet (16 x 16 patches) with reduced encoders whose prior is not flat."""
    from restoregrad_adapter import RestoreGrad
    from restoregrad_adapter.contrib.reference_nets import WeatherUNet
    from restoregrad_adapter.integrations import weatherdiff

    torch.manual_seed(0)
    unet = WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16)
    adapter = RestoreGrad.with_encoders(weatherdiff.wrap(unet, patch_size=16), dims=2, in_channels=3, size="tiny")
    torch.nn.init.normal_(adapter.prior_net.encoder.head.weight, std=0.05)
    return adapter


@pytest.fixture(scope="module")
def image_adapter(tmp_path_factory):
    """The folder of :func:`tiny_image_adapter`, saved."""
    return tiny_image_adapter().save_pretrained(tmp_path_factory.mktemp("adapters") / "image")


@pytest.fixture(scope="module")
def speech_adapter(tmp_path_factory):
    """The folder of a small CDiffuSE adapter of a DiffWave (16 kHz), saved."""
    from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser
    from restoregrad_adapter.integrations import cdiffuse

    torch.manual_seed(0)
    model = DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)
    adapter = cdiffuse.CDiffuSERestoreGrad.from_model(model, size="tiny")
    return adapter.save_pretrained(tmp_path_factory.mktemp("adapters") / "speech", sample_rate=16000)
