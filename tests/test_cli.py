"""The restoregrad command: restore, evaluate and show-prior round trips on generated files."""

import os

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from restoregrad_adapter import RestoreGrad
from restoregrad_adapter.cli import main
from restoregrad_adapter.integrations import weatherdiff
from restoregrad_adapter.contrib.reference_nets import WeatherUNet


def write_png(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_restore_images_of_any_size_and_evaluate(image_adapter, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_png(inputs / "a.png", 23, 37, seed=1)
    write_png(inputs / "b.png", 16, 16, seed=2)
    out = tmp_path / "out"
    assert main(["restore", "--adapter", str(image_adapter), str(inputs / "a.png"), str(inputs / "b.png"),
                 "-o", str(out), "--steps", "2", "--quiet"]) == 0
    for name, size in (("a.png", (37, 23)), ("b.png", (16, 16))):
        restored = Image.open(out / name)
        assert restored.size == size and restored.mode == "RGB"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    # evaluate: a file against itself is perfect SSIM; a table with a mean row
    assert main(["evaluate", "--pred", str(out), "--ref", str(out)]) == 0
    table = capsys.readouterr().out
    assert "PSNR_Y" in table and "SSIM_Y" in table and "mean" in table and "a.png" in table
    assert main(["evaluate", "--pred", str(out), "--ref", str(inputs)]) == 0
    values = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("a.png")]
    restored = np.asarray(Image.open(out / "a.png"), dtype=np.float64) / 255
    reference = np.asarray(Image.open(inputs / "a.png"), dtype=np.float64) / 255
    weights = np.array([65.481, 128.553, 24.966]) / 255
    mse = (((restored - reference) @ weights) ** 2).mean()
    assert float(values[0][1]) == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)


def test_restore_and_show_prior_for_speech(speech_adapter, tmp_path):
    rng = np.random.default_rng(0)
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(3000) / 16000) + 0.05 * rng.standard_normal(3000))
    soundfile.write(tmp_path / "noisy.wav", audio.astype(np.float32), 16000)
    out = tmp_path / "out"
    assert main(["restore", "--adapter", str(speech_adapter), str(tmp_path / "noisy.wav"), "-o", str(out),
                 "--quiet"]) == 0
    restored, rate = soundfile.read(out / "noisy.wav")
    assert rate == 16000 and restored.shape == (3000,) and np.isfinite(restored).all()
    png = tmp_path / "prior.png"
    assert main(["show-prior", "--adapter", str(speech_adapter), str(tmp_path / "noisy.wav"), "-o", str(png)]) == 0
    assert Image.open(png).size[0] > 100


def test_a_wav_at_another_rate_is_restored_at_the_adapters_rate_and_given_back_at_its_own(speech_adapter, tmp_path,
                                                                                          capsys):
    from restoregrad_adapter.contrib.data.speech import resample

    rng = np.random.default_rng(1)
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(1500) / 8000) + 0.05 * rng.standard_normal(1500))
    soundfile.write(tmp_path / "phone.wav", audio.astype(np.float32), 8000)
    assert main(["restore", "--adapter", str(speech_adapter), str(tmp_path / "phone.wav"), "-o", str(tmp_path / "out"),
                 "--quiet"]) == 0
    assert "resampling 8000 Hz to the adapter's 16000 Hz" in capsys.readouterr().err
    restored, rate = soundfile.read(tmp_path / "out" / "phone.wav", dtype="float32")
    assert rate == 8000 and restored.shape == (1500,)
    # Exactly what restoring the 16 kHz version and resampling the result back gives.
    adapter = RestoreGrad.from_pretrained(speech_adapter, load_posterior=False).eval()
    file_audio, _ = soundfile.read(tmp_path / "phone.wav", dtype="float32")
    upsampled = resample(file_audio, 8000, 16000).astype(np.float32)  # 3000 samples
    y = torch.from_numpy(upsampled)[None, None]  # the whole utterance: the adapter frames it itself
    expected = adapter.restore(y, generator=torch.Generator().manual_seed(0))[0, 0].numpy()
    expected = resample(expected, 16000, 8000)[:1500]
    np.testing.assert_allclose(restored, expected, atol=1e-4)  # 16-bit PCM
    assert main(["show-prior", "--adapter", str(speech_adapter), str(tmp_path / "phone.wav"), "-o",
                 str(tmp_path / "prior.png")]) == 0
    assert "resampling 8000 Hz" in capsys.readouterr().err


