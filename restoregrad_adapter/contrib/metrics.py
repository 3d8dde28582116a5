"""Restoration quality metrics for images and speech.

Image metrics follow the convention of WeatherDiff and MATLAB ``rgb2ycbcr``:
PSNR and SSIM are computed on the luma (Y) channel of ITU-R BT.601 YCbCr in
"studio swing", i.e. ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``
for ``R, G, B`` in ``[0, 1]``, so that ``Y`` lies in ``[16/255, 235/255]``.
Y is kept on the ``[0, 1]`` scale, so a data range of 1 is used for both
PSNR and SSIM (equivalent to the usual 0-255 computation with peak 255).

LPIPS (:func:`lpips`) and FID (:func:`fid`) need a backbone network whose weights the user supplies;
nothing is downloaded. No-reference NIQE is not provided: no maintained implementation of it works
offline with this library's dependencies (docs/deblur_sr.md says why).

Speech metrics take waveforms shaped ``(B, L)`` or ``(B, 1, L)``.

Every function returns one value per batch item, as a tensor of shape
``(B,)``. Inputs are validated and never modified: a wrong shape, dtype,
non-finite value or out-of-range image raises :class:`ValueError` naming the
offending argument.

``torchmetrics`` (extra ``metrics``), ``pesq`` and ``pystoi`` (extra
``speech-metrics``) are imported only when a function needing them is called.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "EVALUATE_MODULES",
    "evaluate_module_path",
    "fid",
    "lpips",
    "lpips_linear_weights",
    "pesq_wb",
    "psnr_y",
    "rgb_to_y",
    "si_snr",
    "speech_scores",
    "ssim_y",
    "stoi",
]

#: BT.601 studio-swing luma coefficients applied to R, G, B in [0, 1].
_Y_WEIGHTS: tuple[float, float, float] = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET: float = 16.0 / 255.0

#: SSIM window: gaussian, 11 x 11, sigma 1.5 (Wang et al. 2004).
_SSIM_KERNEL_SIZE: int = 11
_SSIM_SIGMA: float = 1.5

_PESQ_WB_SAMPLE_RATE: int = 16000
_SPEECH_EXTRA_HINT: str = "pip install restoregrad_adapter[speech-metrics]"
_METRICS_EXTRA_HINT: str = "pip install restoregrad_adapter[metrics]"

#: Names of the ``evaluate`` metric modules shipped in ``evaluate_metrics/``.
EVALUATE_MODULES: tuple[str, ...] = ("psnr_y", "si_snr")


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
def _check_tensor(x: object, name: str) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor holding only finite values."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise ValueError(f"`{name}` must have a floating-point dtype, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"`{name}` contains non-finite values (nan or inf)")
    return x


def _check_pair(pred: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``pred``/``target`` individually, then that they match each other."""
    pred = _check_tensor(pred, "pred")
    target = _check_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            "`pred` and `target` must have the same shape, got "
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if pred.dtype != target.dtype:
        raise ValueError(
            f"`pred` and `target` must have the same dtype, got pred {pred.dtype} and target {target.dtype}"
        )
    if pred.device != target.device:
        raise ValueError(
            f"`pred` and `target` must be on the same device, got pred {pred.device} and target {target.device}"
        )
    return pred, target


