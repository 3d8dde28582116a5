"""Synthetic speech and noise for the speech-enhancement examples.

Everything here is generated in code, so the examples run offline:

* :func:`synth_speech` -- a speech-like signal from a source-filter model:
  a glottal pulse train with a moving pitch contour (90-250 Hz) shaped by
  four moving formant resonators (plus a fixed fifth), shaped-noise bursts
  for the fricatives, a ~4 Hz syllable rhythm and pauses between phrases.
* :func:`noise` -- ``"white"``, ``"pink"``, ``"brown"``, ``"babble"``,
  ``"hum"`` and ``"traffic"`` noise.
* :func:`mix_at_snr` -- adds noise to a clean signal at an exact SNR.
* :func:`noise_envelope` -- the level of a nonstationary noise along an utterance: an SNR ramp
  (+20 dB to -5 dB), short loud bursts and silent gaps.
* :func:`builtin_speech_pairs` -- deterministic ``(clean, noisy)`` pairs (the library's ``(x0, y)``),
  with noise at a steady level (``noise_profile="stationary"``, the default) or following
  :func:`noise_envelope` (``"nonstationary"``).
* :func:`resample` -- polyphase resampling between integer sample rates.

All waveforms are float32 numpy arrays; time is the last axis.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import check_rng

try:  # scipy ships with scikit-image; resample() has a numpy fallback
    from scipy import signal as _signal
except ImportError:  # pragma: no cover - exercised only without scipy
    _signal = None

__all__ = [
    "NOISE_KINDS",
    "synth_speech",
    "noise",
    "mix_at_snr",
    "NOISE_PROFILES",
    "noise_envelope",
    "builtin_speech_pairs",
    "resample",
]

NOISE_KINDS: Tuple[str, ...] = ("white", "pink", "brown", "babble", "hum", "traffic")

#: How the noise level of :func:`builtin_speech_pairs` moves within an utterance: ``"stationary"``, one
#: level (an SNR drawn per utterance); ``"nonstationary"``, the level of :func:`noise_envelope`.
NOISE_PROFILES: Tuple[str, ...] = ("stationary", "nonstationary")

#: Local SNRs (dB) of :func:`noise_envelope`: the two ends of its ramp, and the range its bursts are drawn from.
RAMP_SNR_DB: Tuple[float, float] = (20.0, -5.0)
BURST_SNR_DB: Tuple[float, float] = (-10.0, -5.0)

# Formant targets (F1..F4, Hz) of a few vowels for an adult male voice.
_VOWELS = np.array(
    [
        [730, 1090, 2440, 3400],  # a  (father)
        [270, 2290, 3010, 3700],  # i  (beet)
        [300, 870, 2240, 3300],   # u  (boot)
        [530, 1840, 2480, 3500],  # e  (bet)
        [570, 840, 2410, 3300],   # o  (bought)
        [660, 1720, 2410, 3400],  # ae (bat)
        [490, 1350, 1690, 3300],  # er (bird)
        [500, 1500, 2500, 3500],  # schwa
    ],
    dtype=np.float64,
)
_BANDWIDTHS = np.array([80.0, 100.0, 140.0, 180.0, 250.0])
_F5 = 4500.0  # fixed higher resonance, lifts the top of the voiced spectrum

# Fricative noise bands (Hz): s, sh, f/th, h-like aspiration.
_FRICATIVES = ((3800.0, 7500.0), (2000.0, 5000.0), (1200.0, 7000.0), (500.0, 3500.0))


# ---------------------------------------------------------------------------
# argument checking
# ---------------------------------------------------------------------------


def _require_scipy(what: str) -> None:
    if _signal is None:  # pragma: no cover
        raise ImportError(f"{what} needs scipy (installed with scikit-image)")


def _check_count(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_rate(value, name: str) -> int:
    """Sample rates must be positive integers (``16000.0`` is accepted)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(value, (int, np.integer)):
        rate = int(value)
    elif isinstance(value, (float, np.floating)) and math.isfinite(value) \
            and float(value).is_integer():
        rate = int(value)
    else:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if rate <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return rate




