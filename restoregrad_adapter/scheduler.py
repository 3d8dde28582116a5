"""Learned-prior diffusion scheduler.

`LearnedPriorScheduler` is a `diffusers.DDPMScheduler` (a subclass, same configuration except that
``clip_sample`` defaults to False) whose ``step`` also takes a standard-deviation map ``prior_std``
(the Prior Net's output, ``Sigma_prior = diag(prior_std**2)``). Without one it *is* DDPMScheduler:
same config, same generator use, same numbers. With one it runs RestoreGrad's reverse process (paper
Algorithm 2): the chain starts from ``x_T = prior_std * z`` and the fresh noise of every step is
``prior_std * z``.

There is one reverse step, DDPMScheduler's (Ho et al. 2020: eq. 15 estimates ``x_0``, eq. 7 gives
the posterior mean and variance). The prior enters only through :func:`whitened_step`
(docs/design.md, "Whitening"): with ``u = x / prior_std`` the forward process
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) prior_std z`` becomes the standard one,
``u_t = sqrt(abar_t) u_0 + sqrt(1 - abar_t) z``, and every linear-Gaussian update is the standard
update applied in u-space. The same function samples the learned prior with *any* stock diffusers
scheduler (DDIM, DPM-Solver++, UniPC, ...).

Fast sampling (DiffWave / CDiffuSE) is supported by ``set_timesteps(inference_betas=[...])``: the
reverse chain is then the same DDPM step over the short inference schedule, and the model is called
at the *fractional* training step whose ``sqrt(abar)`` matches each inference step.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
# SchedulerMixin in this namespace: diffusers' pipeline loader looks loadable base classes up in the
# module a component comes from (model_index.json names "restoregrad_adapter.scheduler").
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin  # noqa: F401
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

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


#: Standard-deviation maps whose values were checked, by ``id``: (a weak reference, the tensor's version
#: counter then). The restoration loop checks its map once and marks it, so a whole chain of ``step``
#: calls makes no host synchronisation for it; a map changed in place (a new version) or a new tensor
#: is checked again, so ``step`` called on its own stays safe.
_CHECKED_STDS: dict[int, tuple[weakref.ref, int]] = {}


def _mark_checked(prior_std: torch.Tensor) -> None:
    """Record that ``prior_std``'s values are finite and positive (the caller has checked them)."""
    for key, (ref, _) in list(_CHECKED_STDS.items()):  # forget maps that no longer exist
        if ref() is None:
            del _CHECKED_STDS[key]
    _CHECKED_STDS[id(prior_std)] = (weakref.ref(prior_std), prior_std._version)


def _is_checked(prior_std: torch.Tensor) -> bool:
    entry = _CHECKED_STDS.get(id(prior_std))
    return entry is not None and entry[0]() is prior_std and entry[1] == prior_std._version


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


def _check_std_values(std: torch.Tensor, name: str) -> bool:
    """Raise a ValueError naming ``name`` unless ``std`` is finite and > 0 everywhere (one host synchronisation)."""
    std = std.detach()
    if bool((torch.isfinite(std) & (std > 0)).all()):
        return True
    if not torch.isfinite(std).all():
        raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
    raise ValueError(f"`{name}` must be > 0 everywhere (a standard deviation), got a minimum of "
                     f"{std.min().item():.4g}.")


def check_prior_std(prior_std: torch.Tensor, sample: torch.Tensor, name: str = "prior_std") -> None:
    """Raise a ValueError unless ``prior_std`` is a finite, positive floating map broadcastable to ``sample``.

    Its values are checked (one host synchronisation) unless this very map, unchanged, was checked
    before (the restoration loop checks it once per restoration); its shape is checked every time.
    """
    if not isinstance(prior_std, torch.Tensor) or not prior_std.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {type(prior_std).__name__}"
                         f"{'' if not isinstance(prior_std, torch.Tensor) else ' of dtype ' + str(prior_std.dtype)}.")
    if prior_std.shape != sample.shape:  # (the usual case, equal shapes, skips torch's costly broadcast check)
        _check_broadcasts_to(prior_std, sample, name)
    if not _is_checked(prior_std) and _check_std_values(prior_std, name):
        _mark_checked(prior_std)


