"""A DiffWave-style waveform denoiser with the CDiffuSE call signature ``model(audio, spectrogram, diffusion_step)``."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from .common import _check_tensor, _shape, _time_vector

__all__ = ["DiffWaveDenoiser"]


def _split_hop(hop_length: int) -> Tuple[int, int]:
    """Split ``hop_length`` into two upsampling strides ``a * b`` with ``a <= b``
    as close as possible (256 -> 16, 16)."""
    a = math.isqrt(hop_length)
    while hop_length % a != 0:
        a -= 1
    return a, hop_length // a


class DiffusionStepEmbedding(nn.Module):
    """Continuous sinusoidal step embedding followed by two Linear+SiLU layers.

    The sinusoids are computed from the step value itself, so fractional steps
    (``12.37``) get their own embedding rather than a table entry.

    Shapes: ``[B]`` float steps -> ``[B, embedding_dim]``.
    """

    def __init__(self, sinusoid_dim: int = 128, embedding_dim: int = 512) -> None:
        super().__init__()
        if sinusoid_dim < 4 or sinusoid_dim % 2:
            raise ValueError(
                f"sinusoid_dim: expected an even integer >= 4, got {sinusoid_dim}"
            )
        self.sinusoid_dim = sinusoid_dim
        self.projection1 = nn.Linear(sinusoid_dim, embedding_dim)
        self.projection2 = nn.Linear(embedding_dim, embedding_dim)

    def sinusoids(self, step: Tensor) -> Tensor:
        """``[B]`` -> ``[B, sinusoid_dim]``; frequencies ``10 ** (4 k / (K - 1))``
        for ``k = 0 .. K - 1`` with ``K = sinusoid_dim // 2`` (sines, then
        cosines)."""
        half = self.sinusoid_dim // 2
        k = torch.arange(half, device=step.device, dtype=step.dtype)
        freqs = torch.pow(10.0, 4.0 * k / (half - 1))
        args = step[:, None] * freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    def forward(self, step: Tensor) -> Tensor:
        x = self.sinusoids(step)
        x = F.silu(self.projection1(x))
        x = F.silu(self.projection2(x))
        return x


class SpectrogramUpsampler(nn.Module):
    """Upsample a spectrogram along time by ``hop_length`` with two transposed
    2-D convolutions (strides ``(1, a)`` and ``(1, b)``, ``a * b = hop_length``;
    ``16 x 16`` for the default hop of 256), each followed by a leaky ReLU
    with slope 0.4.

    Shapes: ``[B, n_freq, frames]`` -> ``[B, n_freq, frames * hop_length]``.
    """

    def __init__(self, hop_length: int = 256) -> None:
        super().__init__()
        self.hop_length = hop_length
        layers = []
        for stride in _split_hop(hop_length):
            # kernel = stride + 2 * pad and padding = pad gives exactly
            # frames * stride output samples for any stride.
            pad = (stride + 1) // 2
            layers.append(
                nn.ConvTranspose2d(
                    1,
                    1,
                    kernel_size=(3, stride + 2 * pad),
                    stride=(1, stride),
                    padding=(1, pad),
                )
            )
        self.conv1, self.conv2 = layers

    def forward(self, spectrogram: Tensor) -> Tensor:
        x = spectrogram.unsqueeze(1)  # [B, 1, n_freq, frames]
        x = F.leaky_relu(self.conv1(x), 0.4)
        x = F.leaky_relu(self.conv2(x), 0.4)
        return x.squeeze(1)


class DiffWaveResidualBlock(nn.Module):
    """One DiffWave residual layer: dilated conv + step and conditioner input,
    gated ``tanh * sigmoid`` activation, split into residual and skip paths.

    Shapes: ``x`` ``[B, C, L]``, ``conditioner`` ``[B, n_freq, L]``,
    ``step_embedding`` ``[B, E]`` -> ``(residual [B, C, L], skip [B, C, L])``.
    """

    def __init__(
        self, residual_channels: int, dilation: int, n_freq: int, embedding_dim: int
    ) -> None:
        super().__init__()
        c = residual_channels
        self.dilated_conv = nn.Conv1d(c, 2 * c, kernel_size=3, padding=dilation, dilation=dilation)
        self.diffusion_projection = nn.Linear(embedding_dim, c)
        self.conditioner_projection = nn.Conv1d(n_freq, 2 * c, kernel_size=1)
        self.output_projection = nn.Conv1d(c, 2 * c, kernel_size=1)

    def forward(
        self, x: Tensor, conditioner: Tensor, step_embedding: Tensor
    ) -> Tuple[Tensor, Tensor]:
        y = x + self.diffusion_projection(step_embedding).unsqueeze(-1)
        y = self.dilated_conv(y) + self.conditioner_projection(conditioner)
        gate, filt = torch.chunk(y, 2, dim=1)
        y = torch.sigmoid(gate) * torch.tanh(filt)
        y = self.output_projection(y)
        residual, skip = torch.chunk(y, 2, dim=1)
        return (x + residual) / math.sqrt(2.0), skip


class DiffWaveDenoiser(ModelMixin, ConfigMixin):
    """Small DiffWave-style denoiser with CDiffuSE's call signature.

    ``forward(audio, spectrogram, diffusion_step)``:

    * ``audio``: ``[B, L]`` noisy waveform at the current diffusion step.
    * ``spectrogram``: ``[B, n_freq, frames]`` conditioner, e.g. the noisy
      log-magnitude STFT (``n_freq = 513`` for a 1024-point FFT), with
      ``L == hop_length * frames``.
    * ``diffusion_step``: ``[B]`` (or ``[1]`` or 0-d, shared by the batch) float step in ``[0, max_steps]``;
      fractional steps such as ``12.37`` are embedded directly.

    Returns ``[B, 1, L]``, the predicted noise.  The final 1x1 convolution is
    zero-initialised, so a freshly built model outputs zeros.

    Args:
        residual_channels: width ``C`` of the residual stack.
        residual_layers: number of residual blocks.
        dilation_cycle_length: block ``i`` uses dilation
            ``2 ** (i % dilation_cycle_length)``.
        n_freq: number of spectrogram rows.
        hop_length: waveform samples per spectrogram frame.
        max_steps: number of diffusion steps of the schedule; steps outside
            ``[0, max_steps]`` are rejected.
        embedding_dim: width of the two Linear+SiLU layers of the step
            embedding (the sinusoids themselves have 128 features).
        conditioner_channels: None (CDiffuSE's network) feeds all ``n_freq``
            spectrogram rows to every residual layer at the waveform's rate;
            a number ``k`` first maps them to ``k`` learned rows at the frame
            rate (a 1x1 convolution, like DiffWave's 80 mel bands), which
            makes the network several times cheaper for ``k`` around 64.
    """

    sinusoid_dim: int = 128

    @register_to_config
    def __init__(
        self,
        residual_channels: int = 64,
        residual_layers: int = 30,
        dilation_cycle_length: int = 10,
        n_freq: int = 513,
        hop_length: int = 256,
        max_steps: int = 50,
        embedding_dim: int = 512,
        conditioner_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("residual_channels", residual_channels),
            ("residual_layers", residual_layers),
            ("dilation_cycle_length", dilation_cycle_length),
            ("n_freq", n_freq),
            ("hop_length", hop_length),
            ("max_steps", max_steps),
            ("embedding_dim", embedding_dim),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        if conditioner_channels is not None and (
            not isinstance(conditioner_channels, int)
            or isinstance(conditioner_channels, bool)
            or conditioner_channels < 1
        ):
            raise ValueError(
                f"conditioner_channels: expected None or a positive integer, got {conditioner_channels!r}"
            )
        self.residual_channels = residual_channels
        self.residual_layers = residual_layers
        self.dilation_cycle_length = dilation_cycle_length
        self.n_freq = n_freq
        self.hop_length = hop_length
        self.max_steps = max_steps
        self.embedding_dim = embedding_dim

        self.input_projection = nn.Conv1d(1, residual_channels, kernel_size=1)
        self.diffusion_embedding = DiffusionStepEmbedding(self.sinusoid_dim, embedding_dim)
        # Optional frame-rate compression of the conditioner (None: CDiffuSE's layout and keys).
        self.conditioner_compression = (
            None if conditioner_channels is None else nn.Conv1d(n_freq, conditioner_channels, kernel_size=1)
        )
        self.spectrogram_upsampler = SpectrogramUpsampler(hop_length)
        self.residual_blocks = nn.ModuleList(
            DiffWaveResidualBlock(
                residual_channels,
                2 ** (i % dilation_cycle_length),
                n_freq if conditioner_channels is None else conditioner_channels,
                embedding_dim,
            )
            for i in range(residual_layers)
        )
        self.skip_projection = nn.Conv1d(residual_channels, residual_channels, kernel_size=1)
        self.output_projection = nn.Conv1d(residual_channels, 1, kernel_size=1)
        nn.init.zeros_(self.output_projection.weight)
        nn.init.zeros_(self.output_projection.bias)

    def _validate(
        self, audio: object, spectrogram: object, diffusion_step: object
    ) -> Tuple[Tensor, Tensor, Tensor]:
        audio = _check_tensor("audio", audio)
        spectrogram = _check_tensor("spectrogram", spectrogram)
        if audio.dim() != 2:
            raise ValueError(f"audio: expected shape [B, L], got {_shape(audio)}")
        batch, length = audio.shape
        if spectrogram.dim() != 3 or spectrogram.shape[1] != self.n_freq:
            raise ValueError(
                f"spectrogram: expected shape [B, n_freq={self.n_freq}, frames], "
                f"got {_shape(spectrogram)}"
            )
        if spectrogram.shape[0] != batch:
            raise ValueError(
                f"spectrogram: expected batch size {batch} to match audio "
                f"{_shape(audio)}, got {_shape(spectrogram)}"
            )
        frames = spectrogram.shape[2]
        if length != self.hop_length * frames:
            raise ValueError(
                f"audio: expected length L = hop_length * frames = "
                f"{self.hop_length} * {frames} = {self.hop_length * frames} "
                f"(spectrogram {_shape(spectrogram)}), got audio {_shape(audio)}"
            )
        step = _time_vector("diffusion_step", diffusion_step, batch, "[B]")
        if not bool(torch.isfinite(step).all()) or bool(
            ((step < 0) | (step > self.max_steps)).any()
        ):
            raise ValueError(
                f"diffusion_step: expected values in [0, max_steps={self.max_steps}], "
                f"got min {step.min().item():.4g}, max {step.max().item():.4g}"
            )
        return audio, spectrogram, step

    def forward(self, audio: Tensor, spectrogram: Tensor, diffusion_step: Tensor) -> Tensor:
        """Predict the noise in ``audio``: ``[B, L]``, ``[B, n_freq, frames]``,
        ``[B]`` -> ``[B, 1, L]``."""
        audio, spectrogram, step = self._validate(audio, spectrogram, diffusion_step)
        step = step.to(audio.dtype)

        x = F.relu(self.input_projection(audio.unsqueeze(1)))  # [B, C, L]
        step_embedding = self.diffusion_embedding(step)  # [B, E]
        if self.conditioner_compression is not None:
            spectrogram = self.conditioner_compression(spectrogram)  # [B, k, frames]
        conditioner = self.spectrogram_upsampler(spectrogram)  # [B, n_freq or k, L]

        skip_sum = torch.zeros_like(x)
        for block in self.residual_blocks:
            x, skip = block(x, conditioner, step_embedding)
            skip_sum = skip_sum + skip
        x = skip_sum / math.sqrt(len(self.residual_blocks))
        x = F.relu(self.skip_projection(x))
        return self.output_projection(x)  # [B, 1, L]
