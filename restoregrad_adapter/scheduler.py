"""Learned-prior diffusion scheduler.

`LearnedPriorScheduler` is a diffusers scheduler (``SchedulerMixin``, ``ConfigMixin``) with
`diffusers.DDPMScheduler`'s configuration (the same arguments, meanings and defaults, except that
``clip_sample`` defaults to False) whose ``step`` also takes a standard-deviation map ``prior_std``
(the Prior Net's output, ``Sigma_prior = diag(prior_std**2)``). Without one it steps exactly as
DDPMScheduler: same config, same generator use, same numbers. With one it runs RestoreGrad's reverse
process (paper Algorithm 2): the chain starts from ``x_T = prior_std * z`` and the fresh noise of
every step is ``prior_std * z``. Its configuration loads into DDPMScheduler and the other
Karras-diffusion schedulers, and theirs into it (``from_config``).

There is one reverse step, DDPM's (Ho et al. 2020: eq. 15 estimates ``x_0``, eq. 7 gives the
posterior mean and variance). The prior enters only through :func:`whitened_step`
(docs/design.md, "Whitening"): with ``u = x / prior_std`` the forward process
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) prior_std z`` becomes the standard one,
``u_t = sqrt(abar_t) u_0 + sqrt(1 - abar_t) z``, and every linear-Gaussian update is the standard
update applied in u-space. The same function samples the learned prior with *any* stock diffusers
scheduler (DDIM, DPM-Solver++, UniPC, ...).

Fast sampling (DiffWave / CDiffuSE) is supported by ``set_timesteps(inference_betas=[...])``: the
reverse chain is then the same DDPM step over the short inference schedule, and the model is called
at the *fractional* training step whose ``sqrt(abar)`` matches each inference step.

Checking ``prior_std``: ``step``, ``sample_prior`` and the whitening functions check its shape and
values when called with ``validate_args=True`` (the default: one host synchronisation). The
restoration loop checks the map once per restoration and passes ``validate_args=False``, so that no
step makes a host synchronisation for it.

Methods marked ``# Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.<name>`` are
diffusers' own, line for line (``with A->B``: with A renamed B); tests/test_scheduler.py compares
them with the installed diffusers.
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

from restoregrad_adapter.checks import check_choice, check_no_clipping, check_positive_int, check_std, check_std_shape

#: DiffWave / CDiffuSE fast-sampling inference schedules (Kong et al. 2021; Lu et al. 2022).
FAST_INFERENCE_BETAS_6 = (1e-4, 1e-3, 0.01, 0.05, 0.2, 0.35)
FAST_INFERENCE_BETAS_3 = (0.05, 0.2, 0.35)

_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_SPACINGS = ("linspace", "leading", "trailing")
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
_LEARNED_VARIANCES = ("learned", "learned_range")


@dataclass
class LearnedPriorSchedulerOutput(BaseOutput):
    """Output of :meth:`LearnedPriorScheduler.step` and :func:`whitened_step`.

    Args:
        prev_sample: ``x_{t-1}``, same shape as the sample.
        pred_original_sample: the model's estimate of ``x_0`` at this step, same shape.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def noise_from_prediction(prediction_type: str, prediction: torch.Tensor, sample: torch.Tensor,
                          alpha_bar: torch.Tensor | float) -> torch.Tensor:
    """The noise estimate ``eps_hat`` a model output in ``prediction_type`` implies for ``x_t = sample``.

    With ``a = sqrt(abar_t)`` and ``s = sqrt(1 - abar_t)`` (docs/design.md, "Parameterizations and
    targets"): ``epsilon`` is ``eps_hat`` itself; ``sample`` (``x0_hat``) gives ``(x_t - a x0_hat) / s``;
    ``v_prediction`` gives ``s x_t + a v_hat``. ``alpha_bar`` broadcasts to ``sample`` (a number, or
    one value per example shaped ``(B, 1, ...)``).
    """
    if prediction_type == "epsilon":
        return prediction
    a, s = alpha_bar ** 0.5, (1 - alpha_bar) ** 0.5  # numbers or tensors alike
    if prediction_type == "sample":
        return (sample - a * prediction) / s
    return s * sample + a * prediction  # v_prediction


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