def _check_broadcasts_to(prior_std: torch.Tensor, sample: torch.Tensor, name: str) -> None:
    try:
        broadcast = torch.broadcast_shapes(prior_std.shape, sample.shape)
    except RuntimeError:
        raise ValueError(f"`{name}` of shape {tuple(prior_std.shape)} does not broadcast to the sample's shape "
                         f"{tuple(sample.shape)}; expected a standard-deviation map of the sample's shape.") from None
    if broadcast != sample.shape:
        raise ValueError(f"`{name}` of shape {tuple(prior_std.shape)} would broadcast the sample's shape "
                         f"{tuple(sample.shape)} up; expected a standard-deviation map of the sample's shape.")


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


@contextmanager
def _schedule_in_precision(scheduler: DDPMScheduler, dtype: torch.dtype) -> Iterator[None]:
    """Let `DDPMScheduler.step` compute its scalar coefficients in the precision of a float64 sample.

    The stock step reads the schedule from ``alphas_cumprod`` and ``one`` (float32), so its
    coefficients are float32 whatever the sample. For a float64 sample both are promoted for the
    duration of the step: a float64 step of the stored (float32) schedule. Other samples get
    DDPMScheduler's float32 numbers unchanged. ``test_stock_step_reads_only_the_promoted_schedule``
    (tests/test_scheduler.py) fails if DDPMScheduler starts reading other schedule tensors.
    """
    if dtype != torch.float64:
        yield
        return
    stored = scheduler.alphas_cumprod, scheduler.one
    scheduler.alphas_cumprod, scheduler.one = stored[0].double(), stored[1].double()
    try:
        yield
    finally:
        scheduler.alphas_cumprod, scheduler.one = stored


def _integer_step(timestep: int | float | torch.Tensor) -> int | torch.Tensor:
    """A training step that indexes the schedule: integral floats (``500.0``, ``tensor(500.)``) as ints."""
    if isinstance(timestep, float) or (isinstance(timestep, torch.Tensor) and timestep.is_floating_point()):
        if float(timestep) != int(timestep):
            raise ValueError(f"`timestep` {float(timestep)} is not a training step; fractional steps need "
                             "`set_timesteps(inference_betas=...)`.")
        return int(timestep)
    return timestep


