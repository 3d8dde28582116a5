"""The demo page in a real browser: headless Chromium loads `restoregrad demo`, is refused a corrupt upload
with a message, then restores a degraded photo of the built-in data; the image it shows is the file
`restoregrad restore` writes with the same settings, and differs from the input. A speech adapter's page
restores an uploaded recording of the built-in data and scores it against an uploaded reference.

It needs Debian's chromium and chromium-driver (.ci/run installs them); without them it fails, saying so.
"""

import io
import os

import numpy as np
import soundfile
from PIL import Image

from demo_browser import chromium, error_toast, fetch, open_page, served_demo, upload_and_restore, wait_for
from restoregrad_adapter.cli import main
from restoregrad_adapter.contrib.data.weather import builtin_weather_pairs


def test_the_page_restores_an_uploaded_photo_in_chromium(image_adapter, tmp_path):
    adapter_dir = str(image_adapter)
    _, degraded, kind, name = builtin_weather_pairs("validation", size=40)[0]  # a held-out photo with weather
    upload = tmp_path / f"{name}_{kind}.png"
    Image.fromarray((degraded * 255).round().astype(np.uint8)).save(upload)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not a picture" * 10)

    with served_demo(adapter_dir) as (url, server), chromium() as driver:
        open_page(driver, url)
        assert "RestoreGrad" in driver.title
        wait_for(driver, "#upload input[type=file]").send_keys(str(corrupt))
        wait_for(driver, "#restore").click()
        assert "the upload (corrupt.png) cannot be read" in error_toast(driver)
        assert server.poll() is None  # still serving

        open_page(driver, url)
        source = upload_and_restore(driver, upload)
        shown = np.asarray(Image.open(io.BytesIO(fetch(source))).convert("RGB"))
        wait_for(driver, "#prior img")
        report = wait_for(driver, "#report").text
        if os.environ.get("RESTOREGRAD_DEMO_SCREENSHOT"):
            driver.save_screenshot(os.environ["RESTOREGRAD_DEMO_SCREENSHOT"])

    original = np.asarray(Image.open(upload).convert("RGB"))
    assert shown.shape == original.shape
    assert np.abs(shown.astype(int) - original.astype(int)).mean() > 1  # restored, not the input echoed
    assert "10 reverse steps" in report and "seed 0" in report
    # The page's restoration is the command line's with the same settings (seed 0, the adapter's 10 steps).
    assert main(["restore", "--adapter", adapter_dir, str(upload), "-o", str(tmp_path / "cli"), "--quiet"]) == 0
    np.testing.assert_array_equal(shown, np.asarray(Image.open(tmp_path / "cli" / upload.name).convert("RGB")))


def test_the_page_restores_an_uploaded_recording_in_chromium(speech_adapter, tmp_path):
    from restoregrad_adapter.contrib.data.speech import builtin_speech_pairs
    from restoregrad_adapter.io import read_audio

    clean, noisy = builtin_speech_pairs("validation", num_utterances=1, seconds=1.0)[0]
    upload, reference = tmp_path / "noisy.wav", tmp_path / "clean" / "noisy.wav"
    reference.parent.mkdir()
    soundfile.write(upload, noisy, 16000)
    soundfile.write(reference, clean, 16000)

    with served_demo(str(speech_adapter)) as (url, _), chromium() as driver:
        open_page(driver, url)
        source = upload_and_restore(driver, upload, reference)
        shown = tmp_path / "shown.wav"
        shown.write_bytes(fetch(source))
        report = wait_for(driver, "#report").text

    assert "6 reverse steps" in report and "SI-SNR" in report and "STOI" in report
    assert main(["restore", "--adapter", str(speech_adapter), str(upload), "-o", str(tmp_path / "cli"), "--quiet"]) == 0
    restored, rate = read_audio(shown)
    expected, _ = read_audio(tmp_path / "cli" / "noisy.wav")
    assert rate == 16000
    np.testing.assert_array_equal(restored, expected)  # the page's recording is the command line's
    assert not np.allclose(restored, noisy, atol=1e-3)
