"""Tests of restoregrad_adapter.contrib.data (built-in data, paired-file layouts, crops) and restoregrad_adapter.io."""

import json
import math

import numpy as np
import pytest

from restoregrad_adapter.contrib.data import speech, weather


pytestmark = pytest.mark.usefixtures("no_network")  # every helper must work offline (conftest)


def test_the_network_is_refused_in_this_module():
    import socket

    with pytest.raises(OSError, match="network access attempted"):
        socket.create_connection(("localhost", 9))


@pytest.fixture(scope="module")
def small_photo():
    photo = weather.builtin_photos()["astronaut"]
    return weather._downscale(photo, 96)


def _snr_db(noisy, clean):
    clean = np.asarray(clean, np.float64)
    residual = np.asarray(noisy, np.float64) - clean
    return 10.0 * math.log10(np.sum(clean ** 2) / np.sum(residual ** 2))


# ---------------------------------------------------------------------------
# weather
# ---------------------------------------------------------------------------


def test_builtin_photos_offline_and_well_formed():
    photos = weather.builtin_photos()
    assert len(photos) >= 10
    for name in ("astronaut", "camera", "chelsea", "coffee", "rocket"):
        assert name in photos
    for name, img in photos.items():
        assert img.ndim == 3 and img.shape[2] == 3, name
        assert img.dtype == np.float32, name
        assert 0.0 <= img.min() and img.max() <= 1.0, name
        assert img.std() > 0.02, name  # a real picture, not a blank
    camera = photos["camera"]  # grayscale photo -> three equal channels
    assert np.array_equal(camera[..., 0], camera[..., 1])
    assert np.array_equal(camera[..., 0], camera[..., 2])
    # returned arrays are copies
    photos["camera"][:] = 0
    assert weather.builtin_photos()["camera"].max() > 0


@pytest.mark.parametrize("kind", weather.KINDS)
def test_degrade_range_dtype_shape_and_determinism(kind, small_photo):
    before = small_photo.copy()
    out1 = weather.degrade(small_photo, kind, np.random.default_rng(7))
    out2 = weather.degrade(small_photo, kind, np.random.default_rng(7))
    out3 = weather.degrade(small_photo, kind, np.random.default_rng(8))
    assert np.array_equal(small_photo, before)  # input untouched
    assert out1.shape == small_photo.shape
    assert out1.dtype == np.float32
    assert 0.0 <= out1.min() and out1.max() <= 1.0
    assert np.array_equal(out1, out2)
    assert not np.array_equal(out1, out3)
    diff = float(np.abs(out1 - small_photo).mean())
    assert 0.003 < diff < 0.25, diff


@pytest.mark.parametrize(
    "func", [weather.add_rain_streaks, weather.add_snow, weather.add_raindrops]
)
def test_degradations_change_a_flat_image(func):
    grey = np.full((64, 80, 3), 0.4, np.float32)
    out = func(grey, np.random.default_rng(0))
    assert out.shape == grey.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert 0.002 < float(np.abs(out - grey).mean()) < 0.3


def test_weather_look_rain_and_snow_brighten_raindrops_local(small_photo):
    rng = np.random.default_rng(3)
    rain = weather.add_rain_streaks(small_photo, rng, haze=0.0)
    snow = weather.add_snow(small_photo, rng, haze=0.0)
    # streaks are screen blended, flakes blended toward white: never darker
    assert np.all(rain >= small_photo - 1e-6)
    assert snow.mean() > small_photo.mean() + 0.01
    assert np.mean(snow >= small_photo - 1e-6) > 0.95
    drops = weather.add_raindrops(small_photo, rng, num_drops=1, drop_size=0.1)
    changed = np.abs(drops - small_photo).max(axis=2) > 1e-4
    assert 0.0 < changed.mean() < 0.2  # a single drop only touches its area


