"""diffusers UNets as RestoreGrad denoisers.

A diffusers model called as ``model(sample, timestep).sample`` (``UNet2DModel``, ``UNet1DModel``, ...)
becomes a conditional denoiser ``eps(x_t, y, t)`` by channel concatenation: the model sees
``cat([x_t, y], dim=1)`` and predicts the noise of ``x_t``. The user's model object is used as is.

To start from a pretrained *unconditional* checkpoint, :func:`widen_conv_in` adds input channels for
the condition to its first convolution, with zero weights: the widened model computes exactly what
the original did until training teaches it to use ``y``.
"""

from __future__ import annotations

import torch
from torch import nn

from restoregrad_adapter.integrations import Integration, check_concatenated_channels, register_integration
from restoregrad_adapter.sampling import RestorationDefaults


class ConcatConditionedDenoiser(nn.Module):
    """``eps(x_t, y, t) = model(cat([x_t, y], 1), t).sample``.

    Args:
        model: a diffusers model whose ``in_channels`` is the signal's channels plus the
            condition's, and whose output has the signal's channels.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def restoration_defaults(self) -> RestorationDefaults:
        """10 steps; images larger than the UNet's ``sample_size`` restored from overlapping patches of that size."""
        sample_size = getattr(getattr(self.model, "config", None), "sample_size", None)
        patch_size = min(sample_size) if isinstance(sample_size, (list, tuple)) else sample_size
        return RestorationDefaults(num_inference_steps=10, patch_size=int(patch_size) if patch_size else None)

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
    """Turn a diffusers model conditioned by channel concatenation into a RestoreGrad denoiser."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be a diffusers model (an nn.Module), got {type(model).__name__}.")
    return ConcatConditionedDenoiser(model)


@torch.no_grad()
def widen_conv_in(model: nn.Module, condition_channels: int) -> nn.Module:
    """Give a pretrained unconditional model's ``conv_in`` extra input channels for the condition ``y``.

    The new input weights are zero, so for any ``y`` the widened model's output equals the original
    model's output on ``x_t`` alone. The model is changed in place (and returned); its config's
    ``in_channels`` is updated so that saving and reloading keeps the new shape.

    Args:
        model: a diffusers model with a ``conv_in`` convolution (``UNet2DModel``, ``UNet2DConditionModel``, ...).
        condition_channels: channels of ``y`` (usually those of the signal).
    """
    if not isinstance(condition_channels, int) or condition_channels < 1:
        raise ValueError(f"`condition_channels` must be a positive integer, got {condition_channels!r}.")
    old = getattr(model, "conv_in", None)
    if not isinstance(old, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise ValueError(f"`model` ({type(model).__name__}) has no `conv_in` convolution to widen; build the model "
                         "with in_channels = signal + condition channels instead.")
    new = type(old)(old.in_channels + condition_channels, old.out_channels, old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, groups=old.groups, bias=old.bias is not None,
                    padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight  # x_t comes first in cat([x_t, y])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    model.conv_in = new
    if hasattr(model, "register_to_config"):
        model.register_to_config(in_channels=old.in_channels + condition_channels)
    return model


__all__ = ["ConcatConditionedDenoiser", "wrap", "widen_conv_in"]


# ---------------------------------------------------------------------- registration
register_integration(Integration(
    name="diffusers",
    wrapper_class=ConcatConditionedDenoiser,
    wrap=wrap,
    check_model=check_concatenated_channels,
    pipeline_compatible=True,
))
