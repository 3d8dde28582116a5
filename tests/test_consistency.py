"""Super-resolution data consistency against Pillow's resize and the projection's closed-form properties."""

import numpy as np
import pytest
import torch

from restoregrad_adapter.consistency import (
    bicubic_downsample_tensor,
    bicubic_matrix,
    bicubic_upsample_tensor,
    low_resolution_from_condition,
    project_to_low_resolution,
)
from restoregrad_adapter.contrib.data.blur_sr import bicubic_downsample, bicubic_resize


def smooth_image(height, width, seed=0):
    """An HxWx3 image in [0.3, 0.7]: a cubic filter's overshoot stays inside [0, 1], so nothing is clipped."""
    rng = np.random.default_rng(seed)
    return (0.3 + 0.4 * rng.random((height, width, 3))).astype(np.float32)


def to_tensor(image):
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]


def test_matrix_rows_sum_to_one_and_shape():
    for n_in, n_out in ((48, 12), (12, 48), (30, 15), (7, 7)):
        matrix = bicubic_matrix(n_in, n_out)
        assert matrix.shape == (n_out, n_in)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)


def test_matrices_reproduce_pillow_down_and_up_sampling():
    image = smooth_image(40, 24)
    for scale in (2, 4):
        low = bicubic_downsample(image, scale)
        ours = bicubic_downsample_tensor(to_tensor(image), scale)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours, low, atol=2e-6)
        up = bicubic_resize(low, (40, 24))
        ours_up = bicubic_upsample_tensor(to_tensor(low), scale)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(ours_up, up, atol=2e-6)


def test_low_resolution_recovered_from_its_enlargement():
    low = to_tensor(smooth_image(10, 6, seed=1)).double()
    y = bicubic_upsample_tensor(low, 4)
    torch.testing.assert_close(low_resolution_from_condition(y, 4), low, atol=1e-9, rtol=0)


def test_projection_is_consistent_idempotent_and_orthogonal():
    torch.manual_seed(0)
    clean = to_tensor(smooth_image(32, 16, seed=2)).double().repeat(2, 1, 1, 1)
    low = bicubic_downsample_tensor(clean, 4)
    estimate = clean + 0.1 * torch.randn_like(clean)
    projected = project_to_low_resolution(estimate, low)
    # consistent with the input ...
    torch.testing.assert_close(bicubic_downsample_tensor(projected, 4), low, atol=1e-10, rtol=0)
    # ... a projection (idempotent) ...
    torch.testing.assert_close(project_to_low_resolution(projected, low), projected, atol=1e-10, rtol=0)
    # ... and orthogonal: Pythagoras between the estimate, its projection and the consistent clean image.
    before = (estimate - clean).pow(2).sum()
    after = (projected - clean).pow(2).sum()
    moved = (estimate - projected).pow(2).sum()
    torch.testing.assert_close(before, after + moved, rtol=1e-10, atol=0)
    assert after < before


def test_projection_keeps_what_downsampling_cannot_see():
    # An image already consistent with `low` comes back unchanged; detail in the null space of D (what a
    # model adds that the low-resolution image cannot show) survives the projection.
    clean = to_tensor(smooth_image(16, 16, seed=3)).double()
    low = bicubic_downsample_tensor(clean, 2)
    torch.testing.assert_close(project_to_low_resolution(clean, low), clean, atol=1e-10, rtol=0)
    detail = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bicubic_downsample_tensor(detail, 2).abs().max() > 1e-2
    null_detail = project_to_low_resolution(detail, torch.zeros_like(low))  # detail - D^+ D detail
    torch.testing.assert_close(bicubic_downsample_tensor(null_detail, 2), torch.zeros_like(low), atol=1e-10, rtol=0)
    assert null_detail.abs().max() > 0.5
    torch.testing.assert_close(project_to_low_resolution(clean + null_detail, low), clean + null_detail,
                               atol=1e-10, rtol=0)


def test_projection_never_lowers_psnr_on_a_photo():
    from restoregrad_adapter.contrib.metrics import psnr_y

    clean = to_tensor(smooth_image(48, 32, seed=4))
    low = bicubic_downsample_tensor(clean, 4)
    blurry = bicubic_upsample_tensor(low, 4)  # the bicubic baseline is not consistent with `low`
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))
    for estimate in (blurry, noisy):
        projected = project_to_low_resolution(estimate, low)
        assert psnr_y(projected.clamp(0, 1), clean) >= psnr_y(estimate.clamp(0, 1), clean)


@pytest.mark.parametrize("call,match", [
    (lambda: bicubic_matrix(0, 4), "length_in"),
    (lambda: bicubic_matrix(4, 2.0), "length_out"),
    (lambda: bicubic_downsample_tensor(torch.zeros(1, 3, 10, 8), 4), "multiples of scale 4"),
    (lambda: bicubic_downsample_tensor(torch.zeros(3, 8, 8), 2), "images"),
    (lambda: bicubic_upsample_tensor(torch.zeros(1, 3, 4, 4), 0), "scale"),
    (lambda: low_resolution_from_condition(torch.zeros(1, 3, 8, 6), 4), "multiples of scale 4"),
    (lambda: project_to_low_resolution(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 3, 3)), "integer factor"),
    (lambda: project_to_low_resolution(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 4, 2)), "integer factor"),
    (lambda: project_to_low_resolution(torch.zeros(1, 3, 8, 8), torch.zeros(2, 3, 4, 4)), "batch and channel"),
    (lambda: project_to_low_resolution(torch.zeros(1, 3, 8, 8), torch.full((1, 3, 4, 4), float("nan"))), "low"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
