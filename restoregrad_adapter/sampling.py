"""The restoration loop: reverse diffusion from the learned prior (paper Algorithm 2).

Every way of restoring a signal in this library (``RestoreGrad.restore``, the WeatherDiff
``restore_image``, ``RestoreGradPipeline``, the ``restoregrad restore`` command, the benchmarks)
runs :func:`restore`, which runs :func:`sample`. Only two things vary:

- **the scheduler**: a learned-prior scheduler that takes ``prior_std`` in its ``step`` (the
  adapter's :class:`~restoregrad_adapter.LearnedPriorScheduler`, or an integration's own, such as
  CDiffuSE's conditional reverse process), or any stock diffusers scheduler, which samples the
  learned prior by whitening (docs/design.md, "Whitening");
- **the noise estimate**: the denoiser on the whole signal, or the per-pixel mean over
  overlapping patches (:mod:`restoregrad_adapter.patches`) for images larger than the
  denoiser's patch.

Its settings are explicit: the adapter resolves its defaults first
(:meth:`RestoreGrad.restoration_defaults`, from the denoiser's wrapper, a :class:`RestorationDefaults`)
and passes them in. Nothing here looks an integration up.

It checks only what it alone consumes (the step settings, the sampler, the prior's values once per
restoration); the signal itself was checked by the entry point that called it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from restoregrad_adapter.checks import (check_no_clipping, check_number, check_positive_int, check_std,
                                        check_std_shape)
from restoregrad_adapter.patches import PatchGrid, reflect_pad_to
from restoregrad_adapter.scheduler import scale_model_input_whitened, whitened_initial_sample, whitened_step

__all__ = ["RestorationDefaults", "TIMESTEP_SPACINGS", "restore", "sample", "check_sampling_scheduler"]

#: diffusers' spacings of inference timesteps.
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")

NoiseEstimate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RestorationDefaults:
    """How a denoiser restores by default: what its wrapper's ``restoration_defaults()`` returns.

    Args:
        num_inference_steps: reverse steps; None runs every training step.
        inference_betas: a fast-sampling schedule (DiffWave/CDiffuSE) instead of strided steps.
        patch_size: side p of the square patches the denoiser sees; None: whole signals.
        pad_to_patch: the denoiser takes exactly ``p x p`` inputs, so smaller images are padded to p
            (WeatherDiff); otherwise images that fit are restored whole.
        patch_batch_size: patches per denoiser call.
        length_multiple: waveforms must have a length divisible by this; the command line pads and
            crops (CDiffuSE takes any length: its adapter frames whole utterances itself).
        min_length: waveforms must have at least this many samples (CDiffuSE: 513, for its centred
            STFT); the command line zero-pads shorter ones and crops the result.
        make_scheduler: ``training_scheduler -> scheduler``: the integration's own sampler (its
            timesteps are set by the loop); None samples with the training scheduler.
        value_range: the range of signal values the denoiser was trained on (WeatherDiff: [-1, 1]);
            ``restore`` refuses inputs outside it.
    """

    num_inference_steps: int | None = None
    inference_betas: tuple[float, ...] | None = None
    patch_size: int | None = None
    pad_to_patch: bool = False
    patch_batch_size: int = 64
    length_multiple: int = 1
    min_length: int = 1
    make_scheduler: Callable | None = None
    value_range: tuple[float, float] | None = None

    def sampling_kwargs(self, training_scheduler) -> dict:
        """These defaults as the keyword arguments of :func:`restore`."""
        return dict(scheduler=None if self.make_scheduler is None else self.make_scheduler(training_scheduler),
                    num_inference_steps=self.num_inference_steps, inference_betas=self.inference_betas,
                    patch_size=self.patch_size, patch_batch_size=self.patch_batch_size, pad_to_patch=self.pad_to_patch)


def _takes_prior(scheduler) -> bool:
    """Learned-prior schedulers take ``prior_std`` in ``step``; stock ones are whitened."""
    return hasattr(scheduler, "sample_prior") and "prior_std" in inspect.signature(scheduler.step).parameters


def check_sampling_scheduler(scheduler, training_scheduler) -> None:
    """Refuse a scheduler that cannot sample what the denoiser was trained for.

    It must be a diffusers scheduler with the same training noise levels (``alphas_cumprod``) and
    the same ``prediction_type`` as ``training_scheduler``; a whitened stock scheduler must also
    have sample clipping and thresholding off (they would act in whitened units).
    """
    if not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
        raise ValueError(f"`scheduler` must be a diffusers scheduler, got {type(scheduler).__name__}.")
    if scheduler is training_scheduler:
        return
    if not _takes_prior(scheduler):
        check_no_clipping(scheduler)
    theirs = getattr(scheduler, "alphas_cumprod", None)
    ours = training_scheduler.alphas_cumprod
    if theirs is None or theirs.shape != ours.shape or not torch.allclose(theirs.double().cpu(), ours.double().cpu(),
                                                                             rtol=1e-6, atol=0):
        raise ValueError(f"`scheduler` ({type(scheduler).__name__}) must have the adapter's training schedule "
                         "(the same alphas_cumprod); build it with `.from_config(adapter.scheduler.config)`.")
    wanted = training_scheduler.config.get("prediction_type", "epsilon")
    given = scheduler.config.get("prediction_type", "epsilon")
    if given != wanted:
        raise ValueError(f"`scheduler` has prediction_type={given!r}, but the denoiser was trained with "
                         f"{wanted!r}; build it with `.from_config(adapter.scheduler.config)`.")


def _step_kwargs(scheduler, eta: float, generator) -> dict:
    eta = check_number("eta", eta, minimum=0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
    parameters = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in parameters:
        kwargs["eta"] = eta
    elif eta != 0:
        raise ValueError(f"`eta` = {eta} applies to DDIM-type schedulers; {type(scheduler).__name__}.step takes none.")
    if "generator" in parameters:
        kwargs["generator"] = generator
    return kwargs


def sample(
    noise_estimate: NoiseEstimate,
    prior_std: torch.Tensor,
    scheduler,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    condition: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the reverse chain of ``scheduler`` (its timesteps already set) from the learned prior.

    Args:
        noise_estimate: ``(x_t, t) -> model output`` for the whole signal (``t`` a 0-d timestep).
        prior_std: ``sigma_prior``, the signal's shape; ``x_T = sigma_prior * z``.
        scheduler: a learned-prior scheduler (its ``step`` takes ``prior_std``) or a stock diffusers
            scheduler, whitened.
        generator: source of ``x_T`` and of every step's fresh noise.
        eta: DDIM's eta, for schedulers whose ``step`` takes one.
        condition: ``y``, for learned-prior schedulers that need it (``needs_condition = True``).
        progress: show a progress bar over the steps.
        callback: ``callback(k, x)`` with ``k`` the reverse steps still to run: first with ``x_T``
            (``k = S``), then after every step, last with the result (``k = 0``).

    Returns:
        The sample after the last step (``prior_std``'s shape and dtype).
    """
    check_std_shape("prior_std", prior_std, prior_std)
    check_std("prior_std", prior_std)
    return _run_chain(noise_estimate, prior_std, scheduler, generator, eta, condition, progress, callback)


