"""``restoregrad demo``: a web page that restores an uploaded image or recording with a trained adapter.

    restoregrad demo --adapter DIR_OR_REPO [--port 7860]

The page (Gradio, ``pip install "restoregrad_adapter[demo]"``) is served on 127.0.0.1. An image adapter
takes an uploaded image; a speech adapter an uploaded recording or a microphone capture. The page
shows the input, its restoration and the learned prior sigma (a map for images; the spectrogram with
sigma over time for speech), the sampling steps, the seed and the time taken, and with an uploaded
clean reference the scores of the input and of the restoration (PSNR/SSIM on Y, or SI-SNR/PESQ/STOI).
The restored file can be downloaded.

The page restores through the command line's own path (:func:`restoregrad_adapter.cli.restore_file`
and :func:`~restoregrad_adapter.cli.write_restoration`), so its file equals what ``restoregrad restore``
writes with the same seed and steps. Restorations run one at a time (the adapter's scheduler holds
the timesteps of the restoration in progress), each into a folder of its own, so two requests at once
never mix their outputs. Uploads above :class:`UploadLimits` are refused with a message that states the
limit, as are files of another type and files that cannot be decoded; the server keeps running.

:class:`DemoRestorer` is the page's work without the page (what the tests call directly);
:func:`build_demo` wraps it in a ``gradio.Blocks``; :func:`launch_demo` serves it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .cli import CommandError, RestoreSettings, _scores, output_path, prior_figure, restore_file, \
    write_restoration
from .checks import check_number
from .io import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, InputFileError, read_audio, read_image, save_figure, write_image

# Gradio asks the network for analytics and its newest version unless told not to; the demo works offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

#: Metric names of the scores table, in order, per kind of signal.
SCORE_NAMES = {"image": ("PSNR_Y", "SSIM_Y"), "waveform": ("SI-SNR", "PESQ", "STOI")}


class DemoInputError(ValueError):
    """An upload the demo refuses: the message says why and what it takes."""


@dataclass(frozen=True)
class UploadLimits:
    """What the demo accepts.

    Args:
        max_file_mb: the largest upload in megabytes (10^6 bytes); the server refuses larger ones
            before they reach the restoration.
        max_pixels: the most pixels (height x width) of an image to restore.
        max_seconds: the longest recording to restore, in seconds.
    """

    max_file_mb: float = 20.0
    max_pixels: int = 512 * 512
    max_seconds: float = 30.0

    def __post_init__(self):
        for name in ("max_file_mb", "max_pixels", "max_seconds"):
            check_number(name, getattr(self, name), minimum=0, open_minimum=True)

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1_000_000)


@dataclass
class DemoResult:
    """One restoration of the page: the files it shows and offers, and what it reports.

    ``scores`` maps each metric to ``(input's score, restoration's score)`` against the uploaded
    reference (empty without one)."""

    input_preview: Path
    restored: Path
    prior: Path
    steps: int
    seed: int
    seconds: float
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)
    requested_steps: int | None = None

    def summary(self) -> str:
        """The report under the outputs (Markdown)."""
        asked = ""
        if self.requested_steps is not None and self.requested_steps != self.steps:
            asked = f" (the sampler's spacing of {self.requested_steps} requested steps)"
        lines = [f"**{self.steps} reverse steps**{asked}, seed {self.seed}, restored in {self.seconds:.2f} s.", ""]
        if self.scores:
            lines += ["| against the reference | input | restored |", "|---|---|---|"]
            lines += [f"| {name} | {before:.4g} | {after:.4g} |" for name, (before, after) in self.scores.items()]
        else:
            lines.append("Upload a clean reference to see the scores of the input and of the restoration.")
        return "\n".join(lines)


class DemoRestorer:
    """The demo page's work: check an upload, restore it as ``restoregrad restore`` does, draw the prior,
    score against a reference.

    Args:
        adapter: a loaded ``RestoreGrad`` adapter (in eval mode).
        limits: what uploads are accepted.
        work_dir: where each request's files go (a folder per request); default a new temporary folder.
            Folders of requests older than ``keep_seconds`` are removed when a new request comes (the
            page has served them by then; Gradio keeps its own copies for ``keep_seconds`` too).
    """

    def __init__(self, adapter, limits: UploadLimits = UploadLimits(), work_dir: str | os.PathLike | None = None,
                 keep_seconds: float = 3600.0):
        self.adapter = adapter
        self.limits = limits
        self.keep_seconds = keep_seconds
        self.kind = adapter.config.signal_kind
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="restoregrad-demo-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    @property
    def extensions(self) -> tuple[str, ...]:
        return IMAGE_EXTENSIONS if self.kind == "image" else AUDIO_EXTENSIONS

    def default_steps(self) -> int:
        """The image sampler's steps when none are chosen (the integration's, else every training step)."""
        steps = self.adapter.restoration_defaults().num_inference_steps
        return steps if steps is not None else self.max_steps()

    def max_steps(self) -> int:
        return int(self.adapter.scheduler.config.num_train_timesteps)

    def check_upload(self, path, what: str = "the upload") -> Path:
        """``path`` as a Path, if the demo takes it: the adapter's kind of file, within the limits, decodable."""
        if path is None:
            raise DemoInputError(f"No file: upload {'an image' if self.kind == 'image' else 'a recording'} first.")
        path = Path(path)
        if path.suffix.lower() not in self.extensions:
            raise DemoInputError(f"{what} ({path.name}) is not a file this adapter restores: it takes "
                                 f"{'images' if self.kind == 'image' else 'recordings'} ({', '.join(self.extensions)}).")
        size = path.stat().st_size
        if size > self.limits.max_file_bytes:
            raise DemoInputError(f"{what} ({path.name}) has {size / 1e6:.1f} MB; this demo takes at most "
                                 f"{self.limits.max_file_mb:g} MB.")
        try:
            if self.kind == "image":
                height, width = read_image(path).shape[:2]
                if height * width > self.limits.max_pixels:
                    raise DemoInputError(f"{what} ({path.name}) is {width} x {height} = {height * width} pixels; "
                                         f"this demo restores at most {self.limits.max_pixels} pixels (e.g. "
                                         f"{int(self.limits.max_pixels ** 0.5)} x {int(self.limits.max_pixels ** 0.5)}).")
            else:
                audio, rate = read_audio(path)
                if len(audio) / rate > self.limits.max_seconds:
                    raise DemoInputError(f"{what} ({path.name}) lasts {len(audio) / rate:.1f} s; this demo restores "
                                         f"at most {self.limits.max_seconds:g} s.")
        except InputFileError as error:
            raise DemoInputError(f"{what} ({path.name}) cannot be read: {_file_names_only(str(error), path)}") from None
        return path

    def _remove_old_requests(self) -> None:
        oldest = time.time() - self.keep_seconds
        for folder in self.work_dir.glob("request-*"):
            if folder.is_dir() and folder.stat().st_mtime < oldest:
                shutil.rmtree(folder, ignore_errors=True)

    def restore(self, path, reference=None, *, seed: int = 0, steps: int | None = None,
                progress: Callable[[float, str], None] | None = None) -> DemoResult:
        """Restore the uploaded file ``path`` (and score it against ``reference``, when given).

        ``steps``: the image sampler's steps (None: the adapter's default); recordings are restored with
        the adapter's own schedule. ``progress(fraction, description)`` is called at every reverse step.
        """
        path = self.check_upload(path)
        if reference is not None:
            reference = self.check_upload(reference, "the reference")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise DemoInputError(f"The seed must be a whole number >= 0, got {seed!r}.")
        if steps is not None and self.kind == "image" and not 1 <= steps <= self.max_steps():
            raise DemoInputError(f"The sampling steps must be between 1 and {self.max_steps()}, got {steps!r}.")
        settings = RestoreSettings(seed=int(seed), steps=int(steps) if steps is not None and self.kind == "image"
                                   else None)
        self._remove_old_requests()
        request_dir = Path(tempfile.mkdtemp(prefix="request-", dir=self.work_dir))
        target = output_path(request_dir, path, self.kind)
        total_steps: list[int] = []

        def on_step(remaining, _x) -> None:
            if not total_steps:  # the first call comes with x_T: every step still to run
                total_steps.append(int(remaining))
            if progress is not None and total_steps[0] > 0:
                done = total_steps[0] - int(remaining)
                progress(done / total_steps[0], f"reverse step {done} of {total_steps[0]}")

        try:
            with self._lock:  # one restoration at a time: the adapter's scheduler holds its timesteps
                start = time.perf_counter()
                restored, rate = restore_file(self.adapter, path, settings, progress=False, callback=on_step)
                seconds = time.perf_counter() - start
                figure = prior_figure(self.adapter, path)
            write_restoration(target, restored, rate)
            prior = request_dir / "learned_prior.png"
            save_figure(figure, prior)
            if self.kind == "image":
                input_preview = request_dir / "input.png"  # browsers show PNG, whatever the upload was
                write_image(input_preview, read_image(path))
            else:
                input_preview = path
            scores = {}
            if reference is not None:
                before, after = _scores(path, reference), _scores(target, reference)
                scores = {name: (before[name], after[name]) for name in SCORE_NAMES[self.kind] if name in after}
        except (CommandError, InputFileError) as error:
            raise DemoInputError(_file_names_only(str(error), path, target, reference)) from None
        return DemoResult(input_preview=input_preview, restored=target, prior=prior,
                          steps=total_steps[0] if total_steps else 0, seed=settings.seed, seconds=seconds, scores=scores,
                          requested_steps=settings.steps)


