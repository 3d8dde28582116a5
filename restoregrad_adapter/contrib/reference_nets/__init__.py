"""Small reference networks with the call signatures of two research codebases.

The library's speech and image integrations expect denoisers that are called
exactly like the networks of two published diffusion restorers:

* :class:`DiffWaveDenoiser` -- a DiffWave-style waveform denoiser with the
  CDiffuSE call signature ``model(audio, spectrogram, diffusion_step)``.
* :class:`WeatherUNet` -- a DDPM-style UNet (Ho et al., 2020) with the
  WeatherDiff call signature ``model(torch.cat([y, x_t], 1), t)``.

Both networks are written out completely in this package, one file each
(:mod:`.diffwave`, :mod:`.weather_unet`; what they share is in :mod:`.common`),
depend on nothing but PyTorch and diffusers' model base classes, and are
deterministic given ``torch.manual_seed``.  They make it possible to test and
demonstrate the integrations without the original code or its checkpoints.  The default sizes are comparable to the published models;
tests use much smaller settings.
"""

from .common import sinusoidal_embedding
from .diffwave import DiffWaveDenoiser
from .weather_unet import WeatherUNet

__all__ = ["DiffWaveDenoiser", "WeatherUNet", "sinusoidal_embedding"]
