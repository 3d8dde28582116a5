"""A paired speech-enhancement set built from real recordings, in the VoiceBank+DEMAND layout.

    python -m restoregrad_adapter.contrib.data.real_speech OUT [--seed 0] [--sources DIR] [--no-synthetic]
        [--test_mixtures 3]

The clean speech is real recorded speech that Debian ships, plus synthesised voices as extra
training speakers:

- ``asterisk-core-sounds-en-wav``: 568 telephone prompts by one professional speaker ("Allison");
- ``codec2-examples``: recordings of about a dozen speakers, some read in a studio, some over the
  air (amateur radio), used as the codec's test material;
- ``alsa-utils``: the speaker-test voice ("Front Left", "Rear Right", ...);
- ``espeak-ng`` and ``flite`` voices reading sentences written for this set (only when those
  programs are installed; ``--no-synthetic`` leaves them out).

Every waveform is mixed down to mono and resampled to 16 kHz; long recordings are cut into
utterances of at most ``--max_seconds``. Each clean utterance is mixed with one noise at an SNR drawn
uniformly from ``--snr`` (0-15 dB by default), then both are given one random level (peak between
-25 and -1 dBFS), as a recording would be:

- real noise: babble, four to seven *other* utterances of the same split summed, and the ALSA
  speaker-test noise recording;
- coloured noise: white, pink, brown, mains hum and traffic (:func:`restoregrad_adapter.contrib.data.speech.noise`),
  with a slow random amplitude swing in half the cases, so that the noise is not stationary.

**Held out.** The test split is made of speakers that no training utterance contains (the
codec2 speakers in :data:`TEST_SPEAKERS` and the ALSA voice, all real); its babble comes from test
speakers only, and its noise draws use their own random streams. Synthesised voices are training
speakers only, so the test set is real speech throughout. Every held-out utterance is mixed
``--test_mixtures`` times (3), each with its own noise, SNR and level.

**Clean references.** Some of codec2's recordings were made over the air and carry their own
noise (the loud and the quiet frames of david4 and vk2tpm_004 differ by 2-4 dB): scored against
such a "clean" reference, removing noise counts as an error. Recordings whose loud frames stand less
than :data:`MIN_DYNAMIC_RANGE_DB` (20 dB) above their quiet ones are left out; the manifest lists them.

Output (written under ``OUT.partial`` and renamed to ``OUT`` when complete)::

    OUT/clean_trainset_28spk_wav/  OUT/noisy_trainset_28spk_wav/   training pairs, same file names
    OUT/clean_testset_wav/         OUT/noisy_testset_wav/          held-out pairs
    OUT/manifest.json              seed, sources, and per file: speaker, source, span, noise, SNR, level

``--sources DIR`` reads packages already unpacked under ``DIR`` (``dpkg -x package.deb DIR``);
without it the command fetches the three packages with ``apt-get download`` into ``OUT.sources``.
It is the one part of the library that reaches the network, and it never runs on its own: tests and
the default training runs stay offline.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .readers import VOICEBANK_FOLDERS
from .speech import mix_at_snr, noise, resample

__all__ = ["PACKAGES", "TEST_SPEAKERS", "MIN_DYNAMIC_RANGE_DB", "SENTENCES", "Utterance", "dynamic_range_db",
           "fetch_sources", "real_utterances",
           "synthetic_utterances", "build", "main"]

logger = logging.getLogger("restoregrad_adapter.real_speech")

SAMPLE_RATE = 16000
PACKAGES = ("asterisk-core-sounds-en-wav", "codec2-examples", "alsa-utils")
ASTERISK_DIR = "usr/share/asterisk/sounds/en_US_f_Allison"
CODEC2_DIR = "usr/share/codec2"
ALSA_DIR = "usr/share/sounds/alsa"

#: codec2's recordings, one speaker each. Coded or concatenated copies (f2400, m2400, all, the
#: *_10s cuts, hts1/hts2 next to hts1a/hts2a) are left out so that no speaker is on both sides.
#: Over-the-air recordings whose own noise buries the speech (david4, vk2tpm_004: their loud and quiet
#: frames differ by 2-4 dB) would be references that are not clean; :data:`MIN_DYNAMIC_RANGE_DB` leaves
#: such recordings out, and the manifest lists them.
TRAIN_SPEAKERS = ("big_dog", "cross", "hts1a", "mmt1", "ve9qrp", "vk5qi", "kristoff", "speech_orig_16k")
TEST_SPEAKERS = ("forig", "morig", "hts2a", "wia_16kHz", "david4", "vk2tpm_004")
#: A clean reference's loud frames (95th percentile of 20 ms frame energies) must stand this far above its
#: quiet ones (10th percentile); studio recordings reach 25-55 dB, noisy radio recordings 2-5 dB.
MIN_DYNAMIC_RANGE_DB = 20.0

#: Sentences for the synthesised voices (written for this set).
SENTENCES = (
    "The kettle sang on the stove while the rain kept falling.",
    "Please leave the parcel with the neighbour across the road.",
    "Seven small boats drifted slowly toward the harbour lights.",
    "She found the old map folded inside a dusty book.",
    "Turn left at the bakery and walk past the blue gate.",
    "The meeting was moved to Thursday at half past nine.",
    "A cold wind swept the leaves along the empty street.",
    "He tuned the radio until the voice came through clearly.",
    "Our train leaves from platform four in ten minutes.",
    "The children laughed as the kite climbed over the hill.",
    "Write the numbers down before you forget them again.",
    "The lamp in the window burned late into the night.",
    "Fresh bread and warm soup were waiting in the kitchen.",
    "Check the tyres and the oil before the long drive.",
    "The orchestra paused, and the hall fell completely silent.",
    "Bring a pencil, a ruler and a sheet of plain paper.",
    "The river rose quickly after three days of heavy storms.",
    "I will call you back as soon as the call ends.",
    "The garden gate creaked open in the morning breeze.",
    "Every page of the report must be signed and dated.",
    "The small dog barked at the postman every single day.",
    "They painted the fence white over the long weekend.",
    "Your order has been shipped and should arrive on Monday.",
    "The mountain path was steep, narrow and covered in snow.",
    "Switch off the lights when you leave the workshop.",
    "The doctor asked him to breathe in slowly and hold it.",
    "A flock of geese flew low across the grey sky.",
    "Press the green button twice to start the machine.",
    "The museum opens at ten and closes at five.",
    "We shared a pot of tea and talked about the journey.",
    "The engine coughed twice and then started with a roar.",
    "Thank you for waiting, an agent will be with you shortly.",
)
ESPEAK_VOICES = ("en-us+m1", "en-us+f2", "en+m3", "en+f4", "en-gb-scotland+m2", "en-gb-x-rp+f3",
                 "en-029+m4", "en-gb-x-gbclan+f1")
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
NOISE_TYPES = ("babble", "alsa_noise", "white", "pink", "brown", "hum", "traffic")


@dataclass
class Utterance:
    """A clean 16 kHz utterance, who speaks it, where it came from and which split it belongs to."""

    speaker: str
    source: str
    start: float
    audio: np.ndarray
    split: str
    synthetic: bool = False


# ---------------------------------------------------------------------- sources
def fetch_sources(folder: Path) -> Path:
    """Download :data:`PACKAGES` with ``apt-get download`` into ``folder`` and unpack them there."""
    folder.mkdir(parents=True, exist_ok=True)
    root = folder / "root"
    if all((root / d).is_dir() for d in (ASTERISK_DIR, CODEC2_DIR, ALSA_DIR)):
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise SystemExit("error: apt-get and dpkg are needed to fetch the speech packages; unpack "
                         f"{', '.join(PACKAGES)} yourself (dpkg -x) and pass --sources DIR")
    logger.info("downloading %s", ", ".join(PACKAGES))
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=folder, check=True)
    for deb in sorted(folder.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def _read(path: Path) -> np.ndarray:
    """A mono 16 kHz float waveform from a WAV file or codec2's headerless 8 kHz 16-bit ``.raw``."""
    from restoregrad_adapter.io import read_audio

    if path.suffix == ".raw":
        samples = np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
        return resample(samples, 8000, SAMPLE_RATE).astype(np.float32)
    audio, _ = read_audio(path, sample_rate=SAMPLE_RATE, mix_to_mono=True)
    return audio


