"""Tests of restoregrad_adapter.contrib.metrics against closed forms and reference implementations."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from restoregrad_adapter.contrib import metrics
from restoregrad_adapter.contrib.metrics import (
    evaluate_module_path,
    pesq_wb,
    psnr_y,
    rgb_to_y,
    si_snr,
    ssim_y,
    stoi,
)

Y_GAIN = (65.481 + 128.553 + 24.966) / 255.0  # dY for a uniform change of R, G and B (= 219/255)


def _bt601_y(rgb: np.ndarray) -> np.ndarray:
    """Independent numpy BT.601 studio-swing luma for ``(..., 3)`` arrays in [0, 1]."""
    return (16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _to_bchw(hwc: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(hwc, dtype=dtype).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """``skimage.data.astronaut()`` downscaled to 128 x 96, float64 RGB in [0, 1]."""
    from skimage import data, transform

    return transform.resize(data.astronaut(), (128, 96), anti_aliasing=True)


def _modulated_noise(seconds: float = 3.0, sample_rate: int = 16000, seed: int = 0) -> torch.Tensor:
    """White noise amplitude-modulated by a 4 Hz sine, shaped (1, L), float64."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return torch.tensor(0.1 * noise * (1.0 + np.sin(2 * np.pi * 4.0 * t))).unsqueeze(0)


# --------------------------------------------------------------------------- #
# rgb_to_y
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("rgb", "expected_y_255"),
    [
        ((0.0, 0.0, 0.0), 16.0),
        ((1.0, 1.0, 1.0), 235.0),
        ((1.0, 0.0, 0.0), 16.0 + 65.481),
        ((0.0, 1.0, 0.0), 16.0 + 128.553),
        ((0.0, 0.0, 1.0), 16.0 + 24.966),
        # 16 + 65.481*0.2 + 128.553*0.4 + 24.966*0.6 = 16 + 13.0962 + 51.4212 + 14.9796
        ((0.2, 0.4, 0.6), 95.497),
    ],
)
def test_rgb_to_y_hand_computed(rgb: tuple[float, float, float], expected_y_255: float) -> None:
    image = torch.tensor(rgb, dtype=torch.float64).view(1, 3, 1, 1).expand(2, 3, 2, 3).contiguous()
    y = rgb_to_y(image)
    assert y.shape == (2, 1, 2, 3)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, torch.full_like(y, expected_y_255 / 255.0), rtol=0, atol=1e-12)


def test_rgb_to_y_range_and_gray_passthrough() -> None:
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = rgb_to_y(images)
    assert float(y.min()) >= 16 / 255 - 1e-6 and float(y.max()) <= 235 / 255 + 1e-6
    torch.testing.assert_close(y[:, 0].numpy(), _bt601_y(images.permute(0, 2, 3, 1).numpy()))
    gray = torch.rand(2, 1, 5, 5)
    assert rgb_to_y(gray) is gray


# --------------------------------------------------------------------------- #
# psnr_y
# --------------------------------------------------------------------------- #
def test_psnr_y_known_mse_gray() -> None:
    target = torch.full((2, 1, 16, 16), 0.5, dtype=torch.float64)
    pred = target + 0.1  # Y error 0.1 everywhere -> MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr_y(pred, target), torch.full((2,), 20.0, dtype=torch.float64), rtol=0, atol=1e-4)


def test_psnr_y_known_mse_rgb() -> None:
    target = torch.full((3, 3, 16, 16), 0.5, dtype=torch.float64)
    offsets = torch.tensor([0.1, 0.05, 0.02], dtype=torch.float64)
    pred = target + (offsets / Y_GAIN).view(3, 1, 1, 1)  # Y offsets 0.1, 0.05, 0.02
    expected = 10 * torch.log10(1.0 / offsets**2)
    torch.testing.assert_close(psnr_y(pred, target), expected, rtol=0, atol=1e-4)