def _run_chain(noise_estimate, prior_std, scheduler, generator, eta, condition, progress, callback) -> torch.Tensor:
    """:func:`sample` for a ``prior_std`` already checked: once per restoration, so that no step makes a
    host synchronisation for it (``validate_args=False``)."""
    own = _takes_prior(scheduler)
    conditional = {"condition": condition} if own and getattr(scheduler, "needs_condition", False) else {}
    step_kwargs = _step_kwargs(scheduler, eta, generator)
    if own:
        x = scheduler.sample_prior(prior_std, generator=generator, validate_args=False, **conditional)
    else:
        x = whitened_initial_sample(scheduler, prior_std, generator=generator, validate_args=False)
    timesteps = scheduler.timesteps
    remaining = len(timesteps)
    if callback is not None:
        callback(remaining, x)
    if progress:
        from tqdm.auto import tqdm

        timesteps = tqdm(timesteps, desc="restoring", unit="step")
    for t in timesteps:
        if own:
            output = noise_estimate(x, t)
            x = scheduler.step(output, t, x, prior_std=prior_std, validate_args=False, **conditional,
                               **step_kwargs).prev_sample
        else:
            output = noise_estimate(scale_model_input_whitened(scheduler, x, t, prior_std, validate_args=False), t)
            x = whitened_step(scheduler, output.float(), t, x, prior_std, validate_args=False,
                              **step_kwargs).prev_sample
        remaining -= 1
        if callback is not None:
            callback(remaining, x)
    return x