def test_restore_never_writes_over_an_input_and_refuses_shared_output_names(image_adapter, tmp_path, capsys):
    import stat

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        write_png(tmp_path / folder / "photo.png", 16, 16, seed=len(folder))
    original = (tmp_path / "a" / "photo.png").read_bytes()
    # -o the input's own folder: refused before any work, the photo untouched.
    assert main(["restore", "--adapter", str(image_adapter), str(tmp_path / "a" / "photo.png"), "-o",
                 str(tmp_path / "a"), "--quiet"]) == 2
    assert "would be written over the input" in capsys.readouterr().err
    assert (tmp_path / "a" / "photo.png").read_bytes() == original
    # Two inputs of the same name from different folders would overwrite each other.
    assert main(["restore", "--adapter", str(image_adapter), str(tmp_path / "a" / "photo.png"),
                 str(tmp_path / "b" / "photo.png"), "-o", str(tmp_path / "out"), "--quiet"]) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # A JPEG input is written as PNG, and the printed name says so; the usual file permissions.
    Image.open(tmp_path / "a" / "photo.png").save(tmp_path / "a" / "shot.jpg")
    old_umask = os.umask(0o022)
    try:
        assert main(["restore", "--adapter", str(image_adapter), str(tmp_path / "a" / "shot.jpg"), "-o",
                     str(tmp_path / "out"), "--quiet", "--steps", "1"]) == 0
    finally:
        os.umask(old_umask)
    assert f"-> {tmp_path / 'out' / 'shot.png'}" in capsys.readouterr().out
    assert stat.S_IMODE((tmp_path / "out" / "shot.png").stat().st_mode) == 0o644


def test_a_16_bit_greyscale_png_is_read_at_its_full_range(tmp_path, capsys):
    from restoregrad_adapter.io import read_image

    grey = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.shape == (32, 32, 3)
    np.testing.assert_allclose(image[..., 1], grey / 65535, atol=1e-6)
    # evaluate: the image against its own 8-bit copy scores what the 8-bit rounding costs, not 6.7 dB.
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    Image.fromarray(grey).save(tmp_path / "ref" / "deep.png")
    Image.fromarray((grey / 257).round().astype(np.uint8)).save(tmp_path / "pred" / "deep.png")
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]) == 0
    psnr = float(next(line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("deep")))
    assert psnr > 50


