"""Loading an original CDiffuSE checkpoint without unpickling arbitrary objects."""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import torch
from torch import nn

from restoregrad_adapter.adapter import RestoreGrad

from .denoiser import CDiffuSEDenoiser

__all__ = ["load_checkpoint"]


def _preview(keys, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path) -> int | None:
    """Load an original CDiffuSE checkpoint into ``model`` (strictly) and return its training step.

    The file is what CDiffuSE's learner saves, ``torch.save({"step": int, "model": state_dict,
    "optimizer": ..., "params": ..., "scaler": ...})``; only ``"model"`` is used. It is read with
    ``torch.load(path, map_location="cpu", weights_only=True)``, so tensors and plain containers
    load and arbitrary pickled objects are refused.

    Args:
        model: the CDiffuSE network, or a :class:`CDiffuSEDenoiser` / :class:`CDiffuSERestoreGrad`
            around it (its network is loaded).
        path: the checkpoint file (e.g. ``weights-<step>.pt``).

    Returns:
        The checkpoint's ``"step"`` as an int, or None when it has none.

    Raises:
        ValueError: the file holds objects ``weights_only`` refuses, is not a dict with a
            ``"model"`` state dict, or its keys or shapes do not match ``model``'s.
    """
    target = model
    if isinstance(target, RestoreGrad):
        target = target.denoiser
    if isinstance(target, CDiffuSEDenoiser):
        target = target.model
    if not isinstance(target, nn.Module):
        raise ValueError(f"`model` must be an nn.Module (the CDiffuSE network), got {type(target).__name__}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError) as err:  # torch's zip reader on a cut or damaged file
        raise ValueError(f"{path} could not be read: the file is truncated or corrupted ({str(err).splitlines()[0]})."
                         ) from None
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line),
                      str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise ValueError(
            f"{path} could not be read as a weights-only checkpoint ({detail}). Expected a CDiffuSE checkpoint, "
            "a dict of tensors and plain values such as {'step': int, 'model': state_dict, 'optimizer': ...}; "
            "files holding other pickled Python objects are refused because unpickling them can run arbitrary code."
        ) from err
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}; expected a CDiffuSE checkpoint dict "
                         "{'step': int, 'model': state_dict, ...}.")
    if "model" not in checkpoint:
        raise ValueError(f"{path} has no 'model' entry (its keys: {_preview(checkpoint.keys())}); expected a CDiffuSE "
                         "checkpoint dict {'step': int, 'model': state_dict, ...}.")
    state = checkpoint["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: the 'model' entry must be a state dict (parameter names -> tensors), "
                         f"got {type(state).__name__}.")
    expected = set(target.state_dict().keys())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        raise ValueError(f"{path} does not match the model's parameters ({'; '.join(parts)}). Build the model with "
                         "the checkpoint's configuration (residual_layers, residual_channels, n_mels = 513, ...).")
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not match the model's parameter shapes: {err}") from err
    step = checkpoint.get("step")
    if isinstance(step, torch.Tensor):
        step = step.item()
    return None if step is None else int(step)


