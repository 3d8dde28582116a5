"""`RestoreGradConfig`: everything that defines an adapter apart from its weights.

One typed object, checked once when it is built, held by the adapter as ``adapter.config`` and saved
as ``restoregrad_config.json`` (``config.to_dict()``, with the folder's own bookkeeping beside it,
see :mod:`restoregrad_adapter.hub`). Folders written by older versions are read through one
function, :func:`migrate_config`.

The training schedule is the scheduler's own config (``scheduler/scheduler_config.json``, a diffusers
scheduler); the config records only what the denoiser predicts (``prediction_type``), which the
scheduler must agree with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .checks import check_bool, check_choice, check_number, check_positive_int

__all__ = ["EncoderConfig", "RestoreGradConfig", "migrate_config", "MODES", "PREDICTION_TYPES", "FORMAT_VERSION"]

#: The modes one adapter runs (docs/design.md, "Baselines as modes"): RestoreGrad with and without the
#: Posterior Net, PriorGrad's handcrafted prior, a constant prior (one sigma everywhere,
#: ``prior_std``) and a standard DDPM (sigma = 1).
MODES = ("restoregrad", "restoregrad_no_posterior", "priorgrad", "constant_prior", "ddpm")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
ENCODER_SIZES = ("tiny", "base", "large")
ENCODER_ARCHITECTURES = ("reduced", "paper")
WEIGHTINGS = ("elbo", "min_snr", "x0")
#: The layout of ``restoregrad_config.json``: 2 nests the config under ``"config"``; 1 was flat.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class EncoderConfig:
    """The Prior and Posterior Nets to build (:mod:`restoregrad_adapter.encoders`).

    Args:
        dims: 1 for waveforms ``(B, C, L)``, 2 for images ``(B, C, H, W)``.
        in_channels: the signal's channels C.
        size: ``"tiny"``, ``"base"`` (the paper's) or ``"large"`` widths.
        sigma_min: the encoders' floor on sigma.
        architecture: ``"reduced"`` (the body at 1/4 of an image's side, 1/16 of a waveform's rate,
            sigma interpolated back) or ``"paper"`` (the paper's full-resolution ResNet-20).
        sigma_max: an upper bound on sigma (above 1; the map is then squashed into
            ``(sigma_min, sigma_max)``); None: none.
    """

    dims: int
    in_channels: int
    size: str = "base"
    sigma_min: float = 0.1
    architecture: str = "reduced"
    sigma_max: float | None = None

    def __post_init__(self):
        check_choice("encoder.dims", self.dims, (1, 2))
        check_positive_int("encoder.in_channels", self.in_channels)
        check_choice("encoder.size", self.size, ENCODER_SIZES)
        check_number("encoder.sigma_min", self.sigma_min, minimum=0, open_minimum=True)
        check_choice("encoder.architecture", self.architecture, ENCODER_ARCHITECTURES)
        check_number("encoder.sigma_max", self.sigma_max, minimum=1, open_minimum=True, allow_none=True)

    @classmethod
    def of(cls, prior_net) -> "EncoderConfig | None":
        """The spec of an existing :class:`~restoregrad_adapter.PriorNet` (None for another prior network)."""
        from .encoders import downsample_of

        config = getattr(prior_net, "config", None)
        if config is None or not all(hasattr(config, key) for key in ("dims", "in_channels", "size", "sigma_min")):
            return None
        architecture = next((name for name in ENCODER_ARCHITECTURES
                             if downsample_of(name, config.dims) == getattr(config, "downsample", None)), "reduced")
        sigma_max = getattr(config, "sigma_max", None)
        return cls(dims=config.dims, in_channels=config.in_channels, size=config.size,
                   sigma_min=float(config.sigma_min), architecture=architecture,
                   sigma_max=None if sigma_max is None else float(sigma_max))


@dataclass(frozen=True)
class RestoreGradConfig:
    """What an adapter is (paper Algorithm 1 and 2 with the library's named options).

    Args:
        encoder: the Prior and Posterior Nets to build (:class:`EncoderConfig`); None when they are
            given as objects, or in modes ``"ddpm"`` and ``"priorgrad"`` without encoders.
        mode: one of :data:`MODES`.
        prediction_type: what the denoiser predicts: the noise (``"epsilon"``, the paper's), the clean
            target (``"sample"``) or ``"v_prediction"``; the scheduler's ``prediction_type``.
        residual: diffuse the residual ``r0 = x0 - y`` and restore ``y + r0_hat``.
        input_peak: the level normalisation of the inputs: each degraded example is scaled so that its
            peak is ``input_peak`` before the model sees it, and the output scaled back (speech).
        latent_weight: the paper's eta, weight of the latent regulariser (0.1 for speech).
        prior_matching_weight: the paper's lambda, weight of the prior-matching term (0.5 for speech).
        weighting: the denoising term's weighting: ``"elbo"`` (the paper's), ``"min_snr"`` or ``"x0"``.
        snr_gamma: gamma of ``"min_snr"``.
        integration: the name of the integration whose wrapper the denoiser is (filled in by the
            adapter from its denoiser); None for a denoiser of your own.
        integration_kwargs: the wrapper's arguments (e.g. WeatherDiff's ``patch_size``).
        restoration: keyword defaults of ``restore`` saved with the adapter (e.g. CDiffuSE's
            ``inference_betas``, ``mix_noisy``), those its training recipe validated with; only the
            keys its adapter class takes (``RestoreGrad.RESTORATION_KEYS``).
        sample_rate: waveforms' sample rate in Hz (the command line resamples other files to it).
        prior_std: mode ``"constant_prior"``'s sigma, the same everywhere (a positive number); only
            with that mode.
    """

    encoder: EncoderConfig | None = None
    mode: str = "restoregrad"
    prediction_type: str = "epsilon"
    residual: bool = False
    input_peak: float | None = None
    latent_weight: float = 0.1
    prior_matching_weight: float = 0.5
    weighting: str = "elbo"
    snr_gamma: float = 5.0
    integration: str | None = None
    integration_kwargs: dict = field(default_factory=dict)
    restoration: dict = field(default_factory=dict)
    sample_rate: int | None = None
    prior_std: float | None = None

    def __post_init__(self):
        if isinstance(self.encoder, dict):
            object.__setattr__(self, "encoder", EncoderConfig(**self.encoder))
        if self.encoder is not None and not isinstance(self.encoder, EncoderConfig):
            raise ValueError(f"`encoder` must be an EncoderConfig, a dict of its fields or None, got "
                             f"{type(self.encoder).__name__}.")
        check_choice("mode", self.mode, MODES)
        check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        check_bool("residual", self.residual)
        check_number("input_peak", self.input_peak, minimum=0, open_minimum=True, allow_none=True)
        check_number("latent_weight", self.latent_weight, minimum=0)
        check_number("prior_matching_weight", self.prior_matching_weight, minimum=0)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_number("snr_gamma", self.snr_gamma, minimum=0, open_minimum=self.weighting == "min_snr")
        if self.integration is not None and not isinstance(self.integration, str):
            raise ValueError(f"`integration` must be an integration's name or None, got {self.integration!r}.")
        for name in ("integration_kwargs", "restoration"):
            if getattr(self, name) is None:  # None: none
                object.__setattr__(self, name, {})
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"`{name}` must be a dict, got {type(getattr(self, name)).__name__}.")
        check_positive_int("sample_rate", self.sample_rate, allow_none=True)
        check_number("prior_std", self.prior_std, minimum=0, open_minimum=True, allow_none=True)
        if (self.mode == "constant_prior") != (self.prior_std is not None):
            raise ValueError("`prior_std` (the constant sigma) goes with mode 'constant_prior' and only with it; got "
                             f"mode={self.mode!r}, prior_std={self.prior_std!r}.")

    @property
    def signal_kind(self) -> str | None:
        """``"image"`` or ``"waveform"`` (None without an encoder spec)."""
        return None if self.encoder is None else {1: "waveform", 2: "image"}[self.encoder.dims]

    @property
    def channels(self) -> int | None:
        """The signal's channels (None without an encoder spec)."""
        return None if self.encoder is None else self.encoder.in_channels

    def replace(self, **changes) -> "RestoreGradConfig":
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RestoreGradConfig":
        """The config ``to_dict`` wrote; an unknown key is an error naming it."""
        if not isinstance(values, dict):
            raise ValueError(f"a RestoreGradConfig is read from a dict, got {type(values).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown RestoreGradConfig fields {unknown}; expected some of {sorted(known)}.")
        return cls(**values)


#: Entries of a format-1 ``restoregrad_config.json`` that are not the config's (file bookkeeping and
#: descriptive metadata), kept at the top level of the migrated file.
_BOOKKEEPING = ("library_version", "adapter_class", "denoiser_format", "denoiser_library", "denoiser_class",
                "has_posterior_net", "integration_module")
_METADATA = ("base_model", "base_model_revision", "training_data", "metrics")


def migrate_config(saved: dict) -> dict:
    """``restoregrad_config.json`` of any format in the current layout (:data:`FORMAT_VERSION`).

    Format 1 (flat) held the config's fields beside the bookkeeping, named the loss weights ``eta`` and
    ``lam`` in its first releases, recorded the encoders as ``signal_kind``, ``channels`` and
    ``sigma_min`` only, and kept CDiffuSE's saved restoration settings as ``"restoration": null`` when
    there were none. Format 2 is ``{"format_version": 2, "config": RestoreGradConfig.to_dict(),
    "metadata": {...}, <bookkeeping>}``. A file already in format 2 is returned as it is.
    """
    version = saved.get("format_version")
    if version == FORMAT_VERSION:
        return saved
    if version != 1:
        raise ValueError(f"cannot migrate an adapter config of format_version {version!r}; this version reads "
                         f"formats 1 to {FORMAT_VERSION}.")
    dims = {"waveform": 1, "image": 2}.get(saved.get("signal_kind"))
    encoder = None
    if dims is not None and saved.get("channels") is not None:
        encoder = {"dims": dims, "in_channels": saved["channels"], "size": saved.get("encoder_size", "base"),
                   "sigma_min": saved.get("sigma_min") or 0.1, "architecture": "reduced"}
    config = {
        "encoder": encoder,
        "mode": saved.get("mode", "restoregrad"),
        "prediction_type": saved.get("prediction_type", "epsilon"),
        "residual": saved.get("residual", False),
        "input_peak": saved.get("input_peak"),
        "latent_weight": saved.get("latent_weight", saved.get("eta", 0.1)),
        "prior_matching_weight": saved.get("prior_matching_weight", saved.get("lam", 0.5)),
        "weighting": saved.get("weighting", "elbo"),
        "snr_gamma": saved.get("snr_gamma", 5.0),
        "integration": None if saved.get("integration") in (None, "custom") else saved["integration"],
        "integration_kwargs": saved.get("integration_kwargs") or {},
        "restoration": saved.get("restoration") or {},
        "sample_rate": saved.get("sample_rate"),
        "prior_std": None,  # format 1 had no constant-prior mode
    }
    migrated = {"format_version": FORMAT_VERSION, "config": config,
                "metadata": {key: saved.get(key) for key in _METADATA}}
    migrated["metadata"]["metrics"] = migrated["metadata"]["metrics"] or {}
    migrated.update({key: saved[key] for key in _BOOKKEEPING if key in saved})
    return migrated