def test_show_prior_for_an_image(image_adapter, tmp_path):
    write_png(tmp_path / "x.png", 30, 40)
    assert main(["show-prior", "--adapter", str(image_adapter), str(tmp_path / "x.png"), "-o",
                 str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "p.png").format == "PNG"


def test_clear_errors(image_adapter, speech_adapter, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert "cannot read the image" in error(["restore", "--adapter", str(image_adapter), str(tmp_path / "broken.png"),
                                             "-o", str(tmp_path / "o")])
    assert "no such file" in error(["restore", "--adapter", str(image_adapter), str(tmp_path / "none.png"),
                                    "-o", str(tmp_path / "o")])
    assert "cannot load adapter" in error(["restore", "--adapter", str(tmp_path / "missing"),
                                           str(tmp_path / "broken.png"), "-o", str(tmp_path / "o")])
    soundfile.write(tmp_path / "stereo.wav", np.zeros((4000, 2), dtype=np.float32), 16000)
    assert "2 channels" in error(["restore", "--adapter", str(speech_adapter), str(tmp_path / "stereo.wav"),
                                  "-o", str(tmp_path / "o"), "--quiet"])
    assert "restores waveforms, not images" in error(["restore", "--adapter", str(speech_adapter),
                                                      str(tmp_path / "broken.png"), "-o", str(tmp_path / "o")])
    assert "is not a folder" in error(["evaluate", "--pred", str(tmp_path / "nope"), "--ref", str(tmp_path)])
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_restore_upscale_enlarges_bicubically_as_training_does(image_adapter, tmp_path, speech_adapter, capsys):
    from restoregrad_adapter.contrib.data.blur_sr import bicubic_resize
    from restoregrad_adapter.io import read_image

    write_png(tmp_path / "small.png", 10, 13, seed=3)
    out = tmp_path / "out"
    assert main(["restore", "--adapter", str(image_adapter), str(tmp_path / "small.png"), "-o", str(out),
                 "--steps", "2", "--quiet", "--upscale", "2"]) == 0
    restored = np.asarray(Image.open(out / "small.png"), dtype=np.float64) / 255
    assert restored.shape == (20, 26, 3)

    # the same as restoring the bicubically enlarged image (the y of super-resolution training) directly
    adapter = RestoreGrad.from_pretrained(image_adapter, load_posterior=False).eval()
    y = bicubic_resize(read_image(tmp_path / "small.png"), (20, 26))
    expected = adapter.restore(torch.from_numpy(y).permute(2, 0, 1)[None] * 2 - 1, num_inference_steps=2, eta=0.0,
                               generator=torch.Generator().manual_seed(0), progress=False)
    expected = ((expected[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(restored, expected, atol=0.5 / 255 + 1e-6)

    soundfile.write(tmp_path / "speech.wav", np.zeros(4000, dtype=np.float32), 16000)
    assert main(["restore", "--adapter", str(speech_adapter), str(tmp_path / "speech.wav"), "-o", str(out),
                 "--upscale", "2"]) == 2
    assert "enlarges images" in capsys.readouterr().err


def test_evaluate_adds_lpips_with_a_network_from_the_users_code(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_lpips.py").write_text(
        "import torch\n"
        "class Pixels(torch.nn.Module):\n"
        "    def forward(self, images):\n"
        "        return [images]\n"
        "def build():\n"
        "    return Pixels(), [torch.ones(3)]\n"
        "def wrong():\n"
        "    return 'alexnet'\n")
    monkeypatch.chdir(tmp_path)
    for folder, colour in (("pred", (255, 0, 0)), ("ref", (0, 255, 0))):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((12, 12, 3), colour, np.uint8)).save(tmp_path / folder / "x.png")
    assert main(["evaluate", "--pred", "pred", "--ref", "ref", "--lpips-network", "my_lpips:build"]) == 0
    header, _, row, _ = capsys.readouterr().out.splitlines()
    values = dict(zip(header.split(), row.split()))
    # the scaled colours, unit-normalised: the published formula by hand
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])
    red, green = ((np.array(c, float) * 2 - 1 - shift) / scale for c in ((1, 0, 0), (0, 1, 0)))
    expected = np.sum((red / np.linalg.norm(red) - green / np.linalg.norm(green)) ** 2)
    assert float(values["LPIPS"]) == pytest.approx(expected, abs=1e-4)
    assert main(["evaluate", "--pred", "pred", "--ref", "ref", "--lpips-network", "my_lpips:wrong"]) == 2
    assert "must return (feature_network, linear_weights)" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--self-ensemble"], ["--timestep-spacing", "trailing"], ["--upscale", "2"],
                                  ["--patch-size", "16"]])
