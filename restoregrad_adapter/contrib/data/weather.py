"""Synthetic bad-weather degradations for the image-restoration examples.

Three degradations are provided, each taking an ``HxWx3`` float32 image in
``[0, 1]`` and a :class:`numpy.random.Generator` and returning a degraded copy
in ``[0, 1]`` (the input is never modified, and the result depends only on the
image, the arguments and the generator state):

* :func:`add_rain_streaks` -- thin, bright, slanted, motion-blurred streaks in
  two depth layers sharing one wind angle, screen-blended over a slightly hazy
  version of the scene.
* :func:`add_snow` -- flakes of many sizes; the small ones are crisp, the
  large near-camera ones are defocused and stretched by the fall; blended
  toward white over a light veil.
* :func:`add_raindrops` -- drops sitting on the lens / window: irregular
  ellipses showing a blurred, inverted, minified view of their surroundings,
  with a dark edge on the lit side, a bright crescent opposite to it and a
  small specular highlight.

Any of them can be confined to part of the image: :func:`region_mask` draws a
soft-edged region (a band, a side or a blob covering 20-50% of the image) and
:func:`degrade_region` degrades the image inside it only, leaving the rest
exactly clean.

:func:`builtin_photos` returns the photographs that ship inside scikit-image
(read straight from its package folder, so nothing is ever downloaded) and
:func:`builtin_weather_pairs` turns them into deterministic
``(clean, degraded, kind, name)`` training / validation pairs (the library's ``(x0, y)`` order),
degraded all over (``coverage="full"``, the default) or inside a region (``"partial"``).
"""

from __future__ import annotations

import os
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from scipy import ndimage, signal

from . import check_rng

__all__ = [
    "KINDS",
    "TRAIN_PHOTOS",
    "VALIDATION_PHOTOS",
    "add_rain_streaks",
    "add_snow",
    "add_raindrops",
    "degrade",
    "COVERAGES",
    "REGION_SHAPES",
    "region_mask",
    "degrade_region",
    "builtin_photos",
    "builtin_weather_pairs",
]

KINDS: Tuple[str, ...] = ("rain", "snow", "raindrop")
#: Where :func:`builtin_weather_pairs` draws the weather: ``"full"``, all over the photo; ``"partial"``,
#: inside a region of :func:`region_mask` only (:func:`degrade_region`).
COVERAGES: Tuple[str, ...] = ("full", "partial")
#: The shapes of :func:`region_mask`.
REGION_SHAPES: Tuple[str, ...] = ("band", "side", "blob")

# Photographs bundled inside the scikit-image package folder (no download).
# Maps the public name to the file name inside ``skimage/data``.
_PHOTO_FILES: Dict[str, str] = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "immunohistochemistry": "ihc.png",
    "brick": "brick.png",
    "gravel": "gravel.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "coffee": "coffee.png",
    "motorcycle": "motorcycle_left.png",
    "grass": "grass.png",
}

#: Photos that are never used for training.
VALIDATION_PHOTOS: Tuple[str, ...] = ("coffee", "motorcycle", "grass")
#: Photos used for training (disjoint from :data:`VALIDATION_PHOTOS`).
TRAIN_PHOTOS: Tuple[str, ...] = tuple(
    name for name in _PHOTO_FILES if name not in VALIDATION_PHOTOS
)


# ---------------------------------------------------------------------------
# argument checking helpers
# ---------------------------------------------------------------------------