FRAME = SAMPLE_RATE // 50  # 20 ms, the frames silence and noise are judged on


def _frame_energies(audio: np.ndarray) -> np.ndarray:
    """The mean square of each whole 20 ms frame of ``audio``, in its precision (a trailing partial frame is
    left out)."""
    count = len(audio) // FRAME
    return (audio[: count * FRAME].reshape(count, FRAME) ** 2).mean(axis=1)


def _trim(audio: np.ndarray, threshold_db: float = -40.0) -> np.ndarray:
    """Cut leading and trailing silence (20 ms frames below ``threshold_db`` of the loudest frame)."""
    energy = _frame_energies(audio)
    if len(energy) == 0:
        return audio
    loud = np.flatnonzero(energy > energy.max() * 10 ** (threshold_db / 10))
    return audio[loud[0] * FRAME: (loud[-1] + 1) * FRAME]


def dynamic_range_db(audio: np.ndarray) -> float:
    """How far a recording's loud 20 ms frames stand above its quiet ones: the ratio of the 95th to the
    10th percentile of the frame energies, in dB (a clean recording with pauses: 25 dB or more)."""
    energy = _frame_energies(audio.astype(np.float64)) + 1e-12
    if len(energy) < 2:
        return float("inf")
    return float(10 * np.log10(np.percentile(energy, 95) / np.percentile(energy, 10)))