def _check_image(x: torch.Tensor, name: str, max_value: float = 1.0) -> None:
    """Check a ``(B, C, H, W)`` image batch with ``C`` in {1, 3} and values in ``[0, max_value]``."""
    if x.ndim != 4:
        raise ValueError(f"`{name}` must have 4 dimensions (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise ValueError(
            f"`{name}` must have 1 (Y/gray) or 3 (RGB) channels, got {x.shape[1]} (shape {tuple(x.shape)})"
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > max_value:
        raise ValueError(
            f"`{name}` values must lie in [0, {max_value:g}], got min {lo:.6g} and max {hi:.6g}; "
            "clamp or rescale it explicitly before computing metrics"
        )


def _check_image_pair(
    pred: object, target: object, max_value: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = _check_pair(pred, target)
    _check_image(pred, "pred", max_value)
    _check_image(target, "target", max_value)
    return pred, target


def _check_waveform_pair(pred: object, target: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate waveforms ``(B, L)`` or ``(B, 1, L)`` and return them as ``(B, L)`` views."""
    pred, target = _check_pair(pred, target)
    for x, name in ((pred, "pred"), (target, "target")):
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[1] != 1):
            raise ValueError(
                f"`{name}` must have shape (B, L) or (B, 1, L), got shape {tuple(x.shape)}"
            )
        if x.shape[-1] < 2:
            raise ValueError(f"`{name}` must have at least 2 samples, got shape {tuple(x.shape)}")
    if pred.ndim == 3:
        pred, target = pred[:, 0], target[:, 0]
    return pred, target


def _check_sample_rate(sample_rate: object, name: str = "sample_rate") -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {sample_rate!r}")
    return sample_rate


def _torchmetrics_functional():
    try:
        import torchmetrics.functional as tmf
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"This metric needs the optional `torchmetrics` package: {_METRICS_EXTRA_HINT}"
        ) from err
    return tmf


# --------------------------------------------------------------------------- #
# Images
# --------------------------------------------------------------------------- #
def rgb_to_y(images: torch.Tensor) -> torch.Tensor:
    """Luma (Y) of BT.601 studio-swing YCbCr, as MATLAB ``rgb2ycbcr`` / WeatherDiff.

    Args:
        images: ``(B, 3, H, W)`` RGB in ``[0, 1]``, floating point; or
            ``(B, 1, H, W)``, assumed to be Y/gray already and returned unchanged
            (the same tensor object).

    Returns:
        ``(B, 1, H, W)`` tensor, same dtype and device, with
        ``Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255``, so
        ``Y`` lies in ``[16/255, 235/255]`` for RGB input.

    Raises:
        ValueError: non-tensor, non-floating dtype, non-finite values, not 4-D,
            channel count other than 1 or 3, or values outside ``[0, 1]``.
    """
    images = _check_tensor(images, "images")
    _check_image(images, "images")
    return _rgb_to_y_unchecked(images)


def _rgb_to_y_unchecked(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(_Y_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True) + _Y_OFFSET


def psnr_y(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio (dB) on the Y channel, one value per image.

    Both images are divided by ``data_range``, converted with :func:`rgb_to_y`
    and compared with peak 1: ``PSNR = 10 log10(1 / MSE_Y)``, the MSE being
    averaged over the ``H x W`` pixels of each image. With the default
    ``data_range=1`` this is the WeatherDiff / MATLAB value computed on
    0-255 Y with peak 255 (without its uint8 rounding).

    Args:
        pred: ``(B, C, H, W)`` restored images, ``C`` in {1, 3}, values in
            ``[0, data_range]`` (``[0, 1]`` by default), floating point.
        target: reference images, same shape, dtype and device as ``pred``.
        data_range: maximum value of the input scale (1.0 for ``[0, 1]``
            images, 255.0 for 0-255 images stored as floats).

    Returns:
        ``(B,)`` tensor on the input device. Identical images (MSE of 0)
        give ``+inf``.

    Raises:
        ValueError: on invalid inputs (see :func:`rgb_to_y`), mismatched
            shapes/dtypes/devices, or a non-positive ``data_range``.
    """
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)) or not (
        math.isfinite(data_range) and data_range > 0
    ):
        raise ValueError(f"`data_range` must be a positive finite number, got {data_range!r}")
    pred, target = _check_image_pair(pred, target, max_value=float(data_range))
    tmf = _torchmetrics_functional()
    pred_y = _rgb_to_y_unchecked(pred / data_range)
    target_y = _rgb_to_y_unchecked(target / data_range)
    return tmf.image.peak_signal_noise_ratio(
        pred_y, target_y, data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ssim_y(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity on the Y channel, one value per image.

    Gaussian window of size 11 and sigma 1.5, ``K1 = 0.01``, ``K2 = 0.03``,
    data range 1 (Y on the ``[0, 1]`` scale); the SSIM map is averaged over
    the positions where the whole window fits inside the image, i.e. a
    ``(H - 10) x (W - 10)`` region, as in Wang et al. and
    ``skimage.metrics.structural_similarity(gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False, data_range=1)``.

    Args:
        pred: ``(B, C, H, W)`` restored images, ``C`` in {1, 3}, values in
            ``[0, 1]``, ``H`` and ``W`` at least 11, floating point.
        target: reference images, same shape, dtype and device as ``pred``.

    Returns:
        ``(B,)`` tensor on the input device, in ``[-1, 1]`` (1 for
        identical images).

    Raises:
        ValueError: on invalid inputs (see :func:`rgb_to_y`), mismatched
            shapes/dtypes/devices, or images smaller than 11 x 11.
    """
    pred, target = _check_image_pair(pred, target)
    for x, name in ((pred, "pred"), (target, "target")):
        if min(x.shape[-2:]) < _SSIM_KERNEL_SIZE:
            raise ValueError(
                f"`{name}` must be at least {_SSIM_KERNEL_SIZE}x{_SSIM_KERNEL_SIZE} pixels for SSIM, "
                f"got shape {tuple(x.shape)}"
            )
    tmf = _torchmetrics_functional()
    # torchmetrics (>= 1.5) averages the SSIM map over the whole image, border
    # windows included (computed on reflect-padded input). The reference
    # definition averages only where the window lies inside the image, so the
    # full map is requested and its border cropped here.
    _, ssim_map = tmf.image.structural_similarity_index_measure(
        _rgb_to_y_unchecked(pred),
        _rgb_to_y_unchecked(target),
        gaussian_kernel=True,
        sigma=_SSIM_SIGMA,
        kernel_size=_SSIM_KERNEL_SIZE,
        reduction="none",
        data_range=1.0,
        return_full_image=True,
    )
    pad = (_SSIM_KERNEL_SIZE - 1) // 2
    if ssim_map.shape[-2:] != pred.shape[-2:]:  # pragma: no cover - guards a torchmetrics behaviour change
        raise RuntimeError(
            f"unexpected SSIM map shape {tuple(ssim_map.shape)} for images of shape {tuple(pred.shape)}"
        )
    return ssim_map[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))


# --------------------------------------------------------------------------- #
# Speech
# --------------------------------------------------------------------------- #
def si_snr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio (dB), one value per waveform.

    Both signals are made zero-mean; with ``s`` the projection of ``pred`` on
    ``target`` and ``e = pred - s``, ``SI-SNR = 10 log10(|s|^2 / |e|^2)``.
    Invariant to rescaling ``pred`` by any positive factor.

    Args:
        pred: ``(B, L)`` or ``(B, 1, L)`` waveforms, floating point, any
            amplitude range, ``L >= 2``.
        target: reference waveforms, same shape, dtype and device.

    Returns:
        ``(B,)`` tensor on the input device.

    Raises:
        ValueError: non-tensor, non-floating dtype, non-finite values, wrong
            number of dimensions, more than one channel, or mismatched
            shapes/dtypes/devices.
    """
    pred, target = _check_waveform_pair(pred, target)
    tmf = _torchmetrics_functional()
    return tmf.audio.scale_invariant_signal_noise_ratio(pred, target)


def _per_item(
    pred: torch.Tensor,
    target: torch.Tensor,
    fn: Callable[["np.ndarray", "np.ndarray"], float],
) -> torch.Tensor:
    """Apply a numpy ``fn(target_1d, pred_1d) -> float`` to each batch item."""
    pred_np = pred.detach().to("cpu", torch.float64).numpy()
    target_np = target.detach().to("cpu", torch.float64).numpy()
    values = [float(fn(t, p)) for p, t in zip(pred_np, target_np)]
    return torch.tensor(values, dtype=pred.dtype, device=pred.device)


def pesq_wb(pred: torch.Tensor, target: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """Wideband PESQ (ITU-T P.862.2, MOS-LQO), one value per waveform.

    Needs the optional ``pesq`` package (``pip install
    restoregrad_adapter[speech-metrics]``). Computed item by item on CPU.

    Args:
        pred: ``(B, L)`` or ``(B, 1, L)`` degraded/restored speech, floating
            point, nominally in ``[-1, 1]`` (PESQ aligns levels itself).
        target: clean reference speech, same shape, dtype and device.
        sample_rate: must be 16000 (wideband PESQ is defined at 16 kHz).

    Returns:
        ``(B,)`` tensor on the input device, same dtype, roughly in
        ``[1.04, 4.64]``.

    Raises:
        ValueError: invalid inputs (see :func:`si_snr`) or a sample rate other
            than 16000.
        ImportError: ``pesq`` is not installed.
        pesq.PesqError: the reference contains no detectable speech, or the
            signals are too short (raised by ``pesq`` itself).
    """
    pred, target = _check_waveform_pair(pred, target)
    _check_sample_rate(sample_rate)
    if sample_rate != _PESQ_WB_SAMPLE_RATE:
        raise ValueError(
            f"`sample_rate` must be {_PESQ_WB_SAMPLE_RATE} for wideband PESQ, got {sample_rate}; "
            "resample the signals first"
        )
    try:
        from pesq import pesq as _pesq
    except ImportError as err:
        raise ImportError(
            f"pesq_wb needs the optional `pesq` package: {_SPEECH_EXTRA_HINT}"
        ) from err
    return _per_item(pred, target, lambda ref, deg: _pesq(sample_rate, ref, deg, "wb"))


def stoi(pred: torch.Tensor, target: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """Short-time objective intelligibility (Taal et al. 2011), one value per waveform.

    Needs the optional ``pystoi`` package (``pip install
    restoregrad_adapter[speech-metrics]``). Computed item by item on CPU;
    ``pystoi`` resamples internally to 10 kHz, so any positive sample rate is
    accepted.

    Args:
        pred: ``(B, L)`` or ``(B, 1, L)`` degraded/restored speech, floating
            point, nominally in ``[-1, 1]``.
        target: clean reference speech, same shape, dtype and device.
        sample_rate: sample rate of both signals in Hz (positive int).

    Returns:
        ``(B,)`` tensor on the input device, same dtype, in about ``[0, 1]``
        (1 for identical signals).

    Raises:
        ValueError: invalid inputs (see :func:`si_snr`) or a non-positive
            sample rate.
        ImportError: ``pystoi`` is not installed.
    """
    pred, target = _check_waveform_pair(pred, target)
    _check_sample_rate(sample_rate)
    try:
        from pystoi import stoi as _stoi
    except ImportError as err:
        raise ImportError(
            f"stoi needs the optional `pystoi` package: {_SPEECH_EXTRA_HINT}"
        ) from err
    return _per_item(pred, target, lambda ref, deg: _stoi(ref, deg, sample_rate, extended=False))


def speech_scores(pred: torch.Tensor, target: torch.Tensor, sample_rate: int = 16000) -> dict[str, float]:
    """SI-SNR, wideband PESQ and STOI of one waveform against its reference, as floats.

    The scores a speech restoration is reported with (the command line's ``evaluate``, the training
    script's validation, the benchmarks). ``pred`` and ``target``: ``(L,)``, ``(1, L)`` or ``(1, 1, L)``.
    PESQ and STOI are left out when their optional package is not installed, PESQ also at a rate other
    than 16 kHz, where wideband PESQ is not defined.
    """
    for name, x in (("pred", pred), ("target", target)):
        if isinstance(x, torch.Tensor) and (x.ndim == 0 or x.numel() != x.shape[-1]):
            raise ValueError(f"`{name}` must be one waveform, (L,), (1, L) or (1, 1, L); got {tuple(x.shape)}.")
    pred, target = (x.reshape(1, -1) if isinstance(x, torch.Tensor) else x for x in (pred, target))
    scores = {"si_snr": si_snr(pred, target).item()}
    metrics = (("pesq", pesq_wb), ("stoi", stoi)) if sample_rate == _PESQ_WB_SAMPLE_RATE else (("stoi", stoi),)
    for name, metric in metrics:
        try:
            scores[name] = metric(pred, target, sample_rate=sample_rate).item()
        except ImportError:
            pass  # the optional speech-metrics packages
    return scores


# --------------------------------------------------------------------------- #
# Distribution metrics with a backbone the user supplies
# --------------------------------------------------------------------------- #
def fid(pred: torch.Tensor, target: torch.Tensor, feature_extractor: torch.nn.Module,
        batch_size: int = 64) -> float:
    """Fréchet distance between the feature distributions of restored and reference images.

    The backbone is the user's: ``feature_extractor`` maps ``(B, 3, H, W)`` images in [0, 1] to
    ``(B, D)`` features (for the usual FID, Inception-v3's 2048 pool features with weights the user
    has loaded). Nothing is downloaded. torchmetrics does the math:
    ``|mu_p - mu_r|^2 + tr(S_p + S_r - 2 (S_p S_r)^(1/2))``.

    Args:
        pred: restored images ``(N, 3, H, W)`` in [0, 1]; N >= 2.
        target: reference images ``(M, 3, H', W')`` in [0, 1]; M >= 2.
        feature_extractor: an ``nn.Module`` giving ``(B, D)`` features.
        batch_size: images per forward pass.
    """
    if not isinstance(feature_extractor, torch.nn.Module):
        raise ValueError("`feature_extractor` must be an nn.Module mapping (B, 3, H, W) images to (B, D) features "
                         f"(e.g. Inception-v3 with your weights), got {type(feature_extractor).__name__}.")
    for name, images in (("pred", pred), ("target", target)):
        x = _check_tensor(images, name)
        _check_image(x, name)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] < 2:
            raise ValueError(f"`{name}` must have shape (N, 3, H, W) with N >= 2, got {tuple(x.shape)}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as err:  # pragma: no cover - torchmetrics is a dependency of the metrics extra
        raise ImportError("fid needs torchmetrics: pip install restoregrad_adapter[metrics]") from err
    metric = FrechetInceptionDistance(feature=feature_extractor, normalize=True, reset_real_features=True,
                                      input_img_size=tuple(target.shape[1:])).to(pred.device)
    metric = metric.double()
    for images, real in ((target, True), (pred, False)):
        for start in range(0, images.shape[0], batch_size):
            metric.update(images[start:start + batch_size], real=real)
    return float(metric.compute())


#: LPIPS's input scaling (Zhang et al. 2018): the [-1, 1] image minus ``shift``, divided by ``scale``,
#: per RGB channel: ImageNet's normalisation written for [-1, 1] inputs.
_LPIPS_SHIFT: tuple[float, float, float] = (-0.030, -0.088, -0.188)
_LPIPS_SCALE: tuple[float, float, float] = (0.458, 0.448, 0.450)
#: Added to a feature vector's norm before dividing by it, as LPIPS does.
_LPIPS_EPS: float = 1e-10


def lpips_linear_weights(state_dict) -> list[torch.Tensor]:
    """The per-layer channel weights of a published LPIPS linear-layer file, as :func:`lpips` takes them.

    LPIPS v0.1's files (``alex.pth``, ``vgg.pth``, ``squeeze.pth``, loaded by the user with
    ``torch.load``) hold one ``1 x C x 1 x 1`` tensor per layer under ``lin0.model.1.weight``,
    ``lin1.model.1.weight``, ...; they are returned in layer order as ``(C,)`` tensors.
    """
    if not isinstance(state_dict, dict):
        raise ValueError(f"`state_dict` must be a dict of LPIPS linear-layer weights, got {type(state_dict).__name__}")
    weights = []
    while f"lin{len(weights)}.model.1.weight" in state_dict:
        weight = state_dict[f"lin{len(weights)}.model.1.weight"]
        if not isinstance(weight, torch.Tensor) or weight.ndim != 4 or weight.shape[0] != 1 \
                or weight.shape[2:] != (1, 1):
            raise ValueError(f"`state_dict` entry lin{len(weights)}.model.1.weight must be a 1 x C x 1 x 1 tensor, "
                             f"got {getattr(weight, 'shape', type(weight).__name__)}")
        weights.append(weight.reshape(-1))
    if not weights:
        raise ValueError("`state_dict` has no key 'lin0.model.1.weight': not an LPIPS linear-layer file "
                         f"(keys: {sorted(state_dict)[:5]})")
    return weights


def lpips(pred: torch.Tensor, target: torch.Tensor, feature_network: torch.nn.Module, linear_weights,
          scale_inputs: bool = True) -> torch.Tensor:
    """Learned perceptual image patch similarity (LPIPS, Zhang et al. 2018), one value per image pair.

    The backbone and its weights are the user's, as for :func:`fid`; nothing is downloaded. The
    usual LPIPS is AlexNet's five ReLU outputs (``conv1`` ... ``conv5``) with ImageNet weights and
    LPIPS v0.1's linear weights (:func:`lpips_linear_weights`). The published formula:

    ``d(x, x') = sum_l mean_{h,w} sum_c w_lc (f_lchw / |f_l.hw| - f'_lchw / |f'_l.hw|)^2``

    where ``f_l`` are layer ``l``'s features, each pixel's feature vector is divided by its
    Euclidean norm over the channels (plus 1e-10) and ``w_l`` are the layer's non-negative channel
    weights. Lower is more similar; identical images give 0.

    Args:
        pred: restored images ``(B, 3, H, W)`` in [0, 1].
        target: reference images, same shape, dtype and device.
        feature_network: an ``nn.Module`` mapping ``(B, 3, H, W)`` images to a list or tuple of ``L``
            feature maps ``(B, C_l, H_l, W_l)``. Put it in ``eval()`` mode yourself; it runs without
            gradients.
        linear_weights: ``L`` non-negative tensors of ``C_l`` channel weights (or ``1 x C_l x 1 x 1``).
        scale_inputs: feed the network LPIPS's scaled images, ``(2 x - 1 - shift) / scale`` with
            ``shift = (-0.030, -0.088, -0.188)`` and ``scale = (0.458, 0.448, 0.450)`` (ImageNet's
            normalisation), as the published metric does; ``False`` feeds the [0, 1] images as they are.

    Returns:
        ``(B,)`` tensor on the input device.
    """
    if not isinstance(feature_network, torch.nn.Module):
        raise ValueError("`feature_network` must be an nn.Module mapping (B, 3, H, W) images to a list of feature "
                         f"maps (e.g. AlexNet's ReLU outputs with your weights), got {type(feature_network).__name__}")
    pred, target = _check_image_pair(pred, target)
    if pred.shape[1] != 3:
        raise ValueError(f"`pred` and `target` must be RGB images (B, 3, H, W), got shape {tuple(pred.shape)}")
    if isinstance(linear_weights, torch.Tensor) or not isinstance(linear_weights, (list, tuple)) or not linear_weights:
        raise ValueError("`linear_weights` must be a non-empty list of per-layer channel-weight tensors, got "
                         f"{type(linear_weights).__name__}")
    weights = []
    for number, weight in enumerate(linear_weights):
        if not isinstance(weight, torch.Tensor) or not torch.is_floating_point(weight):
            raise ValueError(f"`linear_weights[{number}]` must be a floating-point tensor, got "
                             f"{getattr(weight, 'dtype', type(weight).__name__)}")
        if weight.numel() == 0 or not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise ValueError(f"`linear_weights[{number}]` must hold finite non-negative channel weights")
        weights.append(weight.detach().reshape(-1).to(pred.device, pred.dtype))
    if scale_inputs:
        shift = torch.tensor(_LPIPS_SHIFT, dtype=pred.dtype, device=pred.device).view(1, 3, 1, 1)
        scale = torch.tensor(_LPIPS_SCALE, dtype=pred.dtype, device=pred.device).view(1, 3, 1, 1)
        pred, target = ((2 * x - 1 - shift) / scale for x in (pred, target))
    with torch.no_grad():
        features_pred, features_target = feature_network(pred), feature_network(target)
    for name, features in (("pred", features_pred), ("target", features_target)):
        if not isinstance(features, (list, tuple)) or len(features) != len(weights):
            raise ValueError(f"`feature_network` must return a list of {len(weights)} feature maps (one per entry "
                             f"of `linear_weights`), got {type(features).__name__} of length "
                             f"{len(features) if isinstance(features, (list, tuple)) else '-'} for `{name}`")
    distance = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
    for number, (a, b, weight) in enumerate(zip(features_pred, features_target, weights)):
        if not isinstance(a, torch.Tensor) or a.ndim != 4 or a.shape != b.shape or a.shape[1] != weight.numel():
            raise ValueError(f"feature map {number} must have shape (B, {weight.numel()}, H, W) to match "
                             f"`linear_weights[{number}]`, got {tuple(getattr(a, 'shape', ()))}")
        unit_a = a / (a.norm(dim=1, keepdim=True) + _LPIPS_EPS)
        unit_b = b / (b.norm(dim=1, keepdim=True) + _LPIPS_EPS)
        weighted = ((unit_a - unit_b) ** 2 * weight.view(1, -1, 1, 1)).sum(dim=1)
        distance = distance + weighted.mean(dim=(1, 2)).to(distance.dtype)
    return distance


# --------------------------------------------------------------------------- #
# `evaluate` integration
# --------------------------------------------------------------------------- #
def evaluate_module_path(name: str) -> str:
    """Folder of a bundled ``evaluate`` metric module, for ``evaluate.load``.

    Example:
        >>> import evaluate  # doctest: +SKIP
        >>> metric = evaluate.load(evaluate_module_path("psnr_y"))  # doctest: +SKIP

    Args:
        name: one of :data:`EVALUATE_MODULES` (``"psnr_y"``, ``"si_snr"``).

    Returns:
        Absolute path of ``restoregrad_adapter/evaluate_metrics/<name>``.

    Raises:
        ValueError: unknown ``name``.
    """
    if name not in EVALUATE_MODULES:
        raise ValueError(f"`name` must be one of {list(EVALUATE_MODULES)}, got {name!r}")
    return str(Path(__file__).resolve().parent / "evaluate_metrics" / name)
