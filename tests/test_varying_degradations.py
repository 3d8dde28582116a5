"""Built-in degradations whose strength varies in time or space: nonstationary noise on the synthetic speech
(restoregrad_adapter.contrib.data.speech) and weather over part of a photo (contrib.data.weather); the
defaults reproduce the stationary / full-image data bit for bit."""

import numpy as np
import pytest

from restoregrad_adapter.contrib.data import speech, weather

pytestmark = pytest.mark.usefixtures("no_network")  # built-in data never downloads (conftest)

SR = 16_000
FRAME = 512  # 32 ms at 16 kHz


def _frame_energies(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    frames = x[: x.size // FRAME * FRAME].reshape(-1, FRAME)
    return np.mean(frames * frames, axis=1)


# ---------------------------------------------------------------------------
# speech
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_sets():
    kw = dict(num_utterances=3, seconds=2.0, sample_rate=SR, seed=5)
    return {"stationary": speech.builtin_speech_pairs("train", **kw),
            "nonstationary": speech.builtin_speech_pairs("train", noise_profile="nonstationary", **kw),
            "again": speech.builtin_speech_pairs("train", noise_profile="nonstationary", **kw),
            "validation": speech.builtin_speech_pairs("validation", noise_profile="nonstationary", **kw)}


def test_default_speech_pairs_are_unchanged():
    """The default is the stationary mixture, built as before from the same stream, bit for bit."""
    seed, n, lo, hi = 7, 8000, 0.0, 15.0
    pairs = speech.builtin_speech_pairs("validation", 3, 0.5, seed=seed)
    assert all(np.array_equal(a, b) for pair, again in zip(
        pairs, speech.builtin_speech_pairs("validation", 3, 0.5, seed=seed, noise_profile="stationary"))
        for a, b in zip(pair, again))
    for i, (clean, noisy) in enumerate(pairs):
        rng = np.random.default_rng([seed, 1, i])
        x0 = speech.synth_speech(n, SR, rng)
        kind = speech.NOISE_KINDS[int(rng.integers(len(speech.NOISE_KINDS)))]
        y = speech.mix_at_snr(x0, speech.noise(kind, n, SR, rng), rng.uniform(lo, hi))
        peak = float(np.abs(y).max())
        if peak > 0.99:
            scale = np.float32(0.99 / peak)
            x0, y = x0 * scale, y * scale
        assert np.array_equal(clean, x0) and np.array_equal(noisy, y)


def test_nonstationary_speech_is_deterministic_with_the_same_clean_utterances(speech_sets):
    stationary, nonstationary = speech_sets["stationary"], speech_sets["nonstationary"]
    assert len(nonstationary) == len(stationary) == 3
    for (c1, n1), (c2, n2) in zip(nonstationary, speech_sets["again"]):
        assert np.array_equal(c1, c2) and np.array_equal(n1, n2)
    for (c1, _), (c2, _) in zip(nonstationary, speech_sets["validation"]):
        assert not np.array_equal(c1, c2)
    for (clean_s, _), (clean, noisy) in zip(stationary, nonstationary):
        assert clean.dtype == noisy.dtype == np.float32 and clean.shape == noisy.shape == (2 * SR,)
        assert np.abs(noisy).max() <= 0.99 + 1e-6
        # the same utterance; each set scales its pairs on its own to stay under 0.99
        loud = np.abs(clean_s) > 1e-3
        ratio = clean[loud].astype(np.float64) / clean_s[loud]
        assert 0.0 < ratio.min() and np.ptp(ratio) < 1e-5 * ratio.max()


def test_nonstationary_noise_level_varies_strongly_within_each_utterance(speech_sets):
    """Per 32 ms frame: the loudest noisy frame over the quietest one with noise > 20 dB, and whole frames
    without any noise; the stationary noise has no such silent frame."""
    for clean, noisy in speech_sets["nonstationary"]:
        energy = _frame_energies(noisy.astype(np.float64) - clean)
        assert np.sum(energy == 0) >= 1
        heard = energy[energy > 0]
        assert 10 * np.log10(heard.max() / heard.min()) > 20
        # a burst or the ramp's loud end: some frames at a local SNR below 0 dB, others above 10 dB
        speech_power = np.mean(clean.astype(np.float64) ** 2)
        assert heard.max() > speech_power and heard.min() < 0.1 * speech_power
    for clean, noisy in speech_sets["stationary"]:
        assert np.all(_frame_energies(noisy.astype(np.float64) - clean) > 0)


def test_noise_envelope_ramp_bursts_and_gaps():
    n = 3 * SR
    level = speech.noise_envelope(n, SR, np.random.default_rng(0))
    assert level.shape == (n,) and np.array_equal(level, speech.noise_envelope(n, SR, np.random.default_rng(0)))
    assert not np.array_equal(level, speech.noise_envelope(n, SR, np.random.default_rng(1)))
    snr_db = -20 * np.log10(level[level > 0])
    assert np.sum(level == 0) >= int(0.1 * SR) - 1  # at least one gap of >= 100 ms
    assert -10 - 1e-9 <= snr_db.min() <= -5 + 1e-9  # the ramp's loud end or a burst, never above -10 dB
    assert np.mean(snr_db > 20 + 1e-9) < 0.01  # quieter than the ramp's quiet end only where a gap fades in
    # the ramp: a 25 dB slope from one end of the utterance to the other, away from bursts and gaps
    ends = [-20 * np.log10(np.median(level[s][level[s] > 0])) for s in (slice(0, SR // 10), slice(-SR // 10, None))]
    assert abs(abs(ends[0] - ends[1]) - 25 * (1 - 0.1 / 3)) < 1.5  # medians: 50 ms from each end
    with pytest.raises(ValueError, match="rng"):
        speech.noise_envelope(n, SR, 0)
    with pytest.raises(ValueError, match="num_samples"):
        speech.noise_envelope(0, SR, np.random.default_rng(0))


def test_nonstationary_speech_bad_arguments():
    with pytest.raises(ValueError, match="noise_profile must be one of"):
        speech.builtin_speech_pairs("train", 1, 0.1, noise_profile="bursty")
    with pytest.raises(ValueError, match="snr_range applies to noise_profile='stationary'"):
        speech.builtin_speech_pairs("train", 1, 0.1, snr_range=(5, 10), noise_profile="nonstationary")


# ---------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------


def test_default_weather_pairs_are_unchanged():
    """The default degrades whole photos from the same stream as before, bit for bit."""
    import zlib

    pairs = weather.builtin_weather_pairs("validation", seed=3, size=32)
    again = weather.builtin_weather_pairs("validation", seed=3, size=32, coverage="full")
    for (clean, degraded, kind, name), (_, degraded_again, _, _) in zip(pairs, again):
        rng = np.random.default_rng([3, 1, zlib.crc32(name.encode()), weather.KINDS.index(kind), 0])
        assert np.array_equal(degraded, weather.degrade(clean, kind, rng))
        assert np.array_equal(degraded, degraded_again)


@pytest.fixture(scope="module")
def weather_sets():
    kw = dict(seed=0, size=48)
    return {"full": weather.builtin_weather_pairs("validation", **kw),
            "partial": weather.builtin_weather_pairs("validation", coverage="partial", **kw),
            "again": weather.builtin_weather_pairs("validation", coverage="partial", **kw),
            "other": weather.builtin_weather_pairs("validation", coverage="partial", seed=1, size=48)}


def test_partial_weather_leaves_the_rest_exactly_clean(weather_sets):
    import zlib

    full, partial = weather_sets["full"], weather_sets["partial"]
    assert len(partial) == len(full) == len(weather.KINDS) * len(weather.VALIDATION_PHOTOS)
    for (clean, degraded, kind, name), (clean_f, degraded_f, kind_f, name_f) in zip(partial, full):
        assert (kind, name) == (kind_f, name_f) and np.array_equal(clean, clean_f)
        assert degraded.dtype == np.float32 and degraded.shape == clean.shape
        rng = np.random.default_rng([0, 1, zlib.crc32(name.encode()), weather.KINDS.index(kind), 0])
        again, mask = weather.degrade_region(clean, kind, rng, return_mask=True)
        assert np.array_equal(again, degraded)
        outside, inside = mask == 0, mask > 0
        assert 0.15 <= inside.mean() <= 0.55
        assert np.array_equal(degraded[outside], clean[outside])  # exactly clean outside the region
        assert np.array_equal(degraded[mask == 1], degraded_f[mask == 1])  # the full weather in its core
        assert np.abs(degraded[inside] - clean[inside]).mean() > 1e-3
        if kind == "snow":  # the snow's veil covers every pixel: the region is exactly where the image changed
            assert np.array_equal(np.any(degraded != clean, axis=2), inside)


def test_partial_weather_is_deterministic_given_the_seed(weather_sets):
    for (_, d1, _, _), (_, d2, _, _) in zip(weather_sets["partial"], weather_sets["again"]):
        assert np.array_equal(d1, d2)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(weather_sets["partial"], weather_sets["other"]))


@pytest.mark.parametrize("shape", weather.REGION_SHAPES)
def test_region_mask_shapes(shape):
    mask = weather.region_mask(40, 56, np.random.default_rng(2), shape=shape, fraction=0.3)
    assert mask.shape == (40, 56) and mask.dtype == np.float32
    assert mask.min() == 0.0 and mask.max() == 1.0
    assert abs((mask > 0).mean() - 0.3) < 0.03
    assert 0 < (mask == 1).mean() < (mask > 0).mean()  # soft edges
    assert np.array_equal(mask, weather.region_mask(40, 56, np.random.default_rng(2), shape=shape, fraction=0.3))
    drawn = [(weather.region_mask(32, 32, np.random.default_rng(s)) > 0).mean() for s in range(8)]
    assert all(0.19 <= f <= 0.53 for f in drawn), drawn  # U(0.2, 0.5), up to ties


def test_region_bad_arguments():
    rng = np.random.default_rng(0)
    image = weather.builtin_photos()["coffee"][:32, :32]
    with pytest.raises(ValueError, match="shape must be one of"):
        weather.region_mask(16, 16, rng, shape="circle")
    with pytest.raises(ValueError, match="fraction"):
        weather.region_mask(16, 16, rng, fraction=0.99)
    with pytest.raises(ValueError, match="height"):
        weather.region_mask(1, 16, rng)
    with pytest.raises(ValueError, match="rng"):
        weather.region_mask(16, 16, 0)
    with pytest.raises(ValueError, match="kind"):
        weather.degrade_region(image, "fog", rng)
    with pytest.raises(ValueError, match="coverage must be one of"):
        weather.builtin_weather_pairs(coverage="half")
