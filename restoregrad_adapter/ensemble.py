"""Geometric self-ensemble: average a restoration over the eight rotations and mirrors of the image.

Image super-resolution models are commonly evaluated with a "self-ensemble" (Timofte et al. 2016,
"Seven ways to improve example-based single image super resolution"; EDSR+ in Lim et al. 2017): the
input is rotated by 0, 90, 180 and 270 degrees, each with and without a mirror, restored eight
times, each result is turned back, and the eight are averaged:

    x_hat = (1/8) sum_g  g^-1( restore( g(y) ) )        g in the dihedral group of the square

A diffusion sampler draws a different ``x_T`` for each of the eight, so the mean also averages
posterior samples. It costs eight restorations; docs/deblur_sr.md has what it gains.
"""

from __future__ import annotations

from typing import Callable

import torch

from restoregrad_adapter.checks import check_image

__all__ = ["DIHEDRAL", "dihedral", "undo_dihedral", "dihedral_ensemble"]

#: The eight symmetries of the square: (quarter turns counter-clockwise, then a left-right mirror).
DIHEDRAL = tuple((turns, mirror) for mirror in (False, True) for turns in range(4))


def _check_symmetry(turns, mirror) -> None:
    if (turns, mirror) not in DIHEDRAL or isinstance(turns, bool) or not isinstance(mirror, bool):
        raise ValueError(f"`turns` must be 0, 1, 2 or 3 and `mirror` a bool, got turns={turns!r}, mirror={mirror!r}.")


def dihedral(images: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """``images (..., H, W)`` turned ``turns`` quarter turns counter-clockwise, then mirrored left-right."""
    _check_symmetry(turns, mirror)
    images = torch.rot90(images, turns, dims=(-2, -1))
    return images.flip(-1) if mirror else images


def undo_dihedral(images: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """The inverse of :func:`dihedral`: ``undo_dihedral(dihedral(x, k, m), k, m) == x``."""
    _check_symmetry(turns, mirror)
    if mirror:
        images = images.flip(-1)
    return torch.rot90(images, -turns, dims=(-2, -1))


def dihedral_ensemble(restore: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """The mean of ``undo_dihedral(restore(dihedral(y, k, m)), k, m)`` over the eight :data:`DIHEDRAL`.

    Args:
        restore: restores a batch of images ``(B, C, h, w)`` into the same shape; it is called eight
            times, in the order of :data:`DIHEDRAL` (so a generator it draws from is consumed in that
            order), with ``h, w`` swapped after an odd number of quarter turns.
        y: degraded images ``(B, C, H, W)``.

    Returns:
        The averaged restoration, ``y``'s shape, float32.
    """
    check_image("y", y, finite=False)  # values are the restoration's business
    total = torch.zeros(y.shape, dtype=torch.float64, device=y.device)
    for turns, mirror in DIHEDRAL:
        turned = dihedral(y, turns, mirror)
        restored = restore(turned)
        if not isinstance(restored, torch.Tensor) or restored.shape != turned.shape:
            got = tuple(restored.shape) if isinstance(restored, torch.Tensor) else type(restored).__name__
            raise ValueError(f"`restore` must return a tensor of its input's shape {tuple(turned.shape)}, got {got}.")
        total += undo_dihedral(restored, turns, mirror).double()
    return (total / len(DIHEDRAL)).float()