def _check_synthesis(what: str, num_samples, sample_rate, rng) -> Tuple[int, int, np.random.Generator]:
    """The checked arguments of a generator of ``num_samples`` at ``sample_rate`` (>= 4 kHz) from ``rng``."""
    _require_scipy(what)
    num_samples = _check_count(num_samples, "num_samples")
    rate = _check_rate(sample_rate, "sample_rate")
    if rate < 4000:
        raise ValueError(f"sample_rate must be >= 4000 Hz, got {sample_rate!r}")
    return num_samples, rate, check_rng(rng)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average with edge padding (keeps the length)."""
    if width <= 1:
        return x
    kernel = np.ones(width) / width
    pad = width // 2
    xp = np.pad(x, (pad, width - 1 - pad), mode="edge")
    return np.convolve(xp, kernel, mode="valid")


def _band_noise(n: int, sample_rate: int, low: float, high: float,
                rng: np.random.Generator) -> np.ndarray:
    """White noise band-passed to ``[low, high]`` Hz (clipped to Nyquist)."""
    nyq = 0.5 * sample_rate
    high = min(high, 0.9 * nyq)
    low = min(max(low, 20.0), 0.7 * high)
    sos = _signal.butter(4, [low / nyq, high / nyq], btype="bandpass", output="sos")
    return _signal.sosfilt(sos, rng.standard_normal(n))


# ---------------------------------------------------------------------------
# speech synthesis
# ---------------------------------------------------------------------------


def _plan(num_samples: int, sample_rate: int, rng: np.random.Generator):
    """Lay out phrases, syllables and pauses on the time axis."""
    dur = num_samples / sample_rate
    syllables = []  # (onset_fric, v_start, v_end, coda_fric, vowel, stress)
    phrases = []    # (start, end)
    t = rng.uniform(0.0, min(0.2, 0.1 * dur))
    while t < dur:
        phrase_start = t
        for _ in range(int(rng.integers(3, 11))):
            if t >= dur:
                break
            length = rng.uniform(0.12, 0.3)  # ~4 syllables per second
            onset = None
            if rng.random() < 0.45:
                f_len = min(rng.uniform(0.04, 0.12), 0.45 * length)
                onset = (t, t + f_len, int(rng.integers(len(_FRICATIVES))))
            v_start = t + (onset[1] - t if onset else 0.0)
            v_end = t + length
            coda = None
            if rng.random() < 0.2:
                c_len = rng.uniform(0.04, 0.1)
                coda = (v_end - 0.01, v_end + c_len, int(rng.integers(len(_FRICATIVES))))
                v_end -= 0.5 * c_len
            syllables.append((onset, v_start, v_end, coda,
                              int(rng.integers(len(_VOWELS))), rng.uniform(0.45, 1.0)))
            t += length + (coda[1] - coda[0] if coda else 0.0) * 0.5
            t += rng.uniform(0.0, 0.04)  # short gaps between syllables
        phrases.append((phrase_start, t))
        t += rng.uniform(0.15, 0.6)  # pause between phrases
    return syllables, phrases


def _pitch_contour(num_samples, sample_rate, phrases, syllables, f0_mean, rng):
    times = np.arange(num_samples) / sample_rate
    f0 = np.full(num_samples, f0_mean)
    for start, end in phrases:
        i0 = int(start * sample_rate)
        i1 = min(num_samples, int(math.ceil(end * sample_rate)) + 1)
        if i1 <= i0:
            continue
        hi = f0_mean * rng.uniform(1.05, 1.25)
        lo = f0_mean * rng.uniform(0.8, 0.95)
        frac = (times[i0:i1] - start) / max(end - start, 1e-6)
        f0[i0:i1] = hi + (lo - hi) * frac  # declination over the phrase
    for _, v_start, v_end, _, _, stress in syllables:  # pitch accents
        centre = 0.5 * (v_start + v_end)
        width = 0.35 * (v_end - v_start) + 1e-3
        i0 = max(0, int((centre - 3 * width) * sample_rate))
        i1 = min(num_samples, int((centre + 3 * width) * sample_rate) + 1)
        if i1 > i0:
            bump = np.exp(-0.5 * ((times[i0:i1] - centre) / width) ** 2)
            f0[i0:i1] *= 1.0 + rng.uniform(-0.06, 0.18) * stress * bump
    # slow wander plus a little jitter
    wander = _smooth(rng.standard_normal(num_samples), max(1, int(0.08 * sample_rate)))
    wander /= np.abs(wander).max() + 1e-12
    f0 *= 1.0 + 0.04 * wander + 0.004 * rng.standard_normal(num_samples)
    return np.clip(f0, 90.0, 250.0)


def _glottal_flow_derivative(f0: np.ndarray, sample_rate: int,
                             open_quotient: float) -> np.ndarray:
    """Rosenberg glottal pulses (rising then falling flow), differentiated."""
    phase = np.cumsum(f0 / sample_rate)
    p = phase - np.floor(phase)
    rise = 0.65 * open_quotient
    fall = open_quotient - rise
    flow = np.zeros_like(p)
    m1 = p < rise
    flow[m1] = 0.5 * (1.0 - np.cos(np.pi * p[m1] / rise))
    m2 = (p >= rise) & (p < open_quotient)
    flow[m2] = np.cos(0.5 * np.pi * (p[m2] - rise) / fall)
    return np.diff(flow, prepend=0.0)


def _formant_filter(source: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray,
                    sample_rate: int) -> np.ndarray:
    """Cascade of time-varying two-pole resonators (unit gain at DC).

    The coefficients are updated every 5 ms, carrying the filter state across.
    """
    n = source.shape[0]
    block = max(1, int(0.005 * sample_rate))
    nyq = 0.5 * sample_rate
    n_sec = formants.shape[1]
    zi = np.zeros((n_sec, 2))
    out = np.empty(n)
    sos = np.zeros((n_sec, 6))
    sos[:, 3] = 1.0
    for start in range(0, n, block):
        stop = min(n, start + block)
        mid = (start + stop) // 2
        for k in range(n_sec):
            f = formants[mid, k]
            if f >= 0.9 * nyq:  # resonance above Nyquist: pass through
                sos[k, :3] = (1.0, 0.0, 0.0)
                sos[k, 4:] = (0.0, 0.0)
                continue
            r = math.exp(-math.pi * bandwidths[k] / sample_rate)
            c = 2.0 * r * math.cos(2.0 * math.pi * f / sample_rate)
            sos[k, :3] = (1.0 - c + r * r, 0.0, 0.0)
            sos[k, 4:] = (-c, r * r)
        out[start:stop], zi = _signal.sosfilt(sos, source[start:stop], zi=zi)
    return out


def synth_speech(
    num_samples: int,
    sample_rate: int,
    rng: np.random.Generator,
    *,
    f0_mean: Optional[float] = None,
) -> np.ndarray:
    """Generate ``num_samples`` of a speech-like signal at ``sample_rate`` Hz.

    A random "speaker" (mean pitch ``f0_mean`` in 90-250 Hz, drawn from
    ``rng`` when ``None``; vocal-tract length scaled with it) utters phrases
    of 3-10 syllables (about 4 per second) separated by pauses.  Each
    syllable has a voiced vowel nucleus -- Rosenberg glottal pulses through
    four formant resonators gliding between vowel targets and a fixed fifth
    one -- and optionally a fricative onset / coda of band-passed noise.
    The result is float32, peak-normalised to 0.5, and fully determined by
    the arguments and the generator state.
    """
    num_samples, sample_rate, rng = _check_synthesis("synth_speech", num_samples, sample_rate, rng)
    if f0_mean is None:
        f0_mean = rng.uniform(100.0, 210.0)
    else:
        try:
            f0_mean = float(f0_mean)
        except (TypeError, ValueError):
            raise ValueError(f"f0_mean must be a number, got {f0_mean!r}") from None
        if not 90.0 <= f0_mean <= 250.0:
            raise ValueError(f"f0_mean must lie in [90, 250] Hz, got {f0_mean!r}")
    sr = sample_rate
    n = num_samples
    times = np.arange(n) / sr

    syllables, phrases = _plan(n, sr, rng)
    f0 = _pitch_contour(n, sr, phrases, syllables, f0_mean, rng)

    # voiced amplitude envelope and formant targets
    voiced_env = np.zeros(n)
    centres, targets = [], []
    tract = 1.0 + 0.18 * (f0_mean - 100.0) / 150.0  # shorter tract, higher voice
    for _, v_start, v_end, _, vowel, stress in syllables:
        i0, i1 = int(v_start * sr), min(n, int(v_end * sr))
        if i1 - i0 < 2:
            continue
        x = np.linspace(0.0, 1.0, i1 - i0)
        # fast attack, slower decay
        voiced_env[i0:i1] = np.maximum(
            voiced_env[i0:i1], stress * np.sin(np.pi * x ** 0.7) ** 0.8)
        target = _VOWELS[vowel] * tract * rng.uniform(0.94, 1.06, 4)
        centres.append(0.5 * (v_start + v_end))
        targets.append(target)
    if not centres:
        centres, targets = [0.0], [_VOWELS[-1] * tract]
    centres = np.asarray(centres)
    targets = np.asarray(targets)
    formants = np.stack([np.interp(times, centres, targets[:, k]) for k in range(4)], 1)
    smooth_w = max(1, int(0.04 * sr))
    formants = np.stack([_smooth(formants[:, k], smooth_w) for k in range(4)]
                        + [np.full(n, _F5 * tract)], 1)
    bandwidths = _BANDWIDTHS * rng.uniform(0.85, 1.25)

    # source: glottal pulses plus a little pitch-synchronous breath noise
    dg = _glottal_flow_derivative(f0, sr, rng.uniform(0.5, 0.7))
    dg /= np.abs(dg).max() + 1e-12
    breath = rng.standard_normal(n) * 0.04 * (0.3 + (dg < 0))
    source = (dg + breath) * voiced_env
    voiced = _formant_filter(source, formants, bandwidths, sr)
    peak = np.abs(voiced).max()
    if peak > 0:
        voiced /= peak

    # fricatives: band-passed noise bursts
    unvoiced = np.zeros(n)
    for onset, _, _, coda, _, stress in syllables:
        for fric in (onset, coda):
            if fric is None:
                continue
            start, end, kind = fric
            i0, i1 = int(start * sr), min(n, int(end * sr))
            if i1 - i0 < 8:
                continue
            lo, hi = _FRICATIVES[kind]
            burst = _band_noise(i1 - i0, sr, lo, hi, rng)
            burst /= np.abs(burst).max() + 1e-12
            x = np.linspace(0.0, 1.0, i1 - i0)
            env = np.sin(np.pi * x) ** 1.5
            unvoiced[i0:i1] += burst * env * rng.uniform(0.15, 0.4) * (0.5 + 0.5 * stress)

    speech = voiced + unvoiced
    sos = _signal.butter(2, 60.0 / (0.5 * sr), btype="highpass", output="sos")
    speech = _signal.sosfilt(sos, speech)
    peak = np.abs(speech).max()
    if peak > 0:
        speech *= 0.5 / peak
    return speech.astype(np.float32)


# ---------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------


def _spectral_noise(n: int, sample_rate: int, exponent: float,
                    rng: np.random.Generator, f_min: float = 5.0) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f**exponent."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    shape = np.maximum(freqs, f_min) ** (-exponent / 2.0)
    shape[0] = 0.0
    out = np.fft.irfft(spec * shape, n)
    return out


def _normalise_rms(x: np.ndarray, rms: float = 0.1) -> np.ndarray:
    current = float(np.sqrt(np.mean(np.square(x))))
    if current > 0:
        x = x * (rms / current)
    return x.astype(np.float32)


def noise(kind: str, num_samples: int, sample_rate: int,
          rng: np.random.Generator) -> np.ndarray:
    """Generate ``num_samples`` of noise of the given ``kind`` (RMS 0.1, float32).

    Kinds (see :data:`NOISE_KINDS`):

    ``"white"``   flat spectrum Gaussian noise;
    ``"pink"``    1/f power spectrum;
    ``"brown"``   1/f^2 power spectrum (rumble);
    ``"babble"``  4-8 overlapping synthetic talkers;
    ``"hum"``     50 or 60 Hz mains hum with harmonics and slight flicker;
    ``"traffic"`` low-passed brown noise swelling as vehicles pass, plus tyre hiss.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    n, sr, rng = _check_synthesis("noise", num_samples, sample_rate, rng)
    t = np.arange(n) / sr

    if kind == "white":
        out = rng.standard_normal(n)
    elif kind == "pink":
        out = _spectral_noise(n, sr, 1.0, rng)
    elif kind == "brown":
        out = _spectral_noise(n, sr, 2.0, rng, f_min=20.0)
    elif kind == "babble":
        out = np.zeros(n)
        for _ in range(int(rng.integers(4, 9))):
            talker = synth_speech(n, sr, rng).astype(np.float64)
            out += np.roll(talker, int(rng.integers(n))) * rng.uniform(0.5, 1.0)
    elif kind == "hum":
        mains = float(rng.choice([50.0, 60.0]))
        drift = 1.0 + 0.002 * np.sin(2 * np.pi * rng.uniform(0.05, 0.2) * t
                                     + rng.uniform(0, 2 * np.pi))
        phase = 2 * np.pi * np.cumsum(mains * drift) / sr
        out = np.zeros(n)
        for k in range(1, 21):
            if k * mains >= 0.45 * sr:
                break
            amp = k ** -1.1 * (1.8 if k % 2 else 1.0) * rng.uniform(0.6, 1.2)
            out += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        flicker = 1.0 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t)
        out = out * flicker + 0.01 * np.std(out) * rng.standard_normal(n)
    else:  # traffic
        rumble = _spectral_noise(n, sr, 2.0, rng, f_min=10.0)
        cutoff = rng.uniform(250.0, 600.0)
        sos = _signal.butter(4, cutoff / (0.5 * sr), btype="lowpass", output="sos")
        rumble = _signal.sosfilt(sos, rumble)
        rumble /= np.std(rumble) + 1e-12
        hiss = _band_noise(n, sr, 500.0, 2500.0, rng)
        hiss /= np.std(hiss) + 1e-12
        # vehicles passing by: slow swells on top of a steady background
        env = np.full(n, rng.uniform(0.25, 0.5))
        dur = n / sr
        n_cars = max(1, int(rng.poisson(max(dur, 0.5) / rng.uniform(1.5, 4.0))))
        for _ in range(n_cars):
            centre = rng.uniform(-0.5, dur + 0.5)
            width = rng.uniform(0.4, 1.5)
            env += rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((t - centre) / width) ** 2)
        out = env * (rumble + 0.25 * hiss)
    return _normalise_rms(out)