def _in_denoiser_precision(denoiser):
    """``denoiser`` called in its weights' dtype: a float64 (or float32) chain with a float32 (or bfloat16)
    model casts ``x_t`` and ``y`` to the model's dtype and its output back; fractional timesteps stay at
    least float32."""
    parameter = next(iter(denoiser.parameters()), None) if isinstance(denoiser, torch.nn.Module) else None
    if parameter is None:
        return denoiser
    dtype = parameter.dtype

    def call(x_t, y, t):
        if x_t.dtype == dtype:
            return denoiser(x_t, y, t)
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.to(torch.promote_types(dtype, torch.float32))
        return denoiser(x_t.to(dtype), y.to(dtype), t).to(x_t.dtype)

    return call


def _whole_signal_estimate(denoiser, y: torch.Tensor) -> NoiseEstimate:
    def estimate(x_t, t):
        t = t.expand(y.shape[0]).to(y.device)
        output = denoiser(x_t, y, t.to(x_t.dtype) if t.is_floating_point() else t)
        if not isinstance(output, torch.Tensor) or output.shape != x_t.shape:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"the denoiser returned {got}; expected the shape of `x_t` {tuple(x_t.shape)}.")
        return output

    return estimate


def _patch_estimate(denoiser, y: torch.Tensor, grid: PatchGrid) -> NoiseEstimate:
    counts = grid.counts(y.device)

    def estimate(x_t, t):
        return grid.average(denoiser, x_t, y, t, counts)

    return estimate


