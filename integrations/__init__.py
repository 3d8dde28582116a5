"""Integrations with existing diffusion codebases, one module each (imported on demand).

- ``restoregrad_adapter.integrations.diffusers``: diffusers UNets conditioned by channel concatenation.
"""