def test_weather_bad_arguments(small_photo):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        weather.degrade(small_photo, "fog", rng)
    with pytest.raises(ValueError, match="image"):
        weather.add_snow(small_photo[..., 0], rng)
    with pytest.raises(ValueError, match="image"):
        weather.add_rain_streaks(small_photo * 2.0, rng)
    with pytest.raises(ValueError, match="image"):
        weather.add_raindrops((small_photo * 255).astype(np.uint8), rng)
    with pytest.raises(ValueError, match="rng"):
        weather.add_rain_streaks(small_photo, 0)
    with pytest.raises(ValueError, match="angle"):
        weather.add_rain_streaks(small_photo, rng, angle=80.0)
    with pytest.raises(ValueError, match="amount"):
        weather.add_snow(small_photo, rng, amount=-1.0)
    with pytest.raises(ValueError, match="num_drops"):
        weather.add_raindrops(small_photo, rng, num_drops=0)


def test_weather_pairs_splits_are_disjoint_and_deterministic():
    train = weather.builtin_weather_pairs("train", kinds=("rain",), seed=0, size=48)
    again = weather.builtin_weather_pairs("train", kinds=("rain",), seed=0, size=48)
    other = weather.builtin_weather_pairs("train", kinds=("rain",), seed=1, size=48)
    val = weather.builtin_weather_pairs("validation", seed=0, size=48)

    train_names = {name for _, _, _, name in train}
    val_names = {name for _, _, _, name in val}
    assert len(val_names) >= 2
    assert len(train_names) >= 5
    assert train_names.isdisjoint(val_names)
    assert set(weather.TRAIN_PHOTOS).isdisjoint(weather.VALIDATION_PHOTOS)

    # several degraded versions of each training photo, one per validation photo
    assert len(train) == 4 * len(train_names)
    assert len(val) == len(weather.KINDS) * len(val_names)
    assert {kind for _, _, kind, _ in val} == set(weather.KINDS)

    assert len(train) == len(again) == len(other)
    for (c1, d1, k1, n1), (c2, d2, k2, n2) in zip(train, again):
        assert (k1, n1) == (k2, n2)
        assert np.array_equal(d1, d2) and np.array_equal(c1, c2)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(train, other))  # the degraded images

    for clean, degraded, kind, name in train + val:  # (x0, y) order
        assert kind in weather.KINDS
        assert degraded.shape == clean.shape and max(clean.shape[:2]) == 48
        assert degraded.dtype == clean.dtype == np.float32
        assert 0.0 <= degraded.min() and degraded.max() <= 1.0
        assert not np.array_equal(degraded, clean)


def test_weather_pairs_full_resolution_and_variants():
    pairs = weather.builtin_weather_pairs(
        "validation", kinds=("snow",), size=None, variants=2)
    photos = weather.builtin_photos()
    assert len(pairs) == 2 * len(weather.VALIDATION_PHOTOS)
    for clean, degraded, kind, name in pairs:
        assert kind == "snow"
        assert clean.shape == photos[name].shape


def test_weather_pairs_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        weather.builtin_weather_pairs("test")
    with pytest.raises(ValueError, match="kinds"):
        weather.builtin_weather_pairs(kinds=("hail",))
    with pytest.raises(ValueError, match="kinds"):
        weather.builtin_weather_pairs(kinds=())
    with pytest.raises(ValueError, match="seed"):
        weather.builtin_weather_pairs(seed=-1)
    with pytest.raises(ValueError, match="size"):
        weather.builtin_weather_pairs(size=4)
    with pytest.raises(ValueError, match="variants"):
        weather.builtin_weather_pairs(variants=0)


# ---------------------------------------------------------------------------
# speech
# ---------------------------------------------------------------------------