class LearnedPriorScheduler(DDPMScheduler):
    """DDPM scheduler whose Gaussian prior may be ``N(0, diag(prior_std**2))`` (RestoreGrad, Algorithm 2).

    A `diffusers.DDPMScheduler` with the same configuration (argument names, meanings and defaults)
    except that ``clip_sample`` defaults to False: restoration samples need not lie in [-1, 1], and
    clipping does not commute with the whitening that applies the prior. It saves and loads as
    ``scheduler_config.json`` under its own class name. Unknown ``prediction_type``,
    ``timestep_spacing`` or ``beta_schedule`` values raise a ValueError at construction;
    ``variance_type`` falls through like DDPMScheduler's (an unknown type is "fixed_small").

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
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(f"`prediction_type` must be one of {_PREDICTION_TYPES}, got {prediction_type!r}.")
        if timestep_spacing not in _SPACINGS:
            raise ValueError(f"`timestep_spacing` must be one of {_SPACINGS}, got {timestep_spacing!r}.")
        if trained_betas is None and beta_schedule not in _BETA_SCHEDULES:
            raise ValueError(f"`beta_schedule` must be one of {_BETA_SCHEDULES}, got {beta_schedule!r}.")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, (int, np.integer)) \
                or num_train_timesteps < 1:
            raise ValueError(f"`num_train_timesteps` must be a positive integer, got {num_train_timesteps!r}.")
        # DDPMScheduler's own __init__, undecorated: the config is already registered (as ours).
        DDPMScheduler.__init__.__wrapped__(
            self, num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, variance_type=variance_type,
            clip_sample=clip_sample, prediction_type=prediction_type, thresholding=thresholding,
            dynamic_thresholding_ratio=dynamic_thresholding_ratio, clip_sample_range=clip_sample_range,
            sample_max_value=sample_max_value, timestep_spacing=timestep_spacing, steps_offset=steps_offset,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )
        if self.betas.ndim != 1 or len(self.betas) == 0 or not bool(((self.betas > 0) & (self.betas <= 1)).all()):
            if trained_betas is not None:
                raise ValueError(f"`trained_betas` must be a non-empty list of values in (0, 1] (no NaN), got "
                                 f"{list(trained_betas)[:8]}{' ...' if len(trained_betas) > 8 else ''}.")
            raise ValueError(f"the training betas must lie in (0, 1]; `beta_start` = {beta_start!r}, `beta_end` = "
                             f"{beta_end!r} with beta_schedule {beta_schedule!r} give {self.betas.min().item():.4g} to "
                             f"{self.betas.max().item():.4g}.")
        # init_noise_sigma = 1 is in units of prior_std: x_T = prior_std * z.
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

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
        inference_betas: Sequence[float] | None = None,
    ) -> None:
        """Choose the reverse chain's timesteps.

        `DDPMScheduler.set_timesteps` for ``num_inference_steps`` or custom ``timesteps`` (after
        checks that name the wrong argument). With ``inference_betas`` (e.g. ``FAST_INFERENCE_BETAS_6``)
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
            # the configuration whose training betas are the inference betas, stepped at index s.
            chain = LearnedPriorScheduler.from_config(self.config, num_train_timesteps=len(betas),
                                                      trained_betas=betas.tolist(), rescale_betas_zero_snr=False)
            chain.alphas_cumprod = self.inference_alphas_cumprod  # the float64 cumprod, as stored here
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
        super().set_timesteps(num_inference_steps=num_inference_steps, device=device, timesteps=timesteps)
        if timesteps is not None:
            self.num_inference_steps = len(timesteps)

    def previous_timestep(self, timestep: int | float | torch.Tensor) -> int | torch.Tensor:
        """The timestep after ``timestep`` in the reverse chain (-1 after the last one), as in DDPMScheduler.

        A timestep that is not in the chain raises a ValueError naming `timestep`.
        """
        if self.custom_timesteps or self.num_inference_steps:
            self._index_of(timestep)
        return super().previous_timestep(timestep)

    def _index_of(self, timestep: int | float | torch.Tensor) -> int:
        matches = (self.timesteps == torch.as_tensor(timestep, device=self.timesteps.device)).nonzero(as_tuple=True)[0]
        if len(matches) == 0:
            raise ValueError(f"`timestep` {timestep} is not one of the scheduler's timesteps {self.timesteps.tolist()}; "
                             "call `set_timesteps` first and pass its timesteps.")
        return int(matches[0])

    def _get_variance(self, t: int, predicted_variance: torch.Tensor | None = None,
                      variance_type: str | None = None) -> torch.Tensor:
        """`DDPMScheduler._get_variance`: the step's variance (Ho et al. eq. 7), except for "fixed_large_log".

        DDPMScheduler returns ``log(beta_t)`` for "fixed_large_log" and its ``step`` then takes the
        square root of that log (NaN). Glide's max-log variance is ``beta_t``, so it is returned
        as the variance ``step`` expects: the step equals "fixed_large".
        """
        if (variance_type or self.config.variance_type) == "fixed_large_log":
            variance_type = "fixed_large"
        return super()._get_variance(t, predicted_variance=predicted_variance, variance_type=variance_type)

    # ------------------------------------------------------------------ noise
    def sample_prior(self, prior_std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw from the learned prior ``N(0, diag(prior_std**2))``: ``prior_std * z``.

        Used for ``x_T`` (Algorithm 2, first line) and for the training noise. ``prior_std`` has the
        signal's shape.
        """
        check_prior_std(prior_std, prior_std)
        z = randn_tensor(prior_std.shape, generator=generator, device=prior_std.device, dtype=prior_std.dtype)
        return prior_std * z

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.IntTensor) -> torch.Tensor:
        """Forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (paper Algorithm 1, step 2).

        `DDPMScheduler.add_noise`; ``noise`` is already drawn from the prior (``prior_std * z``) and
        must have the shape of ``original_samples``; ``timesteps`` has shape (B,).
        """
        if noise.shape != original_samples.shape:
            raise ValueError(f"`noise` has shape {tuple(noise.shape)}, expected the shape of `original_samples` "
                             f"{tuple(original_samples.shape)}.")
        return super().add_noise(original_samples, noise, timesteps)

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

        With ``prior_std=None`` this is `DDPMScheduler.step`: ``x0_hat`` from the model output
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
            generator: source of the fresh noise ``z``.
            prior_std: ``sigma_prior``, broadcastable to ``sample``; None for the standard prior.
                Sample clipping and thresholding must then be off (they would act in whitened units).
            return_dict: return a :class:`LearnedPriorSchedulerOutput` rather than a tuple
                ``(prev_sample, pred_original_sample)``.
        """
        if prior_std is not None:
            prev_sample, pred_x0 = _whitened(self, model_output, timestep, sample, prior_std, generator=generator)
        else:
            prev_sample, pred_x0 = self._standard_step(model_output, timestep, sample, generator)
        if not return_dict:
            return prev_sample, pred_x0
        return LearnedPriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)

    def _standard_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
                       generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prev_sample, pred_original_sample)`` of the standard-prior step: DDPM's (diffusers'
        ``DDPMScheduler.step``), or the fast chain's after ``set_timesteps(inference_betas=...)``."""
        if self.fast_sampling:
            s = len(self.timesteps) - 1 - self._index_of(timestep)  # inference step, 0 = the last
            out = self._inference_chain.step(model_output, s, sample, generator=generator)
            return out.prev_sample, out.pred_original_sample
        if sample.dtype == torch.float64:
            with _schedule_in_precision(self, sample.dtype):
                return super().step(model_output, _integer_step(timestep), sample, generator=generator,
                                    return_dict=False)
        return super().step(model_output, _integer_step(timestep), sample, generator=generator, return_dict=False)


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
    """Sample the learned prior with any diffusers scheduler (docs/design.md, "Whitening").

    With ``u = x / prior_std`` the learned-prior diffusion is the standard one, and the model's
    output (noise, x_0 or v: all linear in the signal) becomes ``output / prior_std``. So: divide,
    call the scheduler's own ``step``, multiply back. For the DDPM step this is exactly Algorithm 2.
    Works for DDPM (and :class:`LearnedPriorScheduler`, whose prior step is this function), DDIM,
    DPM-Solver++, UniPC, ... as long as sample clipping and thresholding are off (they would act in
    whitened units). A learned-variance output (``2C`` channels for DDPM's "learned" and
    "learned_range") keeps its variance half as it is: that is the variance of the whitened step.

    Returns ``prev_sample`` and (when the scheduler gives one) ``pred_original_sample`` in data units.
    """
    prev_sample, pred_x0 = _whitened(scheduler, model_output, timestep, sample, prior_std, **step_kwargs)
    return LearnedPriorSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_x0)


