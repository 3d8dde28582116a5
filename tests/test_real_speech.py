"""The real-speech set builder (restoregrad_adapter.contrib.data.real_speech) on a generated stand-in for the
unpacked Debian packages: layout, held-out speakers, SNRs, seeding and the manifest. Offline."""

import json

import numpy as np
import pytest
import soundfile

from restoregrad_adapter.contrib.data import real_speech
from restoregrad_adapter.contrib.data.readers import voicebank_pair_files


def voice(seconds, rate, pitch, seed):
    """A voiced, syllable-modulated tone: something the trimming and mixing treat as speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None)
    return (0.4 * envelope * np.sin(2 * np.pi * pitch * t) + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture
def sources(tmp_path):
    """A folder laid out like the three packages unpacked with dpkg -x, with made-up recordings."""
    root = tmp_path / "root"
    asterisk = root / real_speech.ASTERISK_DIR
    (asterisk / "digits").mkdir(parents=True)
    for i in range(5):
        soundfile.write(asterisk / f"prompt-{i}.wav", voice(1.2, 8000, 180 + 10 * i, i), 8000)
    soundfile.write(asterisk / "digits" / "1.wav", voice(0.6, 8000, 210, 9), 8000)
    codec2 = root / real_speech.CODEC2_DIR
    (codec2 / "wav").mkdir(parents=True), (codec2 / "raw").mkdir()
    for k, speaker in enumerate(real_speech.TRAIN_SPEAKERS[:3] + real_speech.TEST_SPEAKERS[:2]):
        soundfile.write(codec2 / "wav" / f"{speaker}.wav", voice(5.0, 8000, 120 + 15 * k, 20 + k), 8000)
    # an over-the-air recording whose own noise buries the speech: not a clean reference
    radio = voice(5.0, 8000, 150, 50) + 0.2 * np.random.default_rng(51).standard_normal(40000).astype(np.float32)
    soundfile.write(codec2 / "wav" / f"{real_speech.TEST_SPEAKERS[4]}.wav", radio, 8000)
    raw = (voice(2.5, 8000, 140, 30) * 32767).astype("<i2")  # codec2's headerless 8 kHz 16-bit files
    raw.tofile(codec2 / "raw" / f"{real_speech.TRAIN_SPEAKERS[4]}.raw")
    alsa = root / real_speech.ALSA_DIR
    alsa.mkdir(parents=True)
    soundfile.write(alsa / "Front_Left.wav", np.stack([voice(1.5, 48000, 200, 40)] * 2, 1), 48000)
    soundfile.write(alsa / "Noise.wav", 0.1 * np.random.default_rng(41).standard_normal(48000).astype(np.float32),
                    48000)
    return root


def test_builds_held_out_speakers_in_the_voicebank_layout(sources, tmp_path, no_network):
    out = tmp_path / "set"
    manifest = real_speech.build(out, seed=3, sources=sources, synthetic=False)
    assert not (tmp_path / "set.partial").exists()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest and manifest["seed"] == 3
    train, test = voicebank_pair_files(out, "train"), voicebank_pair_files(out, "test")
    assert len(train) == manifest["counts"]["train"] and len(test) == manifest["counts"]["test"] > 0
    speakers = manifest["speakers"]
    radio = real_speech.TEST_SPEAKERS[4]
    assert list(manifest["excluded_noisy_recordings_db"]) == [radio] and radio not in speakers["test"]
    assert manifest["excluded_noisy_recordings_db"][radio] < real_speech.MIN_DYNAMIC_RANGE_DB
    held_out = [f for f in manifest["files"] if f["split"] == "test"]
    sources = [f["source"] for f in held_out]
    assert len(held_out) == 3 * len(set(sources)) and all(sources.count(x) == 3 for x in sources)
    assert not set(speakers["train"]) & set(speakers["test"])
    assert set(speakers["test"]) <= set(real_speech.TEST_SPEAKERS) | {"alsa"}
    assert "allison" in speakers["train"] and "alsa" in speakers["test"]
    for entry in manifest["files"]:
        split = {"train": ("clean_trainset_28spk_wav", "noisy_trainset_28spk_wav"),
                 "test": ("clean_testset_wav", "noisy_testset_wav")}[entry["split"]]
        clean, rate = soundfile.read(out / split[0] / entry["file"], dtype="float64")
        noisy, _ = soundfile.read(out / split[1] / entry["file"], dtype="float64")
        assert rate == 16000 and len(clean) == len(noisy) == round(entry["seconds"] * 16000)
        assert 0 <= entry["snr_db"] <= 15 and entry["noise"] in manifest["noise_types"]
        assert real_speech.dynamic_range_db(clean) >= real_speech.MIN_DYNAMIC_RANGE_DB or entry["split"] == "train"
        snr = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
        assert snr == pytest.approx(entry["snr_db"], abs=0.15)  # 16-bit files
        assert np.abs(noisy).max() == pytest.approx(10 ** (entry["peak_dbfs"] / 20), rel=2e-3)


def test_the_same_seed_builds_the_same_set_and_nothing_is_overwritten(sources, tmp_path, no_network):
    first = real_speech.build(tmp_path / "a", seed=0, sources=sources, synthetic=False)
    again = real_speech.build(tmp_path / "b", seed=0, sources=sources, synthetic=False)
    other = real_speech.build(tmp_path / "c", seed=1, sources=sources, synthetic=False)
    assert first["files"] == again["files"] and first["files"] != other["files"]
    name = first["files"][0]["file"]
    folder = "noisy_trainset_28spk_wav" if first["files"][0]["split"] == "train" else "noisy_testset_wav"
    assert (tmp_path / "a" / folder / name).read_bytes() == (tmp_path / "b" / folder / name).read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        real_speech.build(tmp_path / "a", seed=0, sources=sources, synthetic=False)
    with pytest.raises(SystemExit, match="--test_mixtures"):
        real_speech.build(tmp_path / "d", seed=0, sources=sources, synthetic=False, test_mixtures=0)
    assert not (tmp_path / "d").exists()


def test_missing_sources_are_named(tmp_path, no_network):
    with pytest.raises(SystemExit, match="asterisk-core-sounds-en-wav"):
        real_speech.build(tmp_path / "set", sources=tmp_path, synthetic=False)
    assert not (tmp_path / "set").exists()


def test_speech_restore_benchmark_scores_settings_beside_the_noisy_input(tmp_path, monkeypatch, no_network):
    import torch

    from benchmark_modules import load
    from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad
    from restoregrad_adapter.contrib.metrics import si_snr
    from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

    torch.manual_seed(0)
    adapter = CDiffuSERestoreGrad.from_model(DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32),
                                             size="tiny")
    folder = adapter.save_pretrained(tmp_path / "adapter", sample_rate=16000)
    data = tmp_path / "set"
    (data / "clean_testset_wav").mkdir(parents=True), (data / "noisy_testset_wav").mkdir()
    rng = np.random.default_rng(0)
    noisy_scores = []
    for i in range(2):
        clean = voice(1.2, 16000, 150 + 40 * i, i)
        noisy = (clean + 0.05 * rng.standard_normal(len(clean))).astype(np.float32)
        soundfile.write(data / "clean_testset_wav" / f"u{i}.wav", clean, 16000, subtype="FLOAT")
        soundfile.write(data / "noisy_testset_wav" / f"u{i}.wav", noisy, 16000, subtype="FLOAT")
        noisy_scores.append(si_snr(torch.from_numpy(noisy)[None], torch.from_numpy(clean)[None]).item())
    bench = load(monkeypatch, "speech_restore")
    bench.main(["--adapter", str(folder), "--data_dir", str(data), "--settings", "default", "released",
                "--output", str(tmp_path / "table.json")])
    table = json.loads((tmp_path / "table.json").read_text())
    assert set(table) == {"noisy", "default", "released"}
    assert table["noisy"]["si_snr"] == pytest.approx(np.mean(noisy_scores), abs=1e-4)
    assert table["default"]["si_snr"] != table["released"]["si_snr"]
    assert all(set(row) >= {"si_snr", "pesq", "stoi"} for row in table.values())
