"""`RestoreGradPipeline`: a diffusers pipeline that restores images with a RestoreGrad adapter.

The pipeline holds the three parts a restoration needs (the Posterior Net is for training only):

- ``denoiser``: a diffusers UNet conditioned by channel concatenation, ``unet(cat([x_t, y], 1), t)``
  (the diffusers integration's convention);
- ``prior_net``: the :class:`~restoregrad_adapter.PriorNet`, ``sigma_prior = prior_net(y)``;
- ``scheduler``: the adapter's :class:`~restoregrad_adapter.LearnedPriorScheduler` (paper Algorithm 2),
  or any stock diffusers scheduler, which then samples the learned prior by whitening
  (docs/design.md, "Whitening": divide ``x_t`` and the noise estimate by sigma, take the stock step,
  multiply back).

An adapter folder written by ``RestoreGrad.save_pretrained`` for a diffusers UNet carries a
``model_index.json`` naming these components, so it loads with
``RestoreGradPipeline.from_pretrained(folder_or_repo_id)``.

Images larger than the UNet's ``sample_size`` are restored from overlapping patches (WeatherDiff,
Ozdenizci & Legenstein 2023): at each step the noise estimate is the per-pixel mean of the patch
estimates, and the prior is one sigma map for the whole image. The pipeline is a shell over the
library's one restoration loop, :func:`restoregrad_adapter.sampling.restore`, with the diffusers
integration's defaults.

Only absolute imports are used here: diffusers' ``custom_pipeline=`` loader executes a copy of this
file outside the package (see the end of the module and docs/pipeline.md).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from restoregrad_adapter.encoders import PriorNet
from restoregrad_adapter.hub import CONFIG_NAME, PIPELINE_INDEX_NAME, integration_of, read_config
from restoregrad_adapter.integrations import find_integration, registered_integrations
from restoregrad_adapter.checks import check_no_clipping, check_positive_int
from restoregrad_adapter.sampling import restore
from restoregrad_adapter.scheduler import LearnedPriorScheduler

OUTPUT_TYPES = ("pil", "np", "pt")
_PIL_MODES = {1: "L", 3: "RGB"}


def _align_cpu_tensors(module: torch.nn.Module) -> None:
    """Copy CPU parameters and buffers that do not start on a 64-byte boundary into fresh memory.

    Weights loaded from safetensors are views into the file at arbitrary offsets; at such offsets
    the CPU kernels may take another (equally valid) path, and results differ in the last bits from
    those of the same weights in memory that torch allocated (always 64-byte aligned). Copies make
    a loaded pipeline restore bit for bit like the adapter it was saved from.
    """
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
                tensor.data = tensor.data.clone()


def _is_pil_image(value) -> bool:
    try:
        from PIL import Image
    except ImportError:  # without Pillow nothing can be a PIL image
        return False
    return isinstance(value, Image.Image)


def _pil_to_array(image, channels: int, what: str) -> np.ndarray:
    mode = _PIL_MODES.get(channels)
    if image.mode != mode:
        hint = f"convert it first: image.convert({mode!r})" if mode else "pass a tensor instead"
        raise ValueError(f"`degraded`{what} is a PIL image of mode {image.mode!r}; the adapter restores "
                         f"{channels}-channel images, which as PIL images have mode {mode!r} ({hint}).")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return array[..., None] if array.ndim == 2 else array


def preprocess(degraded, channels: int) -> torch.Tensor:
    """``degraded`` as the float32 tensor ``(B, C, H, W)`` in [-1, 1] the sampler works on.

    Accepted: a PIL image or a list of PIL images of one size (mode "RGB" for 3 channels, "L" for 1);
    a floating numpy array ``(H, W, C)`` or ``(B, H, W, C)`` in [0, 1]; a floating torch tensor
    ``(B, C, H, W)`` in [-1, 1]. Anything else raises a ValueError naming ``degraded``.
    """
    if _is_pil_image(degraded):
        degraded = [degraded]
    if isinstance(degraded, (list, tuple)):
        if not degraded:
            raise ValueError("`degraded` is an empty list; pass at least one image.")
        bad = [i for i, image in enumerate(degraded) if not _is_pil_image(image)]
        if bad:
            raise ValueError(f"`degraded` as a list must hold PIL images only; item {bad[0]} is a "
                             f"{type(degraded[bad[0]]).__name__} (stack arrays or tensors into one batch instead).")
        sizes = {image.size for image in degraded}
        if len(sizes) > 1:
            raise ValueError(f"the PIL images in `degraded` must share one size, got (width, height) sizes "
                             f"{sorted(sizes)}.")
        arrays = [_pil_to_array(image, channels, f"[{i}]" if len(degraded) > 1 else "")
                  for i, image in enumerate(degraded)]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) * 2 - 1

    if isinstance(degraded, np.ndarray):
        if degraded.ndim not in (3, 4) or degraded.shape[-1] != channels:
            raise ValueError(f"`degraded` as a numpy array must have shape (H, W, {channels}) or "
                             f"(B, H, W, {channels}), got {degraded.shape}.")
        if not np.issubdtype(degraded.dtype, np.floating):
            raise ValueError(f"`degraded` as a numpy array must be floating-point in [0, 1], got dtype {degraded.dtype}"
                             " (divide 8-bit images by 255).")
        if not np.isfinite(degraded).all():
            raise ValueError("`degraded` contains non-finite values (NaN or inf).")
        if degraded.size and (degraded.min() < 0 or degraded.max() > 1):
            raise ValueError(f"`degraded` as a numpy array must lie in [0, 1], got values in "
                             f"[{degraded.min():.4g}, {degraded.max():.4g}].")
        array = degraded[None] if degraded.ndim == 3 else degraded
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1

    if isinstance(degraded, torch.Tensor):
        if degraded.ndim != 4 or degraded.shape[1] != channels:
            hint = " (add the batch dimension: degraded[None])" if degraded.ndim == 3 else ""
            raise ValueError(f"`degraded` as a tensor must have shape (B, {channels}, H, W), got "
                             f"{tuple(degraded.shape)}{hint}.")
        if not degraded.is_floating_point():
            raise ValueError(f"`degraded` as a tensor must be floating-point in [-1, 1], got {degraded.dtype}.")
        if not torch.isfinite(degraded).all():
            raise ValueError("`degraded` contains non-finite values (NaN or inf).")
        if degraded.numel() and (degraded.min() < -1 or degraded.max() > 1):
            raise ValueError(f"`degraded` as a tensor must lie in [-1, 1], got values in "
                             f"[{degraded.min().item():.4g}, {degraded.max().item():.4g}] (map [0, 1] images with "
                             "2 * x - 1).")
        return degraded.float()

    raise ValueError(f"`degraded` must be a PIL image, a list of PIL images, a numpy array (H, W, C) / (B, H, W, C) "
                     f"in [0, 1] or a torch tensor (B, C, H, W) in [-1, 1], got {type(degraded).__name__}.")


def postprocess(images: torch.Tensor, output_type: str):
    """Restored ``(B, C, H, W)`` images in [-1, 1] as ``output_type``.

    ``"pt"``: the tensor clamped to [-1, 1] (float32); ``"np"``: a float32 array ``(B, H, W, C)`` in
    [0, 1]; ``"pil"``: a list of PIL images (mode "RGB" for 3 channels, "L" for 1).
    """
    images = images.float().clamp(-1, 1)
    if output_type == "pt":
        return images
    array = ((images + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    from PIL import Image

    if array.shape[-1] not in _PIL_MODES:
        raise ValueError(f"`output_type='pil'` needs 1 or 3 channels, the images have {array.shape[-1]}; "
                         "use 'np' or 'pt'.")
    pixels = (array * 255).round().astype(np.uint8)
    return [Image.fromarray(p[..., 0] if p.shape[-1] == 1 else p) for p in pixels]  # mode "L" or "RGB"


def _pipeline_integration():
    """The registered integration whose adapter folders are pipelines (diffusers models, concatenation)."""
    return next(i for i in registered_integrations().values() if i.pipeline_compatible)


class RestoreGradPipeline(DiffusionPipeline):
    """Restore degraded images with a diffusers UNet and RestoreGrad's learned prior.

    Args:
        denoiser: a diffusers model (e.g. ``UNet2DModel``) called as ``denoiser(cat([x_t, y], 1), t).sample``,
            with ``in_channels = 2 C`` and ``out_channels = C``; it predicts what the scheduler's
            ``prediction_type`` says (the noise, ``x0`` or ``v``).
        prior_net: the 2-D :class:`~restoregrad_adapter.PriorNet` for C-channel images.
        scheduler: a :class:`~restoregrad_adapter.LearnedPriorScheduler`, or any diffusers scheduler
            (DDIM, DPM-Solver++, UniPC, ...) with the denoiser's ``prediction_type`` and sample clipping and
            thresholding off, e.g. ``DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)``.
        residual: the denoiser was trained on the residual ``x0 - y``: the restoration is ``y + r0_hat``
            (saved in ``model_index.json``).
    """

    model_cpu_offload_seq = "prior_net->denoiser"

    def __init__(self, denoiser: ModelMixin, prior_net: PriorNet, scheduler: SchedulerMixin, residual: bool = False):
        super().__init__()
        if not isinstance(residual, bool):
            raise ValueError(f"`residual` must be a bool, got {residual!r}.")
        for module in (denoiser, prior_net):
            if isinstance(module, torch.nn.Module):
                _align_cpu_tensors(module)
        self.register_modules(denoiser=denoiser, prior_net=prior_net, scheduler=scheduler)
        self.register_to_config(residual=residual)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "RestoreGradPipeline":
        """Load from an adapter folder or Hub repo id (``"org/name"``), or a folder saved by ``save_pretrained``.

        An adapter saved by ``RestoreGrad.save_pretrained`` for a diffusers UNet holds a
        ``model_index.json`` naming ``denoiser``, ``prior_net`` and ``scheduler``; this is diffusers'
        ``DiffusionPipeline.from_pretrained`` (same keyword arguments: ``torch_dtype``,
        ``cache_dir``, ``local_files_only``, ``revision``, components to use instead, e.g.
        ``scheduler=...``), with HF_HUB_OFFLINE=1 served from the Hugging Face cache. It restores
        bit for bit like ``RestoreGrad.from_pretrained`` of the same folder.
        """
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not (folder / PIPELINE_INDEX_NAME).is_file() and (folder / CONFIG_NAME).is_file():
            config = read_config(folder)
            integration = integration_of(config)
            if integration is None or not integration.pipeline_compatible or config.get("denoiser_format") != "diffusers":
                raise ValueError(
                    f"{folder} holds a RestoreGrad adapter of the {config['config'].get('integration') or 'custom'!r} integration whose "
                    f"denoiser ({config.get('denoiser_class')}, saved as {config.get('denoiser_format')}) is not a "
                    "diffusers model conditioned by channel concatenation; only those load as a RestoreGradPipeline. "
                    "Load it with RestoreGrad.from_pretrained and restore with adapter.restore or its integration's "
                    "sampler."
                )
            raise ValueError(f"{folder} has no {PIPELINE_INDEX_NAME} (it was saved by an older restoregrad_adapter); "
                             "save it again: RestoreGrad.from_pretrained(folder).save_pretrained(folder).")
        if kwargs.get("use_safetensors") is False:
            raise ValueError("`use_safetensors=False` is not supported: adapters hold safetensors only, and nothing "
                             "is ever unpickled.")
        kwargs["use_safetensors"] = True  # a missing .safetensors is an error, never a fall-back to a pickled .bin
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ------------------------------------------------------------------ checks
    def _check_components(self) -> int:
        """The image channels C; raise a ValueError when the components do not fit together."""
        prior_config = getattr(self.prior_net, "config", None)
        if getattr(prior_config, "dims", None) != 2:
            raise ValueError("`prior_net` must be a 2-D PriorNet (images), got "
                             f"{type(self.prior_net).__name__} with dims={getattr(prior_config, 'dims', None)!r}.")
        channels = prior_config.in_channels
        if find_integration(self.denoiser) is not None:
            raise ValueError("`denoiser` must be the diffusers model itself, not its RestoreGrad wrapper: pass "
                             "`wrapper.model` (e.g. `adapter.denoiser.model`).")
        unet_config = getattr(self.denoiser, "config", None)
        in_channels = getattr(unet_config, "in_channels", None)
        out_channels = getattr(unet_config, "out_channels", None)
        if in_channels is not None and in_channels != 2 * channels:
            raise ValueError(f"`denoiser` takes {in_channels} input channels, but {channels}-channel images need "
                             f"{2 * channels} (x_t and y concatenated).")
        if out_channels is not None and out_channels != channels:
            raise ValueError(f"`denoiser` gives {out_channels} output channels; the noise of {channels}-channel images "
                             f"has {channels}.")
        if not isinstance(self.scheduler, LearnedPriorScheduler):
            check_no_clipping(self.scheduler)  # clipping would act in whitened units
        return channels

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def __call__(
        self,
        degraded,
        num_inference_steps: int = 10,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        patch_size: int | None = None,
        stride: int | None = None,
        eta: float = 0.0,
        patch_batch_size: int = 64,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Restore ``degraded`` by reverse diffusion from the learned prior (paper Algorithm 2).

        Args:
            degraded: a PIL image or a list of PIL images of one size; a numpy array ``(H, W, C)`` or
                ``(B, H, W, C)`` in [0, 1]; or a torch tensor ``(B, C, H, W)`` in [-1, 1].
            num_inference_steps: reverse steps S, spaced by the scheduler's ``timestep_spacing``.
            generator: source of ``x_T = sigma_prior * z`` and of every step's fresh noise; the
                result is deterministic given it.
            output_type: ``"pil"`` (a list of PIL images), ``"np"`` (float32 ``(B, H, W, C)`` in
                [0, 1]) or ``"pt"`` (float32 ``(B, C, H, W)`` in [-1, 1]).
            patch_size: side p of the square patches for images larger than p on either side
                (default: the UNet's ``sample_size``); images that fit are restored whole. Patch
                restoration averages the noise estimates of overlapping patches per pixel at each
                step; a side shorter than p is padded by reflection and cropped from the result.
            stride: the patch grid's stride (default ``p // 4``, WeatherDiff's 16 for p = 64).
            eta: DDIM-type schedulers' eta (0: deterministic steps); other schedulers take none.
            patch_batch_size: patches per denoiser call in patch restoration.
            return_dict: return an ``ImagePipelineOutput`` (else the tuple ``(images,)``).

        Returns:
            ``ImagePipelineOutput(images=...)``. With ``output_type="pt"`` on the whole-image path the
            images equal ``RestoreGrad.restore(y, num_inference_steps, generator, scheduler=...)``
            clamped to [-1, 1], bit for bit.
        """
        # 1. Check the inputs (once: the loop below trusts them).
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        check_positive_int("num_inference_steps", num_inference_steps)
        channels = self._check_components()

        # 2. Preprocess: images as a (B, C, H, W) tensor in [-1, 1].
        y = preprocess(degraded, channels).to(self._execution_device)

        # 3. The denoiser eps(x_t, y, t) and its restoration defaults (patches of the UNet's sample_size).
        denoiser = _pipeline_integration().wrap(self.denoiser)
        defaults = denoiser.restoration_defaults()

        def prior(image: torch.Tensor) -> torch.Tensor:  # one sigma map for the whole (padded) image
            return self.prior_net(image.to(self.prior_net.dtype)).float()

        # 4. Reverse diffusion from the learned prior: x_T = sigma * z, then the scheduler's steps.
        show_progress = not getattr(self, "_progress_bar_config", {}).get("disable", False)
        x = restore(denoiser, y, prior, self.scheduler, num_inference_steps=num_inference_steps, eta=eta,
                    generator=generator, patch_size=patch_size if patch_size is not None else defaults.patch_size,
                    stride=stride, patch_batch_size=patch_batch_size, progress=show_progress,
                    residual=self.config.residual)

        # 5. Postprocess.
        images = postprocess(x, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


__all__ = ["RestoreGradPipeline", "preprocess", "postprocess", "OUTPUT_TYPES"]

if __name__ != "restoregrad_adapter.pipeline":
    # diffusers' `custom_pipeline=` loader runs a copy of this file under another module name. It then
    # takes the one DiffusionPipeline subclass it finds here: hand it the installed class, so that the
    # loaded pipeline is a restoregrad_adapter.RestoreGradPipeline.
    from restoregrad_adapter.pipeline import RestoreGradPipeline  # noqa: E402,F811
