"""restoregrad_adapter: RestoreGrad's jointly learned prior for the diffusion models you already have.

RestoreGrad (Lee et al., ICML 2025) replaces the standard Gaussian prior of a conditional DDPM with
``N(0, diag(sigma_prior(y)**2))``, learned jointly with the denoiser from the degraded signal ``y``.

Public objects are imported lazily, so ``import restoregrad_adapter`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LearnedPriorScheduler": "scheduler",
    "LearnedPriorSchedulerOutput": "scheduler",
    "FAST_INFERENCE_BETAS_3": "scheduler",
    "FAST_INFERENCE_BETAS_6": "scheduler",
    "whitened_step": "scheduler",
    "whitened_initial_sample": "scheduler",
    "PriorNet": "encoders",
    "PosteriorNet": "encoders",
    "count_parameters": "encoders",
    "RestoreGradLoss": "loss",
    "RestoreGradLossOutput": "loss",
    "RestoreGrad": "adapter",
    "RestoreGradConfig": "config",
    "EncoderConfig": "config",
    "MODES": "config",
    "energy_prior": "adapter",
    "data_prior_std": "adapter",
    "RestoreGradPipeline": "pipeline",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
