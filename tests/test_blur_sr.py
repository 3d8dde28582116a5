"""Tests of the blur and super-resolution data (restoregrad_adapter.contrib.data.blur_sr) and of the RealBlur and
DIV2K file layouts (restoregrad_adapter.contrib.data.readers), against closed forms."""

import numpy as np
import pytest
from PIL import Image

from restoregrad_adapter.contrib.data import blur_sr, weather
from restoregrad_adapter.contrib.data.readers import (
    div2k_pair_files,
    image_pair_files,
    pairs_from_realblur_list,
    read_image_pair,
    read_sr_pair,
)


pytestmark = pytest.mark.usefixtures("no_network")  # every helper must work offline (conftest)


def test_the_network_is_refused_in_this_module():
    import socket

    with pytest.raises(OSError, match="network access attempted"):
        socket.create_connection(("localhost", 9))


@pytest.fixture(scope="module")
def small_photo():
    return weather._downscale(weather.builtin_photos()["astronaut"], 64)


# ---------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1.0, 3.0, 5.0, 9.0])
def test_horizontal_and_vertical_motion_kernels_are_boxes(length):
    kernel = blur_sr.motion_blur_kernel(length, 0.0)
    half = int(length) // 2
    expected = np.zeros((2 * half + 1, 2 * half + 1))
    expected[half, :] = 1.0 / length  # a row of `length` pixels, each holding 1/length of the segment
    np.testing.assert_allclose(kernel, expected, atol=1e-12)
    np.testing.assert_allclose(blur_sr.motion_blur_kernel(length, 90.0), expected.T, atol=1e-12)


@pytest.mark.parametrize("length, angle", [(2.5, 17.0), (7.3, 45.0), (12.0, 133.0), (0.7, 60.0)])
def test_motion_kernels_sum_to_one_symmetric_and_long_enough(length, angle):
    kernel = blur_sr.motion_blur_kernel(length, angle)
    assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert kernel.min() >= 0 and kernel.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-12)  # a segment through the centre
    # the kernel's second moment along the segment is that of a uniform segment: length^2 / 12
    theta = np.deg2rad(angle)
    half = kernel.shape[0] // 2
    rows, cols = np.mgrid[-half:half + 1, -half:half + 1]
    along = cols * np.cos(theta) - rows * np.sin(theta)
    assert (kernel * along ** 2).sum() == pytest.approx(length ** 2 / 12, abs=0.35)
    assert np.allclose(blur_sr.motion_blur_kernel(length, angle + 180.0), kernel)


def test_short_motion_segment_is_a_delta():
    np.testing.assert_array_equal(blur_sr.motion_blur_kernel(0.9, 30.0), [[1.0]])


@pytest.mark.parametrize("radius", [0.4, 1.0, 1.5, 2.5, 4.0])
def test_disk_kernel_support_interior_and_area(radius):
    kernel = blur_sr.disk_kernel(radius)
    half = kernel.shape[0] // 2
    assert kernel.shape == (2 * half + 1, 2 * half + 1) and half == int(np.ceil(radius - 0.5))
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    rows, cols = np.mgrid[-half:half + 1, -half:half + 1]
    # the distance from the disk's centre to the nearest and to the farthest point of each pixel's square
    nearest = np.hypot(np.maximum(np.abs(rows) - 0.5, 0), np.maximum(np.abs(cols) - 0.5, 0))
    farthest = np.hypot(np.abs(rows) + 0.5, np.abs(cols) + 0.5)
    assert np.all(kernel[nearest >= radius] == 0)  # wholly outside: nothing
    inside = farthest <= radius
    if inside.any():  # wholly inside: all equal, the largest value
        assert np.allclose(kernel[inside], kernel.max())
        # before normalising, a wholly covered pixel holds 1: the total is the disk's area, pi r^2
        assert 1.0 / kernel.max() == pytest.approx(np.pi * radius ** 2, rel=0.03)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)
    np.testing.assert_allclose(kernel, kernel[::-1], atol=1e-12)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.3])
def test_gaussian_kernel_closed_form(sigma):
    kernel = blur_sr.gaussian_kernel(sigma)
    half = int(np.ceil(3 * sigma))
    assert kernel.shape == (2 * half + 1, 2 * half + 1)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    assert kernel[half, half + 1] / kernel[half, half] == pytest.approx(np.exp(-0.5 / sigma ** 2))
    assert kernel[half + 1, half + 1] / kernel[half, half] == pytest.approx(np.exp(-1.0 / sigma ** 2))
    assert np.linalg.matrix_rank(kernel) == 1  # separable: the outer product of two profiles