def _f0_estimates(x, sr):
    """Autocorrelation pitch of the loud 40 ms frames."""
    frame = int(0.04 * sr)
    f0 = []
    for start in range(0, x.size - frame, frame // 2):
        fr = x[start:start + frame].astype(np.float64)
        if np.sqrt(np.mean(fr ** 2)) < 0.05:
            continue
        ac = np.correlate(fr, fr, "full")[frame - 1:]
        lo, hi = sr // 300, sr // 70
        f0.append(sr / (lo + np.argmax(ac[lo:hi])))
    return np.asarray(f0)


def test_synth_speech_properties():
    sr = 16000
    x = speech.synth_speech(3 * sr, sr, np.random.default_rng(0))
    y = speech.synth_speech(3 * sr, sr, np.random.default_rng(0))
    z = speech.synth_speech(3 * sr, sr, np.random.default_rng(1))
    assert x.shape == (3 * sr,) and x.dtype == np.float32
    assert np.array_equal(x, y)
    assert not np.array_equal(x, z)
    assert abs(float(np.abs(x).max()) - 0.5) < 1e-3
    silent = np.mean(np.abs(x) < 1e-3)
    assert 0.05 < silent < 0.6  # pauses, but mostly speech
    f0 = _f0_estimates(x, sr)
    assert f0.size > 10
    assert 85 <= np.median(f0) <= 260


def test_synth_speech_syllable_rhythm():
    from scipy import signal

    sr = 8000
    x = speech.synth_speech(8 * sr, sr, np.random.default_rng(5)).astype(np.float64)
    env = np.abs(signal.hilbert(x))
    env = signal.sosfiltfilt(signal.butter(4, 20 / (sr / 2), output="sos"), env)[::80]
    env -= env.mean()
    power = np.abs(np.fft.rfft(env * np.hanning(env.size))) ** 2
    freqs = np.fft.rfftfreq(env.size, 1 / 100)
    band = (freqs > 0.5) & (freqs < 20)
    syllabic = (freqs >= 1) & (freqs <= 8)
    assert power[syllabic].sum() / power[band].sum() > 0.6


@pytest.mark.parametrize("sr", [8000, 16000, 44100])
def test_synth_speech_sample_rates(sr):
    x = speech.synth_speech(sr // 2, sr, np.random.default_rng(2))
    assert x.shape == (sr // 2,) and np.all(np.isfinite(x))


@pytest.mark.parametrize("kind", speech.NOISE_KINDS)
def test_noise_kinds(kind):
    sr = 16000
    a = speech.noise(kind, sr, sr, np.random.default_rng(4))
    b = speech.noise(kind, sr, sr, np.random.default_rng(4))
    assert a.shape == (sr,) and a.dtype == np.float32
    assert np.all(np.isfinite(a))
    assert np.array_equal(a, b)
    assert abs(float(np.sqrt(np.mean(a.astype(np.float64) ** 2))) - 0.1) < 1e-3


def _band_power(x, sr, lo, hi):
    spec = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / sr)
    return spec[(f >= lo) & (f < hi)].mean()


def test_noise_spectra():
    sr = 16000
    rng = np.random.default_rng(0)
    white = speech.noise("white", 2 * sr, sr, rng)
    pink = speech.noise("pink", 2 * sr, sr, rng)
    traffic = speech.noise("traffic", 2 * sr, sr, rng)
    assert 0.5 < _band_power(white, sr, 100, 1000) / _band_power(white, sr, 4000, 7000) < 2
    assert _band_power(pink, sr, 100, 1000) > 5 * _band_power(pink, sr, 4000, 7000)
    assert _band_power(traffic, sr, 20, 300) > 100 * _band_power(traffic, sr, 4000, 7000)
    hum = speech.noise("hum", 2 * sr, sr, rng)
    spec = np.abs(np.fft.rfft(hum))
    peak = np.fft.rfftfreq(hum.size, 1 / sr)[np.argmax(spec)]
    assert min(abs(peak - 50), abs(peak - 60)) < 1.0


def test_noise_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        speech.noise("rain", 100, 16000, rng)
    with pytest.raises(ValueError, match="num_samples"):
        speech.noise("white", 0, 16000, rng)
    with pytest.raises(ValueError, match="sample_rate"):
        speech.noise("white", 100, -16000, rng)
    with pytest.raises(ValueError, match="rng"):
        speech.noise("white", 100, 16000, 0)
    with pytest.raises(ValueError, match="num_samples"):
        speech.synth_speech(2.5, 16000, rng)
    with pytest.raises(ValueError, match="sample_rate"):
        speech.synth_speech(100, 1000, rng)
    with pytest.raises(ValueError, match="f0_mean"):
        speech.synth_speech(100, 16000, rng, f0_mean=400)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.3, 15.0, 30.0])
def test_mix_at_snr_is_exact(snr_db):
    rng = np.random.default_rng(1)
    clean = speech.synth_speech(16000, 16000, rng)
    nz = speech.noise("pink", 16000, 16000, rng)
    noisy = speech.mix_at_snr(clean, nz, snr_db)
    assert noisy.dtype == np.float32 and noisy.shape == clean.shape
    assert abs(_snr_db(noisy, clean) - snr_db) < 1e-3