def _file_names_only(message: str, *paths) -> str:
    """``message`` with the server's folders of ``paths`` removed: the user sees the names they uploaded."""
    for path in paths:
        if path is not None:
            message = message.replace(f"{Path(path).parent}{os.sep}", "")
    return message


def _theme():
    """Gradio's default look with the system's fonts: the page loads nothing from the internet."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def build_demo(restorer: DemoRestorer, title: str = "RestoreGrad"):
    """The page (a ``gradio.Blocks``) around ``restorer``."""
    import gradio as gr

    image = restorer.kind == "image"
    limits = restorer.limits
    what = "an image" if image else "a recording (or record one with the microphone)"
    limit_text = (f"at most {limits.max_pixels} pixels" if image else f"at most {limits.max_seconds:g} s") + \
        f" and {limits.max_file_mb:g} MB"

    def run(upload, reference, seed, steps, progress=gr.Progress()):
        try:
            result = restorer.restore(upload, reference, seed=int(seed) if seed is not None else 0,
                                      steps=int(steps) if steps is not None else None,
                                      progress=lambda fraction, text: progress(fraction, desc=text))
        except DemoInputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        return (str(result.input_preview), str(result.restored), str(result.prior), str(result.restored),
                result.summary())

    keep = int(restorer.keep_seconds)
    with gr.Blocks(title=title, delete_cache=(keep, keep)) as demo:
        gr.Markdown(f"# {title}\nUpload {what} ({limit_text}; {', '.join(restorer.extensions)}), then press "
                    "**Restore**. The learned prior sigma shows where the adapter expects the most to restore.")
        with gr.Row():
            with gr.Column(scale=1):
                if image:
                    upload = gr.File(label="degraded image", file_types=list(IMAGE_EXTENSIONS), type="filepath",
                                     elem_id="upload")
                else:
                    upload = gr.Audio(label="noisy recording", sources=["upload", "microphone"], type="filepath",
                                      elem_id="upload")
                reference = gr.File(label="clean reference (optional): scores the input and the restoration",
                                    file_types=list(restorer.extensions), type="filepath", elem_id="reference")
                with gr.Row():
                    seed = gr.Number(label="seed", value=0, precision=0, minimum=0, elem_id="seed")
                    steps = gr.Slider(label="sampling steps", minimum=1, maximum=restorer.max_steps(), step=1,
                                      value=restorer.default_steps(), visible=image, elem_id="steps")
                button = gr.Button("Restore", variant="primary", elem_id="restore")
            with gr.Column(scale=2):
                with gr.Row():
                    if image:
                        shown_input = gr.Image(label="input", type="filepath", interactive=False, height=300,
                                               elem_id="input")
                        restored = gr.Image(label="restored", type="filepath", interactive=False, height=300,
                                            elem_id="restored")
                    else:
                        shown_input = gr.Audio(label="input", type="filepath", interactive=False, elem_id="input")
                        restored = gr.Audio(label="restored", type="filepath", interactive=False, elem_id="restored")
                prior = gr.Image(label="learned prior sigma", type="filepath", interactive=False, elem_id="prior")
                with gr.Row():
                    report = gr.Markdown(elem_id="report")
                    download = gr.File(label="restored file", interactive=False, elem_id="download")
        button.click(run, inputs=[upload, reference, seed, steps],
                     outputs=[shown_input, restored, prior, download, report], concurrency_limit=1)
    return demo


def launch_kwargs(limits: UploadLimits) -> dict:
    """The ``launch`` settings the demo needs: the upload limit, errors shown to the user, an offline theme."""
    return {"max_file_size": limits.max_file_bytes, "show_error": True, "theme": _theme(), "ssr_mode": False}


def load_demo(adapter_spec: str, *, model_factory: str | None = None, device: str = "cpu",
              limits: UploadLimits = UploadLimits()):
    """The page for the adapter folder or Hub repo ``adapter_spec``."""
    from .cli import load_adapter

    adapter = load_adapter(adapter_spec, model_factory, device)
    kind = "images" if adapter.config.signal_kind == "image" else "speech"
    return build_demo(DemoRestorer(adapter, limits), title=f"RestoreGrad: {adapter_spec} ({kind})")


def launch_demo(adapter_spec: str, *, host: str = "127.0.0.1", port: int = 7860, model_factory: str | None = None,
                device: str = "cpu", limits: UploadLimits = UploadLimits(), block: bool = True):
    """Serve the page on ``host:port``; with ``block`` False, return the running ``gradio.Blocks``."""
    demo = load_demo(adapter_spec, model_factory=model_factory, device=device, limits=limits)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=False,
                **launch_kwargs(limits))
    return demo