@torch.no_grad()
def restore(
    denoiser,
    y: torch.Tensor,
    prior: Callable[[torch.Tensor], torch.Tensor],
    training_scheduler,
    scheduler=None,
    num_inference_steps: int | None = None,
    inference_betas: Sequence[float] | None = None,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    patch_size: int | None = None,
    stride: int | None = None,
    patch_batch_size: int = 64,
    pad_to_patch: bool = False,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    residual: bool = False,
) -> torch.Tensor:
    """Restore ``y`` with ``denoiser`` from the learned prior ``prior(y)`` (paper Algorithm 2).

    Every setting is explicit (an adapter passes its :class:`RestorationDefaults`); ``y`` is trusted to
    be a finite floating ``(B, C, *spatial)`` tensor (the caller's entry point checked it).

    Args:
        denoiser: ``eps(x_t, y, t)`` (a wrapper from :mod:`restoregrad_adapter.integrations`, or your own).
        y: degraded signals ``(B, C, *spatial)``.
        prior: ``y -> sigma_prior`` of ``y``'s shape (e.g. ``adapter.prior_std``).
        training_scheduler: the scheduler the denoiser was trained with (a ``LearnedPriorScheduler``).
        scheduler: the sampler: a learned-prior scheduler, or any diffusers scheduler with the same
            training schedule and prediction type (whitened; clipping and thresholding off); None
            samples with ``training_scheduler``.
        num_inference_steps: reverse steps S (spaced by the scheduler's ``timestep_spacing``); with
            neither this nor ``inference_betas``, every training step.
        inference_betas: a fast-sampling schedule (e.g. ``FAST_INFERENCE_BETAS_6``), instead of S;
            only with a learned-prior scheduler that supports it.
        eta: DDIM's eta (0: deterministic steps); other schedulers take none.
        generator: source of ``x_T`` and of every step's fresh noise.
        patch_size, stride, patch_batch_size: restore images larger than ``patch_size`` from
            overlapping patches (:mod:`restoregrad_adapter.patches`; stride default ``patch_size // 4``);
            the prior is one sigma map for the whole (padded) image.
        pad_to_patch: the denoiser takes exactly ``patch_size`` patches: smaller images are padded.
        progress: show a progress bar.
        callback: see :func:`sample`.
        residual: the denoiser was trained on the residual ``r0 = x0 - y``: the chain samples
            ``r0`` and the restoration is ``y + r0_hat``.

    Returns:
        The restored signal, ``y``'s shape, in ``y``'s precision (at least float32).
    """
    for name, value in (("num_inference_steps", num_inference_steps), ("patch_size", patch_size),
                        ("stride", stride)):
        check_positive_int(name, value, allow_none=True)
    check_positive_int("patch_batch_size", patch_batch_size)
    if num_inference_steps is not None and inference_betas is not None:
        raise ValueError("Pass only one of `num_inference_steps` or `inference_betas`.")
    if stride is not None and patch_size is not None and stride > patch_size:
        raise ValueError(f"`stride` = {stride} exceeds `patch_size` = {patch_size}; the patches would leave gaps.")

    # The scheduler, its timesteps set.
    T = training_scheduler.config.num_train_timesteps
    if num_inference_steps is not None and num_inference_steps > T:
        raise ValueError(f"`num_inference_steps` = {num_inference_steps} exceeds the {T} training steps.")
    if inference_betas is None and num_inference_steps is None:
        num_inference_steps = T
    if scheduler is None:
        scheduler = training_scheduler
    check_sampling_scheduler(scheduler, training_scheduler)
    if inference_betas is not None:
        if "inference_betas" not in inspect.signature(scheduler.set_timesteps).parameters:
            raise ValueError("`inference_betas` needs a learned-prior scheduler with fast sampling; the "
                             f"scheduler is a {type(scheduler).__name__}.")
        scheduler.set_timesteps(inference_betas=inference_betas, device=y.device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=y.device)

    # The noise estimate: whole signal, or overlapping patches of a (padded) image.
    model = _in_denoiser_precision(denoiser)
    dtype = torch.promote_types(y.dtype, torch.float32)
    y = y.to(dtype)
    spatial = tuple(y.shape[2:])
    patched = y.ndim == 4 and patch_size is not None and (
        pad_to_patch or spatial[0] > patch_size or spatial[1] > patch_size)
    if patched:
        y = reflect_pad_to(y, patch_size)
        grid = PatchGrid(y.shape[-2], y.shape[-1], patch_size, stride if stride is not None else max(1, patch_size // 4),
                         patch_batch_size)
        noise_estimate = _patch_estimate(model, y, grid)
    else:
        noise_estimate = _whole_signal_estimate(model, y)

    sigma = prior(y.float())  # one prior for the whole (padded) signal; the encoders run in float32
    check_std_shape("the prior std", sigma, y)
    check_std("the prior std", sigma)  # once per restoration: the steps then make no host synchronisation for it
    sigma = sigma.expand(y.shape).to(dtype)  # still valid: a cast to at least float32 keeps finite positive values
    x = _run_chain(noise_estimate, sigma, scheduler, generator, eta, y, progress, callback)
    if residual:
        x = y + x  # the chain sampled r0 = x0 - y
    return x[(..., *[slice(0, n) for n in spatial])] if patched else x