# ---------------------------------------------------------------------------
# blurring
# ---------------------------------------------------------------------------


def test_delta_kernel_leaves_the_image_unchanged(small_photo):
    out = blur_sr.blur(small_photo, np.ones((1, 1)))
    np.testing.assert_array_equal(out, small_photo)
    padded_delta = np.zeros((5, 5))
    padded_delta[2, 2] = 1.0
    np.testing.assert_allclose(blur_sr.blur(small_photo, padded_delta), small_photo, atol=1e-7)


def test_blur_keeps_flat_images_and_shifts_a_point_as_the_kernel_says():
    flat = np.full((20, 24, 3), 0.37, np.float32)
    for kernel in (blur_sr.motion_blur_kernel(7, 33), blur_sr.disk_kernel(2.2), blur_sr.gaussian_kernel(1.4)):
        np.testing.assert_allclose(blur_sr.blur(flat, kernel), flat, atol=1e-6)
    point = np.zeros((21, 21, 3), np.float32)
    point[10, 10] = 1.0
    kernel = blur_sr.motion_blur_kernel(5.0, 30.0)
    half = kernel.shape[0] // 2
    spread = blur_sr.blur(point, kernel)[10 - half:10 + half + 1, 10 - half:10 + half + 1, 0]
    np.testing.assert_allclose(spread, kernel[::-1, ::-1], atol=1e-7)  # convolution: the flipped kernel


