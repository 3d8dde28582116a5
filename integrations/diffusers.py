"""diffusers UNets as RestoreGrad denoisers.

A diffusers model called as ``model(sample, timestep).sample`` (``UNet2DModel``, ``UNet1DModel``, ...)
becomes a conditional denoiser ``eps(x_t, y, t)`` by channel concatenation: the model sees
``cat([x_t, y], dim=1)`` and predicts the noise of ``x_t``. The user's model object is used as is.
"""

from __future__ import annotations

import torch
from torch import nn


class ConcatConditionedDenoiser(nn.Module):
    """``eps(x_t, y, t) = model(cat([x_t, y], 1), t).sample``.

    Args:
        model: a diffusers model whose ``in_channels`` is the signal's channels plus the
            condition's, and whose output has the signal's channels.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x_t.shape[0] != y.shape[0] or x_t.shape[2:] != y.shape[2:]:
            raise ValueError(f"`x_t` {tuple(x_t.shape)} and `y` {tuple(y.shape)} must share batch and spatial sizes.")
        expected = getattr(getattr(self.model, "config", None), "in_channels", None)
        if expected is not None and x_t.shape[1] + y.shape[1] != expected:
            raise ValueError(f"the model takes {expected} input channels but `x_t` ({x_t.shape[1]}) and `y` "
                             f"({y.shape[1]}) give {x_t.shape[1] + y.shape[1]}; build it with "
                             f"in_channels={x_t.shape[1] + y.shape[1]} or widen it with `widen_conv_in`.")
        dtype = next(self.model.parameters()).dtype
        out = self.model(torch.cat([x_t, y], dim=1).to(dtype), t)
        return out.sample if hasattr(out, "sample") else out[0]


def wrap(model: nn.Module) -> ConcatConditionedDenoiser:
    """Turn a diffusers UNet conditioned by channel concatenation into a RestoreGrad denoiser."""
    if not callable(model):
        raise ValueError(f"`model` must be a callable diffusers model, got {type(model).__name__}.")
    return ConcatConditionedDenoiser(model)


__all__ = ["ConcatConditionedDenoiser", "wrap"]