# ---------------------------------------------------------------------------
# mixing and data sets
# ---------------------------------------------------------------------------


def mix_at_snr(clean, noise, snr_db: float) -> np.ndarray:
    """Return ``clean + g * noise`` (float32) where ``g`` sets the SNR exactly.

    The SNR is ``10 log10(sum(clean**2) / sum((g * noise)**2))`` over the whole
    signal.  ``clean`` and ``noise`` must have the same shape and non-zero
    energy; nothing is clipped (clipping would change the SNR).
    """
    c = np.asarray(clean, dtype=np.float64)
    nz = np.asarray(noise, dtype=np.float64)
    if c.ndim == 0 or c.size == 0:
        raise ValueError("clean must be a non-empty array")
    if nz.shape != c.shape:
        raise ValueError(f"noise must have the shape of clean {c.shape}, got {nz.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("clean contains NaN or infinite values")
    if not np.all(np.isfinite(nz)):
        raise ValueError("noise contains NaN or infinite values")
    try:
        snr = float(snr_db)
    except (TypeError, ValueError):
        raise ValueError(f"snr_db must be a number, got {snr_db!r}") from None
    if not math.isfinite(snr):
        raise ValueError(f"snr_db must be finite, got {snr_db!r}")
    p_clean = float(np.sum(c * c))
    p_noise = float(np.sum(nz * nz))
    if p_clean <= 0:
        raise ValueError("clean is silent (zero energy): the SNR is undefined")
    if p_noise <= 0:
        raise ValueError("noise is silent (zero energy): it cannot be scaled to an SNR")
    gain = math.sqrt(p_clean / (p_noise * 10.0 ** (snr / 10.0)))
    return (c + gain * nz).astype(np.float32)


def _segment_window(n: int, start: int, stop: int, fade: int) -> np.ndarray:
    """1 on ``[start, stop)``, falling to 0 over ``fade`` samples on each side (raised cosine), 0 elsewhere."""
    t = np.arange(n)
    outside = np.maximum(np.maximum(start - t, t - (stop - 1)), 0)
    return 0.5 + 0.5 * np.cos(np.pi * np.minimum(outside / max(fade, 1), 1.0))


def _segments(n: int, sample_rate: int, rng: np.random.Generator, per_second: float,
              seconds: Tuple[float, float], max_share: float) -> List[Tuple[int, int]]:
    """``1 + Poisson(per_second * duration)`` segments ``[start, stop)`` of ``U(seconds)`` seconds (at most
    ``max_share`` of the signal), each at a uniformly drawn position."""
    count = 1 + int(rng.poisson(per_second * n / sample_rate))
    out = []
    for _ in range(count):
        length = int(round(min(rng.uniform(*seconds) * sample_rate, max_share * n)))
        length = min(n, max(1, length))
        start = int(rng.integers(0, n - length + 1))
        out.append((start, start + length))
    return out


def noise_envelope(num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The level of a nonstationary noise along an utterance, relative to the speech: ``(num_samples,)`` float64.

    ``g[t]`` is the noise's RMS at sample ``t`` over the clean utterance's RMS (over the whole
    utterance): the local SNR is ``-20 log10 g[t]`` dB, and ``g[t] == 0`` means no noise at all.
    Drawn from ``rng``, in this order:

    * a ramp: the local SNR goes linearly in dB from +20 dB to -5 dB across the utterance
      (:data:`RAMP_SNR_DB`), or from -5 dB to +20 dB (the direction drawn with probability 1/2);
    * bursts: ``1 + Poisson(1.5 per second)`` short loud segments of ``U(30, 150)`` ms (at most 15% of
      the utterance each) at uniformly drawn positions, each at a local SNR drawn from ``U(-10, -5)`` dB
      (:data:`BURST_SNR_DB`, as loud as the loudest end of the ramp or louder); the louder of burst and
      ramp wins;
    * gaps: ``1 + Poisson(0.5 per second)`` segments of ``U(100, 300)`` ms (at most 25% of the utterance
      each) at uniformly drawn positions without any noise (``g == 0`` exactly), bursts included.

    Bursts and gaps fade in and out over 5 ms (raised cosine) outside their segment.
    """
    n, sr, rng = _check_synthesis("noise_envelope", num_samples, sample_rate, rng)
    fade = max(1, int(round(0.005 * sr)))
    high, low = RAMP_SNR_DB
    ramp_db = np.linspace(high, low, n) if rng.random() < 0.5 else np.linspace(low, high, n)
    level = 10.0 ** (-ramp_db / 20.0)
    for start, stop in _segments(n, sr, rng, 1.5, (0.03, 0.15), 0.15):
        burst = 10.0 ** (-rng.uniform(*BURST_SNR_DB) / 20.0)
        level = np.maximum(level, burst * _segment_window(n, start, stop, fade))
    for start, stop in _segments(n, sr, rng, 0.5, (0.1, 0.3), 0.25):
        level = level * (1.0 - _segment_window(n, start, stop, fade))
    return level


def builtin_speech_pairs(
    split: str = "train",
    num_utterances: int = 32,
    seconds: float = 2.0,
    sample_rate: int = 16000,
    snr_range: Tuple[float, float] = (0.0, 15.0),
    seed: int = 0,
    noise_kinds: Sequence[str] = NOISE_KINDS,
    noise_profile: str = "stationary",
) -> List[Tuple[np.ndarray, np.ndarray]]:
    """Deterministic ``(clean, noisy)`` float32 pairs of synthetic speech (``(x0, y)``, each ``(L,)``).

    Each utterance is :func:`synth_speech` of ``seconds`` length mixed with a
    noise kind drawn from ``noise_kinds``; ``noise_profile`` (one of
    :data:`NOISE_PROFILES`) sets its level:

    ``"stationary"`` (the default)
        one level for the whole utterance, at an SNR drawn uniformly from
        ``snr_range`` (dB);
    ``"nonstationary"``
        the level follows :func:`noise_envelope`, drawn after the noise: an SNR
        ramp from +20 dB to -5 dB (or back), short bursts at -10 to -5 dB and
        gaps without any noise.  ``snr_range`` does not apply (only its default
        is accepted).  The clean utterances, noise kinds and noise waveforms
        are those of ``"stationary"`` (the clean ones up to the scaling below).

    ``"train"`` and ``"validation"`` use independent random streams derived
    from ``seed``.  If a mixture would exceed 0.99 in magnitude, noisy and
    clean are scaled together (the SNR is unchanged).
    """
    if split not in ("train", "validation"):
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    num_utterances = _check_count(num_utterances, "num_utterances")
    try:
        seconds_f = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}") from None
    if not (math.isfinite(seconds_f) and seconds_f > 0):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    sample_rate = _check_rate(sample_rate, "sample_rate")
    try:
        lo, hi = (float(v) for v in snr_range)
    except (TypeError, ValueError):
        raise ValueError(
            f"snr_range must be a (low, high) pair in dB, got {snr_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(
            f"snr_range must be a (low, high) pair with low <= high, got {snr_range!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(noise_kinds, str):
        noise_kinds = (noise_kinds,)
    noise_kinds = tuple(noise_kinds)
    if not noise_kinds or any(k not in NOISE_KINDS for k in noise_kinds):
        raise ValueError(f"noise_kinds must be a non-empty subset of {NOISE_KINDS}, "
                         f"got {noise_kinds!r}")
    if not isinstance(noise_profile, str) or noise_profile not in NOISE_PROFILES:
        raise ValueError(f"noise_profile must be one of {NOISE_PROFILES}, got {noise_profile!r}")
    if noise_profile == "nonstationary" and (lo, hi) != (0.0, 15.0):
        raise ValueError("snr_range applies to noise_profile='stationary' only; the nonstationary noise's "
                         f"levels are those of noise_envelope (leave snr_range out), got {snr_range!r}")
    n = max(1, int(round(seconds_f * sample_rate)))
    split_id = 0 if split == "train" else 1
    pairs = []
    for i in range(num_utterances):
        rng = np.random.default_rng([int(seed), split_id, i])
        clean = synth_speech(n, sample_rate, rng)
        if not np.any(clean):  # extremely short utterance fell into a pause
            clean = (0.5 * np.sin(2 * np.pi * 150.0 * np.arange(n) / sample_rate)
                     ).astype(np.float32)
        kind = noise_kinds[int(rng.integers(len(noise_kinds)))]
        nz = noise(kind, n, sample_rate, rng)
        if noise_profile == "stationary":
            noisy = mix_at_snr(clean, nz, rng.uniform(lo, hi))
        else:
            c = clean.astype(np.float64)
            nz = nz.astype(np.float64)
            gain = math.sqrt(np.mean(c * c) / np.mean(nz * nz))
            noisy = (c + gain * noise_envelope(n, sample_rate, rng) * nz).astype(np.float32)
        peak = float(np.abs(noisy).max())
        if peak > 0.99:
            scale = np.float32(0.99 / peak)
            noisy = noisy * scale
            clean = clean * scale
        pairs.append((clean.astype(np.float32), noisy.astype(np.float32)))
    return pairs


# ---------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------


def _polyphase_filter(up: int, down: int) -> Tuple[np.ndarray, int]:
    """Kaiser-windowed (beta 5) low-pass sinc, gain ``up``; returns (taps, half)."""
    max_rate = max(up, down)
    half = 10 * max_rate
    cutoff = 1.0 / max_rate
    t = np.arange(2 * half + 1) - half
    h = cutoff * np.sinc(cutoff * t) * np.kaiser(2 * half + 1, 5.0)
    h *= up / h.sum()
    return h, half


def _resample_poly_numpy(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """Polyphase resampling of the last axis in plain numpy.

    Computes ``y[m] = sum_k h[k] * x_up[m * down + half - k]`` where ``x_up``
    is ``x`` with ``up - 1`` zeros between samples, touching only the
    non-zero samples.
    """
    h, half = _polyphase_filter(up, down)
    n_taps = h.shape[0]
    n = x.shape[-1]
    n_out = -(-n * up // down)
    rows = x.reshape(-1, n)
    out = np.empty((rows.shape[0], n_out), dtype=np.float64)
    per_out = -(-n_taps // up) + 1
    chunk = max(1, 1_000_000 // per_out)
    for start in range(0, n_out, chunk):
        m = np.arange(start, min(n_out, start + chunk))
        j0 = m * down + half                                  # index into x_up
        i_first = -(-(j0 - (n_taps - 1)) // up)               # ceil division
        i = i_first[:, None] + np.arange(per_out)[None, :]    # source samples
        k = j0[:, None] - i * up                              # filter taps
        valid = (k >= 0) & (k < n_taps) & (i >= 0) & (i < n)
        taps = np.where(valid, h[np.clip(k, 0, n_taps - 1)], 0.0)
        idx = np.clip(i, 0, n - 1)
        for r in range(rows.shape[0]):
            out[r, start:start + m.shape[0]] = np.sum(taps * rows[r][idx], axis=1)
    return out.reshape(x.shape[:-1] + (n_out,))


def resample(waveform, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``waveform`` (time on the last axis) from ``orig_sr`` to ``target_sr``.

    Uses a polyphase anti-aliasing filter (:func:`scipy.signal.resample_poly`
    when scipy is available, an equivalent numpy implementation otherwise).
    The output has ``ceil(n * target_sr / orig_sr)`` samples and keeps the
    input's float dtype (integer input gives float32).
    """
    orig = _check_rate(orig_sr, "orig_sr")
    target = _check_rate(target_sr, "target_sr")
    x = np.asarray(waveform)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"waveform must have at least one sample on its last axis, "
                         f"got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"waveform must be a real-valued array, got dtype {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform contains NaN or infinite values")
    out_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    if orig == target:
        return x.astype(out_dtype, copy=True)
    g = math.gcd(orig, target)
    up, down = target // g, orig // g
    x64 = x.astype(np.float64)
    if _signal is not None:
        y = _signal.resample_poly(x64, up, down, axis=-1)
    else:  # pragma: no cover - scipy is a scikit-image dependency
        y = _resample_poly_numpy(x64, up, down)
    return y.astype(out_dtype)
