"""Integrations with existing diffusion codebases, one module each (imported on demand).

- ``restoregrad_adapter.integrations.diffusers``: diffusers UNets conditioned by channel concatenation.
- ``restoregrad_adapter.integrations.cdiffuse``: CDiffuSE speech-enhancement models (conditional
  forward process, fast reverse sampler, original checkpoints).
- ``restoregrad_adapter.integrations.weatherdiff``: WeatherDiff patch models and whole-image
  restoration from overlapping patches (original checkpoints).
"""