def _whitened(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, prior_std: torch.Tensor,
              **step_kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`whitened_step` as ``(prev_sample, pred_original_sample or None)``."""
    _check_no_clipping(scheduler)
    check_prior_std(prior_std, sample)
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
    else:  # any diffusers scheduler: its output object names what its fields are
        out = scheduler.step(whitened_output, timestep, sample / prior_std, return_dict=True, **step_kwargs)
        prev_sample, pred_x0 = out.prev_sample, getattr(out, "pred_original_sample", None)
    return prev_sample * prior_std, None if pred_x0 is None else pred_x0 * prior_std


def scale_model_input_whitened(scheduler, sample: torch.Tensor, timestep, prior_std: torch.Tensor) -> torch.Tensor:
    """``scheduler.scale_model_input`` applied in whitened units (identity for DDPM/DDIM/DPM-Solver)."""
    return scheduler.scale_model_input(sample / prior_std, timestep) * prior_std


__all__ = [
    "FAST_INFERENCE_BETAS_3",
    "FAST_INFERENCE_BETAS_6",
    "LearnedPriorScheduler",
    "LearnedPriorSchedulerOutput",
    "check_prior_std",
    "fractional_timesteps",
    "noise_from_prediction",
    "whitened_initial_sample",
    "whitened_step",
    "scale_model_input_whitened",
]
