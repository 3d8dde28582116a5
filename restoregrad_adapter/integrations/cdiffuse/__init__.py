"""CDiffuSE (Lu et al., "Conditional Diffusion Probabilistic Model for Speech Enhancement",
ICASSP 2022, arXiv:2202.05256) with RestoreGrad's learned prior.

CDiffuSE is a DiffWave network ``model(audio[B, L], spectrogram[B, 513, L // 256], step[B])``
conditioned on the noisy speech's log-magnitude spectrogram, trained with a *conditional* forward
process whose mean drifts from the clean speech ``x0`` towards the noisy speech ``y``. This package
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

from restoregrad_adapter.integrations import Integration, register_integration
from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6

from .adapter import CDiffuSERestoreGrad
from .checkpoint import load_checkpoint
from .denoiser import HOP_LENGTH, N_FFT, N_FREQ, CDiffuSEDenoiser, log_magnitude_spectrogram, utterance_length, wrap
from .restoration import DEFAULT_RESTORATION, NOISY_MIX_WEIGHT, RELEASED_INFERENCE, check_restoration
from .scheduler import (
    NUM_TRAINING_STEPS,
    TRAINING_BETA_END,
    TRAINING_BETA_START,
    CDiffuSESchedule,
    CDiffuSEScheduler,
    cdiffuse_scheduler,
    forward_coefficients,
    interpolation_ratio,
    reverse_schedule,
    training_betas,
)

__all__ = [
    "FAST_INFERENCE_BETAS_3",
    "FAST_INFERENCE_BETAS_6",
    "N_FFT",
    "HOP_LENGTH",
    "N_FREQ",
    "NOISY_MIX_WEIGHT",
    "NUM_TRAINING_STEPS",
    "TRAINING_BETA_START",
    "TRAINING_BETA_END",
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


# ---------------------------------------------------------------------- registration
def _check_model(config, model) -> None:
    if config.signal_kind not in (None, "waveform"):
        raise ValueError(f"a CDiffuSE adapter must be for waveforms; the config says {config.signal_kind!r}.")


register_integration(Integration(
    name="cdiffuse",
    wrapper_class=CDiffuSEDenoiser,
    wrap=wrap,
    wrapper_kwargs=lambda wrapper: {"peak_normalize": wrapper.peak_normalize},
    adapter_class=lambda: CDiffuSERestoreGrad,
    check_model=_check_model,
))