def test_psnr_y_matches_numpy_on_random_error(astronaut: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    noisy = np.clip(astronaut + 0.05 * rng.standard_normal(astronaut.shape), 0, 1)
    mse = np.mean((_bt601_y(noisy) - _bt601_y(astronaut)) ** 2)
    value = psnr_y(_to_bchw(noisy, torch.float64), _to_bchw(astronaut, torch.float64))
    assert value.shape == (1,)
    assert value.item() == pytest.approx(10 * math.log10(1.0 / mse), abs=1e-4)


def test_psnr_y_data_range_255_equals_unit_range(astronaut: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    noisy = np.clip(astronaut + 0.05 * rng.standard_normal(astronaut.shape), 0, 1)
    pred, target = _to_bchw(noisy, torch.float64), _to_bchw(astronaut, torch.float64)
    torch.testing.assert_close(psnr_y(pred * 255, target * 255, data_range=255.0), psnr_y(pred, target))


def test_psnr_y_identical_is_inf() -> None:
    """Identical images have zero MSE: the documented result is +inf, not a clipped large value."""
    images = torch.rand(2, 3, 12, 12)
    value = psnr_y(images, images.clone())
    assert value.shape == (2,)
    assert torch.isinf(value).all() and (value > 0).all()


# --------------------------------------------------------------------------- #
# ssim_y
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_y_identical_is_one(dtype: torch.dtype) -> None:
    images = torch.rand(3, 3, 32, 40, dtype=dtype)
    value = ssim_y(images, images.clone())
    assert value.shape == (3,)
    assert value.dtype == dtype
    torch.testing.assert_close(value, torch.ones(3, dtype=dtype), rtol=0, atol=1e-6)


@pytest.mark.parametrize("noise_std", [0.02, 0.1, 0.3])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_ssim_y_matches_skimage(astronaut: np.ndarray, noise_std: float, dtype: torch.dtype, tolerance: float) -> None:
    """Agreement with scikit-image on the valid (border-cropped) region.

    Observed differences: ~1e-15 in float64 and up to ~3e-6 in float32 (single
    precision accumulation in the convolutions). torchmetrics' own mean, taken
    over the whole reflect-padded map, differs from this reference by 2e-3 to
    1.5e-2 on these images, which is why ``ssim_y`` crops the border itself.
    """
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(3)
    noisy = np.clip(astronaut + noise_std * rng.standard_normal(astronaut.shape), 0, 1)
    expected = structural_similarity(
        _bt601_y(noisy),
        _bt601_y(astronaut),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1,
    )
    value = ssim_y(_to_bchw(noisy, dtype), _to_bchw(astronaut, dtype))
    assert value.shape == (1,)
    assert abs(value.item() - expected) < tolerance


def test_ssim_y_batch_equals_single_images(astronaut: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    target = _to_bchw(astronaut, torch.float64).repeat(3, 1, 1, 1)
    pred = (target + torch.tensor(rng.normal(0, 0.1, target.shape))).clamp(0, 1)
    batched = ssim_y(pred, target)
    single = torch.cat([ssim_y(pred[i : i + 1], target[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single)
    assert len(set(batched.tolist())) == 3


# --------------------------------------------------------------------------- #
# si_snr
# --------------------------------------------------------------------------- #
def _signal_plus_orthogonal_noise(snr_db: float, length: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    rng = np.random.default_rng(seed)
    s = rng.standard_normal(length)
    s -= s.mean()
    e = rng.standard_normal(length)
    e -= e.mean()
    e -= (e @ s) / (s @ s) * s  # orthogonal to s, still zero-mean
    e *= math.sqrt((s @ s) / (e @ e) / 10 ** (snr_db / 10))
    closed_form = 10 * math.log10((s @ s) / (e @ e))
    return torch.tensor(s + e), torch.tensor(s), closed_form


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 12.5, 30.0])
def test_si_snr_closed_form_and_scale_invariance(snr_db: float) -> None:
    pred, target, closed_form = _signal_plus_orthogonal_noise(snr_db)
    assert closed_form == pytest.approx(snr_db, abs=1e-9)
    value = si_snr(pred.unsqueeze(0), target.unsqueeze(0))
    assert value.shape == (1,)
    assert value.item() == pytest.approx(closed_form, abs=1e-6)
    scaled = si_snr(3.0 * pred.unsqueeze(0), target.unsqueeze(0))
    assert scaled.item() == pytest.approx(closed_form, abs=1e-6)


def test_si_snr_batched_and_channel_layout() -> None:
    items = [_signal_plus_orthogonal_noise(snr, seed=i) for i, snr in enumerate((3.0, 9.0, 20.0))]
    pred = torch.stack([p for p, _, _ in items])
    target = torch.stack([t for _, t, _ in items])
    expected = torch.tensor([c for _, _, c in items], dtype=torch.float64)
    torch.testing.assert_close(si_snr(pred, target), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(si_snr(pred.unsqueeze(1), target.unsqueeze(1)), expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- #
# Input validation
# --------------------------------------------------------------------------- #
IMAGE_FUNCS: list[Callable[..., torch.Tensor]] = [psnr_y, ssim_y]
WAVE_FUNCS: list[Callable[..., torch.Tensor]] = [si_snr, pesq_wb, stoi]


def _image(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("func", IMAGE_FUNCS + WAVE_FUNCS)
def test_shape_mismatch_names_both_arguments(func: Callable[..., torch.Tensor]) -> None:
    if func in IMAGE_FUNCS:
        pred, target = _image(1, 3, 16, 16), _image(1, 3, 16, 17)
    else:
        pred, target = _image(2, 800), _image(2, 801)
    with pytest.raises(ValueError) as info:
        func(pred, target)
    message = str(info.value)
    assert "pred" in message and "target" in message
    assert str(tuple(pred.shape)) in message and str(tuple(target.shape)) in message


@pytest.mark.parametrize("func", IMAGE_FUNCS + WAVE_FUNCS)
@pytest.mark.parametrize("bad_arg", ["pred", "target"])
@pytest.mark.parametrize("defect", ["integer", "nan", "inf", "not_tensor"])
def test_bad_input_raises_with_argument_name(func: Callable[..., torch.Tensor], bad_arg: str, defect: str) -> None:
    good = _image(1, 3, 16, 16) if func in IMAGE_FUNCS else _image(2, 800)
    bad: object = good.clone()
    if defect == "integer":
        bad = (good * 255).to(torch.uint8)
    elif defect == "nan":
        bad.view(-1)[3] = float("nan")
    elif defect == "inf":
        bad.view(-1)[3] = float("inf")
    elif defect == "not_tensor":
        bad = good.numpy()
    other_arg = "target" if bad_arg == "pred" else "pred"
    args = {bad_arg: bad, other_arg: good.clone()}
    with pytest.raises(ValueError, match=f"`{bad_arg}`") as info:
        func(args["pred"], args["target"])
    assert f"`{other_arg}`" not in str(info.value)


@pytest.mark.parametrize("func", IMAGE_FUNCS + WAVE_FUNCS)
def test_wrong_number_of_dimensions(func: Callable[..., torch.Tensor]) -> None:
    shapes = [(3, 16, 16), (1, 1, 3, 16, 16)] if func in IMAGE_FUNCS else [(800,), (1, 1, 1, 800)]
    for shape in shapes:
        x = _image(*shape)
        with pytest.raises(ValueError, match=r"`pred` must have .*" + re.escape(str(shape))):
            func(x, x.clone())


@pytest.mark.parametrize("func", IMAGE_FUNCS)
@pytest.mark.parametrize("bad_arg", ["pred", "target"])
def test_images_out_of_range(func: Callable[..., torch.Tensor], bad_arg: str) -> None:
    good = _image(1, 3, 16, 16)
    too_low, too_high = good.clone(), good.clone()
    too_low[0, 1, 2, 3] = -0.01
    too_high[0, 2, 3, 4] = 1.01
    for bad in (too_low, too_high):
        args = {"pred": good, "target": good, bad_arg: bad}
        with pytest.raises(ValueError, match=rf"`{bad_arg}` values must lie in \[0, 1\]"):
            func(args["pred"], args["target"])


@pytest.mark.parametrize("func", IMAGE_FUNCS)
@pytest.mark.parametrize("channels", [2, 4])
def test_images_wrong_channel_count(func: Callable[..., torch.Tensor], channels: int) -> None:
    x = _image(1, channels, 16, 16)
    with pytest.raises(ValueError, match="`pred` must have 1 .* or 3 .* channels"):
        func(x, x.clone())


def test_rgb_to_y_rejects_bad_images() -> None:
    for bad in (_image(1, 2, 4, 4), _image(3, 4, 4), _image(1, 3, 4, 4) + 1.5, torch.zeros(1, 3, 4, 4, dtype=torch.int64)):
        with pytest.raises(ValueError, match="images"):
            rgb_to_y(bad)


def test_other_validation_errors() -> None:
    with pytest.raises(ValueError, match="data_range"):
        psnr_y(_image(1, 3, 8, 8), _image(1, 3, 8, 8), data_range=0.0)
    with pytest.raises(ValueError, match="pred"):
        ssim_y(_image(1, 3, 10, 32), _image(1, 3, 10, 32))  # smaller than the 11x11 window
    with pytest.raises(ValueError, match="dtype"):
        psnr_y(_image(1, 3, 8, 8), _image(1, 3, 8, 8).double())
    with pytest.raises(ValueError, match="pred"):
        si_snr(_image(2, 2, 800), _image(2, 2, 800))  # stereo is not accepted
    with pytest.raises(ValueError, match="sample_rate"):
        pesq_wb(_image(1, 800), _image(1, 800), sample_rate=8000)
    with pytest.raises(ValueError, match="sample_rate"):
        stoi(_image(1, 800), _image(1, 800), sample_rate=0)


def test_inputs_are_not_modified() -> None:
    pred, target = _image(2, 3, 16, 16), _image(2, 3, 16, 16).flip(-1)
    pred_copy, target_copy = pred.clone(), target.clone()
    psnr_y(pred, target)
    ssim_y(pred, target)
    rgb_to_y(pred)
    assert torch.equal(pred, pred_copy) and torch.equal(target, target_copy)


# --------------------------------------------------------------------------- #
# Optional speech metrics
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("func", "module"), [(pesq_wb, "pesq"), (stoi, "pystoi")])
def test_missing_speech_package_hint(func: Callable[..., torch.Tensor], module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ImportError
    signal = _modulated_noise(0.5)
    with pytest.raises(ImportError, match=r"pip install restoregrad_adapter\[speech-metrics\]"):
        func(signal, signal.clone())


def test_stoi_identical_and_degraded() -> None:
    pytest.importorskip("pystoi", exc_type=ImportError)
    clean = _modulated_noise().repeat(2, 1)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=clean.dtype)
    value = stoi(clean.clone(), clean)
    assert value.shape == (2,)
    torch.testing.assert_close(value, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)
    assert (stoi(noisy, clean) < 0.99).all()


def test_pesq_identical_and_degraded() -> None:
    pytest.importorskip("pesq", exc_type=ImportError)
    clean = _modulated_noise().unsqueeze(1)  # (1, 1, L) layout
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=clean.dtype)
    value = pesq_wb(clean.clone(), clean)
    assert value.shape == (1,)
    assert value.item() > 4.0
    assert pesq_wb(noisy, clean).item() < value.item() - 1.0


# --------------------------------------------------------------------------- #
# Import weight and `evaluate` integration
# --------------------------------------------------------------------------- #
def test_module_import_is_light() -> None:
    code = (
        "import sys, restoregrad_adapter.contrib.metrics\n"
        "heavy = [m for m in ('torchmetrics', 'pesq', 'pystoi', 'evaluate') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


def test_evaluate_module_path() -> None:
    for name in metrics.EVALUATE_MODULES:
        folder = Path(evaluate_module_path(name))
        assert folder.is_dir() and (folder / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="name"):
        evaluate_module_path("fid")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Offline Hugging Face settings, a private cache, and sockets that refuse to connect."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return tmp_path


def test_evaluate_psnr_y_offline(offline: Path) -> None:
    evaluate = pytest.importorskip("evaluate", exc_type=ImportError)
    rng = np.random.default_rng(5)
    target = rng.uniform(0.2, 0.8, size=(2, 3, 16, 16))
    pred = target + np.array([0.1, 0.05]).reshape(2, 1, 1, 1) / Y_GAIN
    module = evaluate.load(evaluate_module_path("psnr_y"), cache_dir=str(offline / "evaluate"))
    result = module.compute(predictions=list(pred), references=[t.tolist() for t in target])
    expected = [20.0, 10 * math.log10(1 / 0.05**2)]
    assert result["psnr_y_per_image"] == pytest.approx(expected, abs=1e-4)
    assert result["psnr_y"] == pytest.approx(np.mean(expected), abs=1e-4)


def test_evaluate_si_snr_offline(offline: Path) -> None:
    evaluate = pytest.importorskip("evaluate", exc_type=ImportError)
    items = [_signal_plus_orthogonal_noise(snr, length=1000 + 100 * i, seed=i) for i, snr in enumerate((5.0, 15.0))]
    module = evaluate.load(evaluate_module_path("si_snr"), cache_dir=str(offline / "evaluate"))
    result = module.compute(predictions=[p.numpy() for p, _, _ in items], references=[t.tolist() for _, t, _ in items])
    assert result["si_snr_per_item"] == pytest.approx([5.0, 15.0], abs=1e-6)
    assert result["si_snr"] == pytest.approx(10.0, abs=1e-6)


# --------------------------------------------------------------------------- FID with a user backbone
class _MeanColourFeatures(torch.nn.Module):
    """A tiny stand-in backbone: per-image channel means and standard deviations (6 features)."""

    def forward(self, x):
        x = x.double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], dim=1)


def _frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The closed form, written independently with scipy."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_fid_with_a_user_backbone_matches_the_closed_form():
    from restoregrad_adapter.contrib.metrics import fid

    generator = torch.Generator().manual_seed(0)
    pred = torch.rand(40, 3, 16, 16, generator=generator) * 0.8
    target = torch.rand(30, 3, 16, 16, generator=generator)
    backbone = _MeanColourFeatures()
    expected = _frechet_distance(backbone(pred).numpy(), backbone(target).numpy())
    assert fid(pred, target, backbone, batch_size=7) == pytest.approx(expected, rel=1e-5, abs=1e-8)
    assert fid(target, target, backbone) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="feature_extractor"):
        fid(pred, target, "inception")
    with pytest.raises(ValueError, match="pred"):
        fid(pred[:1], target, backbone)
    with pytest.raises(ValueError, match="target"):
        fid(pred, target * 2, backbone)


# --------------------------------------------------------------------------- #
# LPIPS with a feature network the user supplies
# --------------------------------------------------------------------------- #
class _PixelsAndPooled(torch.nn.Module):
    """Two 'layers': the image itself and its 2 x 2 average pool (features whose LPIPS has a closed form)."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [images, torch.nn.functional.avg_pool2d(images, 2)]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-10)


def test_lpips_of_flat_images_is_the_weighted_distance_of_unit_colours() -> None:
    from restoregrad_adapter.contrib.metrics import lpips

    a_colour, b_colour = np.array([0.2, 0.5, 0.9]), np.array([0.7, 0.1, 0.4])
    pred = torch.tensor(a_colour, dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 8, 8).contiguous()
    target = torch.tensor(b_colour, dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 8, 8).contiguous()
    w0, w1 = np.array([1.0, 2.0, 0.5]), np.array([0.25, 0.0, 3.0])
    weights = [torch.tensor(w0), torch.tensor(w1)]
    per_layer = float(np.sum(w0 * (_unit(a_colour) - _unit(b_colour)) ** 2))
    per_layer_1 = float(np.sum(w1 * (_unit(a_colour) - _unit(b_colour)) ** 2))
    value = lpips(pred, target, _PixelsAndPooled(), weights, scale_inputs=False)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(per_layer + per_layer_1, rel=1e-12)

    # LPIPS's own input scaling: the network sees (2 x - 1 - shift) / scale
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])
    a_scaled, b_scaled = (2 * a_colour - 1 - shift) / scale, (2 * b_colour - 1 - shift) / scale
    expected = sum(float(np.sum(w * (_unit(a_scaled) - _unit(b_scaled)) ** 2)) for w in (w0, w1))
    assert lpips(pred, target, _PixelsAndPooled(), weights).item() == pytest.approx(expected, rel=1e-12)


def test_lpips_averages_over_positions_and_is_zero_for_identical_images() -> None:
    from restoregrad_adapter.contrib.metrics import lpips

    # Left half red in pred, green in target; right halves equal: only the left half differs. One layer.
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 3, 4, 4)
    pred[:, 0, :, :2] = 1.0
    target[:, 1, :, :2] = 1.0
    pred[:, 2, :, 2:] = target[:, 2, :, 2:] = 0.5
    pred[1] = target[1]  # the second pair is identical
    weight = [torch.tensor([1.0, 1.0, 1.0])]
    value = lpips(pred, target, _PixelsAndPooled().eval(), weight + [torch.zeros(3)], scale_inputs=False)
    # left half: |e_r - e_g|^2 = 2 over half of the positions
    assert value.tolist() == pytest.approx([1.0, 0.0], abs=1e-6)
    assert lpips(target, pred, _PixelsAndPooled(), weight + [torch.zeros(3)], scale_inputs=False).tolist() == \
        pytest.approx(value.tolist(), abs=1e-7)


def test_lpips_linear_weights_read_the_published_file_layout() -> None:
    from restoregrad_adapter.contrib.metrics import lpips_linear_weights

    state = {"lin0.model.1.weight": torch.arange(3.0).view(1, 3, 1, 1),
             "lin1.model.1.weight": torch.ones(1, 5, 1, 1)}
    weights = lpips_linear_weights(state)
    assert [w.tolist() for w in weights] == [[0.0, 1.0, 2.0], [1.0] * 5]
    with pytest.raises(ValueError, match="lin0.model.1.weight"):
        lpips_linear_weights({"weight": torch.ones(3)})
    with pytest.raises(ValueError, match="1 x C x 1 x 1"):
        lpips_linear_weights({"lin0.model.1.weight": torch.ones(3)})
    with pytest.raises(ValueError, match="state_dict"):
        lpips_linear_weights([torch.ones(1, 3, 1, 1)])


def test_lpips_bad_inputs_name_the_argument() -> None:
    from restoregrad_adapter.contrib.metrics import lpips

    images = torch.rand(1, 3, 8, 8)
    net, weights = _PixelsAndPooled(), [torch.ones(3), torch.ones(3)]
    cases = [
        (lambda: lpips(images, images, "alex", weights), "feature_network"),
        (lambda: lpips(images, images * 2, net, weights), "target"),
        (lambda: lpips(images[:, :1], images[:, :1], net, weights), "RGB"),
        (lambda: lpips(images, images, net, torch.ones(3)), "linear_weights"),
        (lambda: lpips(images, images, net, [torch.ones(3)]), "list of 1 feature maps"),
        (lambda: lpips(images, images, net, [torch.ones(3), -torch.ones(3)]), r"linear_weights\[1\]"),
        (lambda: lpips(images, images, net, [torch.ones(3), torch.ones(4)]), r"feature map 1 must have shape"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_speech_scores_are_the_three_metrics_of_one_waveform():
    g = torch.Generator().manual_seed(0)
    n = torch.arange(16000, dtype=torch.float32)
    clean = 0.3 * torch.sin(2 * math.pi * 200 * n / 16000) * (torch.sin(2 * math.pi * 2 * n / 16000) > 0)
    noisy = clean + 0.05 * torch.randn(16000, generator=g)
    scores = metrics.speech_scores(noisy, clean)
    assert scores == {"si_snr": metrics.si_snr(noisy[None], clean[None]).item(),
                      "pesq": metrics.pesq_wb(noisy[None], clean[None]).item(),
                      "stoi": metrics.stoi(noisy[None], clean[None]).item()}
    assert metrics.speech_scores(noisy[None, None], clean[None]) == scores  # (1, 1, L) and (1, L) alike
    at_8k = metrics.speech_scores(noisy[::2], clean[::2], sample_rate=8000)  # no wideband PESQ at 8 kHz
    assert set(at_8k) == {"si_snr", "stoi"}
    with pytest.raises(ValueError, match="one waveform"):
        metrics.speech_scores(noisy.reshape(2, 8000), clean.reshape(2, 8000))
