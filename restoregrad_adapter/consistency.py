"""Super-resolution data consistency: make a restoration agree exactly with its low-resolution input.

A x``s`` super-resolution model sees ``y = U(l)``, the low-resolution image ``l`` enlarged
bicubically, and is trained on pairs where ``l = D(x)``: the clean ``x`` shrunk bicubically
(:func:`restoregrad_adapter.contrib.data.blur_sr.bicubic_downsample`). Both are linear and separable. On each
channel, ``D(x) = D_h x D_w^T`` with ``D_h``, ``D_w`` the 1-D matrices of Pillow's ``BICUBIC``
filter (:func:`bicubic_matrix`; the same numbers as :func:`~restoregrad_adapter.contrib.data.blur_sr.bicubic_resize`
before its clipping), and likewise ``U``.

A restoration ``x_hat`` rarely satisfies ``D(x_hat) = l`` exactly. Its orthogonal projection onto the
images that do, the range-null-space decomposition of DDNM (Wang et al., ICLR 2023, eq. 4) with
``A = D``,

    x_proj = x_hat + D^+ (l - D x_hat),      D^+ = D_h^+ (.) D_w^+^T (Moore-Penrose pseudo-inverses)

keeps the part of ``x_hat`` that ``D`` cannot see (the null space: the detail the model adds) and
takes the rest from the input. Since the clean image is one of the consistent images and the
projection is orthogonal, ``||x_proj - x|| <= ||x_hat - x||`` for every channel (Pythagoras): the
projection never lowers PSNR against a clean image whose ``D(x)`` is ``l``, on RGB and on the Y of
YCbCr alike (Y mixes the channels per pixel, and the projection acts on each channel the same way).

Where only ``y`` is at hand (a trainer's validation crops), :func:`low_resolution_from_condition`
recovers ``l`` from ``y = U(l)`` by least squares (exact where ``y`` was not clipped or cropped).
DIV2K's low-resolution images were made by MATLAB's ``imresize``, which differs from Pillow's along
the borders only (data.blur_sr), so there the projection is exact in the interior.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

import numpy as np
import torch

from restoregrad_adapter.checks import check_image, check_positive_int

__all__ = ["bicubic_matrix", "bicubic_downsample_tensor", "bicubic_upsample_tensor",
           "low_resolution_from_condition", "check_low_resolution", "project_to_low_resolution"]


@lru_cache(maxsize=64)
def _bicubic_matrix(length_in: int, length_out: int) -> np.ndarray:
    from PIL import Image

    # Resizing the identity along its rows gives the filter's weights: column j of the result holds
    # what input sample j contributes to each output sample, i.e. the matrix M with out = M @ in.
    identity = np.eye(length_in, dtype=np.float32)
    resized = Image.fromarray(identity, mode="F").resize((length_in, length_out), Image.BICUBIC)
    return np.asarray(resized, dtype=np.float64)


def bicubic_matrix(length_in: int, length_out: int) -> np.ndarray:
    """The ``(length_out, length_in)`` matrix of Pillow's 1-D ``BICUBIC`` resampling (float64).

    Resizing an image ``(H, W) -> (h, w)`` with :func:`~restoregrad_adapter.contrib.data.blur_sr.bicubic_resize`
    is ``bicubic_matrix(H, h) @ image @ bicubic_matrix(W, w).T`` on each channel, up to float32 rounding
    and before the result is clipped to [0, 1]. Each row sums to 1 (a flat image stays flat).
    """
    length_in, length_out = check_positive_int("length_in", length_in), check_positive_int("length_out", length_out)
    return _bicubic_matrix(length_in, length_out).copy()


def _apply(images: torch.Tensor, rows: np.ndarray, columns: np.ndarray) -> torch.Tensor:
    """``rows @ image @ columns.T`` on every ``(H, W)`` plane of ``images (..., H, W)``, in float64."""
    rows_t = torch.from_numpy(rows).to(images.device)
    columns_t = torch.from_numpy(columns).to(images.device)
    return torch.einsum("ij,...jk,lk->...il", rows_t, images.double(), columns_t)


def check_low_resolution(low: torch.Tensor, shape: Tuple[int, ...], name: str = "low") -> int:
    """The super-resolution scale between images of ``shape`` ``(B, C, H, W)`` and their low-resolution
    images ``low`` ``(B, C, H / s, W / s)``; a ValueError naming ``name`` where they do not match."""
    check_image(name, low)
    if tuple(low.shape[:2]) != tuple(shape[:2]):
        raise ValueError(f"`{name}` {tuple(low.shape)} must share the batch and channel sizes of the images "
                         f"{tuple(shape)}.")
    (height, width), (low_height, low_width) = shape[-2:], low.shape[-2:]
    if (low_height < 1 or low_width < 1 or height % low_height or width % low_width
            or height // low_height != width // low_width):
        raise ValueError(f"the high-resolution size {height} x {width} must be the low-resolution size "
                         f"{low_height} x {low_width} of `{name}` times one integer factor (the super-resolution "
                         "scale).")
    return height // low_height


def bicubic_downsample_tensor(images: torch.Tensor, scale: int) -> torch.Tensor:
    """``D(images)``: ``(B, C, H, W)`` shrunk by ``scale`` with :func:`bicubic_matrix` (not clipped;
    ``images``' dtype). Both ``H`` and ``W`` must be multiples of ``scale``."""
    check_image("images", images)
    scale = check_positive_int("scale", scale)
    height, width = images.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"`images` of {height} x {width} pixels: both sides must be multiples of scale {scale}.")
    out = _apply(images, bicubic_matrix(height, height // scale), bicubic_matrix(width, width // scale))
    return out.to(images.dtype)


def bicubic_upsample_tensor(low: torch.Tensor, scale: int) -> torch.Tensor:
    """``U(low)``: ``(B, C, h, w)`` enlarged by ``scale`` with :func:`bicubic_matrix` (not clipped)."""
    check_image("low", low)
    scale = check_positive_int("scale", scale)
    height, width = low.shape[-2:]
    out = _apply(low, bicubic_matrix(height, height * scale), bicubic_matrix(width, width * scale))
    return out.to(low.dtype)


def low_resolution_from_condition(y: torch.Tensor, scale: int) -> torch.Tensor:
    """The low-resolution image ``l`` of a condition ``y = U(l)``, by least squares: ``U_h^+ y U_w^+^T``.

    ``y``: ``(B, C, H, W)`` with ``H`` and ``W`` multiples of ``scale``. Exact (to float rounding) when
    ``y`` is ``U(l)`` unclipped and uncropped; otherwise the ``l`` whose enlargement is nearest ``y``.
    """
    check_image("y", y)
    scale = check_positive_int("scale", scale)
    height, width = y.shape[-2:]
    if height % scale or width % scale:
        raise ValueError(f"`y` of {height} x {width} pixels: both sides must be multiples of scale {scale}.")
    rows = np.linalg.pinv(bicubic_matrix(height // scale, height))
    columns = np.linalg.pinv(bicubic_matrix(width // scale, width))
    return _apply(y, rows, columns).to(y.dtype)


def project_to_low_resolution(images: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """The orthogonal projection of ``images`` onto the images whose bicubic down-sampling is ``low``.

    ``x + D^+ (low - D x)`` (module docstring; DDNM's range-null-space decomposition): the result
    ``r`` satisfies ``D(r) = low`` to float rounding, keeps what ``D`` cannot see of ``images``, and is
    no farther than ``images`` from any image consistent with ``low``.

    Args:
        images: ``(B, C, H, W)`` restorations (any value range: ``D`` is linear and each of its rows
            sums to 1, so [-1, 1] and [0, 1] images project alike when ``low`` is in the same range).
        low: ``(B, C, H / s, W / s)`` low-resolution images, for one integer scale ``s``.

    Returns:
        ``images``' shape and dtype; not clipped.
    """
    check_image("images", images)
    scale = check_low_resolution(low, images.shape)
    height, width = images.shape[-2:]
    down_rows, down_columns = bicubic_matrix(height, height // scale), bicubic_matrix(width, width // scale)
    residual = low.to(images.device).double() - _apply(images, down_rows, down_columns)
    correction = _apply(residual, np.linalg.pinv(down_rows), np.linalg.pinv(down_columns))
    return (images.double() + correction).to(images.dtype)