def test_mix_at_snr_bad_arguments():
    clean = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="noise"):
        speech.mix_at_snr(clean, np.ones(11), 5.0)
    with pytest.raises(ValueError, match="noise"):
        speech.mix_at_snr(clean, np.zeros(10), 5.0)
    with pytest.raises(ValueError, match="clean"):
        speech.mix_at_snr(np.zeros(10), np.ones(10), 5.0)
    with pytest.raises(ValueError, match="snr_db"):
        speech.mix_at_snr(clean, np.ones(10), float("nan"))
    with pytest.raises(ValueError, match="snr_db"):
        speech.mix_at_snr(clean, np.ones(10), "loud")


def test_builtin_speech_pairs():
    kw = dict(num_utterances=4, seconds=0.5, sample_rate=8000, snr_range=(0, 15))
    train = speech.builtin_speech_pairs("train", seed=3, **kw)
    again = speech.builtin_speech_pairs("train", seed=3, **kw)
    val = speech.builtin_speech_pairs("validation", seed=3, **kw)
    assert len(train) == len(val) == 4
    for (c1, n1), (c2, n2) in zip(train, again):
        assert np.array_equal(n1, n2) and np.array_equal(c1, c2)
    for clean, noisy in train + val:  # (x0, y) order
        assert noisy.shape == clean.shape == (4000,)
        assert noisy.dtype == clean.dtype == np.float32
        assert np.abs(noisy).max() <= 0.99 + 1e-6
        assert -1e-3 <= _snr_db(noisy, clean) <= 15 + 1e-3
    for (c1, n1), (c2, n2) in zip(train, val):
        assert not np.array_equal(c1, c2)


def test_builtin_speech_pairs_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        speech.builtin_speech_pairs("test", 1, 0.1)
    with pytest.raises(ValueError, match="num_utterances"):
        speech.builtin_speech_pairs("train", 0, 0.1)
    with pytest.raises(ValueError, match="seconds"):
        speech.builtin_speech_pairs("train", 1, -1.0)
    with pytest.raises(ValueError, match="snr_range"):
        speech.builtin_speech_pairs("train", 1, 0.1, snr_range=(10, 0))
    with pytest.raises(ValueError, match="sample_rate"):
        speech.builtin_speech_pairs("train", 1, 0.1, sample_rate=0)
    with pytest.raises(ValueError, match="noise_kinds"):
        speech.builtin_speech_pairs("train", 1, 0.1, noise_kinds=("rain",))


# ---------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------


