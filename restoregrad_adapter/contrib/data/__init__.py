"""Paired training data: built-in example data generated in code (nothing downloaded), readers of
paired files in the supported layouts, and aligned random crops.

Every pair is ``(x0, y)`` = (clean, degraded), the order of ``RestoreGrad.training_loss(x0, y)``.

- :mod:`restoregrad_adapter.contrib.data.weather`: photos bundled with scikit-image degraded in code by rain
  streaks, snow and raindrops, all over or inside a region only
  (:func:`~restoregrad_adapter.contrib.data.weather.builtin_weather_pairs`).
- :mod:`restoregrad_adapter.contrib.data.blur_sr`: the same photos blurred (motion, defocus, Gaussian) or
  down-sampled bicubically by 2 or 4 and up-sampled back
  (:func:`~restoregrad_adapter.contrib.data.blur_sr.builtin_blur_sr_pairs`).
- :mod:`restoregrad_adapter.contrib.data.speech`: synthetic speech mixed with synthetic noise, at a steady
  level or one that moves within the utterance
  (:func:`~restoregrad_adapter.contrib.data.speech.builtin_speech_pairs`), and resampling.
- :mod:`restoregrad_adapter.contrib.data.readers`: the file layouts of WeatherDiff/AllWeather, RainDrop,
  RealBlur, DIV2K, imagefolders with metadata and VoiceBank+DEMAND; conversions between arrays and
  model tensors.
- here: :func:`random_crop` (the one crop helper), :func:`random_batch` and :class:`LazyPairs`.

Reading files needs the ``images`` or ``audio`` extra (Pillow, scikit-image, soundfile, scipy);
the built-in data needs scipy and scikit-image.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np

__all__ = ["check_rng", "random_crop", "random_flip_rotate", "check_augment", "AUGMENTATIONS", "random_batch",
           "LazyPairs"]


def check_rng(rng) -> np.random.Generator:
    """Raise a ValueError unless ``rng`` is a ``numpy.random.Generator``."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            "rng must be a numpy.random.Generator "
            f"(e.g. numpy.random.default_rng(0)), got {type(rng).__name__}"
        )
    return rng


