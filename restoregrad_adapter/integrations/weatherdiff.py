"""WeatherDiff (Ozdenizci & Legenstein, TPAMI 2023) models as RestoreGrad denoisers.

WeatherDiff conditions a DDPM UNet by channel concatenation, ``model(cat([y, x_t], 1), t) -> eps``,
trains it on random ``p x p`` crops (p = 64, 16 crops per image, images in [-1, 1]) and restores
whole images of any size with an *overlapping-patch* DDIM sampler: at every step the image is cut
into ``p x p`` patches on a grid of stride ``r`` (16), the model predicts the noise of every
patch, and the estimates are averaged per pixel.

This module provides

- :class:`WeatherDiffDenoiser` / :func:`wrap`: the user's model object as ``eps(x_t, y, t)``;
- :func:`random_patch_pairs` (and :func:`antithetic_timesteps`): WeatherDiff's training crops;
- :func:`restore_image`: the overlapping-patch DDIM sampler, sampling RestoreGrad's learned prior
  (one standard-deviation map for the whole image) by whitening a stock ``DDIMScheduler``;
- :func:`load_checkpoint`: loads an original WeatherDiff checkpoint (EMA or raw weights) without
  unpickling arbitrary objects.

All images are ``(B, C, H, W)`` tensors in [-1, 1] (WeatherDiff's ``2 * x - 1``), the degraded
condition ``y`` included.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
from typing import Iterable

from restoregrad_adapter.integrations import Integration, check_concatenated_channels, register_integration
from restoregrad_adapter.checks import check_image, check_positive_int
from restoregrad_adapter.patches import averaged_patch_eps, grid_positions, overlap_counts  # noqa: F401 (re-exported)
from restoregrad_adapter.sampling import RestorationDefaults

import torch
from diffusers import DDIMScheduler
from torch import nn

__all__ = [
    "WeatherDiffDenoiser",
    "wrap",
    "random_patch_pairs",
    "antithetic_timesteps",
    "grid_positions",
    "overlap_counts",
    "sampling_timesteps",
    "ddim_scheduler",
    "TIMESTEP_SPACINGS",
    "WeatherDiffDDIMScheduler",
    "averaged_patch_eps",
    "restore_image",
    "load_checkpoint",
]


# ---------------------------------------------------------------------- the denoiser
class WeatherDiffDenoiser(nn.Module):
    """``eps(x_t, y, t) = model(cat([y, x_t], 1), t.float())`` on ``p x p`` patches.

    WeatherDiff's UNet sees the degraded patch first and the noisy patch second, and takes the
    timestep as a float tensor ``(B,)``. The original model asserts its input size, so the
    wrapper accepts patches of exactly ``patch_size`` only; whole images go through
    :func:`restore_image`, training data through :func:`random_patch_pairs`.

    Args:
        model: the user's WeatherDiff model (any callable with that signature; an ``nn.Module`` is
            registered so its parameters train with the adapter).
        patch_size: the side p of the square patches the model was built for (WeatherDiff: 64).
        fully_convolutional: the model also takes other input sizes (e.g. ``WeatherUNet(...,
            fixed_size=False)``), so :func:`restore_image` may restore with patches larger than the
            training crops (more context for each estimate). Default False, the original's contract.
    """

    def __init__(self, model, patch_size: int = 64, fully_convolutional: bool = False):
        super().__init__()
        if not callable(model):
            raise ValueError(f"`model` must be callable as model(cat([y, x_t], 1), t), got {type(model).__name__}.")
        if not isinstance(fully_convolutional, bool):
            raise ValueError(f"`fully_convolutional` must be True or False, got {fully_convolutional!r}.")
        self.model = model
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.fully_convolutional = fully_convolutional

    def takes_patch_size(self, size: int) -> bool:
        """Whether the model restores ``size x size`` patches: its own, or any for a fully convolutional one."""
        return self.fully_convolutional or size == self.patch_size

    def restoration_defaults(self) -> RestorationDefaults:
        """WeatherDiff's restoration: its DDIM sampler (:func:`ddim_scheduler`), 10 steps (the RestoreGrad
        paper's), whole images from overlapping patches of the model's size (smaller images padded), inputs
        in [-1, 1]."""
        return RestorationDefaults(num_inference_steps=10, patch_size=self.patch_size, pad_to_patch=True,
                                   make_scheduler=ddim_scheduler, value_range=(-1.0, 1.0))

    def _model_dtype(self) -> torch.dtype | None:
        parameters = getattr(self.model, "parameters", None)
        if parameters is None:
            return None
        first = next(iter(parameters()), None)
        return None if first is None else first.dtype

    def forward(self, x_t: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t``, ``y``: ``(B, C, p, p)``; ``t``: ``(B,)`` (or 0-d) training steps -> ``eps`` ``(B, C, p, p)``."""
        for name, tensor in (("x_t", x_t), ("y", y)):
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
                got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"`{name}` must be a (B, C, H, W) tensor, got {got}.")
        p = self.patch_size
        if tuple(x_t.shape[-2:]) != (p, p) and not self.fully_convolutional:
            raise ValueError(f"`x_t` has spatial size {tuple(x_t.shape[-2:])}, but the WeatherDiff model takes "
                             f"{p} x {p} patches (patch_size={p}); restore whole images with `restore_image` and "
                             "train on crops from `random_patch_pairs`.")
        if x_t.shape[0] != y.shape[0] or x_t.shape[2:] != y.shape[2:]:
            raise ValueError(f"`x_t` {tuple(x_t.shape)} and `y` {tuple(y.shape)} must share batch and spatial sizes.")
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"`t` must have shape ({x_t.shape[0]},) or be 0-d, got {tuple(t.shape)}.")
        inputs = torch.cat([y, x_t], dim=1)
        dtype = self._model_dtype()
        if dtype is not None:
            inputs = inputs.to(dtype)
        eps = self.model(inputs, t.float())
        if not isinstance(eps, torch.Tensor) or eps.shape != x_t.shape:
            got = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
            raise ValueError(f"the model returned {got}; expected noise of `x_t`'s shape {tuple(x_t.shape)}.")
        return eps


