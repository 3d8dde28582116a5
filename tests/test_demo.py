"""restoregrad demo: the page's work equals `restoregrad restore`, uploads are checked, and the served page
refuses bad uploads, keeps running, and keeps two requests at once apart (through Gradio's own client)."""

import concurrent.futures
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from demo_browser import free_port
from restoregrad_adapter.cli import main
from restoregrad_adapter.contrib import metrics
from restoregrad_adapter.demo import DemoInputError, DemoRestorer, UploadLimits, launch_demo
from restoregrad_adapter.io import read_audio, read_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.2, 0.8, (20, 28, 3))
    noisy = np.clip(clean + 0.1 * rng.standard_normal(clean.shape), 0, 1)
    for name, image in (("clean.png", clean), ("noisy.png", noisy), ("other.png", rng.uniform(0, 1, (18, 24, 3)))):
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / name)
    t = np.arange(16000) / 16000
    speech = 0.3 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    soundfile.write(folder / "clean.wav", speech.astype(np.float32), 16000)
    soundfile.write(folder / "noisy.wav", (speech + 0.05 * rng.standard_normal(len(t))).astype(np.float32), 16000)
    soundfile.write(folder / "phone.wav", (0.1 * rng.standard_normal(4000)).astype(np.float32), 8000)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (folder / "broken.wav").write_bytes(b"RIFF" + b"\x00" * 40)
    return folder


def restorer(adapter_dir, tmp_path, limits=UploadLimits()):
    from restoregrad_adapter.cli import load_adapter

    return DemoRestorer(load_adapter(str(adapter_dir), None, "cpu"), limits, work_dir=tmp_path / "demo")


def cli_restore(adapter_dir, path, out, *options):
    assert main(["restore", "--adapter", str(adapter_dir), str(path), "-o", str(out), "--quiet", *options]) == 0
    return out / (path.stem + (".wav" if path.suffix == ".wav" else path.suffix))


# ------------------------------------------------------------------ the page's work, without the page
def test_an_image_restores_as_the_command_line_does(image_adapter, files, tmp_path):
    demo = restorer(image_adapter, tmp_path)
    result = demo.restore(files / "noisy.png", seed=3, steps=2)
    expected = cli_restore(image_adapter, files / "noisy.png", tmp_path / "cli", "--seed", "3", "--steps", "2")
    assert result.restored.name == "noisy.png"
    assert result.restored.read_bytes() == expected.read_bytes()
    assert not np.array_equal(read_image(result.restored), read_image(files / "noisy.png"))
    # Another seed is another restoration; the default steps are the integration's 10.
    assert result.restored.read_bytes() != demo.restore(files / "noisy.png", seed=4, steps=2).restored.read_bytes()
    assert demo.default_steps() == 10 and demo.max_steps() == 1000
    # WeatherDiff's leading spacing runs 1000 // 2 = 500-apart steps 0 and 500: 2 reverse steps; 3 asked run 4.
    assert result.steps == 2 and result.seed == 3 and result.seconds > 0
    three = demo.restore(files / "noisy.png", steps=3)
    assert three.steps == 4 and "3 requested" in three.summary()
    assert result.input_preview.suffix == ".png" and np.array_equal(read_image(result.input_preview),
                                                                   read_image(files / "noisy.png"))
    assert Image.open(result.prior).size[0] > 300  # the figure of the image and its sigma map


def test_a_recording_restores_as_the_command_line_does(speech_adapter, files, tmp_path):
    demo = restorer(speech_adapter, tmp_path)
    for name in ("noisy.wav", "phone.wav"):  # the adapter's rate, and 8 kHz (resampled there and back)
        result = demo.restore(files / name, seed=5)
        expected = cli_restore(speech_adapter, files / name, tmp_path / "cli", "--seed", "5")
        restored, rate = read_audio(result.restored)
        reference, reference_rate = read_audio(expected)
        assert rate == reference_rate == read_audio(files / name)[1]
        np.testing.assert_array_equal(restored, reference)
        assert result.steps == 6  # CDiffuSE's fast schedule, the adapter's default
    assert "PESQ" not in result.summary()


