"""CDiffuSE (Lu et al., "Conditional Diffusion Probabilistic Model for Speech Enhancement",
ICASSP 2022, arXiv:2202.05256) with RestoreGrad's learned prior.

CDiffuSE is a DiffWave network ``model(audio[B, L], spectrogram[B, 513, L // 256], step[B])``
conditioned on the noisy speech's log-magnitude spectrogram, trained with a *conditional* forward
process whose mean drifts from the clean speech ``x0`` towards the noisy speech ``y``. This module
provides

- :func:`log_magnitude_spectrogram`: CDiffuSE's conditioner, computed in torch;
- :class:`CDiffuSEDenoiser` / :func:`wrap`: the user's model object as ``eps(x_t, y, t)`` on
  ``(B, 1, L)`` waveforms;
- :func:`forward_coefficients`, :func:`reverse_schedule`: the conditional forward process and the
  coefficients of its reverse process, for full and fast (DiffWave-style) sampling;
- :class:`CDiffuSERestoreGrad`: a :class:`~restoregrad_adapter.RestoreGrad` that trains and samples
  with CDiffuSE's conditional process, its Gaussian noise drawn from the learned prior;
- :func:`load_checkpoint`: loads an original CDiffuSE checkpoint without unpickling arbitrary objects.

The math (paper Sec. 3; t = 1..T, ``alpha_t = 1 - beta_t``, ``abar_t = alpha_1 ... alpha_t``, and a
diagonal covariance ``Sigma = diag(sigma**2)`` that is ``I`` in the paper and the learned prior here):

- forward marginal ``q(x_t | x0, y) = N((1 - m_t) sqrt(abar_t) x0 + m_t sqrt(abar_t) y, delta_t Sigma)``
  with ``m_t = sqrt((1 - abar_t) / sqrt(abar_t))`` and ``delta_t = (1 - abar_t) - m_t^2 abar_t``
  (paper eq. 9; the released code writes it as ``1 - (1 + m_t^2) abar_t``);
- prior ``p(x_T | y) = N(sqrt(abar_T) y, delta_T Sigma)`` (paper eq. 10);
- the network predicts the *combined* noise ``C_t = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)
  = (m_t sqrt(abar_t) (y - x0) + sqrt(delta_t) eps) / sqrt(1 - abar_t)`` (paper Algorithm 1);
- reverse step ``x_{t-1} = c1 x_t + c2 y - c3 C_hat + sqrt(delta_bar_t) sigma z`` (paper Sec. 3.3,
  Algorithm 2), coefficients derived in :func:`reverse_schedule`.

With ``sigma = 1`` (mode ``"ddpm"``) the forward process, the training target and every reverse
coefficient equal the paper's and the released code's; :meth:`CDiffuSERestoreGrad.restore`'s flags
reproduce the rest of the released inference recipe (start from ``y``, clipping, final mix).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Callable, Sequence

import torch
from torch import nn

from restoregrad_adapter import sampling
from restoregrad_adapter.adapter import RestoreGrad
from restoregrad_adapter.integrations import Integration, register_integration
from restoregrad_adapter.loss import RestoreGradLoss
from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_6, LearnedPriorScheduler

from .scheduler import (
    NUM_TRAINING_STEPS,
    TRAINING_BETA_END,
    TRAINING_BETA_START,
    CDiffuSESchedule,
    CDiffuSEScheduler,
    _as_betas,
    cdiffuse_scheduler,
    forward_coefficients,
    interpolation_ratio,
    reverse_schedule,
    training_betas,
)

__all__ = [
    "N_FFT",
    "HOP_LENGTH",
    "N_FREQ",
    "NOISY_MIX_WEIGHT",
    "log_magnitude_spectrogram",
    "utterance_length",
    "RELEASED_INFERENCE",
    "DEFAULT_RESTORATION",
    "check_restoration",
    "CDiffuSEDenoiser",
    "wrap",
    "cdiffuse_scheduler",
    "interpolation_ratio",
    "forward_coefficients",
    "CDiffuSESchedule",
    "reverse_schedule",
    "CDiffuSEScheduler",
    "CDiffuSERestoreGrad",
    "training_betas",
    "load_checkpoint",
]

#: STFT of CDiffuSE's conditioner: 1024-point FFT and Hamming window, hop 256 (16 kHz audio).
N_FFT = 1024
HOP_LENGTH = 256
N_FREQ = N_FFT // 2 + 1
#: Weight of the noisy input in the released inference code's final mix ``(1 - w) x_0 + w y``.
NOISY_MIX_WEIGHT = 0.2


# ---------------------------------------------------------------------- the conditioner
def log_magnitude_spectrogram(
    audio: torch.Tensor, peak_normalize: bool = False, pad_mode: str = "reflect", whole_utterance: bool = False
) -> torch.Tensor:
    """CDiffuSE's conditioner ``log1p(|STFT(audio)|)``: ``(B, L)`` or ``(B, 1, L)`` -> ``(B, 513, frames)``.

    A centred STFT with a 1024-point FFT, a 1024-sample *symmetric* Hamming window (the original
    preprocessing passes ``scipy.signal.hamming`` to ``librosa.stft``, which calls it with its
    default ``sym=True``), hop 256, no normalisation, the first 513 bins.

    Frames: a centred STFT of ``L`` samples has ``1 + L // 256`` frames, frame ``k`` centred on
    sample ``256 k``; the network pairs frame ``k`` with samples ``[256 k, 256 (k + 1))``.

    - ``whole_utterance=False`` (training crops): ``L`` must be a multiple of 256, ``L = 256 F``; the
      frame centred on the sample just past the end conditions nothing and is dropped, leaving
      ``F = L // 256`` frames (the original's training crops take frames ``[s, e)`` with samples
      ``[256 s, 256 e)``).
    - ``whole_utterance=True`` (the released inference): any ``L``; every one of the ``1 + L // 256``
      frames is kept, and the network runs on the utterance zero-padded to
      ``256 (1 + L // 256)`` samples (:func:`utterance_length`).

    Args:
        audio: waveforms (above 512 samples for reflect padding).
        peak_normalize: divide each waveform by its peak magnitude first, as the original
            preprocessing does (an all-zero waveform is left as it is).
        pad_mode: padding of the centred STFT; ``"reflect"`` (torch's and, at the time of the
            original code, librosa's default) or ``"constant"`` (zeros, librosa >= 0.10).
        whole_utterance: keep every frame of an utterance of any length (see above).
    """
    if not isinstance(audio, torch.Tensor) or not audio.is_floating_point():
        got = audio.dtype if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise ValueError(f"`audio` must be a floating-point tensor, got {got}.")
    if audio.ndim == 3 and audio.shape[1] == 1:
        audio = audio[:, 0]
    if audio.ndim != 2:
        raise ValueError(f"`audio` must have shape (B, L) or (B, 1, L), got {tuple(audio.shape)}.")
    length = audio.shape[-1]
    if length == 0 or (length % HOP_LENGTH and not whole_utterance):
        raise ValueError(f"`audio` length {length} must be a positive multiple of {HOP_LENGTH} (L = 256 x frames); "
                         "crop or zero-pad it, or pass whole_utterance=True.")
    if pad_mode == "reflect" and length <= N_FFT // 2:
        raise ValueError(f"`audio` length {length} is too short for reflect padding (needs more than {N_FFT // 2} "
                         "samples); pass pad_mode='constant' or a longer signal.")
    if pad_mode not in ("reflect", "constant"):
        raise ValueError(f"`pad_mode` must be 'reflect' or 'constant', got {pad_mode!r}.")
    x = audio if audio.dtype in (torch.float32, torch.float64) else audio.float()
    if peak_normalize:
        peak = x.abs().amax(dim=-1, keepdim=True)
        x = x / torch.where(peak > 0, peak, torch.ones_like(peak))
    window = torch.hamming_window(N_FFT, periodic=False, dtype=x.dtype, device=x.device)
    spec = torch.stft(x, N_FFT, hop_length=HOP_LENGTH, win_length=N_FFT, window=window, center=True,
                      pad_mode=pad_mode, normalized=False, onesided=True, return_complex=True)
    magnitude = torch.log1p(spec.abs())
    return magnitude if whole_utterance else magnitude[..., : length // HOP_LENGTH]


def utterance_length(length: int) -> int:
    """The samples the network runs on for a whole utterance of ``length``: ``256 (1 + length // 256)``,
    one hop per frame of its centred STFT (the released inference zero-pads the utterance to this)."""
    return HOP_LENGTH * (1 + int(length) // HOP_LENGTH)


# ---------------------------------------------------------------------- the denoiser
class CDiffuSEDenoiser(nn.Module):
    """``eps(x_t, y, t) = model(x_t[:, 0], log_magnitude_spectrogram(y), t)`` on ``(B, 1, L)`` waveforms.

    The user's CDiffuSE model is used as it is (anything called as
    ``model(audio[B, L], spectrogram[B, 513, L // 256], diffusion_step)`` and returning
    ``[B, 1, L]`` or ``[B, L]``); it is registered as ``self.model`` so it trains with the adapter.
    The conditioner is the *noisy* signal's spectrogram, recomputed from ``y`` in torch, or the one
    passed as ``spectrogram=`` (a whole utterance's, :meth:`CDiffuSERestoreGrad.restore`).

    Steps reach the model as the released code passes them: integer training steps as a ``(B,)``
    long tensor (its embedding indexes a table), a fractional sampling step as a ``(1,)`` float
    tensor shared by the batch (its embedding interpolates the table, which only broadcasts one
    step). A batch whose fractional steps differ is run one example at a time.

    Args:
        model: the CDiffuSE (DiffWave) network.
        peak_normalize: peak-normalise ``y`` before its spectrogram, as the original preprocessing
            does for every utterance (keep True for original checkpoints).
    """

    def __init__(self, model: Callable, peak_normalize: bool = True):
        super().__init__()
        if not callable(model):
            raise ValueError(f"`model` must be callable as model(audio, spectrogram, diffusion_step), "
                             f"got {type(model).__name__}.")
        self.model = model
        self.peak_normalize = bool(peak_normalize)

    def spectrogram(self, y: torch.Tensor, whole_utterance: bool = False) -> torch.Tensor:
        """The conditioner of ``y`` ``(B, 1, L)``: ``(B, 513, L // 256)``, or every frame of a whole
        utterance, ``(B, 513, 1 + L // 256)`` (:func:`log_magnitude_spectrogram`)."""
        return log_magnitude_spectrogram(y, peak_normalize=self.peak_normalize, whole_utterance=whole_utterance)

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
                spectrogram: torch.Tensor | None = None) -> torch.Tensor:
        """``x_t, y``: ``(B, 1, L)``; ``t``: ``(B,)`` training steps (0-based, fractional allowed) -> ``(B, 1, L)``.

        ``spectrogram``: the conditioner ``(B, n_freq, L // 256)`` to use instead of ``y``'s.
        """
        for name, tensor in (("x_t", x_t), ("y", y)):
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3 or tensor.shape[1] != 1:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"`{name}` must be a waveform batch of shape (B, 1, L), got {shape}.")
        if x_t.shape != y.shape:
            raise ValueError(f"`x_t` {tuple(x_t.shape)} and `y` {tuple(y.shape)} must have the same shape.")
        parameter = next(iter(self.model.parameters()), None) if isinstance(self.model, nn.Module) else None
        dtype = parameter.dtype if parameter is not None else x_t.dtype
        if spectrogram is None:
            spectrogram = self.spectrogram(y)
        elif (not isinstance(spectrogram, torch.Tensor) or spectrogram.ndim != 3
              or spectrogram.shape[0] != x_t.shape[0] or spectrogram.shape[-1] * HOP_LENGTH != x_t.shape[-1]):
            shape = tuple(spectrogram.shape) if isinstance(spectrogram, torch.Tensor) else type(spectrogram).__name__
            raise ValueError(f"`spectrogram` must have shape (B={x_t.shape[0]}, n_freq, {x_t.shape[-1] // HOP_LENGTH}) "
                             f"for `x_t` of {x_t.shape[-1]} samples, got {shape}.")
        spectrogram = spectrogram.to(dtype)
        audio = x_t[:, 0].to(dtype)
        steps = self._released_steps(t, dtype)
        if steps is None:  # fractional steps that differ within the batch: one example at a time
            out = torch.cat([self._call(audio[i:i + 1], spectrogram[i:i + 1], t[i:i + 1].to(dtype), (1,) + x_t.shape[1:])
                             for i in range(x_t.shape[0])])
        else:
            out = self._call(audio, spectrogram, steps, x_t.shape)
        return out

    @staticmethod
    def _released_steps(t, dtype: torch.dtype):
        """Integer steps as they are; fractional steps in the network's precision as one ``(1,)`` step, or
        None when they differ within the batch."""
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        t = t.to(dtype).reshape(-1)
        if t.numel() == 1 or bool((t == t[:1]).all()):
            return t[:1]
        return None

    def _call(self, audio: torch.Tensor, spectrogram: torch.Tensor, steps, shape: torch.Size) -> torch.Tensor:
        out = self.model(audio, spectrogram, steps)
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            out = out.unsqueeze(1)
        if not isinstance(out, torch.Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the model returned {got}; expected the noise of `x_t`, shape "
                             f"{tuple(shape)} (or {(shape[0], shape[2])}).")
        return out


def wrap(model: Callable, peak_normalize: bool = True) -> CDiffuSEDenoiser:
    """Turn a CDiffuSE model object into a RestoreGrad denoiser ``eps(x_t, y, t)``."""
    return CDiffuSEDenoiser(model, peak_normalize=peak_normalize)


# ---------------------------------------------------------------------- restoration settings
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


# ---------------------------------------------------------------------- the adapter
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

    def __init__(self, *args, restoration: Mapping | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.residual:
            raise ValueError("`residual=True` is not available with CDiffuSE: its forward process already moves x_t "
                             "towards y (x_t mixes in m_t sqrt(abar_t) y).")
        self.restoration = check_restoration(restoration)

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
        **kwargs,
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
            kwargs: passed to :class:`~restoregrad_adapter.RestoreGrad` (e.g. ``handcrafted_prior``).
        """
        denoiser = model if isinstance(model, CDiffuSEDenoiser) else CDiffuSEDenoiser(model, peak_normalize)
        return cls.with_encoders(denoiser, dims=1, in_channels=1, size=size, sigma_min=sigma_min, encoder=encoder,
                                 mode=mode,
                                 scheduler=scheduler if scheduler is not None else cdiffuse_scheduler(),
                                 loss=RestoreGradLoss(latent_weight=latent_weight, prior_matching_weight=prior_matching_weight,
                                                      weighting=weighting, snr_gamma=snr_gamma), **kwargs)

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
        inference_betas: Sequence[float] | None | str = "adapter",
        generator: torch.Generator | None = None,
        progress: bool = False,
        mix_noisy: bool | float | None = None,
        *,
        initial: str | None = None,
        clamp: bool | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Enhance whole utterances ``y`` with CDiffuSE's reverse process from the learned prior.

        Framing (the released inference's): an utterance of ``L`` samples is conditioned on every
        frame of its spectrogram, ``1 + L // 256`` of them, and the chain runs on it zero-padded to
        ``256 (1 + L // 256)`` samples (:func:`utterance_length`); the result is cropped back to ``L``.
        ``mode="ddpm"`` with :data:`RELEASED_INFERENCE` (``initial="noisy"``, ``clamp=True``,
        ``mix_noisy=True``) is the released inference algorithm, for the 6-step and the 50-step
        (``inference_betas=None``) schedules.

        Settings left out come from the adapter's :attr:`restoration` (what its training recipe
        validated with, saved with it), else :data:`DEFAULT_RESTORATION`, which differs from the
        released inference on purpose: the chain starts from the prior of eq. 10 with the learned
        covariance, and nothing is clipped or blended.

        Args:
            y: noisy waveforms ``(B, 1, L)``, ``L`` above 512 samples (any length, not only whole frames);
                a batch is restored as each of its utterances would be alone.
            inference_betas: fast-sampling schedule (``FAST_INFERENCE_BETAS_6``, the default, or
                ``FAST_INFERENCE_BETAS_3``); None runs all training steps; ``"adapter"``: the adapter's setting.
            generator: source of ``x_N`` and of every step's fresh noise.
            progress: show a progress bar.
            mix_noisy: the released code's final blend ``(1 - w) x_0 + w y``: True for its
                ``w = 0.2``, or a weight in [0, 1]; False (the default) returns ``x_0`` itself.
            initial: ``"prior"`` draws ``x_N = sqrt(abar_N) y + sqrt(delta_N) sigma_prior z``
                (eq. 10 with the learned covariance); ``"noisy"`` starts from ``x_N = y`` as the
                released inference code does.
            clamp: clip to [-1, 1] after every step (the last one after the blend), as the released code does.
            callback: called as ``callback(t, x_t)`` with the initial sample (``t = N``) and after
                every step (``t = N-1, ..., 0``; ``x_0`` after the blend), on the padded utterance.

        Returns:
            The enhanced waveforms, ``y``'s shape, in ``y``'s precision (at least float32).
        """
        self._check_condition(y)
        given = {"initial": initial, "clamp": clamp, "mix_noisy": mix_noisy}
        if not (isinstance(inference_betas, str) and inference_betas == "adapter"):
            given["inference_betas"] = list(inference_betas) if inference_betas is not None else "all"
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

        steps = ({"num_inference_steps": self.scheduler.config.num_train_timesteps} if inference_betas is None
                 else {"inference_betas": inference_betas})
        x = sampling.restore(denoiser, y, self.prior_std, self.scheduler, scheduler=scheduler, generator=generator,
                             progress=progress, callback=callback, **steps)
        return x[..., :length] / scale.to(x.dtype)


# ---------------------------------------------------------------------- checkpoints
def _preview(keys, limit: int = 8) -> str:
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_checkpoint(model: nn.Module, path) -> int | None:
    """Load an original CDiffuSE checkpoint into ``model`` (strictly) and return its training step.

    The file is what CDiffuSE's learner saves, ``torch.save({"step": int, "model": state_dict,
    "optimizer": ..., "params": ..., "scaler": ...})``; only ``"model"`` is used. It is read with
    ``torch.load(path, map_location="cpu", weights_only=True)``, so tensors and plain containers
    load and arbitrary pickled objects are refused.

    Args:
        model: the CDiffuSE network, or a :class:`CDiffuSEDenoiser` / :class:`CDiffuSERestoreGrad`
            around it (its network is loaded).
        path: the checkpoint file (e.g. ``weights-<step>.pt``).

    Returns:
        The checkpoint's ``"step"`` as an int, or None when it has none.

    Raises:
        ValueError: the file holds objects ``weights_only`` refuses, is not a dict with a
            ``"model"`` state dict, or its keys or shapes do not match ``model``'s.
    """
    target = model
    if isinstance(target, RestoreGrad):
        target = target.denoiser
    if isinstance(target, CDiffuSEDenoiser):
        target = target.model
    if not isinstance(target, nn.Module):
        raise ValueError(f"`model` must be an nn.Module (the CDiffuSE network), got {type(target).__name__}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError) as err:  # torch's zip reader on a cut or damaged file
        raise ValueError(f"{path} could not be read: the file is truncated or corrupted ({str(err).splitlines()[0]})."
                         ) from None
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line),
                      str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise ValueError(
            f"{path} could not be read as a weights-only checkpoint ({detail}). Expected a CDiffuSE checkpoint, "
            "a dict of tensors and plain values such as {'step': int, 'model': state_dict, 'optimizer': ...}; "
            "files holding other pickled Python objects are refused because unpickling them can run arbitrary code."
        ) from err
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}; expected a CDiffuSE checkpoint dict "
                         "{'step': int, 'model': state_dict, ...}.")
    if "model" not in checkpoint:
        raise ValueError(f"{path} has no 'model' entry (its keys: {_preview(checkpoint.keys())}); expected a CDiffuSE "
                         "checkpoint dict {'step': int, 'model': state_dict, ...}.")
    state = checkpoint["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: the 'model' entry must be a state dict (parameter names -> tensors), "
                         f"got {type(state).__name__}.")
    expected = set(target.state_dict().keys())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_preview(unexpected)}")
        raise ValueError(f"{path} does not match the model's parameters ({'; '.join(parts)}). Build the model with "
                         "the checkpoint's configuration (residual_layers, residual_channels, n_mels = 513, ...).")
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not match the model's parameter shapes: {err}") from err
    step = checkpoint.get("step")
    if isinstance(step, torch.Tensor):
        step = step.item()
    return None if step is None else int(step)


# ---------------------------------------------------------------------- registration
def _check_model(config: dict, model) -> None:
    if config.get("signal_kind") != "waveform":
        raise ValueError(f"a CDiffuSE adapter must be for waveforms; the config says {config.get('signal_kind')!r}.")


register_integration(Integration(
    name="cdiffuse",
    wrapper_class=CDiffuSEDenoiser,
    wrap=wrap,
    wrapper_kwargs=lambda wrapper: {"peak_normalize": wrapper.peak_normalize},
    restoration_defaults=lambda wrapper: sampling.RestorationDefaults(
        inference_betas=FAST_INFERENCE_BETAS_6, min_length=N_FFT // 2 + 1,
        make_scheduler=CDiffuSEScheduler.from_training_scheduler),
    adapter_class=lambda: CDiffuSERestoreGrad,
    check_model=_check_model,
))