def _integer_step(timestep: int | float | torch.Tensor) -> int | torch.Tensor:
    """A training step that indexes the schedule: integral floats (``500.0``, ``tensor(500.)``) as ints."""
    if isinstance(timestep, float) or (isinstance(timestep, torch.Tensor) and timestep.is_floating_point()):
        if float(timestep) != int(timestep):
            raise ValueError(f"`timestep` {float(timestep)} is not a training step; fractional steps need "
                             "`set_timesteps(inference_betas=...)`.")
        return int(timestep)
    return timestep


def _training_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
                    trained_betas, rescale_betas_zero_snr: bool) -> torch.Tensor:
    """The float32 training betas of a DDPM configuration, as `diffusers.DDPMScheduler` defines each schedule
    (``test_training_schedule_equals_ddpm`` compares them, bit for bit)."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":  # latent diffusion: linear in sqrt(beta)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule == "squaredcos_cap_v2":  # Glide's cosine schedule
        betas = betas_for_alpha_bar(num_train_timesteps)
    elif beta_schedule == "laplace":
        betas = betas_for_alpha_bar(num_train_timesteps, alpha_transform_type="laplace")
    else:  # "sigmoid", GeoDiff's
        betas = torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


class LearnedPriorScheduler(SchedulerMixin, ConfigMixin):
    """DDPM scheduler whose Gaussian prior may be ``N(0, diag(prior_std**2))`` (RestoreGrad, Algorithm 2).

    It has `diffusers.DDPMScheduler`'s configuration (argument names, meanings and defaults) except
    that ``clip_sample`` defaults to False: restoration samples need not lie in [-1, 1], and clipping
    does not commute with the whitening that applies the prior. It saves and loads as
    ``scheduler_config.json`` under its own class name. Unknown ``prediction_type``,
    ``timestep_spacing`` or ``beta_schedule`` values raise a ValueError at construction;
    ``variance_type`` falls through like DDPMScheduler's (an unknown type is "fixed_small"), and
    "fixed_large_log" is Glide's max-log variance ``beta_t`` (DDPMScheduler's step takes the square
    root of its logarithm and returns NaN).

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
        check_choice("prediction_type", prediction_type, _PREDICTION_TYPES)
        check_choice("timestep_spacing", timestep_spacing, _SPACINGS)
        if trained_betas is None:
            check_choice("beta_schedule", beta_schedule, _BETA_SCHEDULES)
        num_train_timesteps = check_positive_int("num_train_timesteps", num_train_timesteps)
        self.betas = _training_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                     rescale_betas_zero_snr)
        if self.betas.ndim != 1 or len(self.betas) == 0 or not bool(((self.betas > 0) & (self.betas <= 1)).all()):
            if trained_betas is not None:
                raise ValueError(f"`trained_betas` must be a non-empty list of values in (0, 1] (no NaN), got "
                                 f"{list(trained_betas)[:8]}{' ...' if len(trained_betas) > 8 else ''}.")
            raise ValueError(f"the training betas must lie in (0, 1]; `beta_start` = {beta_start!r}, `beta_end` = "
                             f"{beta_end!r} with beta_schedule {beta_schedule!r} give {self.betas.min().item():.4g} to "
                             f"{self.betas.max().item():.4g}.")
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)
        # The standard deviation of x_T, in units of prior_std: x_T = prior_std * z.
        self.init_noise_sigma = 1.0
        # The reverse chain, chosen by set_timesteps.
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self.variance_type = variance_type
        # Fast-sampling state (set_timesteps(inference_betas=...)): the reverse chain's own schedule.
        self.inference_betas: torch.Tensor | None = None
        self.inference_alphas_cumprod: torch.Tensor | None = None
        self._inference_chain: LearnedPriorScheduler | None = None

    # ------------------------------------------------------------------ schedule
    @property
    def alpha_bar_T(self) -> torch.Tensor:
        """``abar_T``, the last training ``alpha_bar``; enters the latent-regulariser term of eq. 10."""
        return self.alphas_cumprod[-1]

    @property
    def fast_sampling(self) -> bool:
        """True after ``set_timesteps(inference_betas=...)``."""
        return self.inference_betas is not None

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.scale_model_input
    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """
        Ensures interchangeability with schedulers that need to scale the denoising model input depending on the
        current timestep.

        Args:
            sample (`torch.Tensor`):
                The input sample.
            timestep (`int`, *optional*):
                The current timestep in the diffusion chain.

        Returns:
            `torch.Tensor`:
                A scaled input sample.
        """
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        inference_betas: Sequence[float] | None = None,
    ) -> None:
        """Choose the reverse chain's timesteps.

        DDPMScheduler's strided (``num_inference_steps``) or custom (``timesteps``) chains, after
        checks that name the wrong argument. With ``inference_betas`` (e.g. ``FAST_INFERENCE_BETAS_6``)
        the chain runs the DiffWave/CDiffuSE fast sampler: ``len(inference_betas)`` DDPM steps over
        their own betas, and ``self.timesteps`` holds the fractional training steps (float,
        descending) at which the model is evaluated.
        """
        given = [a for a, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                ("inference_betas", inference_betas)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"Pass only one of `num_inference_steps`, `timesteps` or `inference_betas`; got {given}.")
        if not given:
            raise ValueError("Pass one of `num_inference_steps`, `timesteps` or `inference_betas`.")
        T = self.config.num_train_timesteps
        self.inference_betas = self.inference_alphas_cumprod = self._inference_chain = None

        if inference_betas is not None:
            betas = torch.as_tensor(list(inference_betas), dtype=torch.float64)
            if betas.ndim != 1 or len(betas) == 0 or not ((betas > 0) & (betas < 1)).all():
                raise ValueError(f"`inference_betas` must be a non-empty list of values in (0, 1), got {inference_betas}.")
            alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
            steps = fractional_timesteps(self.alphas_cumprod, alphas_cumprod)
            self.inference_betas = betas.float()
            self.inference_alphas_cumprod = alphas_cumprod.float()
            # The reverse chain is this scheduler's DDPM step over the inference schedule: a copy of
            # the configuration whose training betas are the inference betas, stepped at index s, with
            # the schedule computed here (in float64, then stored in float32).
            chain = LearnedPriorScheduler.from_config(self.config, num_train_timesteps=len(betas),
                                                      trained_betas=betas.tolist(), rescale_betas_zero_snr=False)
            chain.alphas_cumprod = self.inference_alphas_cumprod
            self._inference_chain = chain
            self.num_inference_steps = len(betas)
            self.custom_timesteps = True
            self.timesteps = steps.flip(0).float().to(device)
            return

        if timesteps is not None:
            if len(timesteps) == 0 or any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) for t in timesteps):
                raise ValueError(f"`timesteps` must be a non-empty list of integer training steps, got {list(timesteps)}.")
            if min(timesteps) < 0:
                raise ValueError(f"`timesteps` must be training steps >= 0, got {list(timesteps)}.")
            if any(timesteps[i] >= timesteps[i - 1] for i in range(1, len(timesteps))):
                raise ValueError(f"`timesteps` must be in strictly descending order, got {list(timesteps)}.")
            if timesteps[0] >= T:
                raise ValueError(f"`timesteps` must start below `num_train_timesteps` = {T}, got {timesteps[0]}.")
        elif isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)) \
                or not 0 < num_inference_steps <= T:
            raise ValueError(f"`num_inference_steps` must be an integer in [1, {T}] (the training steps), "
                             f"got {num_inference_steps!r}.")
        else:
            num_inference_steps = int(num_inference_steps)  # np.int64 and the like, as diffusers accepts
        self._ddpm_set_timesteps(num_inference_steps=num_inference_steps, device=device, timesteps=timesteps)
        if timesteps is not None:
            self.num_inference_steps = len(timesteps)

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.set_timesteps with set_timesteps->_ddpm_set_timesteps
    def _ddpm_set_timesteps(
        self,
        num_inference_steps: int = None,
        device: str | torch.device = None,
        timesteps: list[int] | None = None,
    ):
        """
        Sets the discrete timesteps used for the diffusion chain (to be run before inference).

        Args:
            num_inference_steps (`int`, *optional*):
                The number of diffusion steps used when generating samples with a pre-trained model. If used,
                `timesteps` must be `None`.
            device (`str` or `torch.device`, *optional*):
                The device to which the timesteps should be moved to. If `None`, the timesteps are not moved.
            timesteps (`list[int]`, *optional*):
                Custom timesteps used to support arbitrary spacing between timesteps. If `None`, then the default
                timestep spacing strategy of equal spacing between timesteps is used. If `timesteps` is passed,
                `num_inference_steps` must be `None`.

        """
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")

        if timesteps is not None:
            for i in range(1, len(timesteps)):
                if timesteps[i] >= timesteps[i - 1]:
                    raise ValueError("`custom_timesteps` must be in descending order.")

            if timesteps[0] >= self.config.num_train_timesteps:
                raise ValueError(
                    f"`timesteps` must start before `self.config.train_timesteps`: {self.config.num_train_timesteps}."
                )

            timesteps = np.array(timesteps, dtype=np.int64)
            self.custom_timesteps = True
        else:
            if num_inference_steps > self.config.num_train_timesteps:
                raise ValueError(
                    f"`num_inference_steps`: {num_inference_steps} cannot be larger than `self.config.train_timesteps`:"
                    f" {self.config.num_train_timesteps} as the unet model trained with this scheduler can only handle"
                    f" maximal {self.config.num_train_timesteps} timesteps."
                )

            self.num_inference_steps = num_inference_steps
            self.custom_timesteps = False

            # "linspace", "leading", "trailing" corresponds to annotation of Table 2. of https://huggingface.co/papers/2305.08891
            if self.config.timestep_spacing == "linspace":
                timesteps = (
                    np.linspace(0, self.config.num_train_timesteps - 1, num_inference_steps)
                    .round()[::-1]
                    .copy()
                    .astype(np.int64)
                )
            elif self.config.timestep_spacing == "leading":
                step_ratio = self.config.num_train_timesteps // self.num_inference_steps
                # creates integer timesteps by multiplying by ratio
                # casting to int to avoid issues when num_inference_step is power of 3
                timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)
                timesteps += self.config.steps_offset
            elif self.config.timestep_spacing == "trailing":
                step_ratio = self.config.num_train_timesteps / self.num_inference_steps
                # creates integer timesteps by multiplying by ratio
                # casting to int to avoid issues when num_inference_step is power of 3
                timesteps = np.round(np.arange(self.config.num_train_timesteps, 0, -step_ratio)).astype(np.int64)
                timesteps -= 1
            else:
                raise ValueError(
                    f"{self.config.timestep_spacing} is not supported. Please make sure to choose one of 'linspace', 'leading' or 'trailing'."
                )

        self.timesteps = torch.from_numpy(timesteps).to(device)

    def previous_timestep(self, timestep: int | float | torch.Tensor) -> int | torch.Tensor:
        """The timestep after ``timestep`` in the reverse chain (-1 after the last one), as in DDPMScheduler.

        A timestep that is not in the chain raises a ValueError naming `timestep`.
        """
        if self.custom_timesteps or self.num_inference_steps:
            index = self._index_of(timestep)
            return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]
        return timestep - 1

    def _index_of(self, timestep: int | float | torch.Tensor) -> int:
        matches = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero(as_tuple=True)[0]
        if len(matches) == 0:
            raise ValueError(f"`timestep` {timestep} is not one of the scheduler's timesteps {self.timesteps.tolist()}; "
                             "call `set_timesteps` first and pass its timesteps.")
        return int(matches[0])

    def _schedule(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(alphas_cumprod, one)`` in the precision of a step: float64 for a float64 sample (a float64 step of
        the stored float32 schedule), else the stored float32 tensors, as DDPMScheduler reads them."""
        if dtype == torch.float64:
            return self.alphas_cumprod.double(), self.one.double()
        return self.alphas_cumprod, self.one

    def _get_variance(self, t: int, predicted_variance: torch.Tensor | None = None,
                      variance_type: str | None = None) -> torch.Tensor:
        """The variance of the step at ``t`` (Ho et al. eq. 7), as DDPMScheduler's ``_get_variance`` computes it
        for each ``variance_type`` (the configuration's unless given), except "fixed_large_log": Glide's
        max-log variance is ``beta_t``, returned as the variance ``step`` expects (DDPMScheduler returns
        ``log(beta_t)``, of which its step then takes the square root)."""
        prev_t = self.previous_timestep(t)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        return self._variance(alpha_prod_t, alpha_prod_t_prev, predicted_variance, variance_type)

    def _variance(self, alpha_prod_t: torch.Tensor, alpha_prod_t_prev: torch.Tensor,
                  predicted_variance: torch.Tensor | None, variance_type: str | None = None) -> torch.Tensor:
        """:meth:`_get_variance` from the step's ``abar_t`` and ``abar_{t-1}`` (in the step's precision)."""
        current_beta_t = 1 - alpha_prod_t / alpha_prod_t_prev
        # The posterior variance (Ho et al. eq. 6 and 7), kept above 0 for the logarithms below.
        variance = torch.clamp((1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
        if variance_type is None:
            variance_type = self.config.variance_type
        if variance_type == "fixed_small_log":  # rl-diffuser: the standard deviation itself
            return torch.exp(0.5 * torch.log(variance))
        if variance_type in ("fixed_large", "fixed_large_log"):
            return current_beta_t
        if variance_type == "learned":
            return predicted_variance
        if variance_type == "learned_range":  # a log-variance between the two bounds
            frac = (predicted_variance + 1) / 2
            return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
        return variance  # "fixed_small", and any type DDPMScheduler does not know

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler._threshold_sample
    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """
        Apply dynamic thresholding to the predicted sample.

        "Dynamic thresholding: At each sampling step we set s to a certain percentile absolute pixel value in xt0 (the
        prediction of x_0 at timestep t), and if s > 1, then we threshold xt0 to the range [-s, s] and then divide by
        s. Dynamic thresholding pushes saturated pixels (those near -1 and 1) inwards, thereby actively preventing
        pixels from saturation at each step. We find that dynamic thresholding results in significantly better
        photorealism as well as better image-text alignment, especially when using very large guidance weights."

        https://huggingface.co/papers/2205.11487

        Args:
            sample (`torch.Tensor`):
                The predicted sample to be thresholded.

        Returns:
            `torch.Tensor`:
                The thresholded sample.
        """
        dtype = sample.dtype
        batch_size, channels, *remaining_dims = sample.shape

        if dtype not in (torch.float32, torch.float64):
            sample = sample.float()  # upcast for quantile calculation, and clamp not implemented for cpu half

        # Flatten sample for doing quantile calculation along each image
        sample = sample.reshape(batch_size, channels * np.prod(remaining_dims))

        abs_sample = sample.abs()  # "a certain percentile absolute pixel value"

        s = torch.quantile(abs_sample, self.config.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(
            s, min=1, max=self.config.sample_max_value
        )  # When clamped to min=1, equivalent to standard clipping to [-1, 1]
        s = s.unsqueeze(1)  # (batch_size, 1) because clamp will broadcast along dim=0
        sample = torch.clamp(sample, -s, s) / s  # "we threshold xt0 to the range [-s, s] and then divide by s"

        sample = sample.reshape(batch_size, channels, *remaining_dims)
        sample = sample.to(dtype)

        return sample

    # ------------------------------------------------------------------ noise
    def sample_prior(self, prior_std: torch.Tensor, generator: torch.Generator | None = None,
                     validate_args: bool = True) -> torch.Tensor:
        """Draw from the learned prior ``N(0, diag(prior_std**2))``: ``prior_std * z``.

        Used for ``x_T`` (Algorithm 2, first line) and for the training noise. ``prior_std`` has the
        signal's shape; with ``validate_args`` it must be a finite, positive floating map (one host
        synchronisation).
        """
        if validate_args:
            check_std_shape("prior_std", prior_std, prior_std)
            check_std("prior_std", prior_std)
        z = randn_tensor(prior_std.shape, generator=generator, device=prior_std.device, dtype=prior_std.dtype)
        return prior_std * z

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (paper Algorithm 1, step 2).

        DDPMScheduler's ``add_noise``; ``noise`` is already drawn from the prior (``prior_std * z``) and
        must have the shape of ``original_samples``; ``timesteps`` has shape (B,).
        """
        if noise.shape != original_samples.shape:
            raise ValueError(f"`noise` has shape {tuple(noise.shape)}, expected the shape of `original_samples` "
                             f"{tuple(original_samples.shape)}.")
        return self._ddpm_add_noise(original_samples, noise, timesteps)

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.add_noise with add_noise->_ddpm_add_noise
    def _ddpm_add_noise(
        self,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.IntTensor,
    ) -> torch.Tensor:
        """
        Add noise to the original samples according to the noise magnitude at each timestep (this is the forward
        diffusion process).

        Args:
            original_samples (`torch.Tensor`):
                The original samples to which noise will be added.
            noise (`torch.Tensor`):
                The noise to add to the samples.
            timesteps (`torch.IntTensor`):
                The timesteps indicating the noise level for each sample.

        Returns:
            `torch.Tensor`:
                The noisy samples.
        """
        # Make sure alphas_cumprod and timestep have same device and dtype as original_samples
        # Move the self.alphas_cumprod to device to avoid redundant CPU to GPU data movement
        # for the subsequent _ddpm_add_noise calls
        self.alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device)
        alphas_cumprod = self.alphas_cumprod.to(dtype=original_samples.dtype)
        timesteps = timesteps.to(original_samples.device)

        sqrt_alpha_prod = alphas_cumprod[timesteps] ** 0.5
        sqrt_alpha_prod = sqrt_alpha_prod.flatten()
        while len(sqrt_alpha_prod.shape) < len(original_samples.shape):
            sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)

        sqrt_one_minus_alpha_prod = (1 - alphas_cumprod[timesteps]) ** 0.5
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.flatten()
        while len(sqrt_one_minus_alpha_prod.shape) < len(original_samples.shape):
            sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1)

        noisy_samples = sqrt_alpha_prod * original_samples + sqrt_one_minus_alpha_prod * noise
        return noisy_samples

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.get_velocity
    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """
        Compute the velocity prediction from the sample and noise according to the velocity formula.

        Args:
            sample (`torch.Tensor`):
                The input sample.
            noise (`torch.Tensor`):
                The noise tensor.
            timesteps (`torch.IntTensor`):
                The timesteps for velocity computation.

        Returns:
            `torch.Tensor`:
                The computed velocity.
        """
        # Make sure alphas_cumprod and timestep have same device and dtype as sample
        self.alphas_cumprod = self.alphas_cumprod.to(device=sample.device)
        alphas_cumprod = self.alphas_cumprod.to(dtype=sample.dtype)
        timesteps = timesteps.to(sample.device)

        sqrt_alpha_prod = alphas_cumprod[timesteps] ** 0.5
        sqrt_alpha_prod = sqrt_alpha_prod.flatten()
        while len(sqrt_alpha_prod.shape) < len(sample.shape):
            sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)

        sqrt_one_minus_alpha_prod = (1 - alphas_cumprod[timesteps]) ** 0.5
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.flatten()
        while len(sqrt_one_minus_alpha_prod.shape) < len(sample.shape):
            sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1)

        velocity = sqrt_alpha_prod * noise - sqrt_one_minus_alpha_prod * sample
        return velocity

    # Copied from diffusers.schedulers.scheduling_ddpm.DDPMScheduler.__len__
    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ------------------------------------------------------------------ reverse step
    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        prior_std: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        validate_args: bool = True,
    ) -> LearnedPriorSchedulerOutput | tuple:
        """One reverse step ``x_t -> x_{t-1}``.

        With ``prior_std=None`` this is DDPMScheduler's step: ``x0_hat`` from the model output
        (Ho et al. eq. 15), then the posterior mean and variance (eq. 7). With a standard-deviation
        map it is the same step in whitened units (:func:`whitened_step`), which is RestoreGrad's
        Algorithm 2: ``x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps_hat) / sqrt(alpha_t) +
        s_t * prior_std * z`` with ``s_t^2 = (1 - abar_{t-1}) / (1 - abar_t) beta_t``, and no noise
        at the last step. After ``set_timesteps(inference_betas=...)`` the step is the DDPM step of
        the inference schedule. Float64 samples get a float64 step (scalar coefficients included).

        Args:
            model_output: ``(B, C, *spatial)`` (``2C`` channels for learned variance types).
            timestep: one of ``self.timesteps``.
            sample: ``x_t``, ``(B, C, *spatial)``.
            prior_std: ``sigma_prior``, broadcastable to ``sample``; None for the standard prior.
                Sample clipping and thresholding must then be off (they would act in whitened units).
            generator: source of the fresh noise ``z``.
            return_dict: return a :class:`LearnedPriorSchedulerOutput` rather than a tuple
                ``(prev_sample, pred_original_sample)``.
            validate_args: check ``prior_std``'s shape and values (finite, > 0: one host
                synchronisation). The restoration loop checks the map once and passes False, so
                that the step makes no host synchronisation for it.
        """
        if prior_std is not None:
            prev_sample, pred_x0 = _whitened(self, model_output, timestep, sample, prior_std, validate_args,
                                             generator=generator)
        else:
            prev_sample, pred_x0 = self._standard_step(model_output, timestep, sample, generator)
        if not return_dict:
            return prev_sample, pred_x0
        return LearnedPriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)

    def _standard_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prev_sample, pred_original_sample)`` of the standard-prior step: DDPM's, or the fast chain's
        after ``set_timesteps(inference_betas=...)``."""
        if self.fast_sampling:
            s = len(self.timesteps) - 1 - self._index_of(timestep)  # inference step, 0 = the last
            return self._inference_chain._ddpm_step(model_output, s, sample, generator)
        return self._ddpm_step(model_output, _integer_step(timestep), sample, generator)

    def _ddpm_step(self, model_output: torch.Tensor, t: int | torch.Tensor, sample: torch.Tensor,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """DDPM's reverse step at training step ``t``, computed as DDPMScheduler computes it (the same
        operations in the same order: its float32 numbers, bit for bit), in float64 for a float64 sample."""
        prev_t = self.previous_timestep(t)
        if model_output.shape[1] == sample.shape[1] * 2 and self.variance_type in _LEARNED_VARIANCES:
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        else:
            predicted_variance = None

        # 1. abar_t, abar_{t-1}, beta_t
        alphas_cumprod, one = self._schedule(sample.dtype)
        alpha_prod_t = alphas_cumprod[t]
        alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else one
        beta_prod_t = 1 - alpha_prod_t
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        current_alpha_t = alpha_prod_t / alpha_prod_t_prev
        current_beta_t = 1 - current_alpha_t

        # 2. x0_hat (Ho et al. eq. 15 for a noise estimate)
        prediction_type = self.config.prediction_type
        if prediction_type == "epsilon":
            pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
        elif prediction_type == "sample":
            pred_original_sample = model_output
        else:  # v_prediction
            pred_original_sample = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output

        # 3. Clipping or dynamic thresholding of x0_hat
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            pred_original_sample = pred_original_sample.clamp(-self.config.clip_sample_range,
                                                              self.config.clip_sample_range)

        # 4-5. The posterior mean (eq. 7)
        pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
        current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
        pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        # 6. Fresh noise, none at the last step
        variance = 0
        if t > 0:
            variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                          dtype=model_output.dtype)
            step_variance = self._variance(alpha_prod_t, alpha_prod_t_prev, predicted_variance)
            if self.variance_type == "fixed_small_log":  # already a standard deviation
                variance = step_variance * variance_noise
            elif self.variance_type == "learned_range":  # a log-variance
                variance = torch.exp(0.5 * step_variance) * variance_noise
            else:
                variance = (step_variance ** 0.5) * variance_noise
        return pred_prev_sample + variance, pred_original_sample


# ---------------------------------------------------------------------- whitening
def _check_prior(prior_std: torch.Tensor, sample: torch.Tensor) -> None:
    """``prior_std`` broadcasts to ``sample`` and is finite and > 0 everywhere (one host synchronisation)."""
    check_std_shape("prior_std", prior_std, sample)
    check_std("prior_std", prior_std)


def whitened_initial_sample(scheduler, prior_std: torch.Tensor, generator: torch.Generator | None = None,
                            validate_args: bool = True) -> torch.Tensor:
    """``x_T`` for any diffusers scheduler sampling the learned prior: ``prior_std * init_noise_sigma * z``.

    With ``validate_args`` ``prior_std`` must be a finite, positive floating map (one host synchronisation).
    """
    if validate_args:
        _check_prior(prior_std, prior_std)
    z = randn_tensor(prior_std.shape, generator=generator, device=prior_std.device, dtype=prior_std.dtype)
    return prior_std * (scheduler.init_noise_sigma * z)


def whitened_step(
    scheduler,
    model_output: torch.Tensor,
    timestep,
    sample: torch.Tensor,
    prior_std: torch.Tensor,
    validate_args: bool = True,
    **step_kwargs,
) -> LearnedPriorSchedulerOutput:
    """Sample the learned prior with any diffusers scheduler (docs/design.md, "Whitening").

    With ``u = x / prior_std`` the learned-prior diffusion is the standard one, and the model's
    output (noise, x_0 or v: all linear in the signal) becomes ``output / prior_std``. So: divide,
    call the scheduler's own ``step``, multiply back. For the DDPM step this is exactly Algorithm 2.
    Works for DDPM (and :class:`LearnedPriorScheduler`, whose prior step is this function), DDIM,
    DPM-Solver++, UniPC, ... as long as sample clipping and thresholding are off (they would act in
    whitened units). A learned-variance output (``2C`` channels for DDPM's "learned" and
    "learned_range") keeps its variance half as it is: that is the variance of the whitened step.

    With ``validate_args`` (the default) ``prior_std`` must be a finite, positive floating map that
    broadcasts to ``sample`` (one host synchronisation); the restoration loop checks it once and passes
    False. ``step_kwargs`` (``generator``, ``eta``, ...) go to the scheduler's ``step``.

    Returns ``prev_sample`` and (when the scheduler gives one) ``pred_original_sample`` in data units.
    """
    prev_sample, pred_x0 = _whitened(scheduler, model_output, timestep, sample, prior_std, validate_args,
                                     **step_kwargs)
    return LearnedPriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


def _whitened(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, prior_std: torch.Tensor,
              validate_args: bool, **step_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`whitened_step` as ``(prev_sample, pred_original_sample or None)``."""
    check_no_clipping(scheduler)  # the configuration only: no host synchronisation
    if validate_args:
        _check_prior(prior_std, sample)
    variance_type = getattr(scheduler, "config", {}).get("variance_type")
    channels = sample.shape[1] if sample.ndim > 1 else None
    learned = (variance_type in _LEARNED_VARIANCES and model_output.ndim == sample.ndim > 1
               and model_output.shape[1] == 2 * channels and model_output.shape[2:] == sample.shape[2:]
               and model_output.shape[0] == sample.shape[0])
    if model_output.shape != sample.shape and not learned:
        raise ValueError(f"`model_output` has shape {tuple(model_output.shape)}, expected the sample's shape "
                         f"{tuple(sample.shape)} (or twice its channels for a learned-variance DDPM step).")
    if learned:
        mean_output, variance_output = torch.split(model_output, channels, dim=1)
        whitened_output = torch.cat([mean_output / prior_std, variance_output.to(mean_output.dtype)], dim=1)
    else:
        whitened_output = model_output / prior_std
    if isinstance(scheduler, LearnedPriorScheduler):  # its own standard step, without building output objects
        prev_sample, pred_x0 = scheduler._standard_step(whitened_output, timestep, sample / prior_std,
                                                        step_kwargs.get("generator"))
        if not (prev_sample.requires_grad or pred_x0.requires_grad):
            # Both are new tensors of this step (from the whitened output, never the caller's): scaled back
            # in place, the same numbers without two more allocations of the sample's size. Not when
            # autograd records the step: it may need them as they were.
            return prev_sample.mul_(prior_std), pred_x0.mul_(prior_std)
    else:  # any diffusers scheduler: its output object names what its fields are
        out = scheduler.step(whitened_output, timestep, sample / prior_std, return_dict=True, **step_kwargs)
        prev_sample, pred_x0 = out.prev_sample, getattr(out, "pred_original_sample", None)
    return prev_sample * prior_std, None if pred_x0 is None else pred_x0 * prior_std


def scale_model_input_whitened(scheduler, sample: torch.Tensor, timestep, prior_std: torch.Tensor,
                               validate_args: bool = True) -> torch.Tensor:
    """``scheduler.scale_model_input`` applied in whitened units (identity for DDPM/DDIM/DPM-Solver).

    With ``validate_args`` ``prior_std`` must be a finite, positive floating map that broadcasts to
    ``sample`` (one host synchronisation).
    """
    if validate_args:
        _check_prior(prior_std, sample)
    return scheduler.scale_model_input(sample / prior_std, timestep) * prior_std


__all__ = [
    "FAST_INFERENCE_BETAS_3",
    "FAST_INFERENCE_BETAS_6",
    "LearnedPriorScheduler",
    "LearnedPriorSchedulerOutput",
    "fractional_timesteps",
    "noise_from_prediction",
    "whitened_initial_sample",
    "whitened_step",
    "scale_model_input_whitened",
]

