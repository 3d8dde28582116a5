"""Learned-prior diffusion scheduler.

`LearnedPriorScheduler` is a diffusers scheduler with the configuration of `DDPMScheduler`. Called
without a prior it *is* a DDPM scheduler (same config, same generator, same numbers). Called with a
standard-deviation map ``prior_std`` (the Prior Net's output, ``Sigma_prior = diag(prior_std**2)``)
it runs RestoreGrad's reverse process (paper Algorithm 2): the chain starts from
``x_T = prior_std * z`` and the fresh noise of every step is ``prior_std * z``.

Why that is all it takes (the *whitening* argument, DESIGN.md): with ``u = x / prior_std`` the
forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) prior_std z`` becomes the standard one,
``u_t = sqrt(abar_t) u_0 + sqrt(1 - abar_t) z``, and every linear-Gaussian update is the standard
update applied in u-space. :func:`whitened_step` uses this to sample the learned prior with *any*
stock diffusers scheduler (DDIM, DPM-Solver++, UniPC, ...).

Fast sampling (DiffWave / CDiffuSE) is supported by ``set_timesteps(inference_betas=[...])``: the
reverse chain then uses the short inference schedule, and the model is called at the *fractional*
training step whose ``sqrt(abar)`` matches each inference step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddpm import betas_for_alpha_bar, rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

#: DiffWave / CDiffuSE fast-sampling inference schedules (Kong et al. 2021; Lu et al. 2022).
FAST_INFERENCE_BETAS_6 = (1e-4, 1e-3, 0.01, 0.05, 0.2, 0.35)
FAST_INFERENCE_BETAS_3 = (0.05, 0.2, 0.35)

_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_SPACINGS = ("linspace", "leading", "trailing")


@dataclass
class LearnedPriorSchedulerOutput(BaseOutput):
    """Output of :meth:`LearnedPriorScheduler.step`.

    Args:
        prev_sample: ``x_{t-1}``, same shape as the sample.
        pred_original_sample: the model's estimate of ``x_0`` at this step, same shape.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def check_prior_std(prior_std: torch.Tensor, sample: torch.Tensor, name: str = "prior_std") -> None:
    """Raise a ValueError unless ``prior_std`` is a finite, positive floating map broadcastable to ``sample``."""
    if not isinstance(prior_std, torch.Tensor) or not prior_std.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {type(prior_std).__name__}"
                         f"{'' if not isinstance(prior_std, torch.Tensor) else ' of dtype ' + str(prior_std.dtype)}.")
    try:
        torch.broadcast_shapes(prior_std.shape, sample.shape)
    except RuntimeError:
        raise ValueError(f"`{name}` of shape {tuple(prior_std.shape)} does not broadcast to the sample's shape "
                         f"{tuple(sample.shape)}; expected a standard-deviation map of the sample's shape.") from None
    if not torch.isfinite(prior_std).all():
        raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
    if (prior_std <= 0).any():
        raise ValueError(f"`{name}` must be > 0 everywhere (a standard deviation), got a minimum of "
                         f"{prior_std.min().item():.4g}.")


