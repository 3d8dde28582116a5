"""Prior Net and Posterior Net: the encoders that give RestoreGrad's learned covariances.

Both are ResNet-20-style convolutional networks (He et al. 2016): a stem convolution, three stages
of three basic residual blocks, and a head that gives a *standard-deviation map* of the signal's
shape, ``sigma = sigma_min + exp(h)`` (paper Sec. 4: exponential output plus a floor, sigma_min = 0.1).
They are fully convolutional: any length or image size.

Two resolutions (``downsample``, or the named ``encoder`` of the factories):

- ``"paper"`` (``downsample=1``): the paper's network. Every convolution has stride 1, so the body
  runs at the signal's full resolution: every pixel, every audio sample.
- ``"reduced"`` (the default; ``downsample`` 4 for images, 16 for waveforms): the stem is a
  ``downsample``-wide convolution with stride ``downsample`` (one feature vector per block of
  pixels or samples), the residual stages and the head run at that reduced resolution, and the head's
  log-std ``h`` is interpolated (linear / bilinear) back to the signal's size *before* the
  exponential, so ``sigma >= sigma_min`` holds exactly. The sigma maps RestoreGrad learns are smooth
  (the local level of the degradation), so the reduced network loses little of what it can express,
  at about ``1 / downsample**dims`` of the cost. A signal whose size is not a multiple of
  ``downsample`` is padded at its end by repeating its edge, and the map is cropped back.

- ``PriorNet(y) -> sigma_prior``: ``Sigma_prior = diag(sigma_prior**2)``, used in training and sampling.
- ``PosteriorNet(x0, y) -> sigma_post``: sees the clean signal too; training only.

The head is initialised so that ``sigma = 1`` everywhere: an untrained adapter starts as the
standard Gaussian prior of the denoiser it wraps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

#: Channel widths of the three stages; "base" is the paper's (16/32/64, about 93K parameters in 1-D).
SIZES = {"tiny": (8, 16, 32), "base": (16, 32, 64), "large": (32, 64, 128)}
NORMS = ("none", "batch", "group")

#: Named encoder resolutions: the factor ``downsample`` of each (None: the default of the signal's dims).
ENCODERS = {"reduced": None, "paper": 1}
#: ``downsample`` of the "reduced" encoders, by dims: 4 x 4 pixel blocks of an image, 16-sample blocks of a
#: waveform (1 ms at 16 kHz; a CDiffuSE spectrogram frame is 256 samples).
DEFAULT_DOWNSAMPLE = {1: 16, 2: 4}

# h is clamped before the exponential so sigma stays finite (exp(10) ~ 2.2e4) in any precision.
_MAX_LOG_STD = 10.0
_MIN_LOG_STD = -30.0


def downsample_of(encoder: str, dims: int) -> int:
    """The ``downsample`` factor of a named encoder (``"reduced"`` or ``"paper"``) for signals of ``dims``."""
    if encoder not in ENCODERS:
        raise ValueError(f"`encoder` must be one of {tuple(ENCODERS)}, got {encoder!r}.")
    return resolve_downsample(ENCODERS[encoder], dims)


def resolve_downsample(downsample: int | None, dims: int) -> int:
    """``downsample``, checked; None gives the default of ``dims`` (:data:`DEFAULT_DOWNSAMPLE`)."""
    if downsample is None:
        if dims not in DEFAULT_DOWNSAMPLE:
            raise ValueError(f"`dims` must be 1 (waveforms) or 2 (images), got {dims!r}.")
        return DEFAULT_DOWNSAMPLE[dims]
    if isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 1:
        raise ValueError(f"`downsample` must be a positive integer (1 = the paper's full-resolution network) "
                         f"or None (the default of the signal's dims), got {downsample!r}.")
    return downsample


def _conv(dims: int):
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3-wide convolutions with a residual connection (1x1 projection when widths differ)."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, norm: str):
        super().__init__()
        conv = _conv(dims)
        self.conv1 = conv(in_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm1 = _norm(norm, dims, out_channels)
        self.conv2 = conv(out_channels, out_channels, 3, padding=1, bias=norm == "none")
        self.norm2 = _norm(norm, dims, out_channels)
        self.act = nn.ReLU()
        self.shortcut = nn.Identity() if in_channels == out_channels else conv(in_channels, out_channels, 1)
        if norm == "none":
            # Without normalisation a residual stack trains stably when each branch starts at zero.
            nn.init.zeros_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return self.act(h + self.shortcut(x))


class _StdEncoder(nn.Module):
    """ResNet-20 body and standard-deviation head shared by the Prior and Posterior Nets."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, size: str, sigma_min: float,
                 blocks_per_stage: int, norm: str, downsample: int, sigma_max: float | None = None):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"`dims` must be 1 (waveforms) or 2 (images), got {dims!r}.")
        if size not in SIZES:
            raise ValueError(f"`size` must be one of {tuple(SIZES)}, got {size!r}.")
        if norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}.")
        if not (isinstance(in_channels, int) and in_channels > 0):
            raise ValueError(f"`in_channels` must be a positive integer, got {in_channels!r}.")
        if isinstance(sigma_min, bool) or not isinstance(sigma_min, (int, float)) or not 0 <= sigma_min < 1:
            raise ValueError(f"`sigma_min` must be a number in [0, 1) (sigma starts at 1, the standard prior, "
                             f"and never goes below sigma_min), got {sigma_min!r}.")
        if sigma_max is not None and (isinstance(sigma_max, bool) or not isinstance(sigma_max, (int, float))
                                      or not 1 < sigma_max < math.inf):
            raise ValueError(f"`sigma_max` must be a number above 1 (sigma starts at 1) or None, got {sigma_max!r}.")
        widths = SIZES[size]
        conv = _conv(dims)
        if downsample == 1:  # the paper's stem: a 3-wide convolution at full resolution
            self.stem = nn.Sequential(conv(in_channels, widths[0], 3, padding=1), nn.ReLU())
        else:  # one feature vector per downsample-wide block
            self.stem = nn.Sequential(conv(in_channels, widths[0], downsample, stride=downsample), nn.ReLU())
        blocks, width = [], widths[0]
        for stage_width in widths:
            for _ in range(blocks_per_stage):
                blocks.append(BasicBlock(dims, width, stage_width, norm))
                width = stage_width
        self.blocks = nn.Sequential(*blocks)
        self.head = conv(width, out_channels, 3, padding=1)
        # Start at sigma = 1, the standard prior: sigma_min + exp(h) = 1, or with an upper bound
        # sigma_min + (sigma_max - sigma_min) sigmoid(h) = 1.
        nn.init.zeros_(self.head.weight)
        if sigma_max is None:
            nn.init.constant_(self.head.bias, math.log(1.0 - sigma_min))
        else:
            share = (1.0 - sigma_min) / (sigma_max - sigma_min)
            nn.init.constant_(self.head.bias, math.log(share / (1.0 - share)))
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.dims = dims
        self.downsample = downsample

    def std(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[2:]
        factor = self.downsample
        if factor > 1:
            # Pad the end of each spatial axis to a multiple of the factor by repeating the edge.
            padding = []
            for extent in reversed(size):  # F.pad lists the last axis first
                padding += [0, -extent % factor]
            if any(padding):
                features = F.pad(features, padding, mode="replicate")
        h = self.head(self.blocks(self.stem(features))).float()
        if factor > 1:
            # Back to full resolution in log-std, so sigma_min + exp(h) keeps its floor exactly.
            h = F.interpolate(h, scale_factor=factor, mode="linear" if self.dims == 1 else "bilinear",
                              align_corners=False)
            h = h[(...,) + tuple(slice(0, extent) for extent in size)]
        # sigma = sigma_min + exp(h), in float32 so autocast cannot overflow it; with an upper bound the
        # squashed sigma_min + (sigma_max - sigma_min) sigmoid(h), which never leaves (sigma_min, sigma_max).
        if self.sigma_max is not None:
            return self.sigma_min + (self.sigma_max - self.sigma_min) * torch.sigmoid(h)
        return self.sigma_min + torch.exp(h.clamp(_MIN_LOG_STD, _MAX_LOG_STD))

    def check(self, name: str, tensor: torch.Tensor, channels: int) -> None:
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}.")
        expected = "(B, C, L)" if self.dims == 1 else "(B, C, H, W)"
        if tensor.ndim != self.dims + 2:
            raise ValueError(f"`{name}` must have shape {expected}, got {tuple(tensor.shape)}.")
        if tensor.shape[1] != channels:
            raise ValueError(f"`{name}` must have {channels} channels (dim 1), got shape {tuple(tensor.shape)}.")
        if not tensor.is_floating_point():
            raise ValueError(f"`{name}` must be a floating-point tensor, got {tensor.dtype}.")