def _chunks(speaker: str, source: str, audio: np.ndarray, split: str, max_seconds: float,
            min_seconds: float = 1.0) -> list[Utterance]:
    """A recording cut into pieces of at most ``max_seconds``, each trimmed; near-silent pieces are dropped."""
    size = int(max_seconds * SAMPLE_RATE)
    out = []
    for begin in range(0, len(audio), size):
        piece = _trim(audio[begin: begin + size])
        rms = float(np.sqrt(np.mean(piece**2))) if len(piece) else 0.0
        if len(piece) >= min_seconds * SAMPLE_RATE and rms > 1e-3:
            out.append(Utterance(speaker, source, begin / SAMPLE_RATE, piece.astype(np.float32), split))
    return out


def real_utterances(root: Path, max_seconds: float = 4.0, excluded: dict | None = None) -> list[Utterance]:
    """The recorded speech of the unpacked packages under ``root``, split by speaker.

    codec2 recordings below :data:`MIN_DYNAMIC_RANGE_DB` are left out (their noise is part of the
    "clean" signal); ``excluded``, when given, receives their names and dynamic ranges.
    """
    root = Path(root)
    utterances: list[Utterance] = []
    asterisk = sorted((root / ASTERISK_DIR).rglob("*.wav"))
    if not asterisk:
        raise SystemExit(f"error: no Asterisk prompts under {root / ASTERISK_DIR}; is "
                         "asterisk-core-sounds-en-wav unpacked there?")
    for path in asterisk:
        if "silence" in path.parts:
            continue
        audio = _trim(_read(path))
        if len(audio) >= 0.4 * SAMPLE_RATE:
            rel = str(path.relative_to(root))
            utterances.append(Utterance("allison", rel, 0.0, audio[: int(max_seconds * SAMPLE_RATE)], "train"))
    codec2 = root / CODEC2_DIR
    for split, speakers in (("train", TRAIN_SPEAKERS), ("test", TEST_SPEAKERS)):
        for speaker in speakers:
            candidates = [codec2 / "wav" / f"{speaker}.wav", codec2 / "raw" / f"{speaker}.wav",
                          codec2 / "raw" / f"{speaker}.raw"]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                logger.warning("codec2 recording %s not found; skipped", speaker)
                continue
            audio = _read(path)
            spread = dynamic_range_db(audio)
            if spread < MIN_DYNAMIC_RANGE_DB:
                logger.warning("codec2 recording %s left out: its loud frames stand only %.1f dB above its quiet "
                               "ones (noise in the reference)", speaker, spread)
                if excluded is not None:
                    excluded[speaker] = round(spread, 1)
                continue
            utterances += _chunks(speaker, str(path.relative_to(root)), audio, split, max_seconds)
    for path in sorted((root / ALSA_DIR).glob("*.wav")):
        if path.stem != "Noise":
            utterances.append(Utterance("alsa", str(path.relative_to(root)), 0.0, _trim(_read(path)), "test"))
    return utterances


