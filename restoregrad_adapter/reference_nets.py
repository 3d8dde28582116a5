"""Small reference networks with the call signatures of two research codebases.

The library's speech and image integrations expect denoisers that are called
exactly like the networks of two published diffusion restorers:

* :class:`DiffWaveDenoiser` -- a DiffWave-style waveform denoiser with the
  CDiffuSE call signature ``model(audio, spectrogram, diffusion_step)``.
* :class:`WeatherUNet` -- a DDPM-style UNet (Ho et al., 2020) with the
  WeatherDiff call signature ``model(torch.cat([y, x_t], 1), t)``.

Both networks are written out completely in this module, depend on nothing but
PyTorch, and are deterministic given ``torch.manual_seed``.  They make it
possible to test and demonstrate the integrations without the original code or
its checkpoints.  The default sizes are comparable to the published models;
tests use much smaller settings.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

__all__ = ["DiffWaveDenoiser", "WeatherUNet", "sinusoidal_embedding"]


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def sinusoidal_embedding(
    t: Tensor, dim: int, max_period: float = 10000.0
) -> Tensor:
    """Sinusoidal embedding of continuous (possibly fractional) time values.

    Args:
        t: ``[B]`` time values; any real number is allowed.
        dim: embedding width. The first ``dim // 2`` features are sines and the
            next ``dim // 2`` cosines; an odd ``dim`` gets one trailing zero.
        max_period: the longest period; frequencies are spaced geometrically
            from ``1`` down to ``1 / max_period``.

    Returns:
        ``[B, dim]`` embedding in ``t``'s floating dtype (float32 for integer
        input).
    """
    if dim < 2:
        raise ValueError(f"dim: expected an integer >= 2, got {dim}")
    if not torch.is_floating_point(t):
        t = t.float()
    half = dim // 2
    exponent = torch.arange(half, device=t.device, dtype=t.dtype)
    if half > 1:
        exponent = exponent / (half - 1)
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


def _shape(t: Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def _time_vector(name: str, t: object, batch: int, expected: str) -> Tensor:
    """Return ``t`` as a float vector ``[batch]``; a 0-d or one-element ``[1]`` tensor is broadcast
    (CDiffuSE's released inference passes one fractional step as ``[1]`` for the whole batch)."""
    t = _check_tensor(name, t)
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
        t = t.reshape(1).expand(batch)
    if t.dim() != 1 or t.shape[0] != batch:
        raise ValueError(
            f"{name}: expected shape {expected} (batch {batch}), [1] or a 0-d tensor, "
            f"got {_shape(t)}"
        )
    if not torch.is_floating_point(t):
        t = t.float()
    return t


# ---------------------------------------------------------------------------
# DiffWave-style waveform denoiser (CDiffuSE call signature)
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# DDPM-style UNet (WeatherDiff call signature)
# ---------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups when ``channels`` allows it, otherwise the
    largest divisor of 32 that divides ``channels``."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """Pre-activation residual block with a time-embedding projection.

    Shapes: ``x`` ``[B, C_in, H, W]``, ``temb`` ``[B, T]`` ->
    ``[B, C_out, H, W]``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, temb_channels: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        if in_channels != out_channels:
            self.shortcut: nn.Module = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection.

    Shapes: ``[B, C, H, W]`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q = self.q(y).reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        k = self.k(y).reshape(b, c, h * w)  # [B, C, HW]
        v = self.v(y).reshape(b, c, h * w)  # [B, C, HW]
        weights = torch.softmax(torch.bmm(q, k) / math.sqrt(c), dim=2)  # [B, HWq, HWk]
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the spatial size with a stride-2 3x3 convolution.
    Shapes: ``[B, C, H, W]`` -> ``[B, C, H/2, W/2]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the spatial size with nearest-neighbour upsampling and a 3x3
    convolution. Shapes: ``[B, C, H, W]`` -> ``[B, C, 2H, 2W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """Container for one resolution level: ``block``, ``attn`` and an optional
    ``resample`` (Downsample on the way down, Upsample on the way up)."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        self.resample: nn.Module = nn.Identity()
        self.has_resample = False


class WeatherUNet(ModelMixin, ConfigMixin):
    """DDPM-style UNet with WeatherDiff's call signature.

    ``forward(x, t) -> eps``:

    * ``x``: ``[B, in_channels, image_size, image_size]``, the channel
      concatenation ``torch.cat([y, x_t], 1)`` of the degraded conditioning
      patch ``y`` and the noisy sample ``x_t`` (``in_channels = 2 *
      out_channels``, 6 for RGB).
    * ``t``: ``[B]`` (or 0-d) float timestep; fractional values are allowed.

    Returns ``eps`` of shape ``[B, out_channels, image_size, image_size]``.

    Like the original model, this network only accepts square inputs of exactly
    ``image_size`` (the patch size); any other spatial size raises
    ``ValueError``. With ``fixed_size=False`` it takes any ``H x W`` whose sides
    are multiples of ``2 ** (len(ch_mult) - 1)``: every layer is a convolution,
    a GroupNorm or a global self-attention, so nothing depends on the size, and
    ``image_size`` only names the training patch (and where the attention
    resolutions fall). Restoring with patches larger than the training crops
    then gives the network more context (docs/deblur_sr.md).

    Architecture (Ho et al., 2020): sinusoidal timestep embedding of width
    ``ch`` followed by ``Linear(ch, 4ch) -> SiLU -> Linear(4ch, 4ch)``;
    ``conv_in``; per level ``num_res_blocks`` ResnetBlocks (with self-attention
    at the resolutions in ``attn_resolutions``) and a strided-conv
    downsample; a middle Resnet-Attention-Resnet stack; per level on the way
    up ``num_res_blocks + 1`` ResnetBlocks fed with the stored skip activations
    and a nearest+conv upsample; ``GroupNorm -> SiLU -> conv_out``.  GroupNorm
    uses 32 groups whenever the channel count allows it (always at the default
    sizes) and ``gcd(32, channels)`` groups otherwise.

    Submodule names (stable ``state_dict`` keys): ``temb.dense.{0,1}``,
    ``conv_in``, ``down.{i}.block.{j}``, ``down.{i}.attn.{j}``,
    ``down.{i}.resample``, ``mid.block_1``, ``mid.attn_1``, ``mid.block_2``,
    ``up.{i}.block.{j}``, ``up.{i}.attn.{j}``, ``up.{i}.resample``,
    ``norm_out``, ``conv_out``; ``up`` is indexed by level, as ``down``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 3, 4),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        image_size: int = 64,
        fixed_size: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(fixed_size, bool):
            raise ValueError(f"fixed_size: expected True or False, got {fixed_size!r}")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("ch", ch),
            ("num_res_blocks", num_res_blocks),
            ("image_size", image_size),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        ch_mult = tuple(int(m) for m in ch_mult)
        if not ch_mult or any(m < 1 for m in ch_mult):
            raise ValueError(f"ch_mult: expected a non-empty sequence of positive integers, got {ch_mult}")
        if ch < 2:
            raise ValueError(f"ch: expected an integer >= 2 for the timestep embedding, got {ch}")
        factor = 2 ** (len(ch_mult) - 1)
        if image_size % factor != 0:
            raise ValueError(
                f"image_size: expected a multiple of 2 ** (len(ch_mult) - 1) = {factor}, "
                f"got {image_size}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ch = ch
        self.ch_mult = ch_mult
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = tuple(int(r) for r in attn_resolutions)
        self.dropout = float(dropout)
        self.image_size = image_size
        self.fixed_size = fixed_size
        self.size_multiple = factor
        self.num_resolutions = len(ch_mult)
        temb_ch = 4 * ch

        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1)

        # Downsampling path; record the channel count of every stored skip.
        in_ch_mult = (1,) + ch_mult
        skip_channels: List[int] = [ch]
        resolution = image_size
        block_in = ch
        self.down = nn.ModuleList()
        for level in range(self.num_resolutions):
            stage = _Level()
            block_out = ch * ch_mult[level]
            block_in = ch * in_ch_mult[level]
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, temb_ch, dropout))
                block_in = block_out
                if resolution in self.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
                skip_channels.append(block_in)
            if level != self.num_resolutions - 1:
                stage.resample = Downsample(block_in)
                stage.has_resample = True
                resolution //= 2
                skip_channels.append(block_in)
            self.down.append(stage)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, dropout)

        # Upsampling path, built from the lowest resolution up and stored by
        # level index so that ``up[i]`` pairs with ``down[i]``.
        up_levels: List[_Level] = []
        for level in reversed(range(self.num_resolutions)):
            stage = _Level()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                skip_in = skip_channels.pop()
                stage.block.append(ResnetBlock(block_in + skip_in, block_out, temb_ch, dropout))
                block_in = block_out
                if resolution in self.attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.resample = Upsample(block_in)
                stage.has_resample = True
                resolution *= 2
            up_levels.insert(0, stage)
        self.up = nn.ModuleList(up_levels)
        assert not skip_channels

        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, padding=1)

    def _validate(self, x: object, t: object) -> Tuple[Tensor, Tensor]:
        x = _check_tensor("x", x)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x: expected shape [B, in_channels={self.in_channels}, "
                f"{self.image_size}, {self.image_size}], got {_shape(x)}"
            )
        if not self.fixed_size:
            if x.shape[2] % self.size_multiple or x.shape[3] % self.size_multiple:
                raise ValueError(
                    f"x: expected a spatial size whose sides are multiples of {self.size_multiple} "
                    f"(2 ** (len(ch_mult) - 1)), got {x.shape[2]}x{x.shape[3]} in shape {_shape(x)}"
                )
        elif x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise ValueError(
                f"x: expected spatial size {self.image_size}x{self.image_size} "
                f"(image_size, the patch size), got {x.shape[2]}x{x.shape[3]} "
                f"in shape {_shape(x)}"
            )
        t = _time_vector("t", t, x.shape[0], "[B]")
        return x, t

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict the noise: ``[B, in_channels, S, S]``, ``[B]`` ->
        ``[B, out_channels, S, S]`` with ``S = image_size`` (any multiple of the
        down-sampling factor on each side with ``fixed_size=False``)."""
        x, t = self._validate(x, t)

        temb = sinusoidal_embedding(t.to(x.dtype), self.ch)
        temb = self.temb.dense[0](temb)
        temb = self.temb.dense[1](F.silu(temb))

        hs = [self.conv_in(x)]
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(hs[-1], temb)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
                hs.append(h)
            if stage.has_resample:
                hs.append(stage.resample(hs[-1]))

        h = hs[-1]
        h = self.mid.block_1(h, temb)
        h = self.mid.attn_1(h)
        h = self.mid.block_2(h, temb)

        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(stage.attn) > 0:
                    h = stage.attn[i](h)
            if stage.has_resample:
                h = stage.resample(h)

        h = F.silu(self.norm_out(h))
        return self.conv_out(h)
