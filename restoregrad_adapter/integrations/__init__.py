"""Integrations with existing diffusion codebases: one module each, each describing itself once.

An integration wraps the user's own model object as a RestoreGrad denoiser ``eps(x_t, y, t)`` and
tells the rest of the library, through one :class:`Integration` record, what saving and loading
need: its name (saved in the adapter's config), the wrapper's arguments to save, how to rewrap a
reloaded model, and which adapter class trains it. How it restores by default (patch size, sampler,
number of steps, ...) is the wrapper's own ``restoration_defaults()`` method, which the adapter
reads and passes to the restoration loop explicitly. Saving, loading, the pipeline and the command
line look integrations up here and never name one.

Built in (imported on first use):

- ``restoregrad_adapter.integrations.diffusers``: diffusers UNets conditioned by channel concatenation.
- ``restoregrad_adapter.integrations.cdiffuse``: CDiffuSE speech-enhancement models (conditional
  forward process, fast reverse sampler, original checkpoints).
- ``restoregrad_adapter.integrations.weatherdiff``: WeatherDiff patch models and whole-image
  restoration from overlapping patches (original checkpoints).

Your own integration: define a wrapper module ``eps(x_t, y, t)`` around your model (optionally with
a ``restoration_defaults()`` method returning a :class:`~restoregrad_adapter.sampling.RestorationDefaults`)
and register it once, at import time of your module::

    from restoregrad_adapter.integrations import Integration, register_integration

    register_integration(Integration(name="mynet", wrapper_class=MyWrapper, wrap=MyWrapper,
                                     wrapper_kwargs=lambda w: {"scale": w.scale}))

Adapters saved with it record ``"integration": "mynet"`` and the module that registered it;
``RestoreGrad.from_pretrained`` rewraps the model you pass as ``denoiser=`` with ``wrap(model,
**wrapper_kwargs)``. Import your module before loading (the library never imports a module named in
a downloaded file); packages may also register through the ``restoregrad_adapter.integrations``
entry-point group, which the library loads when it meets an unknown name.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Integration", "register_integration", "get_integration", "find_integration", "registered_integrations",
           "check_concatenated_channels"]

_BUILTIN_MODULES = {
    "diffusers": "restoregrad_adapter.integrations.diffusers",
    "cdiffuse": "restoregrad_adapter.integrations.cdiffuse",
    "weatherdiff": "restoregrad_adapter.integrations.weatherdiff",
}
ENTRY_POINT_GROUP = "restoregrad_adapter.integrations"


def _no_kwargs(wrapper) -> dict:
    return {}


@dataclass(frozen=True)
class Integration:
    """Everything the library needs to know about one external codebase.

    Args:
        name: the name saved in ``restoregrad_config.json`` (``"integration"``).
        wrapper_class: the denoiser wrapper's class; an adapter whose ``denoiser`` is an instance
            of it belongs to this integration.
        wrap: ``(model, **wrapper_kwargs) -> wrapper``: wraps the user's model object.
        wrapper_kwargs: ``wrapper -> dict`` of JSON values saved in the config and passed back to
            ``wrap`` on loading.
        adapter_class: ``() -> type``: an adapter class of the integration's own (a subclass of
            :class:`~restoregrad_adapter.RestoreGrad`, e.g. for another forward process); a callable
            so it is imported lazily. None: the plain ``RestoreGrad``.
        check_model: ``(config, model) -> None`` with the adapter's
            :class:`~restoregrad_adapter.RestoreGradConfig`: raise a ValueError when a model given or
            rebuilt on loading cannot take the adapter's signal.
        pipeline_compatible: the adapter folder is also a ``RestoreGradPipeline`` (diffusers models).
        module: the module that registered the integration (saved in the config, for error messages).
    """

    name: str
    wrapper_class: type
    wrap: Callable[..., Any]
    wrapper_kwargs: Callable[[Any], dict] = _no_kwargs
    adapter_class: Callable[[], type] | None = None
    check_model: Callable[[dict, Any], None] | None = None
    pipeline_compatible: bool = False
    module: str = field(default="")

    def model_of(self, wrapper):
        """The user's model object inside ``wrapper``."""
        return wrapper.model

    def get_adapter_class(self) -> type | None:
        """The integration's own adapter class, or None for the plain :class:`~restoregrad_adapter.RestoreGrad`."""
        return None if self.adapter_class is None else self.adapter_class()


_REGISTRY: dict[str, Integration] = {}


def register_integration(integration: Integration, replace: bool = False) -> Integration:
    """Make ``integration`` known to saving, loading, the pipeline and the command line.

    Registering another module's integration under a taken name raises, unless ``replace=True``.
    Returns the registered record (with ``module`` filled in: the wrapper class's module by default).
    """
    if not isinstance(integration, Integration):
        raise ValueError(f"`integration` must be an Integration, got {type(integration).__name__}.")
    if not isinstance(integration.name, str) or not integration.name or integration.name == "custom":
        raise ValueError(f"`integration.name` must be a non-empty string other than 'custom', got {integration.name!r}.")
    if not isinstance(integration.wrapper_class, type):
        raise ValueError(f"`integration.wrapper_class` must be a class, got {integration.wrapper_class!r}.")
    if not integration.module:
        integration = dataclasses.replace(integration, module=integration.wrapper_class.__module__)
    known = _REGISTRY.get(integration.name)
    # The same module registering again (it was reloaded) replaces its own record.
    if known is not None and known != integration and known.module != integration.module and not replace:
        raise ValueError(f"an integration named {integration.name!r} is already registered (by "
                         f"{known.module}); pass replace=True to replace it.")
    _REGISTRY[integration.name] = integration
    return integration


def check_concatenated_channels(config, model) -> None:
    """``Integration.check_model`` for models that take ``x_t`` and ``y`` concatenated on channels.

    The model's ``config.in_channels`` (when it has one) must be twice the adapter's signal channels.
    """
    channels = config.channels
    in_channels = getattr(getattr(model, "config", None), "in_channels", None)
    if in_channels is not None and channels is not None and in_channels != 2 * channels:
        raise ValueError(f"the adapter is for {channels}-channel {config.signal_kind}s (the denoiser must take "
                         f"{2 * channels} input channels: x_t and y), but `denoiser` takes {in_channels}.")


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES.values():
        importlib.import_module(module)


def _load_entry_points(name: str) -> None:
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name == name:
            entry.load()


def registered_integrations() -> dict[str, Integration]:
    """Every registered integration by name (the built-in ones included)."""
    _load_builtins()
    return dict(_REGISTRY)


def get_integration(name: str, module: str | None = None) -> Integration:
    """The integration registered as ``name``; a ValueError saying how to register it when unknown."""
    if name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        _load_entry_points(name)
    if name not in _REGISTRY:
        where = f" (it was registered by the module {module!r})" if module else ""
        raise ValueError(f"unknown integration {name!r}{where}: import the module that registers it before loading, "
                         f"or install the package that provides it. Known: {sorted(registered_integrations())}.")
    return _REGISTRY[name]


def find_integration(denoiser) -> Integration | None:
    """The integration whose wrapper ``denoiser`` is, or None for a denoiser of your own."""
    module = type(denoiser).__module__
    if module in _BUILTIN_MODULES.values():
        importlib.import_module(module)
    for integration in _REGISTRY.values():
        if isinstance(denoiser, integration.wrapper_class):
            return integration
    return None