def synthetic_utterances(max_seconds: float = 4.0) -> list[Utterance]:
    """:data:`SENTENCES` read by every installed espeak-ng and flite voice (training speakers only)."""
    from tqdm.auto import tqdm

    jobs = []
    if shutil.which("espeak-ng"):
        jobs += [("espeak-ng", voice) for voice in ESPEAK_VOICES]
    if shutil.which("flite"):
        jobs += [("flite", voice) for voice in FLITE_VOICES]
    if not jobs:
        logger.warning("neither espeak-ng nor flite is installed: no synthesised voices")
        return []
    utterances = []
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "voice.wav"
        for (program, voice), (index, sentence) in tqdm(
                [(job, item) for job in jobs for item in enumerate(SENTENCES)], desc="synthesising", unit="utt"):
            if program == "espeak-ng":
                command = ["espeak-ng", "-v", voice, "-s", "150", "-w", str(target), sentence]
            else:
                command = ["flite", "-voice", voice, "-t", sentence, "-o", str(target)]
            subprocess.run(command, check=True, capture_output=True)
            audio = _trim(_read(target))[: int(max_seconds * SAMPLE_RATE)]
            utterances.append(Utterance(f"{program}-{voice}", f"{program} -v {voice}: sentence {index}", 0.0,
                                        audio, "train", synthetic=True))
    return utterances


# ---------------------------------------------------------------------- mixing
def _noise_for(kind: str, length: int, pool: list[Utterance], exclude: str, alsa_noise: np.ndarray | None,
               rng: np.random.Generator) -> np.ndarray:
    if kind == "babble":
        others = [u for u in pool if u.speaker != exclude]
        out = np.zeros(length)
        for i in rng.choice(len(others), size=min(int(rng.integers(4, 8)), len(others)), replace=False):
            talker = others[int(i)].audio.astype(np.float64)
            talker = np.resize(talker, length)  # repeated to cover the utterance
            out += np.roll(talker, int(rng.integers(length))) / (np.std(talker) + 1e-9)
        return out
    if kind == "alsa_noise":
        start = int(rng.integers(len(alsa_noise)))
        return np.resize(np.roll(alsa_noise, -start), length).astype(np.float64)
    out = noise(kind, length, SAMPLE_RATE, rng).astype(np.float64)
    if rng.random() < 0.5:  # a slow swing of the noise level: 0.2-2 Hz, up to 12 dB
        t = np.arange(length) / SAMPLE_RATE
        depth = rng.uniform(0.3, 0.75)
        out *= 1 + depth * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * t + rng.uniform(0, 2 * np.pi))
    return out


