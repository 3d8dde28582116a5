"""Synthetic blur and low resolution for the deblurring and super-resolution examples.

Blurs take an ``HxWx3`` float32 image in ``[0, 1]`` and a :class:`numpy.random.Generator` and
return a blurred copy in ``[0, 1]`` of the same size (the input is never modified; the result
depends only on the image, the arguments and the generator state):

* :func:`add_motion_blur` -- a straight camera shake: a line segment of random length and angle
  (:func:`motion_blur_kernel`).
* :func:`add_defocus_blur` -- an out-of-focus lens: a uniform disk (:func:`disk_kernel`).
* :func:`add_gaussian_blur` -- an isotropic Gaussian (:func:`gaussian_kernel`).

Every kernel is non-negative and sums to 1, so a flat region keeps its colour; the image is
convolved with it channel by channel, mirroring the image at its borders (:func:`blur`).

Super-resolution follows SR3-style conditional models: the low-resolution image is the clean one
down-sampled bicubically by 2 or 4 (:func:`bicubic_downsample`), and the model's condition ``y`` is
that image up-sampled bicubically back to the clean image's size (:func:`bicubic_sr_input`).
:func:`bicubic_resize` is the one bicubic resize of the library: Pillow's ``BICUBIC`` filter on
float32 channels (Keys' cubic with ``a = -0.5``, widened when shrinking so that it also
anti-aliases, no rounding to 8 bits). MATLAB's ``imresize``, which made DIV2K's low-resolution
images, uses the same cubic but mirrors the image at its borders where Pillow renormalises the
weights that fall inside, so the two differ slightly along the borders.

:func:`builtin_blur_sr_pairs` turns the photographs bundled with scikit-image (the ones
:func:`restoregrad_adapter.contrib.data.weather.builtin_photos` reads, same train / validation split)
into deterministic ``(clean, degraded, kind, name)`` pairs for each kind in :data:`KINDS`.
"""

from __future__ import annotations

import zlib
from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

from . import check_rng

__all__ = [
    "KINDS",
    "BLUR_KINDS",
    "SR_SCALES",
    "motion_blur_kernel",
    "disk_kernel",
    "gaussian_kernel",
    "blur",
    "add_motion_blur",
    "add_defocus_blur",
    "add_gaussian_blur",
    "bicubic_resize",
    "crop_to_multiple",
    "bicubic_downsample",
    "bicubic_sr_input",
    "degrade",
    "builtin_blur_sr_pairs",
]

#: The blurs, by the names the image trainer's ``--degradation`` uses.
BLUR_KINDS: Tuple[str, ...] = ("motion_blur", "defocus", "gaussian_blur")
#: Super-resolution kinds and their down-sampling factors.
SR_SCALES = {"sr2": 2, "sr4": 4}
#: Every kind of degradation of this module.
KINDS: Tuple[str, ...] = BLUR_KINDS + tuple(SR_SCALES)

#: Samples per pixel of segment length when rasterising a motion-blur line.
_LINE_SAMPLES_PER_PIXEL = 64
#: Sub-pixels per side when measuring how much of a pixel a disk covers.
_DISK_SUBPIXELS = 16


# ---------------------------------------------------------------------------
# argument checking
# ---------------------------------------------------------------------------


