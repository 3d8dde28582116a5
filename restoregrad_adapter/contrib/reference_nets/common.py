"""What both reference networks share: the sinusoidal time embedding and the checks of their inputs."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sinusoidal_embedding"]


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