def build(out: Path, seed: int = 0, sources: Path | None = None, synthetic: bool = True,
          snr: tuple[float, float] = (0.0, 15.0), max_seconds: float = 4.0, test_mixtures: int = 3) -> dict:
    """Build the set under ``out`` (see the module docstring) and return its manifest.

    ``test_mixtures``: how many noisy versions (each its own noise, SNR and level) of every held-out
    utterance the test split holds; training utterances are mixed once.
    """
    from tqdm.auto import tqdm

    from restoregrad_adapter.io import write_audio, write_json

    out = Path(out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; choose a new folder (nothing was changed)")
    if not snr[0] <= snr[1]:
        raise SystemExit(f"error: --snr wants LOW HIGH with LOW <= HIGH, got {snr}")
    if isinstance(test_mixtures, bool) or not isinstance(test_mixtures, int) or test_mixtures < 1:
        raise SystemExit(f"error: --test_mixtures must be a positive integer, got {test_mixtures!r}")
    root = Path(sources) if sources is not None else fetch_sources(Path(str(out) + ".sources"))
    excluded: dict[str, float] = {}
    utterances = (real_utterances(root, max_seconds, excluded)
                  + (synthetic_utterances(max_seconds) if synthetic else []))
    alsa_path = root / ALSA_DIR / "Noise.wav"
    alsa_noise = _read(alsa_path) if alsa_path.is_file() else None
    kinds = NOISE_TYPES if alsa_noise is not None else tuple(k for k in NOISE_TYPES if k != "alsa_noise")

    partial = Path(str(out) + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    folders = VOICEBANK_FOLDERS
    for pair in folders.values():
        for name in pair:
            (partial / name).mkdir(parents=True)
    files = []
    for split_index, split in enumerate(("train", "test")):
        pool = [u for u in utterances if u.split == split]
        rng = np.random.default_rng([seed, split_index])  # each split its own stream
        order = [i for i in rng.permutation(len(pool)) for _ in range(test_mixtures if split == "test" else 1)]
        for number, i in enumerate(tqdm(order, desc=f"mixing {split}", unit="utt")):
            utterance = pool[int(i)]
            clean = utterance.audio.astype(np.float64)
            kind = str(rng.choice(kinds))
            snr_db = float(rng.uniform(*snr))
            noisy = mix_at_snr(clean, _noise_for(kind, len(clean), pool, utterance.speaker, alsa_noise, rng), snr_db)
            peak_db = float(rng.uniform(-25.0, -1.0))
            gain = 10 ** (peak_db / 20) / max(float(np.abs(noisy).max()), 1e-9)
            name = f"{utterance.speaker.replace('+', '_')}_{number:04d}.wav"
            clean_dir, noisy_dir = folders[split]
            write_audio(partial / clean_dir / name, (clean * gain).astype(np.float32), SAMPLE_RATE)
            write_audio(partial / noisy_dir / name, (noisy * gain).astype(np.float32), SAMPLE_RATE)
            files.append({"file": name, "split": split, "speaker": utterance.speaker, "source": utterance.source,
                          "start_s": round(utterance.start, 3), "seconds": round(len(clean) / SAMPLE_RATE, 3),
                          "synthetic": utterance.synthetic, "noise": kind, "snr_db": round(snr_db, 3),
                          "peak_dbfs": round(peak_db, 3)})
    speakers = {split: sorted({f["speaker"] for f in files if f["split"] == split}) for split in folders}
    manifest = {"seed": seed, "sample_rate": SAMPLE_RATE, "snr_db": list(snr), "packages": list(PACKAGES),
                "synthetic_voices": synthetic, "noise_types": list(kinds), "speakers": speakers,
                "test_mixtures": test_mixtures, "min_dynamic_range_db": MIN_DYNAMIC_RANGE_DB,
                "excluded_noisy_recordings_db": excluded,
                "counts": {split: sum(f["split"] == split for f in files) for split in folders}, "files": files}
    if set(speakers["train"]) & set(speakers["test"]):
        raise RuntimeError(f"speakers on both sides: {set(speakers['train']) & set(speakers['test'])}")
    write_json(manifest, partial / "manifest.json")
    os.replace(partial, out)
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m restoregrad_adapter.contrib.data.real_speech",
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder to create (VoiceBank+DEMAND layout)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", type=Path, default=None,
                        help="a folder the packages are unpacked in (default: fetch them with apt-get download)")
    parser.add_argument("--no-synthetic", dest="synthetic", action="store_false",
                        help="leave out the espeak-ng and flite voices")
    parser.add_argument("--snr", type=float, nargs=2, default=(0.0, 15.0), metavar=("LOW", "HIGH"))
    parser.add_argument("--max_seconds", type=float, default=4.0, help="longest utterance")
    parser.add_argument("--test_mixtures", type=int, default=3,
                        help="noisy versions of every held-out utterance (each its own noise, SNR and level)")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    manifest = build(args.out, args.seed, args.sources, args.synthetic, tuple(args.snr), args.max_seconds,
                     args.test_mixtures)
    logger.info("wrote %s: %d training and %d held-out pairs; test speakers %s", args.out,
                manifest["counts"]["train"], manifest["counts"]["test"], ", ".join(manifest["speakers"]["test"]))


if __name__ == "__main__":
    main()