def test_scores_against_an_uploaded_reference(image_adapter, speech_adapter, files, tmp_path):
    result = restorer(image_adapter, tmp_path).restore(files / "noisy.png", files / "clean.png", steps=2)
    as_tensor = lambda path: torch.from_numpy(read_image(path)).permute(2, 0, 1)[None]  # noqa: E731
    clean = as_tensor(files / "clean.png")
    assert result.scores["PSNR_Y"] == (pytest.approx(metrics.psnr_y(as_tensor(files / "noisy.png"), clean).item()),
                                       pytest.approx(metrics.psnr_y(as_tensor(result.restored), clean).item()))
    assert result.scores["SSIM_Y"][1] == pytest.approx(metrics.ssim_y(as_tensor(result.restored), clean).item())
    assert "| PSNR_Y |" in result.summary()

    result = restorer(speech_adapter, tmp_path).restore(files / "noisy.wav", files / "clean.wav")
    clean = torch.from_numpy(read_audio(files / "clean.wav")[0])
    restored = torch.from_numpy(read_audio(result.restored)[0])
    expected = metrics.speech_scores(restored, clean, sample_rate=16000)
    assert set(result.scores) >= {"SI-SNR"}
    assert result.scores["SI-SNR"][1] == pytest.approx(expected["si_snr"])
    assert result.scores["SI-SNR"][0] == pytest.approx(
        metrics.speech_scores(torch.from_numpy(read_audio(files / "noisy.wav")[0]), clean, 16000)["si_snr"])


def test_old_requests_are_removed_when_a_new_one_comes(image_adapter, files, tmp_path):
    demo = restorer(image_adapter, tmp_path)
    first = demo.restore(files / "noisy.png", steps=2)
    second = demo.restore(files / "noisy.png", steps=2)
    assert first.restored.exists() and second.restored.exists()  # both within the hour
    os.utime(first.restored.parent, (0, 0))  # the first request, long ago
    third = demo.restore(files / "noisy.png", steps=2)
    assert not first.restored.parent.exists() and second.restored.exists() and third.restored.exists()


def test_progress_reaches_every_step(image_adapter, files, tmp_path):
    calls = []
    restorer(image_adapter, tmp_path).restore(files / "noisy.png", steps=2,
                                              progress=lambda fraction, text: calls.append((fraction, text)))
    assert calls == [(0.0, "reverse step 0 of 2"), (0.5, "reverse step 1 of 2"), (1.0, "reverse step 2 of 2")]


@pytest.mark.parametrize("adapter_name, upload, reference, match", [
    ("image", None, None, "No file: upload an image"),
    ("image", "notes.txt", None, r"notes.txt\) is not a file this adapter restores: it takes images"),
    ("image", "noisy.wav", None, "it takes images"),
    ("speech", "noisy.png", None, "it takes recordings"),
    ("image", "broken.png", None, r"broken.png\) cannot be read"),
    ("speech", "broken.wav", None, r"broken.wav\) cannot be read"),
    ("image", "noisy.png", "notes.txt", r"the reference \(notes.txt\) is not a file"),
    ("image", "noisy.png", "other.png", r"^noisy.png: size \(20, 28\) differs from the reference's \(18, 24\)"),
    ("speech", "noisy.wav", "phone.wav", "^noisy.wav: 16000 samples at 16000 Hz, but the reference has 4000 at 8000 Hz"),
])
def test_bad_uploads_are_refused_with_a_reason(adapter_name, upload, reference, match, image_adapter, speech_adapter,
                                               files, tmp_path):
    demo = restorer(image_adapter if adapter_name == "image" else speech_adapter, tmp_path)
    with pytest.raises(DemoInputError, match=match) as refused:
        demo.restore(files / upload if upload else None, files / reference if reference else None)
    assert str(files) not in str(refused.value) and str(tmp_path) not in str(refused.value)  # names, not folders


def test_limits_are_stated_when_an_upload_exceeds_them(image_adapter, speech_adapter, files, tmp_path):
    small = UploadLimits(max_file_mb=1e-3, max_pixels=100, max_seconds=0.1)
    with pytest.raises(DemoInputError, match=r"has 0.0 MB; this demo takes at most 0.001 MB"):
        restorer(image_adapter, tmp_path, small).restore(files / "noisy.png")
    pixels = UploadLimits(max_pixels=100)
    with pytest.raises(DemoInputError, match=r"is 28 x 20 = 560 pixels; this demo restores at most 100 pixels"):
        restorer(image_adapter, tmp_path, pixels).restore(files / "noisy.png")
    with pytest.raises(DemoInputError, match=r"lasts 1.0 s; this demo restores at most 0.1 s"):
        restorer(speech_adapter, tmp_path, UploadLimits(max_seconds=0.1)).restore(files / "noisy.wav")
    with pytest.raises(DemoInputError, match="between 1 and 1000, got 0"):
        restorer(image_adapter, tmp_path).restore(files / "noisy.png", steps=0)
    with pytest.raises(DemoInputError, match="seed must be a whole number >= 0, got -1"):
        restorer(image_adapter, tmp_path).restore(files / "noisy.png", seed=-1)


@pytest.mark.parametrize("field, value", [("max_file_mb", 0), ("max_pixels", -5), ("max_seconds", float("nan")),
                                          ("max_pixels", True)])
def test_upload_limits_are_checked(field, value):
    with pytest.raises(ValueError, match=f"`{field}` must be a finite number > 0, got {value!r}"):
        UploadLimits(**{field: value})