def _peak_frequency(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.fft.rfftfreq(x.size, 1 / sr)[np.argmax(spec)]


@pytest.mark.parametrize(
    "orig, target", [(16000, 8000), (16000, 22050), (44100, 16000), (8000, 48000)]
)
def test_resample_length_and_tone(orig, target):
    n = orig  # one second
    tone = np.sin(2 * np.pi * 440.0 * np.arange(n) / orig).astype(np.float32)
    out = speech.resample(tone, orig, target)
    assert out.shape == (math.ceil(n * target / orig),)
    assert out.dtype == np.float32
    assert abs(out.size / tone.size - target / orig) < 1e-3
    assert abs(_peak_frequency(out, target) - 440.0) <= 1.0
    # amplitude kept (away from the filter's edge effects)
    mid = out[out.size // 4: 3 * out.size // 4]
    assert abs(np.abs(mid).max() - 1.0) < 0.02


def test_resample_shapes_and_dtypes():
    x = np.random.default_rng(0).standard_normal((2, 1000))
    y = speech.resample(x, 16000, 8000)
    assert y.shape == (2, 500) and y.dtype == np.float64
    same = speech.resample(x, 16000, 16000.0)
    assert np.array_equal(same, x) and same is not x
    ints = speech.resample(np.arange(100, dtype=np.int16), 2, 1)
    assert ints.dtype == np.float32 and ints.shape == (50,)


def test_resample_numpy_fallback_matches_scipy():
    from scipy import signal

    x = np.random.default_rng(0).standard_normal((2, 1601))
    for up, down in [(1, 2), (3, 2), (160, 441), (441, 160)]:
        ref = signal.resample_poly(x, up, down, axis=-1)
        ours = speech._resample_poly_numpy(x, up, down)
        assert ours.shape == ref.shape
        assert np.allclose(ours, ref, atol=1e-10)


def test_resample_bad_arguments():
    x = np.zeros(100, np.float32)
    for bad in (0, -16000, 1.5, "16k", None, True):
        with pytest.raises(ValueError, match="orig_sr"):
            speech.resample(x, bad, 8000)
        with pytest.raises(ValueError, match="target_sr"):
            speech.resample(x, 8000, bad)
    with pytest.raises(ValueError, match="waveform"):
        speech.resample(np.zeros(0), 16000, 8000)
    with pytest.raises(ValueError, match="waveform"):
        speech.resample(np.float32(1.0), 16000, 8000)
    with pytest.raises(ValueError, match="waveform"):
        speech.resample(np.array([1.0, np.nan]), 16000, 8000)


# ---------------------------------------------------------------------------
# crops
# ---------------------------------------------------------------------------


def test_random_crop_is_aligned_and_drawn_corner_by_corner():
    from restoregrad_adapter.contrib.data import random_crop

    x0 = np.arange(10 * 12 * 3, dtype=np.float32).reshape(10, 12, 3)
    y = -x0
    a, b = random_crop(x0, y, 4, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    top, left = int(rng.integers(7)), int(rng.integers(9))  # the draws: top, then left
    assert np.array_equal(a, x0[top:top + 4, left:left + 4]) and np.array_equal(b, -a)
    centre, _ = random_crop(x0, y, (4, 6))  # rng=None: the centred crop
    assert np.array_equal(centre, x0[3:7, 3:9])

    import torch

    wave = np.arange(3000, dtype=np.float32)
    a, b = random_crop(wave, wave + 1, 512, torch.Generator().manual_seed(0), align=256)
    start = int(torch.randint(0, 3000 - 512 + 1, (1,), generator=torch.Generator().manual_seed(0))) // 256 * 256
    assert a[0] == start and start % 256 == 0 and len(a) == 512 and np.array_equal(b, a + 1)


def test_random_flip_rotate_draws_the_squares_symmetries():
    import torch

    from restoregrad_adapter.contrib.data import random_flip_rotate

    x0 = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
    y = x0 * 10
    # "dihedral": draw d in [0, 8): d % 4 quarter turns counter-clockwise, then the left-right mirror if d >= 4.
    for seed in range(6):
        a, b = random_flip_rotate(x0, y, np.random.default_rng(seed))
        draw = int(np.random.default_rng(seed).integers(8))
        expected = np.rot90(x0, draw % 4)
        expected = expected[:, ::-1] if draw >= 4 else expected
        assert np.array_equal(a, expected) and np.array_equal(b, expected * 10)
        assert a.flags.c_contiguous and b.flags.c_contiguous
    seen = {random_flip_rotate(x0, y, np.random.default_rng(seed))[0].tobytes() for seed in range(200)}
    assert len(seen) == 8  # all eight symmetries, each a different image
    # One quarter turn counter-clockwise: the top row becomes the left column, read bottom-up.
    corner = np.array([[1, 2], [3, 4]], np.float32)
    turned = {random_flip_rotate(corner, corner, np.random.default_rng(s))[0].tobytes() for s in range(50)}
    assert np.array([[2, 4], [1, 3]], np.float32).tobytes() in turned

    mirrored = {random_flip_rotate(x0, y, np.random.default_rng(s), "hflip")[0].tobytes() for s in range(50)}
    assert mirrored == {x0.tobytes(), x0[:, ::-1].tobytes()}
    wide = np.zeros((2, 6), np.float32)  # a mirror keeps any shape; a rotation needs a square
    assert random_flip_rotate(wide, wide, np.random.default_rng(0), "hflip")[0].shape == (2, 6)
    same_x0, same_y = random_flip_rotate(x0, y, np.random.default_rng(0), "none")
    assert same_x0 is x0 and same_y is y
    a, b = random_flip_rotate(x0, y, torch.Generator().manual_seed(3))  # a torch generator draws alike
    assert np.array_equal(b, a * 10)

    with pytest.raises(ValueError, match="augment must be one of"):
        random_flip_rotate(x0, y, np.random.default_rng(0), "rot45")
    with pytest.raises(ValueError, match="square"):
        random_flip_rotate(wide, wide, np.random.default_rng(0), "dihedral")
    with pytest.raises(ValueError, match="same shape"):
        random_flip_rotate(x0, y[:2], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        random_flip_rotate(np.zeros(8), np.zeros(8), np.random.default_rng(0))


def test_random_crop_pads_short_signals():
    from restoregrad_adapter.contrib.data import random_crop

    wave = np.ones(100, np.float32)
    a, b = random_crop(wave, 2 * wave, 256, np.random.default_rng(0), pad="zeros")
    assert a.shape == (256,) and a[:100].sum() == 100 and not a[100:].any() and np.array_equal(b, 2 * a)
    image = np.random.default_rng(0).random((5, 20, 3)).astype(np.float32)
    a, _ = random_crop(image, image, 8, np.random.default_rng(0))  # reflected to 8 rows
    assert a.shape == (8, 8, 3)
    with pytest.raises(ValueError, match="same shape"):
        random_crop(image, image[:4], 4)
    with pytest.raises(ValueError, match="pad"):
        random_crop(wave, wave, 256, pad="edge")
    with pytest.raises(ValueError, match="rng"):
        random_crop(wave, wave, 10, rng=0)


def test_random_batch_picks_then_crops():
    import torch

    from restoregrad_adapter.contrib.data import random_batch, random_crop

    pairs = [(np.full(50, i, np.float32), np.full(50, -i, np.float32)) for i in range(4)]
    x0, y = random_batch(pairs, 16, 3, torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(1)
    picks = torch.randint(0, 4, (3,), generator=generator).tolist()
    expected = [random_crop(*pairs[i], 16, generator)[0] for i in picks]
    assert x0.shape == y.shape == (3, 16) and np.array_equal(x0, np.stack(expected)) and np.array_equal(y, -x0)


def test_lazy_pairs_reads_on_demand_with_a_cache():
    from restoregrad_adapter.contrib.data import LazyPairs

    calls = []

    def load(item):
        calls.append(item)
        return item, -item

    pairs = LazyPairs([1, 2, 3], load, cache_size=2)
    assert len(pairs) == 3 and pairs[0] == (1, -1) and pairs[0] == (1, -1) and calls == [1]
    pairs[1], pairs[2], pairs[0]
    assert calls == [1, 2, 3, 1]  # 1 was dropped as the least recently used


# ---------------------------------------------------------------------------
# paired files: the (x0, y) = (clean, degraded) order
# ---------------------------------------------------------------------------


def _png(path, value, size=(6, 8)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), value, np.uint8)).save(path)


def test_image_pair_files_layouts(tmp_path):
    from restoregrad_adapter.contrib.data.readers import image_pair_files, read_image_pair

    raindrop = tmp_path / "raindrop"
    _png(raindrop / "input" / "0_rain.png", 200)
    _png(raindrop / "gt" / "0_clean.png", 100)
    ((clean, degraded),) = image_pair_files(raindrop)
    assert clean.endswith("gt/0_clean.png") and degraded.endswith("input/0_rain.png")
    x0, y = read_image_pair(clean, degraded)
    assert x0.shape == (6, 8, 3) and x0.dtype == np.float32
    assert np.allclose(x0, 100 / 255) and np.allclose(y, 200 / 255)

    allweather = tmp_path / "allweather"
    _png(allweather / "rain" / "input" / "a.png", 1)
    _png(allweather / "rain" / "gt" / "a.png", 2)
    (allweather / "list.txt").write_text("rain/input/a.png\n\n")
    assert image_pair_files(allweather / "list.txt") == [(str(allweather / "rain/gt/a.png"),
                                                          str(allweather / "rain/input/a.png"))]

    folder = tmp_path / "imagefolder"
    _png(folder / "d.png", 1)
    _png(folder / "c.png", 2)
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "d.png", "target": "c.png"}) + "\n")
    assert image_pair_files(folder) == [(str(folder / "c.png"), str(folder / "d.png"))]

    with pytest.raises(ValueError, match="not a .txt file list"):
        image_pair_files(tmp_path / "nothing")
    _png(raindrop / "input" / "1.png", 3)
    with pytest.raises(ValueError, match="no clean image"):
        image_pair_files(raindrop)
    _png(tmp_path / "small.png", 3, size=(4, 4))
    with pytest.raises(ValueError, match="degraded image"):
        read_image_pair(clean, tmp_path / "small.png")