def fractional_timesteps(train_alphas_cumprod: torch.Tensor, inference_alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Map each inference step to the fractional training step with the same ``sqrt(abar)``.

    DiffWave/CDiffuSE fast sampling: for inference step s find the training step t (0-based) with
    ``sqrt(abar_train[t+1]) <= sqrt(abar_infer[s]) <= sqrt(abar_train[t])`` and interpolate linearly
    in ``sqrt(abar)``: ``t + (sqrt(abar_train[t]) - sqrt(abar_infer[s])) /
    (sqrt(abar_train[t]) - sqrt(abar_train[t+1]))``.

    Returns a float64 tensor of the same length as ``inference_alphas_cumprod`` (ascending s).
    """
    train = train_alphas_cumprod.double().sqrt()
    infer = inference_alphas_cumprod.double().sqrt()
    steps = []
    tolerance = 1e-6  # the training schedule is stored in float32
    for s, target in enumerate(infer.tolist()):
        if target > train[0] + tolerance or target < train[-1] - tolerance:
            raise ValueError(
                f"`inference_betas` step {s} reaches sqrt(alpha_bar) = {target:.6f}, outside the training range "
                f"[{train[-1].item():.6f}, {train[0].item():.6f}]; the model was never trained at that noise level."
            )
        # Largest t with train[t] >= target (train is decreasing).
        t = int(torch.searchsorted(-train, torch.tensor(-target, dtype=torch.float64), right=True).item()) - 1
        t = min(max(t, 0), len(train) - 1)
        if t == len(train) - 1:
            steps.append(float(t))
            continue
        span = (train[t] - train[t + 1]).item()
        steps.append(min(max(t + (train[t].item() - target) / span, 0.0), len(train) - 1.0))
    return torch.tensor(steps, dtype=torch.float64)


class LearnedPriorScheduler(SchedulerMixin, ConfigMixin):
    """DDPM scheduler whose Gaussian prior may be ``N(0, diag(prior_std**2))`` (RestoreGrad, Algorithm 2).

    The configuration mirrors `diffusers.DDPMScheduler` (same argument names and meanings) except
    that ``clip_sample`` defaults to False: restoration samples need not lie in [-1, 1] and clipping
    breaks the whitening equivalence.

    Args:
        num_train_timesteps: number of training steps T.
        beta_start, beta_end, beta_schedule, trained_betas: the training noise schedule, as in DDPM.
        variance_type, clip_sample, prediction_type, thresholding, dynamic_thresholding_ratio,
        clip_sample_range, sample_max_value, timestep_spacing, steps_offset, rescale_betas_zero_snr:
            as in `diffusers.DDPMScheduler`.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"] = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = False,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ):
        if variance_type not in _VARIANCE_TYPES:
            raise ValueError(f"`variance_type` must be one of {_VARIANCE_TYPES}, got {variance_type!r}.")
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {_PREDICTION_TYPES}, got {prediction_type!r}.")
        if timestep_spacing not in _SPACINGS:
            raise ValueError(f"`timestep_spacing` must be one of {_SPACINGS}, got {timestep_spacing!r}.")

        if trained_betas is not None:
            self.betas = torch.tensor(trained_betas, dtype=torch.float32)
        elif beta_schedule == "linear":
            self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":  # latent-diffusion schedule: linear in sqrt(beta)
            self.betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            self.betas = betas_for_alpha_bar(num_train_timesteps)
        elif beta_schedule == "laplace":
            self.betas = betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="laplace")
        elif beta_schedule == "sigmoid":
            self.betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
        else:
            raise ValueError(
                "`beta_schedule` must be one of ('linear', 'scaled_linear', 'squaredcos_cap_v2', 'sigmoid', "
                f"'laplace'), got {beta_schedule!r}."
            )
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)

        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0  # in units of prior_std: x_T = prior_std * z

        self.variance_type = variance_type
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        # Fast-sampling state (set_timesteps(inference_betas=...)): the reverse chain's own schedule.
        self.inference_betas: torch.Tensor | None = None
        self.inference_alphas_cumprod: torch.Tensor | None = None

    # ------------------------------------------------------------------ schedule
    @property
    def alpha_bar_T(self) -> torch.Tensor:
        """``abar_T``, the last training ``alpha_bar``; enters the latent-regulariser term of eq. 10."""
        return self.alphas_cumprod[-1]

    @property
    def fast_sampling(self) -> bool:
        """True after ``set_timesteps(inference_betas=...)``."""
        return self.inference_betas is not None

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """No scaling is needed (diffusers interface)."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        inference_betas: Sequence[float] | None = None,
    ) -> None:
        """Choose the reverse chain's timesteps.

        Exactly as `DDPMScheduler.set_timesteps` for ``num_inference_steps`` or custom ``timesteps``.
        With ``inference_betas`` (e.g. ``FAST_INFERENCE_BETAS_6``) the chain runs the DiffWave/CDiffuSE
        fast sampler: ``len(inference_betas)`` steps with their own betas, and ``self.timesteps``
        holds the fractional training steps (float, descending) at which the model is evaluated.
        """
        given = [a for a, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                ("inference_betas", inference_betas)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"Pass only one of `num_inference_steps`, `timesteps` or `inference_betas`; got {given}.")
        if not given:
            raise ValueError("Pass one of `num_inference_steps`, `timesteps` or `inference_betas`.")
        T = self.config.num_train_timesteps
        self.inference_betas = None
        self.inference_alphas_cumprod = None

        if inference_betas is not None:
            betas = torch.as_tensor(list(inference_betas), dtype=torch.float64)
            if betas.ndim != 1 or len(betas) == 0 or not ((betas > 0) & (betas < 1)).all():
                raise ValueError(f"`inference_betas` must be a non-empty list of values in (0, 1), got {inference_betas}.")
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            steps = fractional_timesteps(self.alphas_cumprod, alphas_cumprod)
            self.inference_betas = betas.float()
            self.inference_alphas_cumprod = alphas_cumprod.float()
            self.num_inference_steps = len(betas)
            self.custom_timesteps = True
            self.timesteps = steps.flip(0).float().to(device)
            return

        if timesteps is not None:
            if any(timesteps[i] >= timesteps[i - 1] for i in range(1, len(timesteps))):
                raise ValueError(f"`timesteps` must be in strictly descending order, got {list(timesteps)}.")
            if timesteps[0] >= T:
                raise ValueError(f"`timesteps` must start below `num_train_timesteps` = {T}, got {timesteps[0]}.")
            self.custom_timesteps = True
            self.num_inference_steps = len(timesteps)
            array = np.array(timesteps, dtype=np.int64)
        else:
            if not isinstance(num_inference_steps, int) or not 0 < num_inference_steps <= T:
                raise ValueError(f"`num_inference_steps` must be an integer in [1, {T}] (the training steps), "
                                 f"got {num_inference_steps!r}.")
            self.custom_timesteps = False
            self.num_inference_steps = num_inference_steps
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                array = np.linspace(0, T - 1, num_inference_steps).round()[::-1].copy().astype(np.int64)
            elif spacing == "leading":
                ratio = T // num_inference_steps
                array = (np.arange(0, num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)
                array += self.config.steps_offset
            else:  # trailing
                ratio = T / num_inference_steps
                array = np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1
        self.timesteps = torch.from_numpy(array).to(device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep after ``timestep`` in the reverse chain (-1 after the last one)."""
        if self.custom_timesteps or self.num_inference_steps:
            index = self._index_of(timestep)
            return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else torch.tensor(-1)
        return timestep - 1

    def _index_of(self, timestep: int | float | torch.Tensor) -> int:
        matches = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero(as_tuple=True)[0]
        if len(matches) == 0:
            raise ValueError(f"`timestep` {timestep} is not one of the scheduler's timesteps {self.timesteps.tolist()}; "
                             "call `set_timesteps` first and pass its timesteps.")
        return int(matches[0])

    def _alpha_bars(self, timestep: int | float | torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """``(abar_t, abar_prev, is_last)`` for a reverse step at ``timestep``.

        The step's scalar arithmetic runs in the sample's precision: float32 samples give exactly
        DDPMScheduler's numbers, float64 samples a float64 step (of the stored float32 schedule).
        """
        if self.fast_sampling:
            s = len(self.timesteps) - 1 - self._index_of(timestep)  # inference step, 0 = last
            abar_t = self.inference_alphas_cumprod[s]
            abar_prev = self.inference_alphas_cumprod[s - 1] if s > 0 else self.one
            is_last = s == 0
        else:
            t = int(timestep)
            prev_t = int(self.previous_timestep(timestep))
            abar_t = self.alphas_cumprod[t]
            abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
            # DDPM adds noise whenever t > 0 (with fixed_small its variance is 0 at a final step anyway).
            is_last = t == 0
        if not dtype.is_floating_point or dtype.itemsize < 4:
            dtype = torch.float32
        return abar_t.to(dtype), abar_prev.to(dtype), is_last

    def _variance(self, abar_t, abar_prev, predicted_variance):
        """Per-step variance in DDPM's conventions (the log for the *_log and learned_range types)."""
        beta_t = 1 - abar_t / abar_prev
        # Posterior variance, Ho et al. (2020) eq. 7: (1 - abar_{t-1}) / (1 - abar_t) * beta_t.
        posterior = torch.clamp((1 - abar_prev) / (1 - abar_t) * beta_t, min=1e-20)
        kind = self.config.variance_type
        if kind == "fixed_small":
            return posterior
        if kind == "fixed_small_log":
            return torch.exp(0.5 * torch.log(posterior))
        if kind == "fixed_large":
            return beta_t
        if kind == "fixed_large_log":
            return torch.log(beta_t)
        if kind == "learned":
            return predicted_variance
        frac = (predicted_variance + 1) / 2  # learned_range: interpolate the log-variance
        return frac * torch.log(beta_t) + (1 - frac) * torch.log(posterior)

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding (Saharia et al. 2022), per sample, as in diffusers."""
        dtype = sample.dtype
        batch, channels, *rest = sample.shape
        flat = sample.float() if dtype not in (torch.float32, torch.float64) else sample
        flat = flat.reshape(batch, channels * int(np.prod(rest)))
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(batch, channels, *rest).to(dtype)

    # ------------------------------------------------------------------ noise
    def sample_prior(self, prior_std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw from the learned prior ``N(0, diag(prior_std**2))``: ``prior_std * z``.

        Used for ``x_T`` and for the training noise. ``prior_std`` has the signal's shape.
        """
        check_prior_std(prior_std, prior_std)
        z = randn_tensor(prior_std.shape, generator=generator, device=prior_std.device, dtype=prior_std.dtype)
        return prior_std * z

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (paper Algorithm 1, step 2).

        ``noise`` is already drawn from the prior (``prior_std * z``); ``timesteps`` has shape (B,).
        """
        if noise.shape != original_samples.shape:
            raise ValueError(f"`noise` has shape {tuple(noise.shape)}, expected the shape of `original_samples` "
                             f"{tuple(original_samples.shape)}.")
        self.alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device)
        abar = self.alphas_cumprod.to(dtype=original_samples.dtype)[timesteps.to(original_samples.device)].flatten()
        abar = abar.reshape(-1, *([1] * (original_samples.ndim - 1)))
        return abar**0.5 * original_samples + (1 - abar) ** 0.5 * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """The v-prediction target ``sqrt(abar_t) noise - sqrt(1 - abar_t) x_0``."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=sample.device)
        abar = self.alphas_cumprod.to(dtype=sample.dtype)[timesteps.to(sample.device)].flatten()
        abar = abar.reshape(-1, *([1] * (sample.ndim - 1)))
        return abar**0.5 * noise - (1 - abar) ** 0.5 * sample

    # ------------------------------------------------------------------ reverse step
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        prior_std: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> LearnedPriorSchedulerOutput | tuple:
        """One reverse step ``x_t -> x_{t-1}``.

        With ``prior_std=None`` this equals `DDPMScheduler.step`. With a standard-deviation map it is
        RestoreGrad's Algorithm 2: ``x_{t-1} = mu_theta(x_t) + s_t * prior_std * z`` where, for epsilon
        prediction, ``mu_theta = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t)`` and
        ``s_t^2 = (1 - abar_{t-1}) / (1 - abar_t) beta_t``; no noise at the last step.

        Args:
            model_output: ``(B, C, *spatial)`` (``2C`` channels for learned variance types).
            timestep: one of ``self.timesteps``.
            sample: ``x_t``, ``(B, C, *spatial)``.
            generator: source of the fresh noise ``z``.
            prior_std: ``sigma_prior``, broadcastable to ``sample``; None for the standard prior.
        """
        if prior_std is not None:
            check_prior_std(prior_std, sample)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)

        abar_t, abar_prev, is_last = self._alpha_bars(timestep, sample.dtype)
        alpha_t = abar_t / abar_prev
        beta_t = 1 - alpha_t

        # x_0 estimate (Ho et al. eq. 15); all three parametrisations are linear in (x_t, output).
        kind = self.config.prediction_type
        if kind == "epsilon":
            pred_original_sample = (sample - (1 - abar_t) ** 0.5 * model_output) / abar_t**0.5
        elif kind == "sample":
            pred_original_sample = model_output
        else:  # v_prediction
            pred_original_sample = abar_t**0.5 * sample - (1 - abar_t) ** 0.5 * model_output

        # Clipping acts on x_0 in data space, so it means the same with or without a prior.
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-r, r)

        # Posterior mean (Ho et al. eq. 7). For epsilon prediction without clipping this equals
        # Algorithm 2's (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t).
        x0_coeff = abar_prev**0.5 * beta_t / (1 - abar_t)
        xt_coeff = alpha_t**0.5 * (1 - abar_prev) / (1 - abar_t)
        prev_sample = x0_coeff * pred_original_sample + xt_coeff * sample

        if not is_last:
            z = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                             dtype=model_output.dtype)
            if prior_std is not None:
                z = prior_std * z  # fresh noise from the learned prior: N(0, Sigma_prior)
            variance = self._variance(abar_t, abar_prev, predicted_variance)
            kind = self.config.variance_type
            if kind == "fixed_small_log":
                std = variance  # already a standard deviation
            elif kind in ("learned_range", "fixed_large_log"):
                std = torch.exp(0.5 * variance)  # a log-variance
            else:
                std = variance**0.5
            prev_sample = prev_sample + std * z

        if not return_dict:
            return prev_sample, pred_original_sample
        return LearnedPriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


