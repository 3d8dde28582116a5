"""`RestoreGrad`: adds a jointly learned prior to any conditional denoiser ``eps(x_t, y, t)``.

Training (paper Algorithm 1, eq. 10)::

    sigma_post = posterior_net(x0, y); sigma_prior = prior_net(y)
    eps = sigma_post * z;  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    loss = latent_weight * L_LR + L_DM(eps, denoiser(x_t, y, t)) + prior_matching_weight * L_PM

Sampling (Algorithm 2): ``x_T = sigma_prior * z``, then the scheduler's reverse steps with fresh
noise ``sigma_prior * z``. The Posterior Net is not used.

One object runs four modes, so that a user compares them with one flag:

=============================  =============================================  =================
mode                           prior std                                      loss
=============================  =============================================  =================
``"restoregrad"``              Prior Net (train: Posterior Net for the noise)  eq. 10
``"restoregrad_no_posterior"`` Prior Net                                       eq. 11
``"priorgrad"``                handcrafted from y (:func:`energy_prior`)       weighted MSE
``"ddpm"``                     1                                               MSE
=============================  =============================================  =================
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .loss import RestoreGradLoss, RestoreGradLossOutput
from .scheduler import LearnedPriorScheduler, _check_std_values, noise_from_prediction

MODES = ("restoregrad", "restoregrad_no_posterior", "priorgrad", "ddpm")

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def energy_prior(y: torch.Tensor, frame_length: int | None = None, std_min: float = 0.1) -> torch.Tensor:
    """PriorGrad's handcrafted prior: the local energy of ``y``, clipped below at ``std_min``.

    The RMS of ``y`` over non-overlapping frames (``frame_length`` samples for waveforms, default
    256; ``frame_length x frame_length`` pixels for images, default 8), divided by its maximum in each
    example so the loudest frame has std 1, clipped at ``std_min`` and held constant over each
    frame. ``y``: ``(B, C, L)`` or ``(B, C, H, W)`` -> a std map of the same shape.
    """
    _check_signal("y", y)
    dims = y.ndim - 2
    if dims not in (1, 2):
        raise ValueError(f"`y` must have shape (B, C, L) or (B, C, H, W), got {tuple(y.shape)}.")
    frame = frame_length if frame_length is not None else (256 if dims == 1 else 8)
    if not isinstance(frame, int) or frame < 1:
        raise ValueError(f"`frame_length` must be a positive integer, got {frame_length!r}.")
    pool = F.avg_pool1d if dims == 1 else F.avg_pool2d
    # ceil_mode covers a last partial frame; its mean is over the samples it really has.
    rms = pool(y.float() ** 2, frame, stride=frame, ceil_mode=True).sqrt()
    peak = rms.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (y.ndim - 1)))
    std = (rms / peak).clamp_min(std_min)
    for axis in range(2, y.ndim):
        std = std.repeat_interleave(frame, dim=axis).narrow(axis, 0, y.shape[axis])
    return std


def _check_signal(name: str, tensor: torch.Tensor, finite: bool = True) -> None:
    """A floating ``(B, C, *spatial)`` tensor with no empty dimension (and, unless ``finite=False``, no
    NaN or inf: one host synchronisation)."""
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


def _check_inputs(finite: dict[str, torch.Tensor], positive: dict[str, torch.Tensor]) -> None:
    """One host synchronisation for a training step's inputs: ``finite`` tensors hold no NaN or inf,
    ``positive`` ones (standard deviations) are finite and > 0; the error names the first that fails."""
    flags = [torch.isfinite(t.detach()).all() for t in finite.values()]
    flags += [(torch.isfinite(std.detach()) & (std.detach() > 0)).all() for std in positive.values()]
    if bool(torch.stack(flags).all()):
        return
    for name, tensor in finite.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"`{name}` contains non-finite values (NaN or inf).")
    for name, std in positive.items():
        _check_std_values(std, name)


class RestoreGrad(nn.Module):
    """Wrap a conditional denoiser with RestoreGrad's learned prior.

    Args:
        denoiser: any callable ``(x_t, y, t) -> eps_hat`` with ``x_t, y, eps_hat`` of shape
            ``(B, C, *spatial)`` and ``t`` of shape ``(B,)`` (integer training steps, or fractional
            ones in fast sampling). An ``nn.Module`` is registered so its parameters train jointly.
        prior_net: the Prior Net ``psi`` (:class:`~restoregrad_adapter.PriorNet`); needed by the
            RestoreGrad modes.
        posterior_net: the Posterior Net ``phi``; needed by mode ``"restoregrad"``.
        scheduler: a :class:`LearnedPriorScheduler` (default: 1000 linear steps, DDPM's defaults).
        loss: a :class:`RestoreGradLoss` (default ``latent_weight=0.1, prior_matching_weight=0.5``: the
            paper's speech values of eta and lambda).
        mode: one of ``"restoregrad"``, ``"restoregrad_no_posterior"``, ``"priorgrad"``, ``"ddpm"``;
            may be changed later (``adapter.mode = "ddpm"``).
        handcrafted_prior: the PriorGrad prior ``y -> std map`` (default :func:`energy_prior`).
        residual: diffuse the residual ``r0 = x0 - y`` instead of ``x0`` and restore ``y + r0_hat``
            (docs/design.md, "Parameterizations and targets"); everything else applies to ``r0``.
        input_peak: the level normalisation training used: each degraded example was scaled so its
            peak is ``input_peak`` (speech). ``restore`` does the same to its input and undoes it on the
            output, so a signal restores alike at any level. None: inputs are used as they are.

    What the denoiser predicts is the scheduler's ``prediction_type``: the noise (``"epsilon"``, the
    paper's), the clean target (``"sample"``) or ``v`` (``"v_prediction"``); the loss compares the
    noise estimate each implies, so eq. 10 holds unchanged.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        prior_net: nn.Module | None = None,
        posterior_net: nn.Module | None = None,
        scheduler: LearnedPriorScheduler | None = None,
        loss: RestoreGradLoss | None = None,
        mode: str = "restoregrad",
        handcrafted_prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
        residual: bool = False,
        input_peak: float | None = None,
    ):
        super().__init__()
        if not callable(denoiser):
            raise ValueError(f"`denoiser` must be callable as denoiser(x_t, y, t), got {type(denoiser).__name__}.")
        self.denoiser = denoiser
        self.prior_net = prior_net
        self.posterior_net = posterior_net
        self.scheduler = scheduler if scheduler is not None else LearnedPriorScheduler()
        if not isinstance(self.scheduler, LearnedPriorScheduler):
            raise ValueError("`scheduler` must be a LearnedPriorScheduler (other diffusers schedulers can be passed "
                             f"to `restore(scheduler=...)`), got {type(self.scheduler).__name__}.")
        if not isinstance(residual, bool):
            raise ValueError(f"`residual` must be a bool, got {residual!r}.")
        self.residual = residual
        if input_peak is not None and (isinstance(input_peak, bool) or not isinstance(input_peak, (int, float))
                                       or not 0 < input_peak < float("inf")):
            raise ValueError(f"`input_peak` must be a positive number or None, got {input_peak!r}.")
        self.input_peak = None if input_peak is None else float(input_peak)
        self.loss_fn = loss if loss is not None else RestoreGradLoss()
        self.handcrafted_prior = handcrafted_prior if handcrafted_prior is not None else energy_prior
        self.mode = mode

    @classmethod
    def with_encoders(
        cls,
        denoiser: Denoiser,
        dims: int,
        in_channels: int,
        size: str = "base",
        sigma_min: float = 0.1,
        encoder: str = "reduced",
        **kwargs,
    ) -> "RestoreGrad":
        """Build the Prior and Posterior Nets for signals of ``dims`` (1 or 2) and ``in_channels``.

        ``encoder`` is ``"reduced"`` (default: the body at 1/4 of an image's side, 1/16 of a
        waveform's rate, sigma interpolated back) or ``"paper"`` (the paper's full-resolution ResNet-20);
        see :mod:`restoregrad_adapter.encoders`. ``size``: ``"tiny"``, ``"base"`` or ``"large"`` widths.
        """
        from .encoders import PosteriorNet, PriorNet, downsample_of

        downsample = downsample_of(encoder, dims)
        prior = PriorNet(dims=dims, in_channels=in_channels, size=size, sigma_min=sigma_min, downsample=downsample)
        posterior = PosteriorNet(dims=dims, in_channels=in_channels, size=size, sigma_min=sigma_min,
                                 downsample=downsample)
        return cls(denoiser, prior, posterior, **kwargs)

    # ------------------------------------------------------------------ mode
    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {value!r}.")
        if value in ("restoregrad", "restoregrad_no_posterior") and self.prior_net is None:
            raise ValueError(f"mode {value!r} needs a `prior_net`; pass one or use mode 'priorgrad' or 'ddpm'.")
        self._mode = value

    @property
    def learned_prior(self) -> bool:
        """True in the RestoreGrad modes, where the prior's covariance is learned."""
        return self._mode in ("restoregrad", "restoregrad_no_posterior")

    def _check_pair(self, x0: torch.Tensor, y: torch.Tensor) -> None:
        _check_signal("x0", x0, finite=False)
        _check_signal("y", y, finite=False)
        if x0.shape != y.shape:
            raise ValueError(f"`x0` and `y` must have the same shape, got {tuple(x0.shape)} and {tuple(y.shape)}.")
        expected = self._parameter_dtype()
        if expected is not None and not torch.is_autocast_enabled(x0.device.type):
            for name, tensor in (("x0", x0), ("y", y)):
                if tensor.dtype != expected:
                    raise ValueError(f"`{name}` is {tensor.dtype} but the adapter's weights are {expected}; convert "
                                     f"the batch (e.g. `.to({expected})`) or train under autocast (mixed precision).")

    def _parameter_dtype(self) -> torch.dtype | None:
        parameter = next(iter(self.parameters()), None)
        return parameter.dtype if parameter is not None else None

    def _check_condition(self, y: torch.Tensor, finite: bool = True) -> None:
        _check_signal("y", y, finite=finite)
        nets = [n for n in (self.prior_net, self.posterior_net) if n is not None]
        for net in nets:
            expected = getattr(getattr(net, "config", None), "in_channels", None)
            if expected is not None and y.shape[1] != expected:
                raise ValueError(f"`y` has {y.shape[1]} channels (shape {tuple(y.shape)}), but the encoders were "
                                 f"built for in_channels={expected}.")

    # ------------------------------------------------------------------ priors
    def prior_std(self, y: torch.Tensor) -> torch.Tensor:
        """The sampling prior's standard-deviation map for ``y`` in the current mode (``y``'s shape)."""
        self._check_condition(y)
        if self._mode == "ddpm":
            return torch.ones_like(y, dtype=torch.float32)
        if self._mode == "priorgrad":
            return self.handcrafted_prior(y).float()
        return self.prior_net(y)

    # ------------------------------------------------------------------ training
    def training_loss(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> RestoreGradLossOutput:
        """One Monte-Carlo estimate of the training loss (paper Algorithm 1).

        Args:
            x0: clean signals ``(B, C, *spatial)``.
            y: degraded signals, same shape.
            generator: draws ``z`` and ``t`` when they are not given.
            noise: standard-normal ``z`` of ``x0``'s shape; the added noise is ``sigma * z``.
            timesteps: ``(B,)`` integer training steps in ``[0, T)``.
        """
        self._check_pair(x0, y)
        self._check_condition(y, finite=False)
        if self._mode == "restoregrad" and self.posterior_net is None:
            raise ValueError("training in mode 'restoregrad' needs a `posterior_net` (an adapter loaded for restoration "
                             "only has none); pass one, or train in mode 'restoregrad_no_posterior'.")
        batch = x0.shape[0]
        T = self.scheduler.config.num_train_timesteps
        if noise is None:
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
        elif not isinstance(noise, torch.Tensor) or noise.shape != x0.shape or not noise.is_floating_point():
            got = f"{noise.dtype} of shape {tuple(noise.shape)}" if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"`noise` must be a floating tensor of the shape of `x0` {tuple(x0.shape)}, got {got}.")

        if timesteps is None:
            gen_device = generator.device if generator is not None else x0.device
            timesteps = torch.randint(0, T, (batch,), generator=generator, device=gen_device).to(x0.device)
        elif timesteps.shape != (batch,) or timesteps.is_floating_point() or not (
            (timesteps >= 0) & (timesteps < T)).all():
            raise ValueError(f"`timesteps` must be an integer tensor of shape ({batch},) with values in [0, {T}), "
                             f"got {timesteps.dtype} of shape {tuple(timesteps.shape)}.")

        # The diffused variable: x0, or the residual r0 = x0 - y; eq. 10 applies to it unchanged.
        target_signal = (x0 - y if self.residual else x0).float()
        prior_std = self.prior_std(y)
        posterior_std = self.posterior_net(target_signal, y) if self._mode == "restoregrad" else None
        stds = {"prior_std": prior_std} if posterior_std is None else {"prior_std": prior_std, "posterior_std": posterior_std}
        _check_inputs({"x0": x0, "y": y, "noise": noise}, stds)  # the step's one host synchronisation for its inputs
        noise_std = posterior_std if posterior_std is not None else prior_std
        eps = noise_std * noise  # reparameterised: gradients reach the encoder through eps
        x_t = self.add_noise(target_signal, y, eps, timesteps)
        target = self.noise_target(target_signal, y, eps, timesteps)
        eps_hat = self.noise_estimate(self.denoiser(x_t, y, timesteps), x_t, timesteps)
        abar = self.scheduler.alphas_cumprod.to(x_t.device)[timesteps].float()
        return self.loss_fn(eps_hat, target, target_signal, prior_std, posterior_std, self.scheduler.alpha_bar_T,
                            learned_prior=self.learned_prior, snr=abar / (1 - abar), check_stds=False)

    def noise_estimate(self, prediction: torch.Tensor, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The noise estimate ``eps_hat`` implied by the denoiser's output in the scheduler's ``prediction_type``.

        With ``a = sqrt(abar_t)`` and ``s = sqrt(1 - abar_t)`` (docs/design.md, "Parameterizations and
        targets"): ``epsilon`` is ``eps_hat`` itself; ``sample`` (``x0_hat``) gives
        ``(x_t - a x0_hat) / s``; ``v_prediction`` gives ``s x_t + a v_hat``.
        """
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return prediction
        abar = self.scheduler.alphas_cumprod.to(x_t.device)[timesteps].float()
        return noise_from_prediction(kind, prediction, x_t, abar.view(-1, *([1] * (x_t.ndim - 1))))

    def add_noise(self, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` (Algorithm 1, step 2).

        Integrations whose forward process also mixes in ``y`` (CDiffuSE) override this.
        """
        return self.scheduler.add_noise(x0, eps, timesteps)

    def noise_target(self, x0: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to predict: the added noise ``eps`` (Algorithm 1, step 3).

        Integrations whose network predicts another combination (CDiffuSE) override this.
        """
        return eps

    def forward(self, x0: torch.Tensor, y: torch.Tensor, **kwargs) -> RestoreGradLossOutput:
        """Same as :meth:`training_loss` (so DDP and Accelerate can wrap the adapter)."""
        return self.training_loss(x0, y, **kwargs)

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory, include_posterior: bool = True, **metadata):
        """Save to a folder: config, Prior Net, Posterior Net (optional), scheduler, denoiser, model card.

        ``metadata``: ``base_model``, ``base_model_revision``, ``training_data``, ``metrics``.
        See :mod:`restoregrad_adapter.hub` for the layout.
        """
        from .hub import save_pretrained

        return save_pretrained(self, save_directory, include_posterior=include_posterior, **metadata)

    @classmethod
    def from_pretrained(cls, pretrained, denoiser=None, revision: str | None = None, **kwargs) -> "RestoreGrad":
        """Load an adapter from a folder or a Hugging Face Hub repo id (``"org/name"``).

        ``denoiser`` is the model object to load the denoiser's weights into (your own model, built
        as for training); not needed when the denoiser was saved in diffusers format. Other keyword
        arguments: ``cache_dir``, ``token``, ``local_files_only``, ``mode``, ``load_posterior``.
        """
        from .hub import from_pretrained

        return from_pretrained(cls, pretrained, denoiser=denoiser, revision=revision, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Upload the adapter to the Hugging Face Hub (see :func:`restoregrad_adapter.hub.push_to_hub`)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def restore(
        self,
        y: torch.Tensor,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        inference_betas: Sequence[float] | None = None,
        scheduler=None,
        progress: bool = False,
        eta: float = 0.0,
        patch_size: int | None = None,
        stride: int | None = None,
        patch_batch_size: int | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Restore ``y`` by reverse diffusion from the prior (paper Algorithm 2).

        The library's one restoration loop, :func:`restoregrad_adapter.sampling.restore`; settings
        left at None take the denoiser's integration defaults (listed there).

        Args:
            y: degraded signals ``(B, C, *spatial)``.
            num_inference_steps: number of reverse steps (default: the integration's, else every
                training step).
            generator: source of ``x_T`` and of every step's fresh noise.
            inference_betas: fast-sampling schedule (e.g. ``FAST_INFERENCE_BETAS_6``), instead of
                ``num_inference_steps``; only with a learned-prior scheduler.
            scheduler: any diffusers scheduler to sample with instead (DDIM, DPM-Solver++, ...),
                through whitening; same training schedule and prediction type as the adapter's,
                ``clip_sample``/``thresholding`` off.
            progress: show a progress bar.
            eta: DDIM's eta, for schedulers whose ``step`` takes one.
            patch_size, stride, patch_batch_size: restore images larger than ``patch_size`` from
                overlapping patches (docs/design.md, "WeatherDiff's patch restoration").
            callback: ``callback(k, x)`` with the reverse steps ``k`` still to run, from ``x_T``
                (``k = S``) to the result (``k = 0``).

        Returns:
            The restored signal, ``y``'s shape, in ``y``'s precision (at least float32).
        """
        from .sampling import restore

        self._check_condition(y)
        scale = self.input_scale(y)
        restored = restore(self.denoiser, y * scale, self.prior_std, self.scheduler, scheduler=scheduler,
                           num_inference_steps=num_inference_steps, inference_betas=inference_betas, eta=eta,
                           generator=generator, patch_size=patch_size, stride=stride,
                           patch_batch_size=patch_batch_size, progress=progress, callback=callback,
                           residual=self.residual)
        return restored / scale

    def input_scale(self, y: torch.Tensor) -> torch.Tensor:
        """Per-example factors that bring ``y`` to the level training used (``input_peak``; 1 without one).

        Shape ``(B, 1, ...)``; a silent example keeps factor 1. Powers of two commute with it exactly.
        """
        ones = torch.ones((y.shape[0],) + (1,) * (y.ndim - 1), dtype=y.dtype, device=y.device)
        if self.input_peak is None:
            return ones
        peak = y.detach().abs().flatten(1).amax(dim=1).view_as(ones)
        return torch.where(peak > 0, self.input_peak / peak.clamp_min(torch.finfo(y.dtype).tiny), ones)


__all__ = ["RestoreGrad", "MODES", "energy_prior"]
