"""`RestoreGrad`: adds a jointly learned prior to any conditional denoiser ``eps(x_t, y, t)``.

Training (paper Algorithm 1, eq. 10)::

    sigma_post = posterior_net(x0, y); sigma_prior = prior_net(y)
    eps = sigma_post * z;  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    loss = latent_weight * L_LR + L_DM(eps, denoiser(x_t, y, t)) + prior_matching_weight * L_PM

Sampling (Algorithm 2): ``x_T = sigma_prior * z``, then the scheduler's reverse steps with fresh
noise ``sigma_prior * z``. The Posterior Net is not used.

One object runs five modes, so that a user compares them with one flag:

=============================  =============================================  =================
mode                           prior std                                      loss
=============================  =============================================  =================
``"restoregrad"``              Prior Net (train: Posterior Net for the noise)  eq. 10
``"restoregrad_no_posterior"`` Prior Net                                       eq. 11
``"priorgrad"``                handcrafted from y (:func:`energy_prior`)       weighted MSE
``"constant_prior"``           ``config.prior_std`` everywhere                  weighted MSE
``"ddpm"``                     1                                               MSE
=============================  =============================================  =================
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .checks import check_finite_and_positive, check_image, check_signal
from .config import MODES, EncoderConfig, RestoreGradConfig
from .loss import RestoreGradLoss, RestoreGradLossOutput
from .sampling import RestorationDefaults
from .scheduler import LearnedPriorScheduler, noise_from_prediction

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def energy_prior(y: torch.Tensor, frame_length: int | None = None, std_min: float = 0.1) -> torch.Tensor:
    """PriorGrad's handcrafted prior: the local energy of ``y``, clipped below at ``std_min``.

    The RMS of ``y`` over non-overlapping frames (``frame_length`` samples for waveforms, default
    256; ``frame_length x frame_length`` pixels for images, default 8), divided by its maximum in each
    example so the loudest frame has std 1, clipped at ``std_min`` and held constant over each
    frame. ``y``: ``(B, C, L)`` or ``(B, C, H, W)`` -> a std map of the same shape.
    """
    check_signal("y", y, finite=False)  # a NaN gives a NaN std, which training and restoring refuse, naming y
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


def data_prior_std(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], residual: bool = False,
                   minimum: float = 0.1) -> float:
    """A constant prior's sigma estimated from training pairs (mode ``"constant_prior"``, ``prior_std="auto"``
    in the training scripts): the root mean square of the diffused signal, ``x0`` or the residual ``x0 - y``,
    over all of ``pairs``, at least ``minimum`` (the learned encoders' floor, ``sigma_min``).

    The prior of eq. 10 is the distribution ``x_T`` is drawn from; a constant that matches the scale of
    what is diffused is the simplest prior of the right size (PriorGrad's reasoning with one number).
    """
    total, count = 0.0, 0
    for x0, y in pairs:
        target = (x0 - y) if residual else x0
        total += float(target.double().pow(2).sum())
        count += target.numel()
    if count == 0:
        raise ValueError("`pairs` is empty; the constant prior's sigma is estimated from at least one pair.")
    return max(minimum, (total / count) ** 0.5)


def build_encoders(spec: EncoderConfig) -> tuple[nn.Module, nn.Module]:
    """The Prior and Posterior Nets ``spec`` describes (the Prior Net first: the order of their random
    initialisation)."""
    from .encoders import PosteriorNet, PriorNet, downsample_of

    kwargs = dict(dims=spec.dims, in_channels=spec.in_channels, size=spec.size, sigma_min=spec.sigma_min,
                  downsample=downsample_of(spec.architecture, spec.dims),
                  **({"sigma_max": spec.sigma_max} if spec.sigma_max is not None else {}))
    return PriorNet(**kwargs), PosteriorNet(**kwargs)


def _wrap_for_integration(denoiser, config: RestoreGradConfig):
    """``(denoiser, config)`` with the denoiser wrapped for ``config.integration`` when it is the user's bare
    model, and the config naming the integration whose wrapper the denoiser is."""
    from .integrations import find_integration, get_integration

    found = find_integration(denoiser)
    if found is not None:
        kwargs = dict(found.wrapper_kwargs(denoiser))
        if config.integration not in (None, found.name):
            raise ValueError(f"`config.integration` is {config.integration!r}, but `denoiser` is wrapped for the "
                             f"{found.name!r} integration.")
        if config.integration_kwargs and config.integration_kwargs != kwargs:
            raise ValueError(f"`config.integration_kwargs` {config.integration_kwargs} differ from those of the "
                             f"wrapped `denoiser` {kwargs}.")
        return denoiser, config.replace(integration=found.name, integration_kwargs=kwargs)
    if config.integration is None:
        return denoiser, config
    integration = get_integration(config.integration)
    if integration.check_model is not None:
        integration.check_model(config, denoiser)
    try:
        return integration.wrap(denoiser, **config.integration_kwargs), config
    except TypeError as error:  # a keyword the integration's wrapper does not take
        raise ValueError(f"`config.integration_kwargs` {config.integration_kwargs!r} do not fit the "
                         f"{integration.name!r} integration's wrapper ({error}).") from None


class RestoreGrad(nn.Module):
    """Wrap a conditional denoiser with RestoreGrad's learned prior.

    Args:
        denoiser: any callable ``(x_t, y, t) -> model output`` with ``x_t, y`` and the output of shape
            ``(B, C, *spatial)`` and ``t`` of shape ``(B,)`` (integer training steps, or fractional
            ones in fast sampling); or the user's bare model when ``config.integration`` names the
            integration that wraps it. An ``nn.Module`` is registered so its parameters train jointly.
        config: what the adapter is (:class:`~restoregrad_adapter.RestoreGradConfig`: mode,
            prediction type, residual, input level, loss weights, encoders, integration); default
            ``RestoreGradConfig()``.
        prior_net, posterior_net: the encoders as objects (for example loaded ones), instead of building
            them from ``config.encoder``.
        scheduler: a :class:`LearnedPriorScheduler` (default: 1000 linear steps, DDPM's defaults, with
            ``config.prediction_type``); its ``prediction_type`` must be the config's.
        handcrafted_prior: mode ``"priorgrad"``'s prior ``y -> std map`` (default :func:`energy_prior`).
        config_overrides: fields of ``config`` to change, as ``RestoreGradConfig.replace`` takes them
            (``RestoreGrad(denoiser, mode="ddpm")``).

    What the denoiser predicts is ``config.prediction_type``: the noise (``"epsilon"``, the paper's),
    the clean target (``"sample"``) or ``v`` (``"v_prediction"``); the loss compares the noise estimate
    each implies, so eq. 10 holds unchanged.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        config: RestoreGradConfig | None = None,
        *,
        prior_net: nn.Module | None = None,
        posterior_net: nn.Module | None = None,
        scheduler: LearnedPriorScheduler | None = None,
        handcrafted_prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **config_overrides,
    ):
        super().__init__()
        config = RestoreGradConfig() if config is None else config
        if not isinstance(config, RestoreGradConfig):
            raise ValueError(f"`config` must be a RestoreGradConfig, got {type(config).__name__} (encoders are passed "
                             "as `prior_net=` and `posterior_net=`).")
        config = config.replace(**config_overrides) if config_overrides else config
        denoiser, config = _wrap_for_integration(denoiser, config)
        if not callable(denoiser):
            raise ValueError(f"`denoiser` must be callable as denoiser(x_t, y, t), got {type(denoiser).__name__}.")
        if prior_net is None and config.encoder is not None:
            prior_net, built_posterior = build_encoders(config.encoder)
            posterior_net = built_posterior if posterior_net is None else posterior_net
        elif prior_net is not None:
            described = EncoderConfig.of(prior_net)
            if config.encoder is None:
                config = config.replace(encoder=described)
            elif described is not None and described != config.encoder:
                raise ValueError(f"`prior_net` is {described}, but `config.encoder` says {config.encoder}.")
        if scheduler is None:
            scheduler = LearnedPriorScheduler(prediction_type=config.prediction_type)
        if not isinstance(scheduler, LearnedPriorScheduler):
            raise ValueError("`scheduler` must be a LearnedPriorScheduler (other diffusers schedulers can be passed "
                             f"to `restore(scheduler=...)`), got {type(scheduler).__name__}.")
        if scheduler.config.prediction_type != config.prediction_type:
            raise ValueError(f"`scheduler` has prediction_type={scheduler.config.prediction_type!r}, but "
                             f"`config.prediction_type` is {config.prediction_type!r}.")
        self._config = config
        self.denoiser = denoiser
        self.prior_net = prior_net
        self.posterior_net = posterior_net
        self.scheduler = scheduler
        self.loss_fn = RestoreGradLoss(latent_weight=config.latent_weight,
                                       prior_matching_weight=config.prior_matching_weight,
                                       weighting=config.weighting, snr_gamma=config.snr_gamma)
        self.handcrafted_prior = handcrafted_prior if handcrafted_prior is not None else energy_prior
        self.metadata: dict = {}  # base_model, training_data, metrics ...: filled by from_pretrained
        self.mode = config.mode  # checked against the encoders
        self._config = self._config.replace(restoration=self.check_restoration_settings(config.restoration))

    @classmethod
    def with_encoders(cls, denoiser: Denoiser, dims: int, in_channels: int, size: str = "base",
                      sigma_min: float = 0.1, encoder: str = "reduced", scheduler: LearnedPriorScheduler | None = None,
                      handcrafted_prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
                      sigma_max: float | None = None, **config_fields) -> "RestoreGrad":
        """Build the Prior and Posterior Nets for signals of ``dims`` (1 or 2) and ``in_channels``.

        ``encoder`` is ``"reduced"`` (default: the body at 1/4 of an image's side, 1/16 of a
        waveform's rate, sigma interpolated back) or ``"paper"`` (the paper's full-resolution ResNet-20);
        see :mod:`restoregrad_adapter.encoders`. ``size``: ``"tiny"``, ``"base"`` or ``"large"`` widths.
        ``sigma_max``: an upper bound on sigma (:class:`EncoderConfig`). ``config_fields``: the other :class:`RestoreGradConfig` fields; ``prediction_type`` defaults to
        the ``scheduler``'s.
        """
        if scheduler is not None and "prediction_type" not in config_fields:
            config_fields["prediction_type"] = scheduler.config.prediction_type
        spec = EncoderConfig(dims=dims, in_channels=in_channels, size=size, sigma_min=sigma_min, architecture=encoder,
                             sigma_max=sigma_max)
        return cls(denoiser, RestoreGradConfig(encoder=spec, **config_fields), scheduler=scheduler,
                   handcrafted_prior=handcrafted_prior)

    @classmethod
    def from_unet(cls, unet: nn.Module, size: str = "base", sigma_min: float = 0.1, encoder: str = "reduced",
                  scheduler: LearnedPriorScheduler | None = None, **config_fields) -> "RestoreGrad":
        """An adapter around a diffusers UNet (``UNet2DModel`` for images, ``UNet1DModel`` for waveforms)
        that takes ``cat([x_t, y], 1)``: ``in_channels = 2 C``, ``out_channels = C``. The signal's channels
        and dimensions are read from ``unet.config``; see :meth:`with_encoders` for the other arguments."""
        unet_config = getattr(unet, "config", None)
        channels = getattr(unet_config, "out_channels", None)
        if not isinstance(channels, int):
            raise ValueError(f"`unet` must be a diffusers model with `config.out_channels`, got {type(unet).__name__}.")
        dims = 1 if "1D" in type(unet).__name__ else 2
        config_fields.setdefault("integration", "diffusers")
        return cls.with_encoders(unet, dims=dims, in_channels=channels, size=size, sigma_min=sigma_min,
                                 encoder=encoder, scheduler=scheduler, **config_fields)

    # ------------------------------------------------------------------ configuration
    @property
    def config(self) -> RestoreGradConfig:
        """What the adapter is (saved with it); ``adapter.mode = ...`` updates its ``mode``."""
        return self._config

    @property
    def mode(self) -> str:
        return self._config.mode

    @mode.setter
    def mode(self, value: str) -> None:
        """The mode to train and restore in; ``"constant_prior"`` needs ``config.prior_std`` (use
        :meth:`set_constant_prior`), and leaving it drops the constant."""
        if value not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {value!r}.")
        if value == "constant_prior" and self._config.prior_std is None:
            raise ValueError("mode 'constant_prior' needs its sigma: call `adapter.set_constant_prior(sigma)`.")
        if value in ("restoregrad", "restoregrad_no_posterior") and self.prior_net is None:
            raise ValueError(f"mode {value!r} needs a `prior_net` (or `config.encoder` to build one); pass one or "
                             "use mode 'priorgrad' or 'ddpm'.")
        self._config = self._config.replace(mode=value, prior_std=self._config.prior_std
                                            if value == "constant_prior" else None)

    def set_constant_prior(self, prior_std: float) -> None:
        """Switch to mode ``"constant_prior"`` with sigma = ``prior_std`` everywhere (e.g. from
        :func:`data_prior_std`)."""
        self._config = self._config.replace(mode="constant_prior", prior_std=prior_std)

    @property
    def residual(self) -> bool:
        """The chain diffuses the residual ``x0 - y`` (``config.residual``)."""
        return self._config.residual

    @property
    def input_peak(self) -> float | None:
        """The inputs' level normalisation (``config.input_peak``)."""
        return self._config.input_peak

    @input_peak.setter
    def input_peak(self, value: float | None) -> None:
        self._config = self._config.replace(input_peak=value)

    @property
    def learned_prior(self) -> bool:
        """True in the RestoreGrad modes, where the prior's covariance is learned."""
        return self.mode in ("restoregrad", "restoregrad_no_posterior")

    def _check_condition(self, y: torch.Tensor, finite: bool = True) -> None:
        check_signal("y", y, finite=finite)
        encoder = self._config.encoder
        if encoder is not None and y.ndim != encoder.dims + 2:
            layout = "(B, C, L)" if encoder.dims == 1 else "(B, C, H, W)"
            raise ValueError(f"`y` must have shape {layout} for this {self._config.signal_kind} adapter, got "
                             f"{tuple(y.shape)}.")
        expected = self._config.channels
        if expected is not None and y.shape[1] != expected:
            raise ValueError(f"`y` has {y.shape[1]} channels (shape {tuple(y.shape)}), but the encoders were "
                             f"built for in_channels={expected}.")

    # ------------------------------------------------------------------ priors
    def prior_std(self, y: torch.Tensor) -> torch.Tensor:
        """The sampling prior's standard-deviation map for ``y`` in the current mode (``y``'s shape)."""
        self._check_condition(y)
        return self._prior_std(y)

    def _prior_std(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "ddpm":
            return torch.ones_like(y, dtype=torch.float32)
        if self.mode == "priorgrad":
            return self.handcrafted_prior(y).float()
        if self.mode == "constant_prior":
            return torch.full_like(y, self._config.prior_std, dtype=torch.float32)
        return self.prior_net(y)

    # ------------------------------------------------------------------ training
    def _check_training_inputs(self, x0, y, noise, timesteps) -> None:
        """Shapes and types of a training step's inputs (no host synchronisation: values are checked
        later, with the encoders' outputs, in one)."""
        check_signal("x0", x0, finite=False)
        self._check_condition(y, finite=False)
        if x0.shape != y.shape:
            raise ValueError(f"`x0` and `y` must have the same shape, got {tuple(x0.shape)} and {tuple(y.shape)}.")
        parameter = next(iter(self.parameters()), None)
        if parameter is not None and not torch.is_autocast_enabled(x0.device.type):
            for name, tensor in (("x0", x0), ("y", y)):
                if tensor.dtype != parameter.dtype:
                    raise ValueError(f"`{name}` is {tensor.dtype} but the adapter's weights are {parameter.dtype}; "
                                     f"convert the batch (e.g. `.to({parameter.dtype})`) or train under autocast "
                                     "(mixed precision).")
        if noise is not None and (not isinstance(noise, torch.Tensor) or noise.shape != x0.shape
                                  or not noise.is_floating_point()):
            got = f"{noise.dtype} of shape {tuple(noise.shape)}" if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"`noise` must be a floating tensor of the shape of `x0` {tuple(x0.shape)}, got {got}.")
        if timesteps is not None and (not isinstance(timesteps, torch.Tensor) or timesteps.shape != (x0.shape[0],)
                                      or timesteps.is_floating_point()):
            T = self.scheduler.config.num_train_timesteps
            got = (f"{timesteps.dtype} of shape {tuple(timesteps.shape)}" if isinstance(timesteps, torch.Tensor)
                   else type(timesteps).__name__)
            raise ValueError(f"`timesteps` must be an integer tensor of shape ({x0.shape[0]},) with values in "
                             f"[0, {T}), got {got}.")
        if self.mode == "restoregrad" and self.posterior_net is None:
            raise ValueError("training in mode 'restoregrad' needs a `posterior_net` (an adapter loaded for restoration "
                             "only has none); pass one, or train in mode 'restoregrad_no_posterior'.")

    def training_loss(
        self,
        x0: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> RestoreGradLossOutput:
        """One Monte-Carlo estimate of the training loss (paper Algorithm 1).

        The step's inputs are checked here, once, with one host synchronisation for every value check
        (NaN or inf in ``x0``, ``y``, ``noise``; given timesteps in range; the encoders' sigma maps finite
        and positive).

        Args:
            x0: clean signals ``(B, C, *spatial)``.
            y: degraded signals, same shape.
            generator: draws ``z`` and ``t`` when they are not given.
            noise: standard-normal ``z`` of ``x0``'s shape; the added noise is ``sigma * z``.
            timesteps: ``(B,)`` integer training steps in ``[0, T)``.
        """
        self._check_training_inputs(x0, y, noise, timesteps)
        T = self.scheduler.config.num_train_timesteps
        conditions = {}
        if noise is None:
            noise = randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
        if timesteps is None:
            gen_device = generator.device if generator is not None else x0.device
            timesteps = torch.randint(0, T, (x0.shape[0],), generator=generator, device=gen_device).to(x0.device)
        else:
            conditions["timesteps"] = (((timesteps >= 0) & (timesteps < T)).all(),
                                       f"`timesteps` must be an integer tensor of shape ({x0.shape[0]},) with values "
                                       f"in [0, {T}), got values outside it.")

        # The diffused variable: x0, or the residual r0 = x0 - y; eq. 10 applies to it unchanged.
        target_signal = (x0 - y if self.residual else x0).float()
        prior_std = self._prior_std(y)
        posterior_std = self.posterior_net(target_signal, y) if self.mode == "restoregrad" else None
        stds = {"prior_std": prior_std} if posterior_std is None else {"prior_std": prior_std, "posterior_std": posterior_std}
        # The step's one host synchronisation: every value check at once.
        check_finite_and_positive(finite={"x0": x0, "y": y, "noise": noise}, positive=stds, conditions=conditions)
        noise_std = posterior_std if posterior_std is not None else prior_std
        eps = noise_std * noise  # reparameterised: gradients reach the encoder through eps
        x_t = self.add_noise(target_signal, y, eps, timesteps)
        target = self.noise_target(target_signal, y, eps, timesteps)
        prediction = self.denoiser(x_t, y, timesteps)
        if not isinstance(prediction, torch.Tensor) or prediction.shape != x_t.shape:
            got = tuple(prediction.shape) if isinstance(prediction, torch.Tensor) else type(prediction).__name__
            raise ValueError(f"the denoiser returned {got}; expected the shape of `x_t` {tuple(x_t.shape)}.")
        eps_hat = self.noise_estimate(prediction, x_t, timesteps)
        abar = self.scheduler.alphas_cumprod.to(x_t.device)[timesteps].float()
        return self.loss_fn.compute(eps_hat, target, target_signal, prior_std, posterior_std,
                                    self.scheduler.alpha_bar_T, learned_prior=self.learned_prior,
                                    snr=abar / (1 - abar))

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

        ``metadata``: ``base_model``, ``base_model_revision``, ``training_data``, ``metrics``; the
        adapter's own :attr:`metadata` (from loading) is kept unless given again.
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
    #: Keys of ``config.restoration`` this adapter class takes (its ``restore`` keyword defaults).
    RESTORATION_KEYS: tuple[str, ...] = ()

    def check_restoration_settings(self, settings: dict) -> dict:
        """``settings`` (saved ``restore`` defaults) checked for this adapter class; returned as they are."""
        unknown = sorted(set(settings) - set(self.RESTORATION_KEYS))
        if unknown:
            raise ValueError(f"`config.restoration` has settings {unknown} that {type(self).__name__}.restore does "
                             f"not take (it takes {list(self.RESTORATION_KEYS) or 'none'}).")
        return settings

    def restoration_defaults(self) -> RestorationDefaults:
        """How the denoiser restores by default: its wrapper's ``restoration_defaults()`` (an integration's
        sampler, steps, patch size), else the plain defaults (every training step, whole signals)."""
        defaults = getattr(self.denoiser, "restoration_defaults", None)
        return defaults() if callable(defaults) else RestorationDefaults()

    @torch.no_grad()
    def restore(
        self,
        y: torch.Tensor,
        num_inference_steps: int | None = None,
        generator: torch.Generator | None = None,
        *,
        scheduler=None,
        inference_betas: Sequence[float] | None = None,
        timestep_spacing: str | None = None,
        eta: float = 0.0,
        patch_size: int | None = None,
        stride: int | None = None,
        patch_batch_size: int | None = None,
        self_ensemble: bool = False,
        low_resolution: torch.Tensor | None = None,
        progress: bool = False,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Restore ``y`` by reverse diffusion from the prior (paper Algorithm 2).

        Every way of restoring (this method, ``weatherdiff.restore_image``, ``RestoreGradPipeline``, the
        ``restoregrad restore`` command) runs it, through the library's one loop,
        :func:`restoregrad_adapter.sampling.restore`. Settings left at None take the denoiser's
        :meth:`restoration_defaults` (WeatherDiff: its DDIM sampler, 10 steps, its patch; diffusers
        UNets: 10 steps, patches of ``sample_size``; a denoiser of your own: every training step).

        Args:
            y: degraded signals ``(B, C, *spatial)``.
            num_inference_steps: number of reverse steps.
            generator: source of ``x_T`` and of every step's fresh noise.
            scheduler: any diffusers scheduler to sample with instead (DDIM, DPM-Solver++, ...),
                through whitening; same training schedule and prediction type as the adapter's,
                ``clip_sample``/``thresholding`` off.
            inference_betas: fast-sampling schedule (e.g. ``FAST_INFERENCE_BETAS_6``), instead of
                ``num_inference_steps``; only with a learned-prior scheduler.
            timestep_spacing: the default sampler with another spacing of its steps (``"leading"``,
                ``"trailing"``, ``"linspace"``); not with ``scheduler``.
            eta: DDIM's eta, for schedulers whose ``step`` takes one.
            patch_size, stride, patch_batch_size: restore images larger than ``patch_size`` from
                overlapping patches (docs/design.md, "WeatherDiff's patch restoration").
            self_ensemble: restore the image's eight rotations and mirrors and average the eight
                results turned back (eight times the work).
            low_resolution: for super-resolution, the low-resolution images ``(B, C, H / s, W / s)``
                that ``y`` enlarges; the result is projected onto the images whose bicubic
                down-sampling is exactly ``low_resolution`` (:mod:`restoregrad_adapter.consistency`).
            progress: show a progress bar.
            callback: ``callback(k, x)`` with the reverse steps ``k`` still to run, from ``x_T``
                (``k = S``) to the result (``k = 0``).

        Returns:
            The restored signal, ``y``'s shape, in ``y``'s precision (at least float32).
        """
        self._check_condition(y, finite=False)
        defaults = self.restoration_defaults()
        conditions = {}
        if defaults.value_range is not None:
            low, high = defaults.value_range
            conditions["y"] = (((y >= low - 1e-3) & (y <= high + 1e-3)).all(), lambda: (
                f"`y` must hold images in [{low:g}, {high:g}] (the range the denoiser was trained on), got values "
                f"from {float(y.min()):.4g} to {float(y.max()):.4g}; map [0, 1] images with `2 * y - 1`."))
        check_finite_and_positive(finite={"y": y}, conditions=conditions)  # y's values: one host synchronisation
        if not isinstance(self_ensemble, bool):
            raise ValueError(f"`self_ensemble` must be True or False, got {self_ensemble!r}.")
        if self_ensemble or low_resolution is not None:
            check_image("y", y, finite=False)
        if low_resolution is not None:
            from .consistency import check_low_resolution

            check_low_resolution(low_resolution, y.shape, "low_resolution")
        scheduler = self._sampling_scheduler(defaults, scheduler, timestep_spacing)
        if num_inference_steps is None and inference_betas is None:
            num_inference_steps, inference_betas = defaults.num_inference_steps, defaults.inference_betas
        if patch_size is None:
            patch_size = defaults.patch_size
        takes_patch_size = getattr(self.denoiser, "takes_patch_size", None)
        if takes_patch_size is not None and patch_size is not None and not takes_patch_size(patch_size):
            raise ValueError(f"`patch_size` = {patch_size} differs from the denoiser's patch_size = "
                             f"{self.denoiser.patch_size} (only a denoiser wrapped with fully_convolutional=True "
                             "takes other patch sizes).")

        def run(images: torch.Tensor) -> torch.Tensor:
            from .sampling import restore

            scale = self.input_scale(images)
            restored = restore(self.denoiser, images * scale, self._prior_std, self.scheduler, scheduler=scheduler,
                               num_inference_steps=num_inference_steps, inference_betas=inference_betas, eta=eta,
                               generator=generator, patch_size=patch_size, stride=stride,
                               patch_batch_size=patch_batch_size if patch_batch_size is not None
                               else defaults.patch_batch_size, pad_to_patch=defaults.pad_to_patch,
                               progress=progress, callback=callback, residual=self.residual)
            return restored / scale

        if self_ensemble:
            from .ensemble import dihedral_ensemble

            restored = dihedral_ensemble(run, y)
        else:
            restored = run(y)
        if low_resolution is not None:
            from .consistency import project_to_low_resolution

            restored = project_to_low_resolution(restored, low_resolution)
        return restored

    def _sampling_scheduler(self, defaults: RestorationDefaults, scheduler, timestep_spacing: str | None):
        """The sampler: ``scheduler`` if given, else the integration's (or the training scheduler), with
        ``timestep_spacing`` if given."""
        if scheduler is not None and timestep_spacing is not None:
            raise ValueError("give `scheduler` or `timestep_spacing`, not both: set the spacing in your scheduler's "
                             "config (e.g. `DDIMScheduler.from_config(config, timestep_spacing='trailing')`).")
        if scheduler is not None:
            return scheduler
        sampler = self.scheduler if defaults.make_scheduler is None else defaults.make_scheduler(self.scheduler)
        if timestep_spacing is None:
            return None if defaults.make_scheduler is None else sampler
        from .sampling import TIMESTEP_SPACINGS

        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
        return type(sampler).from_config(sampler.config, timestep_spacing=timestep_spacing)

    def input_scale(self, y: torch.Tensor) -> torch.Tensor:
        """Per-example factors that bring ``y`` to the level training used (``input_peak``; 1 without one).

        Shape ``(B, 1, ...)``; a silent example keeps factor 1. Powers of two commute with it exactly.
        """
        ones = torch.ones((y.shape[0],) + (1,) * (y.ndim - 1), dtype=y.dtype, device=y.device)
        if self.input_peak is None:
            return ones
        peak = y.detach().abs().flatten(1).amax(dim=1).view_as(ones)
        return torch.where(peak > 0, self.input_peak / peak.clamp_min(torch.finfo(y.dtype).tiny), ones)


__all__ = ["RestoreGrad", "RestoreGradConfig", "EncoderConfig", "MODES", "energy_prior", "data_prior_std",
           "build_encoders"]