class _EncoderConfig:
    """Loading of saved encoder configs: one written before the encoders had a ``downsample`` setting
    describes the paper's full-resolution network, so it loads as ``downsample=1`` (not as today's
    default). Saved configs are those diffusers wrote (they carry ``_diffusers_version``)."""

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        if "_diffusers_version" in config_dict and "downsample" not in config_dict and "downsample" not in kwargs:
            config_dict = {**config_dict, "downsample": 1}
        return super().extract_init_dict(config_dict, **kwargs)


class PriorNet(_EncoderConfig, ModelMixin, ConfigMixin):
    """Prior Net ``psi``: ``sigma_prior = psi(y)``, a standard-deviation map of ``y``'s shape.

    Args:
        dims: 1 for waveforms ``(B, C, L)``, 2 for images ``(B, C, H, W)``.
        in_channels: channels C of the degraded signal ``y`` (and of the output map).
        size: "tiny", "base" or "large" (stage widths 8/16/32, 16/32/64, 32/64/128).
        sigma_min: floor of the standard deviation (paper: 0.1).
        blocks_per_stage: basic blocks per stage (3 gives ResNet-20).
        norm: "none" (default; purely local, identical in training and evaluation), "batch" or "group".
        downsample: the factor by which the body works below the signal's resolution; 1 is the paper's
            full-resolution network; None (default) is :data:`DEFAULT_DOWNSAMPLE` (4 for images, 16 for
            waveforms) and is stored in the config as that number.
        sigma_max: an upper bound (above 1): sigma is then squashed, ``sigma_min + (sigma_max -
            sigma_min) sigmoid(h)``, instead of ``sigma_min + exp(h)``; None (default): no bound.
    """

    @register_to_config
    def __init__(self, dims: int = 2, in_channels: int = 3, size: str = "base", sigma_min: float = 0.1,
                 blocks_per_stage: int = 3, norm: str = "none", downsample: int | None = None,
                 sigma_max: float | None = None):
        super().__init__()
        downsample = resolve_downsample(downsample, dims)
        self.register_to_config(downsample=downsample)
        self.encoder = _StdEncoder(dims, in_channels, in_channels, size, sigma_min, blocks_per_stage, norm,
                                   downsample, sigma_max)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y``: ``(B, C, *spatial)`` -> ``sigma_prior`` of the same shape, float32, ``>= sigma_min``."""
        self.encoder.check("y", y, self.config.in_channels)
        return self.encoder.std(y)


class PosteriorNet(_EncoderConfig, ModelMixin, ConfigMixin):
    """Posterior Net ``phi``: ``sigma_post = phi(x0, y)`` (clean and degraded concatenated on channels).

    Used in training only (paper Algorithm 1). Arguments as for :class:`PriorNet`; ``in_channels``
    is the channel count C of one signal (the network sees 2C).
    """

    @register_to_config
    def __init__(self, dims: int = 2, in_channels: int = 3, size: str = "base", sigma_min: float = 0.1,
                 blocks_per_stage: int = 3, norm: str = "none", downsample: int | None = None,
                 sigma_max: float | None = None):
        super().__init__()
        downsample = resolve_downsample(downsample, dims)
        self.register_to_config(downsample=downsample)
        self.encoder = _StdEncoder(dims, 2 * in_channels, in_channels, size, sigma_min, blocks_per_stage, norm,
                                   downsample, sigma_max)

    def forward(self, x0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x0``, ``y``: ``(B, C, *spatial)`` -> ``sigma_post`` of the same shape, float32."""
        self.encoder.check("x0", x0, self.config.in_channels)
        self.encoder.check("y", y, self.config.in_channels)
        if x0.shape != y.shape:
            raise ValueError(f"`x0` and `y` must have the same shape, got {tuple(x0.shape)} and {tuple(y.shape)}.")
        return self.encoder.std(torch.cat([x0, y], dim=1))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["PriorNet", "PosteriorNet", "SIZES", "ENCODERS", "DEFAULT_DOWNSAMPLE", "downsample_of", "count_parameters"]
