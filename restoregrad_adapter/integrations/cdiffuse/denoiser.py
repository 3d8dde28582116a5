"""CDiffuSE's network as a RestoreGrad denoiser: its conditioner (the noisy speech's log-magnitude
spectrogram, computed in torch) and the wrapper ``eps(x_t, y, t)`` around the user's model object."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from restoregrad_adapter.sampling import RestorationDefaults
from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_6

from .scheduler import CDiffuSEScheduler

__all__ = ["N_FFT", "HOP_LENGTH", "N_FREQ", "log_magnitude_spectrogram", "utterance_length", "CDiffuSEDenoiser",
           "wrap"]

#: STFT of CDiffuSE's conditioner: 1024-point FFT and Hamming window, hop 256 (16 kHz audio).
N_FFT = 1024
HOP_LENGTH = 256
N_FREQ = N_FFT // 2 + 1


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

    def restoration_defaults(self) -> RestorationDefaults:
        """CDiffuSE's conditional sampler with the 6-step fast schedule; utterances of at least 513 samples
        (its centred STFT). :class:`CDiffuSERestoreGrad` refines these with its saved settings."""
        return RestorationDefaults(inference_betas=FAST_INFERENCE_BETAS_6, min_length=N_FFT // 2 + 1,
                                            make_scheduler=CDiffuSEScheduler.from_training_scheduler)

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


