"""The settings of CDiffuSE's reverse process that an adapter saves and restores with: where the chain
starts, whether it clips, the final blend with the noisy input and the fast schedule."""

from __future__ import annotations

from collections.abc import Mapping

from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_6

from .scheduler import _as_betas

__all__ = ["NOISY_MIX_WEIGHT", "RELEASED_INFERENCE", "DEFAULT_RESTORATION", "check_restoration"]

#: Weight of the noisy input in the released inference code's final mix ``(1 - w) x_0 + w y``.
NOISY_MIX_WEIGHT = 0.2


#: The released CDiffuSE inference's settings for :meth:`CDiffuSERestoreGrad.restore`: the chain starts
#: from the noisy signal, every step is clipped to [-1, 1], and the last one blends in 0.2 of the noisy
#: signal before its clip. With ``mode="ddpm"`` and these, ``restore`` is the released algorithm.
RELEASED_INFERENCE = {"initial": "noisy", "clamp": True, "mix_noisy": True}


#: How :meth:`CDiffuSERestoreGrad.restore` runs the reverse process unless told otherwise: the 6-step
#: fast schedule from the learned prior of eq. 10, nothing clipped or blended.
DEFAULT_RESTORATION = {"inference_betas": list(FAST_INFERENCE_BETAS_6), "initial": "prior", "clamp": False,
                       "mix_noisy": 0.0}


def check_restoration(settings: Mapping | None) -> dict:
    """Check reverse-process settings (any subset of :data:`DEFAULT_RESTORATION`'s keys) and return them
    normalised: ``mix_noisy`` a weight (True is the released 0.2), ``inference_betas`` a list of floats or
    ``"all"`` (every training step)."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ValueError(f"`restoration` must be a mapping of {sorted(DEFAULT_RESTORATION)}, got "
                         f"{type(settings).__name__}.")
    unknown = sorted(set(settings) - set(DEFAULT_RESTORATION))
    if unknown:
        raise ValueError(f"`restoration` has unknown settings {unknown}; expected some of {sorted(DEFAULT_RESTORATION)}.")
    out = dict(settings)
    if "initial" in out and out["initial"] not in ("prior", "noisy"):
        raise ValueError(f"`initial` must be 'prior' or 'noisy', got {out['initial']!r}.")
    if "clamp" in out:
        if not isinstance(out["clamp"], bool):
            raise ValueError(f"`clamp` must be True or False, got {out['clamp']!r}.")
    if "mix_noisy" in out:
        weight = out["mix_noisy"]
        weight = NOISY_MIX_WEIGHT if weight is True else 0.0 if weight is False else weight
        if not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
            raise ValueError(f"`mix_noisy` must be a bool or a weight in [0, 1], got {out['mix_noisy']!r}.")
        out["mix_noisy"] = float(weight)
    if "inference_betas" in out and out["inference_betas"] != "all":
        out["inference_betas"] = [float(b) for b in _as_betas("inference_betas", out["inference_betas"])]
    return out


