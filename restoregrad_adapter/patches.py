"""The overlapping patch grid: whole-image noise estimates from a denoiser that sees ``p x p`` patches.

A patch model (WeatherDiff, Ozdenizci & Legenstein 2023; any diffusers UNet restricted to its
``sample_size``) restores an image of any size like this (docs/design.md, "WeatherDiff's patch
restoration"): at every reverse step the image is cut into ``p x p`` patches on a grid of stride
``r``, the denoiser estimates the noise of every patch, and the estimates are averaged per pixel.
The grid always reaches the border (a last patch flush with it), so sizes that are not a multiple
of the stride are covered; images smaller than ``p`` are padded by reflection and cropped after.

:class:`PatchGrid` holds one grid for one image size; :func:`averaged_patch_eps` is the per-pixel
mean for a given ``x_t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from restoregrad_adapter.checks import check_image, check_positive_int

__all__ = ["PatchGrid", "averaged_patch_eps", "grid_positions", "overlap_counts", "reflect_pad_to"]


def grid_positions(size: int, patch_size: int, stride: int) -> list[int]:
    """Start offsets of the patches along one axis of length ``size >= patch_size``.

    The grid ``0, r, 2r, ... <= size - p``, plus a last patch flush with the border, ``size - p``,
    whenever the grid stops short of it, so every pixel is covered.
    """
    size = check_positive_int("size", size)
    p = check_positive_int("patch_size", patch_size)
    r = check_positive_int("stride", stride)
    if size < p:
        raise ValueError(f"`size` = {size} is smaller than `patch_size` = {p}; pad the image first.")
    positions = list(range(0, size - p + 1, r))
    if positions[-1] != size - p:
        positions.append(size - p)
    return positions


def overlap_counts(height: int, width: int, patch_size: int, stride: int) -> torch.Tensor:
    """How many grid patches cover each pixel: a ``(height, width)`` float tensor (all >= 1)."""
    counts = torch.zeros(height, width)
    for i in grid_positions(height, patch_size, stride):
        for j in grid_positions(width, patch_size, stride):
            counts[i:i + patch_size, j:j + patch_size] += 1
    return counts


def reflect_pad_to(image: torch.Tensor, size: int) -> torch.Tensor:
    """Pad ``image`` ``(B, C, H, W)`` at the bottom and right by reflection until both sides are >= ``size``.

    Reflection needs the pad to be smaller than the side, so very small images are reflected
    repeatedly; a side of one pixel is repeated.
    """
    while image.shape[-2] < size or image.shape[-1] < size:
        height, width = image.shape[-2:]
        pad_h = 0 if height >= size else (size - height if height == 1 else min(size - height, height - 1))
        pad_w = 0 if width >= size else (size - width if width == 1 else min(size - width, width - 1))
        if pad_h:
            image = F.pad(image, (0, 0, 0, pad_h), mode="replicate" if height == 1 else "reflect")
        if pad_w:
            image = F.pad(image, (0, pad_w, 0, 0), mode="replicate" if width == 1 else "reflect")
    return image


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # float64 makes the sum of identical float32 estimates, and its division by their count, exact.
    return torch.float32 if device.type == "mps" else torch.float64


@dataclass(frozen=True)
class PatchGrid:
    """The ``p x p`` patches of stride ``r`` over a ``height x width`` image (both sides >= p).

    Args:
        height, width: the (padded) image size.
        patch_size: p.
        stride: r (<= p, or the patches would leave gaps).
        patch_batch_size: patches per denoiser call; memory is bounded by it, not by the image.
    """

    height: int
    width: int
    patch_size: int
    stride: int
    patch_batch_size: int = 64

    def __post_init__(self):
        for name in ("patch_size", "stride", "patch_batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.stride > self.patch_size:
            raise ValueError(f"`stride` = {self.stride} exceeds `patch_size` = {self.patch_size}; the patches "
                             "would leave gaps.")
        if self.height < self.patch_size or self.width < self.patch_size:
            raise ValueError(f"the image ({self.height} x {self.width}) is smaller than `patch_size` = "
                             f"{self.patch_size}; pad it first (`reflect_pad_to`).")

    @property
    def corners(self) -> list[tuple[int, int]]:
        """Top-left corners ``(row, column)`` of every patch, row by row."""
        rows = grid_positions(self.height, self.patch_size, self.stride)
        cols = grid_positions(self.width, self.patch_size, self.stride)
        return [(i, j) for i in rows for j in cols]

    def counts(self, device=None) -> torch.Tensor:
        """:func:`overlap_counts` of this grid."""
        return overlap_counts(self.height, self.width, self.patch_size, self.stride).to(device)

    def average(self, denoiser, x_t: torch.Tensor, y: torch.Tensor, t, counts: torch.Tensor | None = None):
        """The per-pixel mean of ``denoiser(x_t[P], y[P], t)`` over the patches P covering each pixel.

        ``x_t``, ``y``: ``(B, C, height, width)``; ``t``: a 0-d timestep given to every patch.
        ``counts``: :meth:`counts` on ``x_t``'s device (computed when not given). Returns ``x_t``'s
        shape and dtype.
        """
        p = self.patch_size
        counts = self.counts(x_t.device) if counts is None else counts
        total = torch.zeros(x_t.shape, dtype=_accumulator_dtype(x_t.device), device=x_t.device)
        jobs = [(b, i, j) for b in range(x_t.shape[0]) for i, j in self.corners]
        t = torch.as_tensor(t, device=x_t.device)
        for start in range(0, len(jobs), self.patch_batch_size):
            chunk = jobs[start:start + self.patch_batch_size]
            x_patches = torch.stack([x_t[b, :, i:i + p, j:j + p] for b, i, j in chunk])
            y_patches = torch.stack([y[b, :, i:i + p, j:j + p] for b, i, j in chunk])
            eps = denoiser(x_patches, y_patches, t.expand(len(chunk)))
            if eps.shape != x_patches.shape:
                raise ValueError(f"the denoiser returned {tuple(eps.shape)} for patches of shape "
                                 f"{tuple(x_patches.shape)}.")
            eps = eps.to(total.dtype)
            for k, (b, i, j) in enumerate(chunk):
                total[b, :, i:i + p, j:j + p] += eps[k]
        return (total / counts.to(total.dtype)).to(x_t.dtype)


def averaged_patch_eps(
    denoiser,
    x_t: torch.Tensor,
    y: torch.Tensor,
    t: torch.Tensor | int,
    patch_size: int = 64,
    stride: int = 16,
    patch_batch_size: int = 64,
) -> torch.Tensor:
    """The whole-image noise estimate from overlapping patches.

    ``eps(x_t)[pixel] = sum over patches P covering the pixel of denoiser(x_t[P], y[P], t)[pixel]
    / (number of such patches)``, with the patches of :func:`grid_positions` in both directions.

    Args:
        denoiser: ``eps(x_t, y, t)`` on ``(n, C, p, p)`` patches.
        x_t, y: ``(B, C, H, W)`` with ``H, W >= patch_size`` (pad smaller images first).
        t: the training step (a 0-d tensor or int), given to every patch.

    Returns:
        The averaged estimate, ``x_t``'s shape and dtype.
    """
    check_image("x_t", x_t)
    check_image("y", y)
    if x_t.shape[0] != y.shape[0] or x_t.shape[2:] != y.shape[2:]:
        raise ValueError(f"`x_t` {tuple(x_t.shape)} and `y` {tuple(y.shape)} must share batch and spatial sizes.")
    grid = PatchGrid(x_t.shape[-2], x_t.shape[-1], patch_size, stride, patch_batch_size)
    return grid.average(denoiser, x_t, y, t)