def _check_image(image, name: str = "image", min_size: int = 1) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must be an HxWx3 array, got shape {arr.shape}")
    if arr.shape[0] < min_size or arr.shape[1] < min_size:
        raise ValueError(f"{name} must be at least {min_size}x{min_size} pixels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be a floating point array in [0, 1], got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-4 or hi > 1.0 + 1e-4:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return arr.astype(np.float32)


def _number(value, name: str, *, low: float, high: float, low_inclusive: bool = True) -> float:
    """``value`` as a float after checking it lies in ``[low, high]`` (or ``(low, high]``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    inside = (low <= v if low_inclusive else low < v) and v <= high
    if not (np.isfinite(v) and inside):
        opening = "[" if low_inclusive else "("
        raise ValueError(f"{name} must lie in {opening}{low}, {high}], got {value!r}")
    return v


def _pick(value, name: str, rng: np.random.Generator, draw: Tuple[float, float], **limits) -> float:
    """``value`` checked against ``limits``, or a uniform draw in ``draw`` when it is ``None``."""
    if value is None:
        return float(rng.uniform(*draw))
    return _number(value, name, **limits)


def _check_scale(scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or not 2 <= scale <= 16:
        raise ValueError(f"scale must be an integer from 2 to 16, got {scale!r}")
    return int(scale)


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


def motion_blur_kernel(length: float, angle: float) -> np.ndarray:
    """A linear motion-blur kernel: a straight segment through the centre, normalised to sum 1.

    Args:
        length: the segment's length in pixels, in ``(0, 64]``. A segment shorter than one pixel
            stays inside the centre pixel: the kernel is a delta (no blur).
        angle: its direction in degrees, counter-clockwise from the horizontal, in
            ``[-1e6, 1e6]`` (180 degrees apart give the same kernel).

    Each pixel's value is the fraction of the segment lying inside that pixel (midpoint rule with
    64 samples per pixel of length), so a horizontal segment of odd integer length ``L`` is a row of
    ``L`` values ``1 / L``. The kernel is square with an odd side and symmetric about its centre.
    """
    length = _number(length, "length", low=0.0, high=64.0, low_inclusive=False)
    angle = _number(angle, "angle", low=-1e6, high=1e6)
    theta = np.deg2rad(angle)
    samples = max(1, int(np.ceil(length * _LINE_SAMPLES_PER_PIXEL)))
    along = (np.arange(samples) + 0.5) / samples * length - length / 2.0  # midpoints, symmetric about 0
    cols = np.rint(along * np.cos(theta)).astype(int)
    rows = np.rint(-along * np.sin(theta)).astype(int)  # image rows grow downwards
    half = int(max(np.abs(cols).max(), np.abs(rows).max()))
    kernel = np.zeros((2 * half + 1, 2 * half + 1), np.float64)
    np.add.at(kernel, (rows + half, cols + half), 1.0)
    return kernel / kernel.sum()


def disk_kernel(radius: float) -> np.ndarray:
    """A defocus (out-of-focus) kernel: a uniform disk of ``radius`` pixels, normalised to sum 1.

    Args:
        radius: in pixels, in ``(0, 32]``.

    Each pixel's value is proportional to the part of its square that the disk covers (measured on
    16 x 16 sub-pixels), so pixels wholly inside share one value, pixels wholly outside are 0 and
    the edge is anti-aliased. The side is ``2 * ceil(radius - 0.5) + 1``: exactly the pixels the
    disk can reach.
    """
    radius = _number(radius, "radius", low=0.0, high=32.0, low_inclusive=False)
    half = int(np.ceil(radius - 0.5))
    offsets = (np.arange(_DISK_SUBPIXELS) + 0.5) / _DISK_SUBPIXELS - 0.5  # sub-pixel centres in a pixel
    centres = np.arange(-half, half + 1)
    fine = (centres[:, None] + offsets[None, :]).ravel()  # sub-pixel coordinates along one axis
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius ** 2
    side = 2 * half + 1
    coverage = inside.reshape(side, _DISK_SUBPIXELS, side, _DISK_SUBPIXELS).mean(axis=(1, 3))
    if coverage.sum() == 0:  # a disk smaller than a sub-pixel: all of it in the centre pixel
        coverage[half, half] = 1.0
    return coverage / coverage.sum()


def gaussian_kernel(sigma: float) -> np.ndarray:
    """An isotropic Gaussian kernel ``exp(-(x^2 + y^2) / (2 sigma^2))`` on a ``2 ceil(3 sigma) + 1``
    square, normalised to sum 1.

    Args:
        sigma: standard deviation in pixels, in ``(0, 16]``.
    """
    sigma = _number(sigma, "sigma", low=0.0, high=16.0, low_inclusive=False)
    half = int(np.ceil(3.0 * sigma))
    x = np.arange(-half, half + 1, dtype=np.float64)
    profile = np.exp(-0.5 * (x / sigma) ** 2)
    kernel = np.outer(profile, profile)
    return kernel / kernel.sum()


def blur(image, kernel) -> np.ndarray:
    """Convolve each channel of an ``HxWx3`` image in ``[0, 1]`` with a 2-D ``kernel``.

    The image is mirrored at its borders (``d c b a | a b c d``). A kernel must be non-negative with
    odd sides and sum to 1 (as this module's kernels do), so the result stays in ``[0, 1]``;
    a ``[[1]]`` kernel returns an exact copy.
    """
    img = _check_image(image)
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"kernel must be a 2-D array with odd sides, got shape {k.shape}")
    if not np.all(np.isfinite(k)) or k.min() < 0 or abs(k.sum() - 1.0) > 1e-6:
        raise ValueError(f"kernel must be non-negative and sum to 1, got sum {k.sum():.6g} and min {k.min():.6g}")
    out = np.stack([ndimage.convolve(img[..., c].astype(np.float64), k, mode="reflect") for c in range(3)], axis=-1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# random blurs
# ---------------------------------------------------------------------------


def add_motion_blur(image, rng: np.random.Generator, *, length: Optional[float] = None,
                    angle: Optional[float] = None) -> np.ndarray:
    """Blur by a straight camera motion (:func:`motion_blur_kernel`).

    Parameters (``None`` draws a random value from ``rng``):

    length:
        Length of the motion in pixels, in ``(0, 64]`` (default ``U(3, 9)``).
    angle:
        Its direction in degrees from the horizontal, in ``[-180, 180]`` (default ``U(0, 180)``).
    """
    img = _check_image(image)
    rng = check_rng(rng)
    length = _pick(length, "length", rng, (3.0, 9.0), low=0.0, high=64.0, low_inclusive=False)
    angle = _pick(angle, "angle", rng, (0.0, 180.0), low=-180.0, high=180.0)
    return blur(img, motion_blur_kernel(length, angle))


def add_defocus_blur(image, rng: np.random.Generator, *, radius: Optional[float] = None) -> np.ndarray:
    """Blur by an out-of-focus lens (:func:`disk_kernel`).

    radius:
        Radius of the disk in pixels, in ``(0, 32]`` (``None``: ``U(1, 3)``).
    """
    img = _check_image(image)
    rng = check_rng(rng)
    radius = _pick(radius, "radius", rng, (1.0, 3.0), low=0.0, high=32.0, low_inclusive=False)
    return blur(img, disk_kernel(radius))


def add_gaussian_blur(image, rng: np.random.Generator, *, sigma: Optional[float] = None) -> np.ndarray:
    """Blur by an isotropic Gaussian (:func:`gaussian_kernel`).

    sigma:
        Standard deviation in pixels, in ``(0, 16]`` (``None``: ``U(0.8, 2)``).
    """
    img = _check_image(image)
    rng = check_rng(rng)
    sigma = _pick(sigma, "sigma", rng, (0.8, 2.0), low=0.0, high=16.0, low_inclusive=False)
    return blur(img, gaussian_kernel(sigma))


# ---------------------------------------------------------------------------
# bicubic resizing and super-resolution inputs
# ---------------------------------------------------------------------------


def bicubic_resize(image, size: Tuple[int, int]) -> np.ndarray:
    """Resize an ``HxWx3`` image in ``[0, 1]`` to ``size = (height, width)`` bicubically.

    Pillow's ``BICUBIC`` filter on each float32 channel (mode ``"F"``: no rounding to 8 bits),
    which widens the cubic when shrinking so that it anti-aliases. A cubic overshoots at sharp
    edges, so the result is clipped to ``[0, 1]``. A constant image stays constant.
    """
    from PIL import Image

    img = _check_image(image)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in size)):
        raise ValueError(f"size must be (height, width), two positive integers, got {size!r}")
    height, width = int(size[0]), int(size[1])
    channels = [np.asarray(Image.fromarray(img[..., c], mode="F").resize((width, height), Image.BICUBIC))
                for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0).astype(np.float32)


def crop_to_multiple(image, scale: int) -> np.ndarray:
    """The top-left part of an ``HxWx3`` image whose sides are multiples of ``scale`` (a copy).

    Super-resolution pairs need it: a clean image of ``H x W`` maps to ``H/scale x W/scale``
    low-resolution pixels only when ``scale`` divides both sides.
    """
    scale = _check_scale(scale)
    img = _check_image(image, min_size=scale)
    height, width = img.shape[0] // scale * scale, img.shape[1] // scale * scale
    return img[:height, :width].copy()


def bicubic_downsample(image, scale: int) -> np.ndarray:
    """The low-resolution image: ``image`` shrunk bicubically by ``scale`` (:func:`bicubic_resize`).

    Both sides of ``image`` must be multiples of ``scale`` (see :func:`crop_to_multiple`).
    """
    scale = _check_scale(scale)
    img = _check_image(image, min_size=scale)
    if img.shape[0] % scale or img.shape[1] % scale:
        raise ValueError(f"image sides must be multiples of scale {scale}, got shape {img.shape}; "
                         "crop it first with crop_to_multiple(image, scale)")
    return bicubic_resize(img, (img.shape[0] // scale, img.shape[1] // scale))


def bicubic_sr_input(image, scale: int) -> np.ndarray:
    """A super-resolution model's condition ``y`` for the clean ``image``: the image shrunk by
    ``scale`` (:func:`bicubic_downsample`), then enlarged back to its size (:func:`bicubic_resize`)."""
    low = bicubic_downsample(image, scale)
    return bicubic_resize(low, (low.shape[0] * _check_scale(scale), low.shape[1] * scale))


# ---------------------------------------------------------------------------
# dispatch and built-in data
# ---------------------------------------------------------------------------


def degrade(image, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Apply the degradation ``kind`` (one of :data:`KINDS`) with its random defaults.

    For ``"sr2"`` / ``"sr4"`` the result is :func:`bicubic_sr_input` (``rng`` is checked but not
    used: bicubic down-sampling is deterministic); the image's sides must be multiples of the factor.
    """
    rng = check_rng(rng)
    if kind == "motion_blur":
        return add_motion_blur(image, rng)
    if kind == "defocus":
        return add_defocus_blur(image, rng)
    if kind == "gaussian_blur":
        return add_gaussian_blur(image, rng)
    if kind in SR_SCALES:
        return bicubic_sr_input(image, SR_SCALES[kind])
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def builtin_blur_sr_pairs(
    kind: str,
    split: str = "train",
    seed: int = 0,
    size: Optional[int] = 128,
    variants: Optional[int] = None,
) -> List[Tuple[np.ndarray, np.ndarray, str, str]]:
    """Deterministic ``(clean, degraded, kind, name)`` pairs of one ``kind`` from the bundled photos.

    The photos and their train / validation split are those of
    :func:`restoregrad_adapter.contrib.data.weather.builtin_weather_pairs`.

    kind:
        One of :data:`KINDS`.
    split:
        ``"train"`` or ``"validation"`` (held-out photos, never seen in training).
    seed:
        Non-negative integer; the same seed always yields the same pairs.
    size:
        Downscale each photo so its longest side is ``size`` pixels (``None``: full resolution).
        For ``"sr2"`` / ``"sr4"`` the clean photo is then cropped to multiples of the factor
        (:func:`crop_to_multiple`).
    variants:
        Degraded versions per photo (default: 4 blurs per training photo, 1 per validation photo;
        always 1 for super-resolution, whose degradation has nothing random).
    """
    from .weather import TRAIN_PHOTOS, VALIDATION_PHOTOS, _downscale, builtin_photos

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16):
        raise ValueError(f"size must be None or an integer >= 16, got {size!r}")
    if variants is None:
        variants = 4 if split == "train" and kind in BLUR_KINDS else 1
    if isinstance(variants, bool) or not isinstance(variants, (int, np.integer)) or variants < 1:
        raise ValueError(f"variants must be a positive integer, got {variants!r}")
    if kind in SR_SCALES and variants != 1:
        raise ValueError(f"variants must be 1 for {kind!r} (bicubic down-sampling has nothing random), got {variants}")

    photos = builtin_photos()
    names = [n for n in (TRAIN_PHOTOS if split == "train" else VALIDATION_PHOTOS) if n in photos]
    split_id = 0 if split == "train" else 1
    kind_id = KINDS.index(kind)
    pairs: List[Tuple[np.ndarray, np.ndarray, str, str]] = []
    for name in names:
        clean = _downscale(photos[name], size)
        if kind in SR_SCALES:
            clean = crop_to_multiple(clean, SR_SCALES[kind])
        name_id = zlib.crc32(name.encode("utf-8"))
        for v in range(int(variants)):
            rng = np.random.default_rng([int(seed), split_id, name_id, 100 + kind_id, v])
            pairs.append((clean, degrade(clean, kind, rng), kind, name))
    return pairs