def test_image_only_options_refuse_audio(speech_adapter, tmp_path, capsys, flag):
    soundfile.write(tmp_path / "noisy.wav", np.zeros(1000, dtype=np.float32), 16000)
    assert main(["restore", "--adapter", str(speech_adapter), str(tmp_path / "noisy.wav"), "-o", str(tmp_path / "out"),
                 "--quiet", *flag]) == 2
    assert f"{tmp_path / 'noisy.wav'} is audio" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_restore_sr_consistency_and_larger_patches(tmp_path, capsys):
    from restoregrad_adapter.consistency import bicubic_downsample_tensor, project_to_low_resolution
    from restoregrad_adapter.contrib.data.blur_sr import bicubic_resize
    from restoregrad_adapter.integrations.weatherdiff import restore_image
    from restoregrad_adapter.io import read_image

    torch.manual_seed(0)
    unet = WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16, fixed_size=False)
    adapter = RestoreGrad.with_encoders(weatherdiff.wrap(unet, patch_size=16, fully_convolutional=True), dims=2,
                                        in_channels=3, size="tiny")
    torch.nn.init.normal_(adapter.prior_net.encoder.head.weight, std=0.05)
    folder = adapter.save_pretrained(tmp_path / "adapter")
    adapter.eval()
    write_png(tmp_path / "small.png", 9, 12, seed=4)
    out = tmp_path / "out"
    assert main(["restore", "--adapter", str(folder), str(tmp_path / "small.png"), "-o", str(out), "--steps", "2",
                 "--quiet", "--upscale", "2", "--sr-consistency", "--patch-size", "24", "--stride", "6"]) == 0
    restored = np.asarray(Image.open(out / "small.png"), dtype=np.float64) / 255

    # restore_image with the 24-pixel patches, then the projection onto the small image
    small = torch.from_numpy(read_image(tmp_path / "small.png")).permute(2, 0, 1)[None] * 2 - 1
    y = torch.from_numpy(bicubic_resize(read_image(tmp_path / "small.png"), (18, 24))).permute(2, 0, 1)[None] * 2 - 1
    expected = restore_image(adapter, y, patch_size=24, stride=6, num_inference_steps=2,
                             generator=torch.Generator().manual_seed(0), progress=False, low_resolution=small)
    torch.testing.assert_close(expected, project_to_low_resolution(
        restore_image(adapter, y, patch_size=24, stride=6, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0), progress=False), small))
    expected01 = ((expected[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(restored, expected01, atol=0.5 / 255 + 1e-6)
    # before the clipping to [-1, 1], consistent with the small input
    torch.testing.assert_close(bicubic_downsample_tensor(expected, 2), small, atol=1e-5, rtol=0)

    # a fixed-size denoiser refuses other patch sizes; --sr-consistency needs --upscale
    strict = RestoreGrad.with_encoders(weatherdiff.wrap(WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                                                    attn_resolutions=(), image_size=16), patch_size=16),
                                       dims=2, in_channels=3, size="tiny").save_pretrained(tmp_path / "strict")
    capsys.readouterr()
    assert main(["restore", "--adapter", str(strict), str(tmp_path / "small.png"), "-o", str(out), "--quiet",
                 "--patch-size", "24"]) == 2
    assert "takes 16 x 16 patches only" in capsys.readouterr().err
    assert main(["restore", "--adapter", str(folder), str(tmp_path / "small.png"), "-o", str(out), "--quiet",
                 "--sr-consistency"]) == 2
    assert "needs --upscale" in capsys.readouterr().err


def test_evaluate_scores_the_degraded_inputs_beside_the_restored_files(tmp_path, capsys):
    import soundfile

    from restoregrad_adapter.contrib import metrics

    rng = np.random.default_rng(3)
    clean = (0.3 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype(np.float32)
    noisy = clean + 0.1 * rng.standard_normal(16000).astype(np.float32)
    better = clean + 0.02 * rng.standard_normal(16000).astype(np.float32)
    for folder, audio in (("ref", clean), ("noisy", noisy), ("pred", better)):
        (tmp_path / folder).mkdir()
        soundfile.write(tmp_path / folder / "utt.wav", audio, 16000, subtype="FLOAT")
    (tmp_path / "noisy" / "manifest.json").write_text("{}")  # other files in the folder are ignored
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--degraded", str(tmp_path / "noisy")]) == 0
    header, _, row, mean = capsys.readouterr().out.strip().splitlines()
    columns = dict(zip(header.split(), row.split()))
    expected = metrics.si_snr(torch.from_numpy(noisy)[None], torch.from_numpy(clean)[None]).item()
    assert float(columns["SI-SNR_input"]) == pytest.approx(expected, abs=1e-4)
    assert float(columns["SI-SNR"]) > float(columns["SI-SNR_input"])
    assert float(columns["STOI"]) >= float(columns["STOI_input"]) and "PESQ_input" in header
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                 "--degraded", str(tmp_path / "empty")]) == 2
    assert "no input named like utt.wav" in capsys.readouterr().err