def test_audio_pair_files_and_reading(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    from restoregrad_adapter.contrib.data.readers import (audio_pair_files, normalize_level, read_audio_pair,
                                                          voicebank_pair_files)

    root = tmp_path / "vb"
    for folder in ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"):
        (root / folder).mkdir(parents=True)
    tone = 0.25 * np.sin(np.arange(8000) / 5).astype(np.float32)
    soundfile.write(root / "clean_trainset_28spk_wav" / "p1.wav", tone, 8000)
    soundfile.write(root / "noisy_trainset_28spk_wav" / "p1.wav", np.stack([tone, 0 * tone], 1)[:7000], 8000)
    soundfile.write(root / "clean_trainset_28spk_wav" / "only_clean.wav", tone, 8000)
    ((clean, noisy),) = voicebank_pair_files(root, "train")
    assert clean.endswith("clean_trainset_28spk_wav/p1.wav") and noisy.endswith("noisy_trainset_28spk_wav/p1.wav")
    x0, y = read_audio_pair(clean, noisy, sample_rate=16000)  # resampled, mixed down, common length
    assert x0.shape == y.shape == (14000,) and x0.dtype == y.dtype == np.float32
    assert np.allclose(x0[1000:12000], 2 * y[1000:12000], atol=1e-3)  # the mix-down halves the noisy copy
    x1, y1 = normalize_level(x0, y)
    scale = 0.95 / np.abs(y).max()  # one factor for both: the noisy peak becomes 0.95
    assert np.allclose(x1, x0 * scale) and np.allclose(y1, y * scale)
    with pytest.raises(ValueError, match="split"):
        voicebank_pair_files(root, "dev")
    with pytest.raises(ValueError, match="no files with the same name"):
        audio_pair_files(root / "clean_trainset_28spk_wav", tmp_path)


# ---------------------------------------------------------------------------
# restoregrad_adapter.io
# ---------------------------------------------------------------------------


def test_writers_are_atomic_and_readers_name_the_file(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    from PIL import Image

    from restoregrad_adapter import io

    io.write_json({"a": [1, 2]}, tmp_path / "sub" / "x.json")
    assert json.loads((tmp_path / "sub" / "x.json").read_text()) == {"a": [1, 2]}
    image = np.random.default_rng(0).random((5, 7, 3)).astype(np.float32)
    io.write_image(tmp_path / "x.png", image)
    assert np.abs(io.read_image(tmp_path / "x.png") - image).max() <= 0.5 / 255 + 1e-6
    io.write_image(tmp_path / "x.jpg", image)
    assert Image.open(tmp_path / "x.jpg").format == "JPEG"
    io.write_audio(tmp_path / "x.wav", np.zeros(100, np.float32), 16000)
    audio, rate = io.read_audio(tmp_path / "x.wav")
    assert rate == 16000 and audio.shape == (100,)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    io.save_figure(fig, tmp_path / "f.png")
    assert Image.open(tmp_path / "f.png").format == "PNG" and not plt.get_fignums()

    with pytest.raises(RuntimeError):  # a failed write leaves neither the target nor a temporary file
        with io.atomic_path(tmp_path / "y.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "sub", "x.jpg", "x.png", "x.wav"]

    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(io.InputFileError, match="broken.png: cannot read the image"):
        io.read_image(tmp_path / "broken.png")
    soundfile.write(tmp_path / "stereo.wav", np.zeros((100, 2), np.float32), 16000)
    with pytest.raises(ValueError, match="2 channels"):
        io.read_audio(tmp_path / "stereo.wav")
    assert io.read_audio((tmp_path / "stereo.wav").read_bytes(), mix_to_mono=True)[0].shape == (100,)