def _check_image(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"image must be an HxWx3 array, got shape {arr.shape}"
        )
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise ValueError(
            f"image must be at least 8x8 pixels, got shape {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"image must be a floating point array in [0, 1], got dtype {arr.dtype}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-4 or hi > 1.0 + 1e-4:
        raise ValueError(
            f"image values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]"
        )
    return np.clip(arr.astype(np.float32), 0.0, 1.0)




def _pick(value, name: str, rng: np.random.Generator, low: float, high: float,
          *, lo_ok: float, hi_ok: float) -> float:
    """Return ``value`` after range checking, or a random draw in [low, high]."""
    if value is None:
        return float(rng.uniform(low, high))
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (np.isfinite(v) and lo_ok <= v <= hi_ok):
        raise ValueError(f"{name} must lie in [{lo_ok}, {hi_ok}], got {value!r}")
    return v


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---------------------------------------------------------------------------
# rain streaks
# ---------------------------------------------------------------------------


def _streak_kernel(length: float, angle_rad: float, width: float) -> np.ndarray:
    """Anti-aliased tapered line segment, ~1 along its core, as a 2-D kernel."""
    half = int(np.ceil(length / 2.0 + 2.0 * width + 2.0))
    size = 2 * half + 1
    n = max(8, int(np.ceil(length * 4)))
    t = np.linspace(-0.5, 0.5, n)
    # angle measured from the vertical: positive -> streak leans to the right
    ys = half + t * length * np.cos(angle_rad)
    xs = half - t * length * np.sin(angle_rad)
    # brighter in the middle, fading at both ends (a drop's exposure trail)
    weight = np.sin(np.pi * (t + 0.5)) ** 0.6 + 1e-3
    kernel = np.zeros((size, size), np.float64)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    fy = ys - y0
    fx = xs - x0
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            np.add.at(kernel, (y0 + dy, x0 + dx), weight * wy * wx)
    kernel /= n / max(length, 1.0)  # samples per pixel of length -> core ~1
    if width > 0.35:
        kernel = ndimage.gaussian_filter(kernel, width * 0.5)
        kernel *= 1.0 + width  # keep thick streaks about as bright
    return kernel


def _rain_layer(shape, rng, density, length, angle, width, pad) -> np.ndarray:
    h, w = shape
    ph, pw = h + 2 * pad, w + 2 * pad
    seeds = rng.random((ph, pw)) < density
    amps = rng.uniform(0.35, 1.0, size=(ph, pw)) * seeds
    kernel = _streak_kernel(length, angle, width)
    layer = signal.fftconvolve(amps, kernel, mode="same")
    layer = layer[pad:pad + h, pad:pad + w]
    return np.clip(layer, 0.0, 1.0)


def add_rain_streaks(image, rng: np.random.Generator, *, density: Optional[float] = None,
                     angle: Optional[float] = None, length: Optional[float] = None,
                     brightness: Optional[float] = None, haze: Optional[float] = None) -> np.ndarray:
    """Overlay falling rain: thin bright slanted streaks.

    Parameters (``None`` draws a random value from ``rng``):

    density:
        Fraction of pixels seeding a streak in the far layer of a 256-pixel
        image, in ``(0, 0.05]`` (default ``U(0.006, 0.015)``), scaled by
        ``256 / longest side`` so the look does not depend on the
        resolution; the near layer gets a third of it.
    angle:
        Common streak angle in degrees from the vertical, in ``[-60, 60]``
        (default ``U(-25, 25)``).
    length:
        Streak length as a fraction of the longest image side, in
        ``(0, 0.5]`` (default ``U(0.05, 0.14)``).
    brightness:
        Opacity of the streaks in ``[0, 1]`` (default ``U(0.55, 0.9)``).
    haze:
        Strength of the grey rain veil in ``[0, 0.5]`` (default ``U(0, 0.15)``).
    """
    img = _check_image(image)
    rng = check_rng(rng)
    density = _pick(density, "density", rng, 0.006, 0.015, lo_ok=1e-6, hi_ok=0.05)
    angle_deg = _pick(angle, "angle", rng, -25.0, 25.0, lo_ok=-60.0, hi_ok=60.0)
    length = _pick(length, "length", rng, 0.05, 0.14, lo_ok=1e-4, hi_ok=0.5)
    brightness = _pick(brightness, "brightness", rng, 0.55, 0.9, lo_ok=0.0, hi_ok=1.0)
    haze = _pick(haze, "haze", rng, 0.0, 0.15, lo_ok=0.0, hi_ok=0.5)

    h, w = img.shape[:2]
    longest = max(h, w)
    length_px = max(3.0, length * longest)
    theta = np.deg2rad(angle_deg)
    thin = max(0.0, longest / 512.0 - 0.4)  # thicker streaks on big images
    pad = int(length_px) + 4

    # streak length scales with the image, so scale the seed density inversely
    # to keep the covered fraction independent of the resolution
    density = min(0.05, density * 256.0 / longest)
    far = _rain_layer((h, w), rng, density, 0.6 * length_px,
                      theta + np.deg2rad(rng.uniform(-3, 3)), thin * 0.6, pad)
    near = _rain_layer((h, w), rng, density / 3.0, length_px,
                       theta + np.deg2rad(rng.uniform(-3, 3)), 0.4 + thin, pad)
    rain = np.clip(0.55 * far + near, 0.0, 1.0)
    rain = ndimage.gaussian_filter(rain, 0.35 + 0.15 * thin)
    rain = np.clip(rain * brightness, 0.0, 1.0)[..., None]

    tint = np.array([0.93, 0.95, 1.0], np.float32) * rng.uniform(0.9, 1.0)
    base = img * (1.0 - haze) + haze * 0.75 * tint
    out = 1.0 - (1.0 - base) * (1.0 - rain * tint)  # screen blend
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# snow
# ---------------------------------------------------------------------------


def add_snow(image, rng: np.random.Generator, *, amount: Optional[float] = None,
             flake_size: Optional[float] = None, angle: Optional[float] = None,
             haze: Optional[float] = None) -> np.ndarray:
    """Overlay falling snow: flakes of several sizes, the large ones defocused.

    Parameters (``None`` draws a random value from ``rng``):

    amount:
        Number of flakes per 100 pixels, in ``(0, 10]`` (default
        ``U(0.6, 1.6)``).
    flake_size:
        Radius of the largest flakes as a fraction of the longest image
        side, in ``(0, 0.1]`` (default ``U(0.012, 0.025)``).
    angle:
        Fall direction in degrees from the vertical, in ``[-60, 60]``
        (default ``U(-30, 30)``); flakes are stretched along it.
    haze:
        Strength of the white veil, in ``[0, 0.6]`` (default ``U(0.05, 0.2)``).
    """
    img = _check_image(image)
    rng = check_rng(rng)
    amount = _pick(amount, "amount", rng, 0.6, 1.6, lo_ok=1e-6, hi_ok=10.0)
    flake_size = _pick(flake_size, "flake_size", rng, 0.012, 0.025, lo_ok=1e-5, hi_ok=0.1)
    angle_deg = _pick(angle, "angle", rng, -30.0, 30.0, lo_ok=-60.0, hi_ok=60.0)
    haze = _pick(haze, "haze", rng, 0.05, 0.2, lo_ok=0.0, hi_ok=0.6)

    h, w = img.shape[:2]
    longest = max(h, w)
    r_max = max(1.2, flake_size * longest)
    r_min = min(0.45, r_max)
    n = max(1, int(round(amount * h * w / 100.0)))
    theta = np.deg2rad(angle_deg)
    # unit vector along the fall direction (rows grow downwards)
    fall = np.array([np.cos(theta), -np.sin(theta)])

    # log-uniform-ish size distribution skewed towards small flakes
    u = rng.random(n) ** 2.2
    radii = r_min * (r_max / r_min) ** u
    cy = rng.uniform(-r_max, h + r_max, n)
    cx = rng.uniform(-r_max, w + r_max, n)
    big = radii > 0.55 * r_max
    stretch = 1.0 + rng.uniform(0.0, 0.8, n) * (radii / r_max)
    opacity = np.where(big, rng.uniform(0.35, 0.75, n), rng.uniform(0.6, 1.0, n))
    softness = np.where(big, rng.uniform(0.35, 0.7, n), rng.uniform(0.1, 0.3, n))

    alpha = np.zeros((h, w), np.float64)
    for i in range(n):
        r = radii[i]
        reach = r * stretch[i] + 2.5 * (1.0 + softness[i] * r)
        y0 = max(0, int(np.floor(cy[i] - reach)))
        y1 = min(h, int(np.ceil(cy[i] + reach)) + 1)
        x0 = max(0, int(np.floor(cx[i] - reach)))
        x1 = min(w, int(np.ceil(cx[i] + reach)) + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy = yy - cy[i]
        dx = xx - cx[i]
        along = (dy * fall[0] + dx * fall[1]) / stretch[i]
        across = -dy * fall[1] + dx * fall[0]
        d = np.sqrt(along * along + across * across)
        if big[i]:
            sigma = max(0.5, softness[i] * r)
            blob = np.exp(-0.5 * (np.maximum(d - 0.5 * r, 0.0) / sigma) ** 2)
        else:
            edge = max(0.5, softness[i] * r + 0.5)
            blob = _smoothstep((r + 0.5 * edge - d) / edge)
            if r < 1.0:  # sub-pixel flakes: keep their energy, dim them
                blob = blob * (0.45 + 0.55 * r)
        a = opacity[i] * blob
        sub = alpha[y0:y1, x0:x1]
        alpha[y0:y1, x0:x1] = sub + a * (1.0 - sub)

    alpha = np.clip(alpha, 0.0, 1.0)[..., None].astype(np.float32)
    white = np.array([0.96, 0.97, 1.0], np.float32) * rng.uniform(0.94, 1.0)
    veil = np.array([0.86, 0.88, 0.92], np.float32)
    base = img * (1.0 - haze) + haze * veil
    out = base * (1.0 - alpha) + white * alpha
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# raindrops on the lens / window
# ---------------------------------------------------------------------------


def add_raindrops(image, rng: np.random.Generator, *, num_drops: Optional[int] = None,
                  drop_size: Optional[float] = None, blur: Optional[float] = None) -> np.ndarray:
    """Put water drops on the lens: each shows a blurred, inverted view.

    Parameters (``None`` draws a random value from ``rng``):

    num_drops:
        Number of drops, ``>= 1`` (default: 25-50 on a 128x128 image,
        growing with the fourth root of the area).
    drop_size:
        Radius of the largest drops as a fraction of the shorter image side,
        in ``(0, 0.3]`` (default ``U(0.05, 0.09)``).
    blur:
        Blur of the refracted view inside drops, as a fraction of the shorter
        side, in ``[0, 0.05]`` (default ``U(0.004, 0.012)``).
    """
    img = _check_image(image)
    rng = check_rng(rng)
    h, w = img.shape[:2]
    shorter = min(h, w)
    if num_drops is None:
        area_scale = h * w / (128.0 * 128.0)
        # drop sizes are relative to the image, so the count grows only mildly
        num_drops = int(max(1, round(rng.uniform(25, 50) * area_scale ** 0.25)))
    else:
        if isinstance(num_drops, bool) or not isinstance(num_drops, (int, np.integer)) \
                or num_drops < 1 or num_drops > 10000:
            raise ValueError(f"num_drops must be an integer in [1, 10000], got {num_drops!r}")
        num_drops = int(num_drops)
    drop_size = _pick(drop_size, "drop_size", rng, 0.05, 0.09, lo_ok=1e-4, hi_ok=0.3)
    blur = _pick(blur, "blur", rng, 0.004, 0.012, lo_ok=0.0, hi_ok=0.05)

    r_max = max(2.0, drop_size * shorter)
    r_min = max(1.2, 0.2 * r_max)
    sigma = blur * shorter
    soft = img if sigma <= 0 else np.stack(
        [ndimage.gaussian_filter(img[..., c], sigma) for c in range(3)], axis=-1
    )

    out = img.astype(np.float64)
    defocus = 0.3 + 0.003 * shorter  # drops sit on the glass, out of focus
    u = rng.random(num_drops) ** 1.4
    radii = r_min + (r_max - r_min) * u
    order = np.argsort(radii)[::-1]  # large drops first, small ones on top
    light_dir = rng.uniform(-0.8, -0.2) * np.pi  # highlight toward upper side
    for i in order:
        r = radii[i]
        cy = rng.uniform(-0.3 * r, h + 0.3 * r)
        cx = rng.uniform(-0.3 * r, w + 0.3 * r)
        ry = r * rng.uniform(0.8, 1.2)  # gravity elongates some drops
        rx = r * rng.uniform(0.8, 1.05)
        a1, a2 = rng.uniform(0.0, 0.08, 2)
        p1, p2 = rng.uniform(0.0, 2 * np.pi, 2)
        mag = rng.uniform(0.4, 1.2)  # inverted view, scaled by this much
        shift = rng.uniform(-0.4, 0.4, 2) * r
        reach = 1.25 * max(ry, rx) + 2 + 2 * defocus
        y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 2)
        x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dy, dx = yy - cy, xx - cx
        phi = np.arctan2(dy, dx)
        wobble = 1.0 + a1 * np.cos(phi + p1) + a2 * np.cos(2 * phi + p2)
        rho = np.sqrt((dy / ry) ** 2 + (dx / rx) ** 2) / wobble
        edge_px = 1.0 + 0.2 * r
        mask = _smoothstep((1.0 - rho) * r / edge_px + 0.5)
        if not mask.any():
            continue
        # a lens: content is inverted and compressed toward the rim
        bulge = 1.0 + 0.6 * np.minimum(rho, 1.2) ** 2
        sy = np.clip(cy + shift[0] - dy * mag * bulge, 0, h - 1)
        sx = np.clip(cx + shift[1] - dx * mag * bulge, 0, w - 1)
        refracted = np.stack(
            [ndimage.map_coordinates(soft[..., c], [sy, sx], order=1, mode="nearest")
             for c in range(3)], axis=-1,
        )
        # water transmits a little extra light from the sky behind it
        refracted = refracted * 0.92 + 0.08
        rim = np.exp(-(((rho - 0.93) * r / (0.9 + 0.09 * r)) ** 2))
        cosang = np.cos(phi - light_dir)
        hl_c = 0.55 * np.array([np.sin(light_dir), np.cos(light_dir)])
        hl_d = np.sqrt((dy / ry - hl_c[0]) ** 2 + (dx / rx - hl_c[1]) ** 2)
        highlight = np.exp(-0.5 * (hl_d / (0.08 + 0.4 / r)) ** 2)
        # dark edge on the lit side, bright focused crescent opposite to it
        dark = mask * rim * (0.05 + 0.15 * cosang.clip(0, 1))
        bright = mask * (0.25 * highlight + 0.22 * rim * (-cosang).clip(0, 1))
        dark = ndimage.gaussian_filter(dark, defocus)[..., None]
        bright = ndimage.gaussian_filter(bright, defocus)[..., None]
        a = mask[..., None]
        patch = out[y0:y1, x0:x1]
        patch = patch * (1.0 - a) + refracted * a
        out[y0:y1, x0:x1] = patch * (1.0 - dark) + bright

    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------
# dispatch and built-in data
# ---------------------------------------------------------------------------


def degrade(image, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Apply the degradation ``kind`` (``"rain"``, ``"snow"`` or ``"raindrop"``)."""
    if kind == "rain":
        return add_rain_streaks(image, rng)
    if kind == "snow":
        return add_snow(image, rng)
    if kind == "raindrop":
        return add_raindrops(image, rng)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


# ---------------------------------------------------------------------------
# degradations over part of the image
# ---------------------------------------------------------------------------


def _top_fraction(values: np.ndarray, fraction: float) -> np.ndarray:
    """The ``fraction`` of the pixels with the largest ``values`` (ties all in or all out)."""
    return values >= np.quantile(values, 1.0 - fraction)


def region_mask(height: int, width: int, rng: np.random.Generator, *, shape: Optional[str] = None,
                fraction: Optional[float] = None) -> np.ndarray:
    """A soft-edged region covering part of an image: ``(height, width)`` float32 in ``[0, 1]``.

    The region is the set of pixels where the mask is above 0; outside it the mask is exactly 0.
    Inside, the mask rises from the region's edge to 1 over a feather of 6% of the shorter side (at
    least 1.5 pixels): a smoothstep of the distance to the nearest pixel outside (the image's borders
    are not edges).  Parameters (``None`` draws a random value from ``rng``):

    shape:
        One of :data:`REGION_SHAPES` (default: drawn uniformly):
        ``"band"``, a straight strip across the image at an angle ``U(0, 180)`` degrees from the
        horizontal, at a uniformly drawn offset; ``"side"``, the part of the image beyond a straight line
        parallel to one of its edges (top, bottom, left or right, drawn uniformly; ``fraction`` 0.5 is
        a half); ``"blob"``, a smooth random shape: the largest values of a random field low-passed at
        15% of the shorter side plus a Gaussian bump (a quarter of the shorter side wide) at a uniformly
        drawn centre.
    fraction:
        Share of the image's pixels in the region, in ``[0.05, 0.95]`` (default ``U(0.2, 0.5)``);
        met up to ties (a side region takes whole rows or columns).
    """
    for value, name in ((height, "height"), (width, "width")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    rng = check_rng(rng)
    if shape is None:
        shape = REGION_SHAPES[int(rng.integers(len(REGION_SHAPES)))]
    elif shape not in REGION_SHAPES:
        raise ValueError(f"shape must be one of {REGION_SHAPES}, got {shape!r}")
    fraction = _pick(fraction, "fraction", rng, 0.2, 0.5, lo_ok=0.05, hi_ok=0.95)
    h, w = int(height), int(width)
    shorter = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if shape == "band":
        angle = rng.uniform(0.0, np.pi)
        along = -xx * np.sin(angle) + yy * np.cos(angle)  # distance across the band's direction
        start = rng.uniform(0.0, 1.0 - fraction)
        low, high = np.quantile(along, [start, start + fraction])
        region = (along >= low) & (along <= high)
    elif shape == "side":
        side = int(rng.integers(4))  # top, bottom, left, right
        values = (-yy, yy, -xx, xx)[side]
        region = _top_fraction(values, fraction)
    else:
        field = ndimage.gaussian_filter(rng.standard_normal((h, w)), 0.15 * shorter, mode="wrap")
        field /= field.std() + 1e-12
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        width_px = 0.25 * shorter
        field += 2.5 * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / width_px ** 2)
        region = _top_fraction(field, fraction)
    if region.all():
        return np.ones((h, w), np.float32)
    feather = max(1.5, 0.06 * shorter)
    distance = ndimage.distance_transform_edt(region)  # 0 outside, >= 1 inside
    return np.where(region, _smoothstep(distance / feather), 0.0).astype(np.float32)


def degrade_region(image, kind: str, rng: np.random.Generator, *, shape: Optional[str] = None,
                   fraction: Optional[float] = None, return_mask: bool = False):
    """Apply the degradation ``kind`` inside a region of the image only; the rest stays exactly clean.

    Draws, from ``rng`` and in this order, the degradation of the whole image (:func:`degrade`: what
    it returns for the same generator state) and the region (:func:`region_mask` with ``shape`` and
    ``fraction``), then blends: ``image * (1 - mask) + degraded * mask`` where ``mask > 0``, and
    ``image`` itself (bit for bit) where ``mask == 0``.  Returns the ``HxWx3`` float32 result, or
    ``(result, mask)`` with ``return_mask``.
    """
    img = _check_image(image)
    full = degrade(img, kind, rng)
    mask = region_mask(img.shape[0], img.shape[1], rng, shape=shape, fraction=fraction)
    m = mask[..., None]
    out = np.where(m > 0, img * (1.0 - m) + full * m, img).astype(np.float32)
    return (out, mask) if return_mask else out


def _skimage_data_dir() -> str:
    import skimage.data

    return os.path.dirname(os.path.abspath(skimage.data.__file__))


def _load_photo(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")  # grayscale -> 3 identical channels
        return np.asarray(im, dtype=np.float32) / 255.0


_PHOTO_CACHE: Dict[str, np.ndarray] = {}


def builtin_photos() -> Dict[str, np.ndarray]:
    """Photographs bundled with scikit-image, as ``HxWx3`` float32 in ``[0, 1]``.

    The files are read directly from the scikit-image package folder, so this
    never touches the network; photos missing from the installed version are
    skipped.  Returns fresh copies (mutating them does not affect later calls).
    """
    folder = _skimage_data_dir()
    photos: Dict[str, np.ndarray] = {}
    for name, filename in _PHOTO_FILES.items():
        if name not in _PHOTO_CACHE:
            path = os.path.join(folder, filename)
            if not os.path.isfile(path):
                continue
            _PHOTO_CACHE[name] = _load_photo(path)
        photos[name] = _PHOTO_CACHE[name].copy()
    if not photos:
        raise RuntimeError(f"no bundled photographs found in {folder}")
    return photos


def _downscale(image: np.ndarray, size: Optional[int]) -> np.ndarray:
    if size is None:
        return image
    h, w = image.shape[:2]
    longest = max(h, w)
    if longest <= size:
        return image
    from skimage.transform import resize

    scale = size / float(longest)
    shape = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    out = resize(image, shape + (3,), order=1, anti_aliasing=True,
                 preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def builtin_weather_pairs(
    split: str = "train",
    kinds: Sequence[str] = KINDS,
    seed: int = 0,
    size: Optional[int] = 128,
    variants: Optional[int] = None,
    coverage: str = "full",
) -> List[Tuple[np.ndarray, np.ndarray, str, str]]:
    """Deterministic ``(clean, degraded, kind, name)`` pairs from bundled photos.

    ``clean`` is the photo (``x0``), ``degraded`` the same photo with the weather ``kind`` drawn on
    it (``y``): ``HxWx3`` float32 arrays in ``[0, 1]``; ``name`` is the photo's name.

    split:
        ``"train"`` uses :data:`TRAIN_PHOTOS`, ``"validation"`` the held-out
        :data:`VALIDATION_PHOTOS` (never seen in training).
    kinds:
        Degradations to produce, a non-empty subset of :data:`KINDS`.
    seed:
        Non-negative integer; the same seed always yields the same pairs, and
        the two splits use independent random streams.
    size:
        Downscale each photo so its longest side is ``size`` pixels (``None``
        keeps the full resolution).  The small default keeps CPU training fast.
    variants:
        Degraded versions per photo and kind (default 4 for training, 1 for
        validation).
    coverage:
        One of :data:`COVERAGES`: ``"full"`` (the default) draws the weather
        all over the photo (:func:`degrade`); ``"partial"`` inside a region
        covering 20-50% of it only, a band, a side or a blob with soft edges,
        and leaves the rest exactly clean (:func:`degrade_region`: the same
        weather as ``"full"`` for the same seed, then the region).
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer))
                             or size < 16):
        raise ValueError(f"size must be None or an integer >= 16, got {size!r}")
    if variants is None:
        variants = 4 if split == "train" else 1
    if isinstance(variants, bool) or not isinstance(variants, (int, np.integer)) or variants < 1:
        raise ValueError(f"variants must be a positive integer, got {variants!r}")
    if not isinstance(coverage, str) or coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {COVERAGES}, got {coverage!r}")
    apply = degrade if coverage == "full" else degrade_region

    photos = builtin_photos()
    names = TRAIN_PHOTOS if split == "train" else VALIDATION_PHOTOS
    names = [n for n in names if n in photos]
    split_id = 0 if split == "train" else 1
    pairs: List[Tuple[np.ndarray, np.ndarray, str, str]] = []
    for name in names:
        clean = _downscale(photos[name], size)
        name_id = zlib.crc32(name.encode("utf-8"))
        for kind in kinds:
            kind_id = KINDS.index(kind)
            for v in range(int(variants)):
                rng = np.random.default_rng([int(seed), split_id, name_id, kind_id, v])
                pairs.append((clean, apply(clean, kind, rng), kind, name))
    return pairs
