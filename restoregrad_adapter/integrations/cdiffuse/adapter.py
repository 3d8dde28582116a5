"""`CDiffuSERestoreGrad`: RestoreGrad with CDiffuSE's conditional forward and reverse processes."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from restoregrad_adapter import sampling
from restoregrad_adapter.adapter import RestoreGrad
from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_6, LearnedPriorScheduler

from .denoiser import N_FFT, CDiffuSEDenoiser, utterance_length
from .restoration import DEFAULT_RESTORATION, check_restoration
from .scheduler import (CDiffuSESchedule, CDiffuSEScheduler, cdiffuse_scheduler, forward_coefficients, reverse_schedule,
                        training_betas)

__all__ = ["CDiffuSERestoreGrad"]


class CDiffuSERestoreGrad(RestoreGrad):
    """RestoreGrad with CDiffuSE's conditional diffusion (training and sampling).

    Training (:meth:`training_loss`, paper Algorithm 1 with RestoreGrad's eq. 10): ``eps = sigma * z``
    with ``sigma`` the Posterior Net's map (the Prior Net's without one; the energy prior in mode
    ``"priorgrad"``; 1 in mode ``"ddpm"``), ``x_t = (1 - m_t) sqrt(abar_t) x0 + m_t sqrt(abar_t) y +
    sqrt(delta_t) eps`` (:meth:`add_noise`), and the denoiser learns the combined noise
    ``C_t = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` (:meth:`noise_target`). The loss terms are
    RestoreGrad's, with ``C_t`` as the denoising target: ``L_DM = mean((C_t - C_hat)^2 / sigma^2)``,
    the Mahalanobis form of the ELBO term (the reverse posterior's covariance is
    ``delta_bar_t Sigma``); the released code uses an L1 loss with ``sigma = 1``.

    Sampling (:meth:`restore`): ``x_N ~ N(sqrt(abar_N) y, delta_N Sigma_prior)`` (eq. 10), then
    ``x_{t-1} = c1 x_t + c2 y - c3 C_hat + sqrt(delta_bar_t) sigma_prior z`` (no noise at the last
    step), fast by default (``FAST_INFERENCE_BETAS_6``).

    Build it with :meth:`from_model` (CDiffuSE's 50-step schedule, Prior and Posterior Nets), or as
    any :class:`~restoregrad_adapter.RestoreGrad` (``with_encoders`` etc.).

    The network predicts ``C_t`` (``prediction_type="epsilon"``, CDiffuSE's), or ``x0``
    (``"sample"``) or ``v`` (``"v_prediction"``): since ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t)
    C_t``, the loss and the reverse step use the ``C_hat`` each implies (DDPM's conversions with
    ``C_t`` for the noise). It diffuses ``x0`` itself: the process already mixes ``y`` into ``x_t``,
    so ``residual=True`` is refused.
    """

    #: ``config.restoration`` keys: :data:`DEFAULT_RESTORATION`'s.
    RESTORATION_KEYS = tuple(DEFAULT_RESTORATION)

    def __init__(self, denoiser, config=None, **kwargs):
        super().__init__(denoiser, config, **kwargs)
        if self.residual:
            raise ValueError("`residual=True` is not available with CDiffuSE: its forward process already moves x_t "
                             "towards y (x_t mixes in m_t sqrt(abar_t) y).")

    def check_restoration_settings(self, settings: dict) -> dict:
        """``settings`` checked and normalised by :func:`check_restoration`."""
        return check_restoration(settings)

    @property
    def restoration(self) -> dict:
        """The adapter's saved reverse-process settings (``config.restoration``)."""
        return self.config.restoration

    def restoration_settings(self, **given) -> dict:
        """The reverse process's settings: those ``given`` (not None), else the adapter's own
        :attr:`restoration` (saved with it), else :data:`DEFAULT_RESTORATION`."""
        settings = {**DEFAULT_RESTORATION, **self.restoration}
        settings.update({k: v for k, v in given.items() if v is not None})
        return settings

    @classmethod
    def from_model(
        cls,
        model: Callable,
        size: str = "base",
        mode: str = "restoregrad",
        latent_weight: float = 0.1,
        prior_matching_weight: float = 0.5,
        sigma_min: float = 0.1,
        peak_normalize: bool = True,
        scheduler: LearnedPriorScheduler | None = None,
        weighting: str = "elbo",
        snr_gamma: float = 5.0,
        encoder: str = "reduced",
        handcrafted_prior: Callable | None = None,
        sigma_max: float | None = None,
        **config_fields,
    ) -> "CDiffuSERestoreGrad":
        """Wrap a CDiffuSE model object and build 1-D Prior and Posterior Nets of ``size``.

        Args:
            model: the CDiffuSE network (or a :class:`CDiffuSEDenoiser` around it).
            size: ``"tiny"``, ``"base"`` (the paper's) or ``"large"`` encoders.
            mode: ``"restoregrad"``, ``"restoregrad_no_posterior"``, ``"priorgrad"`` or ``"ddpm"``.
            latent_weight, prior_matching_weight: the paper's eta and lambda, weights of the latent-regulariser
                and prior-matching terms (paper: 0.1, 0.5).
            sigma_min: the encoders' floor on sigma.
            peak_normalize: see :class:`CDiffuSEDenoiser`.
            scheduler: the training schedule (default :func:`cdiffuse_scheduler`); its ``prediction_type``
                is what the network predicts.
            weighting, snr_gamma: the denoising term's weighting (:class:`~restoregrad_adapter.RestoreGradLoss`;
                ``"elbo"`` is the paper's).
            encoder: ``"reduced"`` (default: the encoders' body on 16-sample blocks) or ``"paper"`` (the
                paper's ResNet-20 at every sample); see :mod:`restoregrad_adapter.encoders`.
            handcrafted_prior: mode ``"priorgrad"``'s prior (default: the energy prior).
            sigma_max: an upper bound on the encoders' sigma (None: none).
            config_fields: other :class:`~restoregrad_adapter.RestoreGradConfig` fields (``input_peak``,
                ``restoration``, ``sample_rate``, ...).
        """
        denoiser = model if isinstance(model, CDiffuSEDenoiser) else CDiffuSEDenoiser(model, peak_normalize)
        return cls.with_encoders(denoiser, dims=1, in_channels=1, size=size, sigma_min=sigma_min, encoder=encoder,
                                 scheduler=scheduler if scheduler is not None else cdiffuse_scheduler(),
                                 handcrafted_prior=handcrafted_prior, sigma_max=sigma_max, mode=mode,
                                 latent_weight=latent_weight,
                                 prior_matching_weight=prior_matching_weight, weighting=weighting,
                                 snr_gamma=snr_gamma, **config_fields)

    # ------------------------------------------------------------------ schedule
    def training_betas(self) -> torch.Tensor:
        """The training betas in float64 (recomputed from the config for a linear schedule)."""
        return training_betas(self.scheduler)

    def reverse_schedule(self, inference_betas: Sequence[float] | None = FAST_INFERENCE_BETAS_6) -> CDiffuSESchedule:
        """:func:`reverse_schedule` for this adapter's training schedule."""
        return reverse_schedule(self.training_betas(), inference_betas)

    def _forward_terms(self, timesteps: torch.Tensor, like: torch.Tensor):
        if timesteps.ndim != 1 or timesteps.is_floating_point():
            raise ValueError(f"`timesteps` must be an integer tensor of shape (B,), got {timesteps.dtype} of "
                             f"shape {tuple(timesteps.shape)}.")
        abar = torch.cumprod(1 - self.training_betas(), dim=0)
        index = timesteps.detach().to(like.device).long()  # indexed where the batch lives: no host synchronisation
        shape = (-1,) + (1,) * (like.ndim - 1)
        tables = (*forward_coefficients(abar), (1 - abar).sqrt())
        return tuple(c.to(device=like.device, dtype=like.dtype)[index].view(shape) for c in tables)

    # ------------------------------------------------------------------ training
    def add_noise(self, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """CDiffuSE's forward process ``x_t = (1 - m_t) sqrt(abar_t) x0 + m_t sqrt(abar_t) y + sqrt(delta_t) eps``.

        ``eps`` is already drawn from the prior (``sigma * z``); ``timesteps``: ``(B,)`` 0-based training steps.
        """
        a, b, s, _ = self._forward_terms(timesteps, x0)
        return a * x0 + b * y.to(x0.dtype) + s * eps

    def noise_target(self, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
        """The combined noise ``C_t = (m_t sqrt(abar_t) (y - x0) + sqrt(delta_t) eps) / sqrt(1 - abar_t)``.

        Equal to ``(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)`` for ``x_t = add_noise(x0, y, eps, t)``:
        the network's target (paper Algorithm 1).
        """
        _, b, s, scale = self._forward_terms(timesteps, x0)
        return (b * (y.to(x0.dtype) - x0) + s * eps) / scale

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def restore(
        self,
        y: torch.Tensor,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        *,
        scheduler=None,
        inference_betas: Sequence[float] | str | None = None,
        timestep_spacing: str | None = None,
        eta: float = 0.0,
        patch_size: int | None = None,
        stride: int | None = None,
        patch_batch_size: int | None = None,
        self_ensemble: bool = False,
        low_resolution: torch.Tensor | None = None,
        progress: bool = False,
        callback: Callable[[int, torch.Tensor], None] | None = None,
        initial: str | None = None,
        clamp: bool | None = None,
        mix_noisy: bool | float | None = None,
    ) -> torch.Tensor:
        """Enhance whole utterances ``y`` with CDiffuSE's reverse process from the learned prior.

        The base :meth:`RestoreGrad.restore` with CDiffuSE's schedule options as keywords. Framing
        (the released inference's): an utterance of ``L`` samples is conditioned on every frame of its
        spectrogram, ``1 + L // 256`` of them, and the chain runs on it zero-padded to ``256 (1 + L //
        256)`` samples (:func:`utterance_length`); the result is cropped back to ``L``.
        ``mode="ddpm"`` with :data:`RELEASED_INFERENCE` (``initial="noisy"``, ``clamp=True``,
        ``mix_noisy=True``, ``inference_betas``: the 6-step schedule or ``"all"``) is the released
        inference algorithm.

        Settings left out come from the adapter's :attr:`restoration` (what its training recipe
        validated with, saved with it), else :data:`DEFAULT_RESTORATION`, which differs from the
        released inference on purpose: the chain starts from the prior of eq. 10 with the learned
        covariance, and nothing is clipped or blended.

        Args:
            y: noisy waveforms ``(B, 1, L)``, ``L`` above 512 samples (any length, not only whole frames);
                a batch is restored as each of its utterances would be alone.
            num_inference_steps: the number of training steps T to run every one of them (instead of a
                fast schedule).
            generator: source of ``x_N`` and of every step's fresh noise.
            scheduler: a :class:`CDiffuSEScheduler` to sample with instead (its ``initial``, ``clamp`` and
                ``mix_noisy`` are then used); CDiffuSE's process takes no other sampler.
            inference_betas: fast-sampling schedule (``FAST_INFERENCE_BETAS_6``, the default, or
                ``FAST_INFERENCE_BETAS_3``), or ``"all"`` for every training step.
            timestep_spacing, eta, patch_size, stride, patch_batch_size, self_ensemble, low_resolution:
                image options of the base signature; CDiffuSE takes none of them.
            progress: show a progress bar.
            callback: called as ``callback(t, x_t)`` with the initial sample (``t = N``) and after
                every step (``t = N-1, ..., 0``; ``x_0`` after the blend), on the padded utterance.
            initial: ``"prior"`` draws ``x_N = sqrt(abar_N) y + sqrt(delta_N) sigma_prior z``
                (eq. 10 with the learned covariance); ``"noisy"`` starts from ``x_N = y`` as the
                released inference code does.
            clamp: clip to [-1, 1] after every step (the last one after the blend), as the released code does.
            mix_noisy: the released code's final blend ``(1 - w) x_0 + w y``: True for its
                ``w = 0.2``, or a weight in [0, 1]; False returns ``x_0`` itself.

        Returns:
            The enhanced waveforms, ``y``'s shape, in ``y``'s precision (at least float32).
        """
        self._check_condition(y)
        for name, value, default in (("timestep_spacing", timestep_spacing, None), ("eta", eta, 0.0),
                                     ("patch_size", patch_size, None), ("stride", stride, None),
                                     ("patch_batch_size", patch_batch_size, None),
                                     ("self_ensemble", self_ensemble, False),
                                     ("low_resolution", low_resolution, None)):
            if value is not default and value != default:
                raise ValueError(f"`{name}` is an image option; CDiffuSE restores whole utterances and takes none.")
        T = self.scheduler.config.num_train_timesteps
        if num_inference_steps is not None:
            if inference_betas is not None:
                raise ValueError("Pass only one of `num_inference_steps` or `inference_betas`.")
            if num_inference_steps != T:
                raise ValueError(f"CDiffuSE's reverse process runs every training step (num_inference_steps={T}) "
                                 f"or a fast schedule (`inference_betas`), got num_inference_steps="
                                 f"{num_inference_steps!r}.")
            inference_betas = "all"
        if scheduler is not None:
            if not isinstance(scheduler, CDiffuSEScheduler):
                raise ValueError("`scheduler` must be a CDiffuSEScheduler (CDiffuSE's conditional reverse process "
                                 f"takes no other sampler), got {type(scheduler).__name__}.")
            if any(value is not None for value in (initial, clamp, mix_noisy)):
                raise ValueError("give `scheduler` or `initial`/`clamp`/`mix_noisy`, not both.")
            initial, clamp = scheduler.config.initial, scheduler.config.clamp
            mix_noisy = scheduler.config.mix_noisy
        given = {"initial": initial, "clamp": clamp, "mix_noisy": mix_noisy}
        if inference_betas is not None:
            given["inference_betas"] = inference_betas if isinstance(inference_betas, str) else list(inference_betas)
        settings = check_restoration(self.restoration_settings(**given))
        inference_betas = None if settings["inference_betas"] == "all" else settings["inference_betas"]
        scheduler = CDiffuSEScheduler.from_training_scheduler(self.scheduler, initial=settings["initial"],
                                                              clamp=settings["clamp"],
                                                              mix_noisy=settings["mix_noisy"])
        scale = self.input_scale(y)  # the level training used (input_peak), undone on the output
        y = y * scale
        length = y.shape[-1]
        denoiser = self.denoiser
        if isinstance(denoiser, CDiffuSEDenoiser):
            if length <= N_FFT // 2:
                raise ValueError(f"`y` has {length} samples; CDiffuSE's spectrogram needs more than {N_FFT // 2} "
                                 "(zero-pad shorter recordings).")
            spectrogram = denoiser.spectrogram(y, whole_utterance=True)  # every frame of the unpadded utterance
            y = torch.nn.functional.pad(y, (0, utterance_length(length) - length))

            def denoiser(x_t, condition, t):
                return self.denoiser(x_t, condition, t, spectrogram=spectrogram)

        steps = {"num_inference_steps": T} if inference_betas is None else {"inference_betas": inference_betas}
        x = sampling.restore(denoiser, y, self._prior_std, self.scheduler, scheduler=scheduler, generator=generator,
                             progress=progress, callback=callback, **steps)
        return x[..., :length] / scale.to(x.dtype)