# ------------------------------------------------------------------ the served page (Gradio's client)
@pytest.fixture(scope="module")
def served_image_demo(image_adapter):
    limits = UploadLimits(max_file_mb=0.02)  # 20 kB: the test photos fit, a larger file does not
    port = free_port()
    demo = launch_demo(str(image_adapter), port=port, limits=limits, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def call(url, upload, seed=0, steps=2):
    from gradio_client import handle_file

    return client(url).predict(handle_file(str(upload)), None, seed, steps, api_name="/run")


def test_the_served_page_refuses_bad_uploads_and_keeps_running(served_image_demo, image_adapter, files, tmp_path):
    from gradio_client.exceptions import AppError

    url = served_image_demo
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 20_000
    with pytest.raises(Exception, match="exceeds the maximum file size of 20000 bytes"):
        call(url, big)  # Gradio's client knows the page's limit
    import httpx  # and the server refuses a larger upload from anything else

    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big.read_bytes(), "image/png")})
    assert response.status_code == 413 and "maximum allowed size of 20000 bytes" in response.text
    with pytest.raises(Exception, match=r"Invalid file type"):
        call(url, files / "notes.txt")
    with pytest.raises(AppError, match=r"broken.png\) cannot be read"):
        call(url, files / "broken.png")
    # Still serving: a good upload restores, exactly as the command line does.
    _, restored, prior, download, report = call(url, files / "noisy.png", seed=2, steps=2)
    expected = cli_restore(image_adapter, files / "noisy.png", tmp_path / "cli", "--seed", "2", "--steps", "2")
    assert Path(restored).read_bytes() == Path(download).read_bytes() == expected.read_bytes()
    assert Path(prior).stat().st_size > 0 and "2 reverse steps" in report and "seed 2" in report


def test_two_requests_at_once_keep_their_own_outputs(served_image_demo, image_adapter, files, tmp_path):
    jobs = [(files / "noisy.png", 7), (files / "other.png", 8)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda job: call(served_image_demo, job[0], seed=job[1]), jobs))
    for (upload, seed), (_, restored, _, _, report) in zip(jobs, results):
        expected = cli_restore(image_adapter, upload, tmp_path / f"cli-{seed}", "--seed", str(seed), "--steps", "2")
        assert Path(restored).read_bytes() == expected.read_bytes() and f"seed {seed}" in report


# ------------------------------------------------------------------ the Space's app.py
def space_app(module_name: str):
    """space/app.py, run as a Space runs it (reading RESTOREGRAD_ADAPTER)."""
    spec = importlib.util.spec_from_file_location(module_name, REPO / "space" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    return app


def restore_on_the_space(app, upload: Path) -> Path:
    """Serve the Space's page, restore ``upload`` through it (seed 1, 2 steps), stop; the restored file."""
    port = free_port()
    app.demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, **app.LAUNCH_KWARGS)
    try:
        return Path(call(f"http://127.0.0.1:{port}/", upload, seed=1, steps=2)[1])
    finally:
        app.demo.close()


def test_the_space_app_serves_a_local_adapter_offline(image_adapter, files, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("RESTOREGRAD_ADAPTER", str(image_adapter))
    app = space_app("space_app")
    import gradio as gr

    assert isinstance(app.demo, gr.Blocks) and app.demo.title == f"RestoreGrad: {image_adapter} (images)"
    restored = restore_on_the_space(app, files / "noisy.png")
    expected = cli_restore(image_adapter, files / "noisy.png", tmp_path / "cli", "--seed", "1", "--steps", "2")
    assert restored.read_bytes() == expected.read_bytes()
    # The Space's README carries the metadata a Space reads.
    header = (REPO / "space" / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header


def test_the_space_app_serves_a_hub_adapter_from_a_seeded_cache_offline(image_adapter, files, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--org--restoregrad-rain"
    shutil.copytree(image_adapter, repo / "snapshots" / ("b" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("RESTOREGRAD_ADAPTER", "org/restoregrad-rain")
    app = space_app("space_app_hub")
    assert app.demo.title == "RestoreGrad: org/restoregrad-rain (images)"
    restored = restore_on_the_space(app, files / "noisy.png")
    expected = cli_restore(image_adapter, files / "noisy.png", tmp_path / "cli", "--seed", "1", "--steps", "2")
    assert restored.read_bytes() == expected.read_bytes()


def test_the_space_app_says_what_it_needs(monkeypatch):
    monkeypatch.delenv("RESTOREGRAD_ADAPTER", raising=False)
    with pytest.raises(SystemExit, match="RESTOREGRAD_ADAPTER"):
        space_app("space_app_unset")


def test_the_demo_command_needs_gradio(image_adapter, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if not installed
    assert main(["demo", "--adapter", str(image_adapter)]) == 2
    assert 'pip install "restoregrad_adapter[demo]"' in capsys.readouterr().err
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"  # the demo module asks Gradio to stay offline