# ---------------------------------------------------------------------- whitening
def _check_no_clipping(scheduler) -> None:
    config = getattr(scheduler, "config", {})
    for flag in ("clip_sample", "thresholding"):
        if config.get(flag, False):
            raise ValueError(
                f"`scheduler` has `{flag}=True`; sampling the learned prior by whitening needs it off "
                f"(it would clip in whitened units). Build it with `{flag}=False`."
            )


def whitened_initial_sample(scheduler, prior_std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_T`` for any diffusers scheduler sampling the learned prior: ``prior_std * init_noise_sigma * z``."""
    check_prior_std(prior_std, prior_std)
    z = randn_tensor(prior_std.shape, generator=generator, device=prior_std.device, dtype=prior_std.dtype)
    return prior_std * (scheduler.init_noise_sigma * z)


def whitened_step(
    scheduler,
    model_output: torch.Tensor,
    timestep,
    sample: torch.Tensor,
    prior_std: torch.Tensor,
    **step_kwargs,
) -> LearnedPriorSchedulerOutput:
    """Sample the learned prior with any stock diffusers scheduler (DESIGN.md, "Whitening").

    With ``u = x / prior_std`` the learned-prior diffusion is the standard one, and the model's
    output (noise, x_0 or v: all linear in the signal) becomes ``output / prior_std``. So: divide,
    call the scheduler's own ``step``, multiply back. Works for DDPM, DDIM, DPM-Solver++, UniPC, ...
    as long as sample clipping and thresholding are off (they would act in whitened units).

    Returns ``prev_sample`` and (when the scheduler gives one) ``pred_original_sample`` in data units.
    """
    _check_no_clipping(scheduler)
    check_prior_std(prior_std, sample)
    if model_output.shape != sample.shape:
        raise ValueError(f"`model_output` has shape {tuple(model_output.shape)}, expected the sample's shape "
                         f"{tuple(sample.shape)} (learned-variance outputs cannot be whitened).")
    out = scheduler.step(model_output / prior_std, timestep, sample / prior_std, return_dict=True, **step_kwargs)
    pred_x0 = getattr(out, "pred_original_sample", None)
    return LearnedPriorSchedulerOutput(
        prev_sample=out.prev_sample * prior_std,
        pred_original_sample=None if pred_x0 is None else pred_x0 * prior_std,
    )


def scale_model_input_whitened(scheduler, sample: torch.Tensor, timestep, prior_std: torch.Tensor) -> torch.Tensor:
    """``scheduler.scale_model_input`` applied in whitened units (identity for DDPM/DDIM/DPM-Solver)."""
    return scheduler.scale_model_input(sample / prior_std, timestep) * prior_std


__all__ = [
    "FAST_INFERENCE_BETAS_3",
    "FAST_INFERENCE_BETAS_6",
    "LearnedPriorScheduler",
    "LearnedPriorSchedulerOutput",
    "fractional_timesteps",
    "whitened_initial_sample",
    "whitened_step",
    "scale_model_input_whitened",
]