@pytest.mark.parametrize("func", [blur_sr.add_motion_blur, blur_sr.add_defocus_blur, blur_sr.add_gaussian_blur])
def test_random_blurs_are_seeded_in_range_and_leave_the_input(func, small_photo):
    before = small_photo.copy()
    a = func(small_photo, np.random.default_rng(3))
    b = func(small_photo, np.random.default_rng(3))
    c = func(small_photo, np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(small_photo, before)
    assert a.shape == small_photo.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    # a blur removes detail: the image's gradients lose energy
    assert np.abs(np.diff(a, axis=1)).mean() < 0.9 * np.abs(np.diff(small_photo, axis=1)).mean()


def test_random_blurs_with_given_parameters_match_their_kernels(small_photo):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(blur_sr.add_motion_blur(small_photo, rng, length=6, angle=20),
                                  blur_sr.blur(small_photo, blur_sr.motion_blur_kernel(6, 20)))
    np.testing.assert_array_equal(blur_sr.add_defocus_blur(small_photo, rng, radius=2),
                                  blur_sr.blur(small_photo, blur_sr.disk_kernel(2)))
    np.testing.assert_array_equal(blur_sr.add_gaussian_blur(small_photo, rng, sigma=1.5),
                                  blur_sr.blur(small_photo, blur_sr.gaussian_kernel(1.5)))


# ---------------------------------------------------------------------------
# bicubic resizing and super-resolution
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_down_and_up_of_a_constant_image_is_constant(scale):
    flat = np.full((16, 24, 3), 0.61, np.float32)
    low = blur_sr.bicubic_downsample(flat, scale)
    assert low.shape == (16 // scale, 24 // scale, 3)
    np.testing.assert_allclose(low, 0.61, atol=1e-6)
    np.testing.assert_allclose(blur_sr.bicubic_sr_input(flat, scale), 0.61, atol=1e-6)


def test_bicubic_resize_matches_the_cubic_kernel_and_keeps_linear_ramps():
    # Enlarging by 2 puts output pixel j's centre at input coordinate j / 2 - 0.25: output 5 at 2.25, a
    # quarter of a pixel past input 2. Keys' cubic (a = -0.5) at the distances 1.25, 0.25, 0.75, 1.75 to
    # inputs 1, 2, 3, 4 gives the weights (-0.0703125, 0.8671875, 0.2265625, -0.0234375).
    row = np.array([0.1, 0.9, 0.3, 0.6, 0.2, 0.8, 0.4, 0.5], np.float32)
    image = np.repeat(np.repeat(row[None, :, None], 4, axis=0), 3, axis=2)
    big = blur_sr.bicubic_resize(image, (4, 16))
    weights = np.array([-0.0703125, 0.8671875, 0.2265625, -0.0234375])
    for out_col, first in ((5, 1), (9, 3)):  # output 9 sits at 4.25: inputs 3 to 6
        expected = float(np.dot(weights, row[first:first + 4]))
        assert big[0, out_col, 0] == pytest.approx(expected, abs=1e-6)
    ramp = np.repeat(np.repeat(np.linspace(0.2, 0.8, 12, dtype=np.float32)[None, :, None], 6, 0), 3, 2)
    small = blur_sr.bicubic_resize(ramp, (6, 6))
    # Shrinking by 2 widens the cubic to 4 input pixels either side; away from the borders (outputs 2 and 3)
    # a symmetric kernel that sums to 1 keeps a linear ramp: the value midway between inputs 2j and 2j + 1.
    np.testing.assert_allclose(small[0, 2:4, 0], np.linspace(0.2, 0.8, 12)[4:8].reshape(2, 2).mean(1), atol=1e-6)


def test_sr_input_has_the_clean_size_and_crop_to_multiple(small_photo):
    odd = small_photo[:37, :50]
    with pytest.raises(ValueError, match="multiples of scale 4"):
        blur_sr.bicubic_sr_input(odd, 4)
    cropped = blur_sr.crop_to_multiple(odd, 4)
    assert cropped.shape == (36, 48, 3)
    np.testing.assert_array_equal(cropped, odd[:36, :48])
    y = blur_sr.bicubic_sr_input(cropped, 4)
    assert y.shape == cropped.shape and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    assert not np.array_equal(y, cropped)


# ---------------------------------------------------------------------------
# built-in pairs and bad arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", blur_sr.KINDS)
def test_builtin_blur_sr_pairs_split_seed_and_sizes(kind):
    train = blur_sr.builtin_blur_sr_pairs(kind, "train", seed=1, size=48)
    validation = blur_sr.builtin_blur_sr_pairs(kind, "validation", seed=1, size=48)
    assert {name for *_, name in train} == set(weather.TRAIN_PHOTOS)
    assert {name for *_, name in validation} == set(weather.VALIDATION_PHOTOS)
    assert len(train) == len(weather.TRAIN_PHOTOS) * (4 if kind in blur_sr.BLUR_KINDS else 1)
    again = blur_sr.builtin_blur_sr_pairs(kind, "train", seed=1, size=48)
    for (c1, d1, k1, n1), (c2, d2, k2, n2) in zip(train, again):
        assert k1 == k2 == kind and n1 == n2
        np.testing.assert_array_equal(d1, d2)
        assert c1.shape == d1.shape and max(c1.shape[:2]) <= 48
        if kind in blur_sr.SR_SCALES:
            scale = blur_sr.SR_SCALES[kind]
            assert c1.shape[0] % scale == 0 and c1.shape[1] % scale == 0
            np.testing.assert_array_equal(d1, blur_sr.bicubic_sr_input(c1, scale))
    if kind in blur_sr.BLUR_KINDS:
        other_seed = blur_sr.builtin_blur_sr_pairs(kind, "train", seed=2, size=48)
        assert not np.array_equal(train[0][1], other_seed[0][1])


def test_bad_arguments_name_the_argument(small_photo):
    rng = np.random.default_rng(0)
    cases = [
        (lambda: blur_sr.motion_blur_kernel(0, 10), "length"),
        (lambda: blur_sr.motion_blur_kernel(5, float("nan")), "angle"),
        (lambda: blur_sr.disk_kernel(-1), "radius"),
        (lambda: blur_sr.gaussian_kernel(0), "sigma"),
        (lambda: blur_sr.blur(small_photo, np.ones((2, 2)) / 4), "odd sides"),
        (lambda: blur_sr.blur(small_photo, np.ones((3, 3))), "sum to 1"),
        (lambda: blur_sr.blur(small_photo[..., 0], np.ones((1, 1))), "HxWx3"),
        (lambda: blur_sr.blur(small_photo * 2, np.ones((1, 1))), r"\[0, 1\]"),
        (lambda: blur_sr.add_motion_blur(small_photo, 0), "rng"),
        (lambda: blur_sr.add_motion_blur(small_photo, rng, length="long"), "length"),
        (lambda: blur_sr.add_defocus_blur(small_photo, rng, radius=100), "radius"),
        (lambda: blur_sr.bicubic_resize(small_photo, (0, 4)), "size"),
        (lambda: blur_sr.bicubic_downsample(small_photo, 1), "scale"),
        (lambda: blur_sr.degrade(small_photo, "haze", rng), "kind"),
        (lambda: blur_sr.builtin_blur_sr_pairs("haze"), "kind"),
        (lambda: blur_sr.builtin_blur_sr_pairs("sr4", split="test"), "split"),
        (lambda: blur_sr.builtin_blur_sr_pairs("sr4", seed=-1), "seed"),
        (lambda: blur_sr.builtin_blur_sr_pairs("sr4", size=8), "size"),
        (lambda: blur_sr.builtin_blur_sr_pairs("sr4", variants=2), "variants"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


# ---------------------------------------------------------------------------
# RealBlur and DIV2K layouts
# ---------------------------------------------------------------------------


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_realblur_list_pairs_ground_truth_with_blurred(tmp_path):
    root = tmp_path / "RealBlur"
    rng = np.random.default_rng(0)
    scene = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene001"
    for i in (1, 2):
        _png(root / scene / "gt" / f"gt_{i}.png", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
        _png(root / scene / "blur" / f"blur_{i}.png", rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    listing = root / "RealBlur_J_train_list.txt"
    listing.write_text("".join(f"{scene}/gt/gt_{i}.png {scene}/blur/blur_{i}.png\n" for i in (1, 2)) + "\n")
    expected = [(str(root / scene / "gt" / f"gt_{i}.png"), str(root / scene / "blur" / f"blur_{i}.png"))
                for i in (1, 2)]
    assert pairs_from_realblur_list(listing) == expected
    assert image_pair_files(listing) == expected  # told apart from a WeatherDiff list by its two paths a line
    x0, y = read_image_pair(*expected[0])
    np.testing.assert_array_equal(x0, np.asarray(Image.open(expected[0][0]), np.float32) / 255)

    bad = root / "bad_list.txt"
    bad.write_text(f"{scene}/gt/gt_1.png {scene}/blur/blur_1.png\n{scene}/gt/gt_2.png\n")
    with pytest.raises(ValueError, match=r"bad_list.txt line 2: expected a ground-truth path and a blurred path"):
        image_pair_files(bad)
    missing = root / "missing_list.txt"
    missing.write_text(f"{scene}/gt/gt_9.png {scene}/blur/blur_9.png\n")
    with pytest.raises(ValueError, match="gt_9.png"):
        image_pair_files(missing)


def test_div2k_name_mapping_and_sr_pairs(tmp_path):
    rng = np.random.default_rng(0)
    for split, numbers in (("train", ("0001", "0002")), ("valid", ("0801",))):
        for number in numbers:
            high = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
            _png(tmp_path / f"DIV2K_{split}_HR" / f"{number}.png", high)
            for scale in (2, 4):
                low = (blur_sr.bicubic_downsample(high.astype(np.float32) / 255, scale) * 255).round()
                _png(tmp_path / f"DIV2K_{split}_LR_bicubic" / f"X{scale}" / f"{number}x{scale}.png",
                     low.astype(np.uint8))
    pairs = div2k_pair_files(tmp_path, "train", 4)
    assert pairs == [(str(tmp_path / "DIV2K_train_HR" / f"{n}.png"),
                      str(tmp_path / "DIV2K_train_LR_bicubic" / "X4" / f"{n}x4.png")) for n in ("0001", "0002")]
    assert div2k_pair_files(tmp_path, "valid", 2) == [(str(tmp_path / "DIV2K_valid_HR" / "0801.png"),
                                                       str(tmp_path / "DIV2K_valid_LR_bicubic" / "X2" / "0801x2.png"))]
    x0, y = read_sr_pair(*pairs[0], 4)
    assert x0.shape == y.shape == (16, 24, 3)
    low = np.asarray(Image.open(pairs[0][1]), np.float32) / 255
    np.testing.assert_array_equal(y, blur_sr.bicubic_resize(low, (16, 24)))

    with pytest.raises(ValueError, match="DIV2K_train_LR_bicubic/X3 is not a folder"):
        div2k_pair_files(tmp_path, "train", 3)
    with pytest.raises(ValueError, match="scale"):
        div2k_pair_files(tmp_path, "train", 8)
    with pytest.raises(ValueError, match="split"):
        div2k_pair_files(tmp_path, "test", 4)
    with pytest.raises(ValueError, match="track"):
        div2k_pair_files(tmp_path, "train", 4, track="mild")
    with pytest.raises(ValueError, match="is a DIV2K folder"):
        image_pair_files(tmp_path)
    with pytest.raises(ValueError, match="0001x2.png is 12 x 8"):
        read_sr_pair(pairs[0][0], tmp_path / "DIV2K_train_LR_bicubic" / "X2" / "0001x2.png", 4)
    (tmp_path / "DIV2K_train_LR_bicubic" / "X4" / "0002x4.png").unlink()
    with pytest.raises(ValueError, match=r"no low-resolution image .*0002x4.png"):
        div2k_pair_files(tmp_path, "train", 4)