def _draw(rng, high: int, count: int | None = None):
    """Uniform integers in ``[0, high)`` from a numpy Generator or a torch Generator (one, or ``count``)."""
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(high)) if count is None else rng.integers(high, size=count).tolist()
    import torch

    if not isinstance(rng, torch.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator or a torch.Generator, got {type(rng).__name__}")
    if count is None:
        return int(torch.randint(0, high, (1,), generator=rng))
    return torch.randint(0, high, (count,), generator=rng).tolist()


def random_crop(x0: np.ndarray, y: np.ndarray, size, rng=None, *, align: int = 1, pad: str = "reflect"):
    """The same random crop of a clean signal ``x0`` and its degraded version ``y``.

    Args:
        x0, y: arrays of the same shape: waveforms ``(L,)`` or images ``(H, W)`` / ``(H, W, C)``.
        size: the crop: an int crops a waveform to ``size`` samples and an image to ``size x size``;
            a tuple gives the sizes of the leading axes.
        rng: a ``numpy.random.Generator`` or a ``torch.Generator``; the corner is drawn uniformly
            among the positions that fit, one axis after the other. ``None``: the centred crop.
        align: drawn positions are rounded down to a multiple of this (e.g. 256, an STFT hop).
        pad: a signal shorter than the crop is first padded at its end: ``"reflect"`` (images) or
            ``"zeros"`` (waveforms).

    Returns:
        ``(x0_crop, y_crop)``, views of the inputs where no padding was needed.
    """
    if x0.shape != y.shape:
        raise ValueError(f"x0 {x0.shape} and y {y.shape} must have the same shape to be cropped together")
    sizes = (size,) * min(x0.ndim, 2) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(sizes) > x0.ndim or any(s < 1 for s in sizes):
        raise ValueError(f"size {size!r} does not fit signals of shape {x0.shape}")
    if pad not in ("reflect", "zeros"):
        raise ValueError(f"pad must be 'reflect' or 'zeros', got {pad!r}")
    short = [(0, max(0, s - n)) for s, n in zip(sizes, x0.shape)]
    if any(after for _, after in short):
        widths = short + [(0, 0)] * (x0.ndim - len(sizes))
        mode = "reflect" if pad == "reflect" else "constant"
        x0, y = np.pad(x0, widths, mode=mode), np.pad(y, widths, mode=mode)
    corner = []
    for s, n in zip(sizes, x0.shape):
        position = (n - s) // 2 if rng is None else _draw(rng, n - s + 1)
        corner.append(slice(position // align * align, position // align * align + s))
    return x0[tuple(corner)], y[tuple(corner)]


#: The geometric augmentations of image crops (:func:`random_flip_rotate`): none; a left-right mirror
#: with probability 1/2; or one of the 8 symmetries of the square (4 rotations by 90 degrees, each with or
#: without the mirror), as super-resolution and deblurring models are usually trained (EDSR, SR3, Restormer).
AUGMENTATIONS = ("none", "hflip", "dihedral")


def check_augment(augment: str) -> str:
    """Raise a ValueError unless ``augment`` is one of :data:`AUGMENTATIONS`; return it."""
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    return augment


def random_flip_rotate(x0: np.ndarray, y: np.ndarray, rng, augment: str = "dihedral"):
    """The same random mirror and rotation of a clean image ``x0`` and its degraded version ``y``.

    Args:
        x0, y: images ``(H, W)`` or ``(H, W, C)`` of the same shape; ``"dihedral"`` needs ``H == W``
            (a crop), so that every example keeps its shape.
        rng: a ``numpy.random.Generator`` or a ``torch.Generator``.
        augment: one of :data:`AUGMENTATIONS`. ``"hflip"`` draws one integer (the mirror);
            ``"dihedral"`` draws one in ``[0, 8)``: ``k = draw % 4`` quarter turns counter-clockwise,
            then the mirror when ``draw >= 4``. ``"none"`` draws nothing and returns the inputs.

    Returns:
        ``(x0, y)``, contiguous arrays (the inputs when nothing was drawn).
    """
    check_augment(augment)
    if x0.shape != y.shape:
        raise ValueError(f"x0 {x0.shape} and y {y.shape} must have the same shape to be augmented together")
    if x0.ndim not in (2, 3):
        raise ValueError(f"random_flip_rotate takes images (H, W) or (H, W, C), got shape {x0.shape}")
    if augment == "none":
        return x0, y
    if augment == "hflip":
        turns, mirror = 0, _draw(rng, 2) == 1
    else:
        if x0.shape[0] != x0.shape[1]:
            raise ValueError(f"augment='dihedral' rotates by 90 degrees and needs square images, got {x0.shape}")
        draw = _draw(rng, 8)
        turns, mirror = draw % 4, draw >= 4

    def transform(image):
        image = np.rot90(image, turns, axes=(0, 1))
        return np.ascontiguousarray(image[:, ::-1] if mirror else image)

    return transform(x0), transform(y)


def random_batch(pairs: Sequence, size, batch_size: int, rng, **crop_kwargs):
    """``batch_size`` random crops of randomly chosen ``(x0, y)`` pairs, stacked: ``(x0s, ys)`` arrays.

    All pairs are chosen first (``batch_size`` draws at once), then each is cropped with
    :func:`random_crop` (``crop_kwargs``: ``align``, ``pad``) from the same ``rng``.
    """
    crops = [random_crop(*pairs[i], size, rng, **crop_kwargs) for i in _draw(rng, len(pairs), batch_size)]
    return np.stack([x0 for x0, _ in crops]), np.stack([y for _, y in crops])


class LazyPairs(Sequence):
    """A sequence of ``(x0, y)`` pairs read on first use: item ``i`` is ``load(items[i])``.

    Args:
        items: what identifies each pair, e.g. ``(clean_path, degraded_path)`` tuples or row numbers
            (hashable when ``cache_size > 0``).
        load: ``item -> (x0, y)``.
        cache_size: how many loaded pairs to keep (least recently used are dropped); 0 keeps none.
    """

    def __init__(self, items: Sequence, load: Callable, cache_size: int = 0):
        self.items = list(items)
        self.load = functools.lru_cache(maxsize=cache_size)(load) if cache_size > 0 else load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.load(self.items[index])
