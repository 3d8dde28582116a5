"""Argument checks for the library's public entry points.

The policy (docs/design.md, "Checking inputs"): a public entry point (a training step, ``restore``,
the pipeline, the command line, loading, a scheduler's ``step`` called by a user) checks what it is
given once, with an error that names the argument and says what was expected. Internal helpers
trust their callers and check nothing. Checks of values (NaN, inf, sign) cost a host
synchronisation, so an entry point gathers them into one (:func:`check_finite_and_positive`).
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable, Mapping

import torch

__all__ = [
    "check_signal",
    "check_image",
    "check_std",
    "check_std_shape",
    "check_finite_and_positive",
    "check_positive_int",
    "check_bool",
    "check_choice",
    "check_number",
    "check_no_clipping",
]


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return type(value).__name__


def check_signal(name: str, tensor, finite: bool = True) -> None:
    """A floating ``(B, C, *spatial)`` tensor with no empty dimension; unless ``finite=False``, also no NaN or
    inf (one host synchronisation)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {tensor.dtype}.")
    if tensor.ndim < 3:
        raise ValueError(f"`{name}` must have shape (B, C, *spatial), got {tuple(tensor.shape)}.")
    if tensor.numel() == 0:
        raise ValueError(f"`{name}` is empty (shape {tuple(tensor.shape)}); expected at least one example and sample.")
    if finite and not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")


def check_image(name: str, tensor, finite: bool = True) -> None:
    """A floating ``(B, C, H, W)`` tensor; unless ``finite=False``, also no NaN or inf."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}.")
    if tensor.ndim != 4:
        raise ValueError(f"`{name}` must have shape (B, C, H, W), got {tuple(tensor.shape)}.")
    check_signal(name, tensor, finite=finite)


def check_std(name: str, std: torch.Tensor) -> None:
    """``std`` (a standard deviation) is finite and > 0 everywhere: one host synchronisation."""
    check_finite_and_positive(positive={name: std})


def check_finite_and_positive(finite: Mapping[str, torch.Tensor] | None = None,
                              positive: Mapping[str, torch.Tensor] | None = None,
                              conditions: Mapping[str, tuple[torch.Tensor, str]] | None = None) -> None:
    """One host synchronisation for many tensors: those in ``finite`` hold no NaN or inf, those in ``positive``
    (standard deviations) are finite and > 0, and each of ``conditions`` (``name -> (boolean tensor,
    message)``, the message a string or a function making it, called only on failure) holds. The error
    names the first that fails."""
    finite, positive, conditions = dict(finite or {}), dict(positive or {}), dict(conditions or {})
    flags = [_within(t, positive=False) for t in finite.values()]
    flags += [_within(s, positive=True) for s in positive.values()]
    flags += [flag for flag, _ in conditions.values()]
    if not flags:
        return
    if bool(flags[0] if len(flags) == 1 else torch.stack([f.to(flags[0].device) for f in flags]).all()):
        return
    for name, tensor in finite.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
    for flag, message in conditions.values():
        if not bool(flag):
            raise ValueError(message() if callable(message) else message)
    for name, std in positive.items():
        std = std.detach()
        if not torch.isfinite(std).all():
            raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
        if not (std > 0).all():
            raise ValueError(f"`{name}` must be > 0 everywhere (a standard deviation), got a minimum of "
                             f"{std.min().item():.4g}.")


def _within(tensor: torch.Tensor, positive: bool) -> torch.Tensor:
    """A 0-d boolean tensor, not yet read: ``tensor`` holds no NaN or inf and, if ``positive``, is > 0
    everywhere. A floating tensor is read once, by ``aminmax`` (which propagates NaN into both ends);
    comparing all elements would take several passes and boolean temporaries of the tensor's size."""
    tensor = tensor.detach()
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return (torch.isfinite(tensor) & (tensor > 0)).all() if positive else torch.isfinite(tensor).all()
    low, high = torch.aminmax(tensor)
    return (low > 0 if positive else low > -math.inf) & (high < math.inf)


def check_std_shape(name: str, std, sample: torch.Tensor) -> None:
    """``std`` is a floating tensor that broadcasts to ``sample``'s shape without enlarging it (no
    host synchronisation: its values are not looked at)."""
    if not isinstance(std, torch.Tensor) or not std.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {_describe(std)}.")
    if std.shape == sample.shape:
        return
    try:
        broadcast = torch.broadcast_shapes(std.shape, sample.shape)
    except RuntimeError:
        raise ValueError(f"`{name}` of shape {tuple(std.shape)} does not broadcast to the sample's shape "
                         f"{tuple(sample.shape)}; expected a standard-deviation map of the sample's shape.") from None
    if broadcast != sample.shape:
        raise ValueError(f"`{name}` of shape {tuple(std.shape)} would broadcast the sample's shape "
                         f"{tuple(sample.shape)} up; expected a standard-deviation map of the sample's shape.")


def check_positive_int(name: str, value, allow_none: bool = False):
    """``value`` as an ``int`` when it is a positive integer (or None, if allowed); else a ValueError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)  # np.int64 and the like, as diffusers accepts them


def check_bool(name: str, value) -> bool:
    """``value`` when it is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool (True or False), got {value!r}.")
    return value


def check_choice(name: str, value, choices: Iterable):
    """``value`` when it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None,
                 allow_none: bool = False, open_minimum: bool = False) -> float | None:
    """``value`` as a float when it is a finite real number in ``[minimum, maximum]`` (``(minimum, ...``
    with ``open_minimum``), or None if allowed."""
    if value is None and allow_none:
        return None
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
    if not bad and minimum is not None:
        bad = value <= minimum if open_minimum else value < minimum
    if not bad and maximum is not None:
        bad = value > maximum
    if bad:
        low = "" if minimum is None else f" {'>' if open_minimum else '>='} {minimum:g}"
        high = "" if maximum is None else f"{' and' if low else ''} <= {maximum:g}"
        raise ValueError(f"`{name}` must be a finite number{low}{high}{' or None' if allow_none else ''}, "
                         f"got {value!r}.")
    return float(value)


def check_no_clipping(scheduler) -> None:
    """A stock diffusers scheduler sampling the learned prior by whitening must not clip or threshold its
    samples: it would clip in whitened units."""
    config = getattr(scheduler, "config", {})
    for flag in ("clip_sample", "thresholding"):
        if config.get(flag, False):
            raise ValueError(
                f"`scheduler` has `{flag}=True`; sampling the learned prior by whitening needs it off "
                f"(it would clip in whitened units). Build it with `{flag}=False`."
            )