def wrap(model, patch_size: int = 64, fully_convolutional: bool = False) -> WeatherDiffDenoiser:
    """Turn a WeatherDiff model (``model(cat([y, x_t], 1), t) -> eps``) into a RestoreGrad denoiser
    (:class:`WeatherDiffDenoiser`)."""
    return WeatherDiffDenoiser(model, patch_size=patch_size, fully_convolutional=fully_convolutional)


# ---------------------------------------------------------------------- training data
def random_patch_pairs(
    x0: torch.Tensor,
    y: torch.Tensor,
    patch_size: int = 64,
    patches_per_image: int = 16,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned random ``p x p`` crops of clean and degraded images (WeatherDiff's training data).

    WeatherDiff draws ``n`` crop corners per image pair, uniformly over all positions that fit
    (n = 16 for p = 64, n = 8 for p = 128), and crops both images at the same corners.

    Args:
        x0: clean images ``(B, C, H, W)`` in [-1, 1], ``H, W >= patch_size``.
        y: degraded images, same shape.
        patch_size: p.
        patches_per_image: n.
        generator: source of the crop corners.

    Returns:
        ``(x0_patches, y_patches)``, each ``(B * n, C, p, p)``; the n crops of image b are rows
        ``b * n .. b * n + n - 1``.
    """
    check_image("x0", x0)
    check_image("y", y)
    if x0.shape != y.shape:
        raise ValueError(f"`x0` and `y` must have the same shape, got {tuple(x0.shape)} and {tuple(y.shape)}.")
    p = check_positive_int("patch_size", patch_size)
    n = check_positive_int("patches_per_image", patches_per_image)
    batch, _, height, width = x0.shape
    if height < p or width < p:
        raise ValueError(f"the images ({height} x {width}) are smaller than `patch_size` = {p}; training crops "
                         "must fit inside the image (resize or pad the images first).")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    rows = torch.randint(0, height - p + 1, (batch, n), generator=generator, device=gen_device).tolist()
    cols = torch.randint(0, width - p + 1, (batch, n), generator=generator, device=gen_device).tolist()
    corners = [(b, i, j) for b in range(batch) for i, j in zip(rows[b], cols[b])]
    x0_patches = torch.stack([x0[b, :, i:i + p, j:j + p] for b, i, j in corners])
    y_patches = torch.stack([y[b, :, i:i + p, j:j + p] for b, i, j in corners])
    return x0_patches, y_patches


def antithetic_timesteps(
    batch_size: int,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """WeatherDiff's antithetic timestep draw: ``t`` for the first half, ``T - 1 - t`` for the rest.

    ``t ~ U{0..T-1}`` for ``batch_size // 2 + 1`` examples, concatenated with their mirror images
    and cut to ``batch_size``. Each ``t`` stays uniform; pairs are anti-correlated, which lowers
    the variance of the batch loss. Pass the result as ``timesteps=`` to ``training_loss``.

    Returns:
        An int64 tensor ``(batch_size,)`` with values in ``[0, T)``.
    """
    check_positive_int("batch_size", batch_size)
    T = check_positive_int("num_train_timesteps", num_train_timesteps)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    t = torch.randint(0, T, (batch_size // 2 + 1,), generator=generator, device=gen_device)
    t = torch.cat([t, T - 1 - t])[:batch_size]
    return t.to(device) if device is not None else t


# ---------------------------------------------------------------------- the sampler
def sampling_timesteps(num_train_timesteps: int, num_inference_steps: int) -> list[int]:
    """WeatherDiff's DDIM timesteps, descending: ``reversed(range(0, T, T // S))``.

    When S divides T this is diffusers' "leading" spacing (S steps); otherwise, as in the original,
    the sequence has ``ceil(T / (T // S))`` steps, which may be more than S.
    """
    T = check_positive_int("num_train_timesteps", num_train_timesteps)
    S = check_positive_int("num_inference_steps", num_inference_steps)
    if S > T:
        raise ValueError(f"`num_inference_steps` = {S} exceeds the {T} training steps.")
    return list(reversed(range(0, T, T // S)))


#: The timestep spacings of :func:`ddim_scheduler`: "leading" is WeatherDiff's (:func:`sampling_timesteps`),
#: "linspace" and "trailing" are diffusers' (``DDIMScheduler.set_timesteps``).
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


class WeatherDiffDDIMScheduler(DDIMScheduler):
    """``diffusers.DDIMScheduler`` whose ``set_timesteps(S)`` sets WeatherDiff's :func:`sampling_timesteps`.

    DDIM's step goes from t to ``t - T // S``, the original's spacing; only the list may be longer
    than S (when S does not divide T). Build it with :func:`ddim_scheduler`. With
    ``timestep_spacing="linspace"`` or ``"trailing"`` in its config it is diffusers' DDIM unchanged:
    "trailing" starts at ``t = T - 1`` (pure noise) and steps by ``T / S`` (Lin et al. 2024, "Common
    diffusion noise schedules and sample steps are flawed"), where WeatherDiff's first step is
    ``T - T // S`` (``t = 500`` for 2 steps of 1000, ``t = 0`` for one).
    """

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        super().set_timesteps(num_inference_steps, device=device)
        if self.config.timestep_spacing == "leading":
            steps = sampling_timesteps(self.config.num_train_timesteps, num_inference_steps)
            self.timesteps = torch.tensor(steps, dtype=torch.int64, device=device)


def ddim_scheduler(scheduler, timestep_spacing: str = "leading") -> WeatherDiffDDIMScheduler:
    """The DDIM scheduler of WeatherDiff's sampler for a ``LearnedPriorScheduler``.

    Built from ``scheduler.config`` with ``clip_sample=False`` (the original never clips the x_0
    estimate, and whitening needs it off), ``set_alpha_to_one=True`` (the last step goes to
    ``abar = 1``, as the original's ``compute_alpha(b, -1)``), "leading" spacing, no offset.
    Training schedules that DDIM cannot build by name are passed as ``trained_betas``; either way
    the DDIM ``alphas_cumprod`` equal the scheduler's exactly.

    ``timestep_spacing`` (one of :data:`TIMESTEP_SPACINGS`) other than "leading" gives diffusers'
    spacing of that name instead of the original's (:class:`WeatherDiffDDIMScheduler`).
    """
    if timestep_spacing not in TIMESTEP_SPACINGS:
        raise ValueError(f"`timestep_spacing` must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
    config = scheduler.config
    kwargs = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        trained_betas=config.get("trained_betas"),
        rescale_betas_zero_snr=config.get("rescale_betas_zero_snr", False),
        clip_sample=False,
        thresholding=False,
        set_alpha_to_one=True,
        steps_offset=0,
        timestep_spacing=timestep_spacing,
        prediction_type=config.get("prediction_type", "epsilon"),  # the original's is epsilon
    )
    ddim = None
    if kwargs["trained_betas"] is not None or kwargs["beta_schedule"] in ("linear", "scaled_linear",
                                                                         "squaredcos_cap_v2"):
        ddim = WeatherDiffDDIMScheduler(**kwargs)
    reference = scheduler.alphas_cumprod.cpu()
    if ddim is None or not torch.equal(ddim.alphas_cumprod.cpu(), reference):
        kwargs.update(trained_betas=scheduler.betas.cpu().tolist(), rescale_betas_zero_snr=False)
        ddim = WeatherDiffDDIMScheduler(**kwargs)
    if not torch.equal(ddim.alphas_cumprod.cpu(), reference):  # pragma: no cover - defensive
        raise ValueError("could not build a DDIMScheduler with the scheduler's alphas_cumprod.")
    return ddim


@torch.no_grad()
def restore_image(adapter, y: torch.Tensor, *, scheduler=None, timestep_spacing: str | None = None,
                  progress: bool = True, **kwargs) -> torch.Tensor:
    """Restore whole images of any size with WeatherDiff's overlapping-patch DDIM sampler:
    ``adapter.restore(y, scheduler=ddim_scheduler(adapter.scheduler, timestep_spacing), progress=True, ...)``.

    The learned prior is one standard-deviation map for the whole image, ``sigma =
    adapter.prior_std(y)`` (the Prior Net is fully convolutional). With ``u = x / sigma`` the
    sampler is WeatherDiff's DDIM in u-space (docs/design.md, "Whitening"): ``x_T = sigma * z``; at each
    step ``t -> t'`` of :func:`sampling_timesteps`, with ``eps`` the per-pixel mean of the patch
    estimates (:func:`averaged_patch_eps`),

        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)                 (no clipping)
        c1     = eta * sqrt((1 - abar_t') / (1 - abar_t) * (1 - abar_t / abar_t'))
        x_t'   = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - c1^2) eps + c1 * sigma * z

    with ``abar_t' = 1`` after the last step: the stock DDIM step of :func:`ddim_scheduler`, whitened.
    For an adapter of this integration it is what ``adapter.restore`` does by default; this function
    also gives WeatherDiff's sampler to adapters of other denoisers.

    Args:
        adapter: a :class:`~restoregrad_adapter.RestoreGrad` (call ``adapter.eval()`` first).
        y: degraded images ``(B, C, H, W)`` in [-1, 1], any ``H, W``.
        scheduler: another diffusers scheduler to sample with (DDPM, DPM-Solver++, UniPC, ...),
            whitened the same way; it must use the adapter's training ``alphas_cumprod`` and have sample
            clipping and thresholding off.
        timestep_spacing: the DDIM's spacing, one of :data:`TIMESTEP_SPACINGS` (default "leading",
            WeatherDiff's); "trailing" starts from pure noise at ``t = T - 1`` (docs/deblur_sr.md).
            Only without ``scheduler``.
        progress: show a progress bar over the steps.
        kwargs: the other options of :meth:`RestoreGrad.restore`: ``patch_size`` (WeatherDiff: 64),
            ``stride`` (16), ``num_inference_steps`` (WeatherDiff's evaluation: 25; the RestoreGrad
            paper: 10), ``eta`` (0), ``generator``, ``patch_batch_size`` (64), ``self_ensemble``,
            ``low_resolution``.

    Returns:
        The restored images, ``y``'s shape, in [-1, 1] up to the model's error (not clamped: map to
        [0, 1] with ``((x + 1) / 2).clamp(0, 1)``).
    """
    if not callable(getattr(adapter, "restore", None)) or not hasattr(adapter, "scheduler"):
        raise ValueError(f"`adapter` must be a RestoreGrad adapter, got {type(adapter).__name__}.")
    if scheduler is None:
        scheduler, timestep_spacing = ddim_scheduler(adapter.scheduler, timestep_spacing or "leading"), None
    return adapter.restore(y, scheduler=scheduler, timestep_spacing=timestep_spacing, progress=progress, **kwargs)


# ---------------------------------------------------------------------- checkpoints
_MODULE_PREFIX = "module."


def _strip_prefix(state: dict, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise ValueError(f"the checkpoint's `{what}` must be a dict of tensors, got {type(state).__name__}.")
    out = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ValueError(f"the checkpoint's `{what}` has a non-string key {key!r}.")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"the checkpoint's `{what}[{key!r}]` is a {type(value).__name__}, not a tensor.")
        out[key[len(_MODULE_PREFIX):] if key.startswith(_MODULE_PREFIX) else key] = value
    return out


def _name_keys(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _read_checkpoint(path) -> dict:
    try:
        # WeatherDiff stores its argparse.Namespace arguments and config next to the weights. That one
        # class is allowed (it only sets attributes); anything else that is not a tensor or a plain
        # container is refused by the weights-only unpickler.
        allow = getattr(torch.serialization, "safe_globals", None)
        with allow([argparse.Namespace]) if allow is not None else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError) as error:  # torch's zip reader on a cut or damaged file
        raise ValueError(f"{os.fspath(path)!r} could not be read: the file is truncated or corrupted "
                         f"({str(error).splitlines()[0]}).") from None
    except pickle.UnpicklingError as error:
        detail = str(error).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ValueError(
            f"{os.fspath(path)!r} contains pickled objects other than tensors, plain containers and "
            f"argparse.Namespace ({detail}); they are not unpickled, as that could run arbitrary code. If you "
            "trust the file, convert it once: `ckpt = torch.load(path, weights_only=False); torch.save("
            "{'state_dict': ckpt['state_dict'], 'ema_helper': ckpt['ema_helper']}, new_path)`."
        ) from None


def load_checkpoint(model: nn.Module, path: str | os.PathLike, ema: bool = True) -> nn.Module:
    """Load an original WeatherDiff checkpoint into ``model`` (strict).

    WeatherDiff saves ``{'epoch', 'step', 'state_dict', 'optimizer', 'ema_helper', 'params',
    'config'}`` with ``torch.save``: ``state_dict`` comes from an ``nn.DataParallel`` (keys
    prefixed ``module.``), ``ema_helper`` is its EMAHelper's shadow dict (the trainable parameters
    only, named without the prefix), ``params`` and ``config`` are ``argparse.Namespace`` objects.
    The file is read with ``weights_only=True``, allowing ``argparse.Namespace`` and nothing else.

    With ``ema=True`` the weights are ``state_dict`` with every parameter replaced by its EMA
    shadow (what the original's evaluation uses: ``load_state_dict`` then ``ema_helper.ema``);
    with ``ema=False`` the raw ``state_dict``.

    Args:
        model: the user's WeatherDiff model (any ``nn.Module`` with the checkpoint's parameter names).
        path: the ``.pth.tar`` file.
        ema: use the EMA weights.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        ValueError: missing entries, key or shape mismatches (named), non-tensor weights, or
            pickled objects that are not tensors, plain containers or ``argparse.Namespace``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    checkpoint = _read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{os.fspath(path)!r} is not a WeatherDiff checkpoint: no 'state_dict' entry (found {found}).")
    state = _strip_prefix(checkpoint["state_dict"], "state_dict")

    target = model.state_dict()
    if ema:
        if "ema_helper" not in checkpoint:
            raise ValueError(f"{os.fspath(path)!r} has no 'ema_helper' entry (EMA weights); load it with ema=False.")
        shadow = _strip_prefix(checkpoint["ema_helper"], "ema_helper")
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        missing, unexpected = trainable - set(shadow), set(shadow) - set(target)
        if missing or unexpected:
            parts = ([f"missing EMA weights for {_name_keys(missing)}"] if missing else []) + (
                [f"unexpected EMA weights {_name_keys(unexpected)}"] if unexpected else [])
            raise ValueError(f"the checkpoint's 'ema_helper' does not match the model: {'; '.join(parts)}.")
        state = {**state, **shadow}

    missing, unexpected = set(target) - set(state), set(state) - set(target)
    if missing or unexpected:
        parts = ([f"missing {_name_keys(missing)}"] if missing else []) + (
            [f"unexpected {_name_keys(unexpected)}"] if unexpected else [])
        raise ValueError(f"the checkpoint's weights do not match the model: {'; '.join(parts)}.")
    wrong = [f"{k!r} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in target.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"shape mismatch between checkpoint and model: {', '.join(wrong[:8])}"
                         + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else "") + ".")
    model.load_state_dict(state, strict=True)
    return model


# ---------------------------------------------------------------------- registration
register_integration(Integration(
    name="weatherdiff",
    wrapper_class=WeatherDiffDenoiser,
    wrap=wrap,
    wrapper_kwargs=lambda wrapper: {"patch_size": wrapper.patch_size,
                                    **({"fully_convolutional": True} if wrapper.fully_convolutional else {})},
    check_model=check_concatenated_channels,
))
