"""A DDPM-style UNet (Ho et al., 2020) with the WeatherDiff call signature ``model(torch.cat([y, x_t], 1), t)``."""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from .common import _check_tensor, _shape, _time_vector, sinusoidal_embedding

__all__ = ["WeatherUNet"]


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
