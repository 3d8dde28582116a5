"""The ``restoregrad`` command: restore files with a trained adapter, evaluate, show the learned prior.

    restoregrad restore --adapter DIR_OR_REPO INPUT... -o OUT_DIR [--upscale 4 [--sr-consistency]]
                        [--timestep-spacing trailing] [--self-ensemble] [--patch-size 128]
    restoregrad evaluate --pred DIR --ref DIR [--lpips-network package.module:function]
    restoregrad show-prior --adapter DIR_OR_REPO INPUT -o PNG
    restoregrad demo --adapter DIR_OR_REPO [--port 7860]     (a web page; pip install "restoregrad_adapter[demo]")

Images (PNG, JPEG, ...) of any size and WAV files are restored with the adapter's integration's
defaults (e.g. overlapping patches and WeatherDiff's DDIM; CDiffuSE's fast sampling). Every input
transform training used is applied and undone: the level (``input_peak``), the value range, the
residual, and for audio the sample rate (a file at another rate is resampled to the adapter's, as
training resampled its data, and the result back to the file's rate). An adapter whose denoiser was saved as a plain state dict needs the model object:
``--model-factory package.module:function`` names a function (in your code) that builds it.
A super-resolution adapter restores the bicubically up-sampled image it was trained on: give it that
image, or the small one with ``--upscale FACTOR`` (enlarged bicubically as in training first);
``--sr-consistency`` then projects the result onto the images whose bicubic down-sampling is exactly
the small one. ``--timestep-spacing`` spreads an image sampler's steps otherwise (``trailing`` starts
from pure noise), ``--self-ensemble`` averages an image's restorations over its eight rotations and
mirrors, and ``--patch-size`` restores with larger patches than the training crops where the
denoiser is fully convolutional (the image trainer's are).
``evaluate`` scores PSNR(Y) and SSIM(Y) of images, and LPIPS when ``--lpips-network`` names a function
(in your code) returning the feature network and its linear weights (nothing is downloaded).
Outputs are written atomically: a temporary name, then a rename.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .io import (AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, InputFileError, read_audio, read_image, save_figure, write_audio,
                 write_image)


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# ---------------------------------------------------------------------- files
def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in AUDIO_EXTENSIONS:
        return "waveform"
    raise CommandError(f"{path}: unsupported file type {suffix!r}; expected an image ({', '.join(IMAGE_EXTENSIONS)}) "
                       f"or audio ({', '.join(AUDIO_EXTENSIONS)}).")


# ---------------------------------------------------------------------- adapters
def _model_from_factory(spec: str | None, option: str = "--model-factory"):
    """What the function named by ``spec`` (``package.module:function``, importable from the working folder) returns."""
    if spec is None:
        return None
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise CommandError(f"{option} {spec!r} must look like package.module:function.")
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as error:
        raise CommandError(f"{option} {spec!r}: {error}") from None
    return factory()


def load_adapter(spec: str, model_factory: str | None, device: str):
    from .adapter import RestoreGrad

    try:
        adapter = RestoreGrad.from_pretrained(spec, denoiser=_model_from_factory(model_factory), load_posterior=False)
    except (ValueError, OSError) as error:
        raise CommandError(f"cannot load adapter {spec!r}: {error}") from None
    return adapter.to(device).eval()


def _check_kind(adapter, path: Path) -> str:
    kind = _kind(path)
    expected = adapter.config.signal_kind
    if kind != expected:
        raise CommandError(f"{path}: the adapter restores {expected}s, not {kind}s.")
    return kind


@dataclass(frozen=True)
class RestoreSettings:
    """The options of one file's restoration, as ``restoregrad restore`` takes them (None: the adapter's
    defaults). The demo page restores through the same :func:`restore_file` with these settings."""

    seed: int = 0
    steps: int | None = None
    eta: float = 0.0
    stride: int | None = None
    patch_size: int | None = None
    patch_batch_size: int = 64
    timestep_spacing: str | None = None
    self_ensemble: bool = False
    upscale: int = 1
    sr_consistency: bool = False

    @classmethod
    def from_args(cls, args) -> "RestoreSettings":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def restore_file(adapter, path: Path, settings: RestoreSettings = RestoreSettings(), *, progress: bool = True,
                 callback=None) -> tuple[np.ndarray, int | None]:
    """The restored signal (HxWx3 in [0, 1], or a waveform) and its sample rate (audio).

    ``callback(k, x)`` is the adapter's restore callback (``k``: the reverse steps still to run)."""
    device = next(adapter.parameters()).device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    if _check_kind(adapter, path) == "image":
        image = read_image(path)
        low = None
        if settings.upscale > 1:  # a super-resolution adapter's input: the small image enlarged as in training
            from .contrib.data.blur_sr import bicubic_resize

            if settings.sr_consistency:
                low = torch.from_numpy(image).permute(2, 0, 1)[None].to(device) * 2 - 1
            image = bicubic_resize(image, (image.shape[0] * settings.upscale, image.shape[1] * settings.upscale))
        channels = adapter.config.channels
        if channels != 3:
            raise CommandError(f"{path}: the adapter is for {channels}-channel images; RGB files give 3 channels.")
        y = torch.from_numpy(image).permute(2, 0, 1)[None].to(device) * 2 - 1
        # The adapter's own restoration, with the options given on the command line (None: its defaults).
        restored = adapter.restore(y, num_inference_steps=settings.steps, generator=generator, stride=settings.stride,
                                   eta=settings.eta, patch_size=settings.patch_size,
                                   patch_batch_size=settings.patch_batch_size,
                                   timestep_spacing=settings.timestep_spacing, self_ensemble=settings.self_ensemble,
                                   low_resolution=low, progress=progress, callback=callback)
        return ((restored[0].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy(), None

    audio, rate = read_audio(path)
    file_length = len(audio)
    audio, model_rate = _at_adapter_rate(adapter, path, audio, rate)
    defaults = adapter.restoration_defaults()  # e.g. CDiffuSE's 513 samples for its STFT
    length = len(audio)
    padded_length = max(length, defaults.min_length)
    padded_length += (-padded_length) % defaults.length_multiple
    padded = np.pad(audio, (0, padded_length - length))
    y = torch.from_numpy(padded)[None, None].to(device)
    restored = adapter.restore(y, generator=generator, progress=progress, callback=callback)[0, 0, :length]
    restored = restored.cpu().numpy()
    if model_rate != rate:  # back to the file's own rate and length
        from .contrib.data.speech import resample

        restored = np.pad(resample(restored, model_rate, rate), (0, file_length))[:file_length]
    return restored, rate


def write_restoration(target: Path, restored: np.ndarray, rate: int | None) -> None:
    """Write what :func:`restore_file` returned (atomically): an image, or audio at ``rate``."""
    if rate is None:
        write_image(target, restored)
    else:
        write_audio(target, restored, rate)


def _at_adapter_rate(adapter, path: Path, audio: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """``audio`` resampled to the rate the adapter was trained at, as training resampled its data
    (polyphase, :func:`restoregrad_adapter.contrib.data.speech.resample`), saying so; and that rate."""
    model_rate = adapter.config.sample_rate or 16000
    if rate == model_rate:
        return audio, rate
    from .contrib.data.speech import resample

    print(f"{path}: resampling {rate} Hz to the adapter's {model_rate} Hz (and the result back to {rate} Hz), "
          "as training resampled its data", file=sys.stderr)
    return resample(audio, rate, model_rate).astype(np.float32), model_rate


def output_path(out: Path, path: Path, kind: str) -> Path:
    """Where the restoration of ``path`` is written: ``out/<name>``, as PNG for JPEG inputs (no
    second lossy compression) and as WAV for audio."""
    target = out / path.name
    if kind == "waveform":
        return target.with_suffix(".wav")
    return target.with_suffix(".png") if target.suffix.lower() in (".jpg", ".jpeg") else target


def plan_outputs(inputs: list[Path], kinds: list[str], out: Path) -> list[Path]:
    """Every input's output path, checked before any work: none may be an input, none may be shared."""
    targets = [output_path(out, path, kind) for path, kind in zip(inputs, kinds)]
    resolved_inputs = {path.resolve(): path for path in inputs}
    seen: dict[Path, Path] = {}
    for path, target in zip(inputs, targets):
        if target.resolve() in resolved_inputs:
            raise CommandError(f"-o {out}: the restoration of {path} would be written over the input "
                               f"{resolved_inputs[target.resolve()]}; choose another output folder.")
        if target.resolve() in seen:
            raise CommandError(f"{seen[target.resolve()]} and {path} would both be written to {target}; restore them "
                               "into different output folders.")
        seen[target.resolve()] = path
    return targets


def command_restore(args) -> None:
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CommandError(f"-o {out} exists and is not a folder.")
    inputs = [Path(p) for p in args.inputs]
    for path in inputs:
        if not path.is_file():
            raise CommandError(f"{path}: no such file.")
    adapter = load_adapter(args.adapter, args.model_factory, args.device)
    kinds = [_check_kind(adapter, path) for path in inputs]
    if args.upscale > 1 and "waveform" in kinds:
        raise CommandError(f"--upscale {args.upscale} enlarges images; {inputs[kinds.index('waveform')]} is audio.")
    if args.timestep_spacing is not None and "waveform" in kinds:
        raise CommandError(f"--timestep-spacing sets the image sampler's steps; {inputs[kinds.index('waveform')]} "
                           "is audio, restored with the adapter's own fast schedule.")
    if args.self_ensemble and "waveform" in kinds:
        raise CommandError(f"--self-ensemble turns and mirrors images; {inputs[kinds.index('waveform')]} is audio.")
    if args.sr_consistency and args.upscale == 1:
        raise CommandError("--sr-consistency keeps a super-resolution consistent with its small input: it needs "
                           "--upscale FACTOR and the small images.")
    if args.patch_size is not None:
        if "waveform" in kinds:
            raise CommandError(f"--patch-size sets an image sampler's patches; {inputs[kinds.index('waveform')]} "
                               "is audio.")
        takes_patch_size = getattr(adapter.denoiser, "takes_patch_size", None)  # a WeatherDiff wrapper's
        if takes_patch_size is not None and not takes_patch_size(args.patch_size):
            trained = adapter.denoiser.patch_size
            raise CommandError(f"--patch-size {args.patch_size}: the adapter's denoiser takes {trained} x {trained} "
                               "patches only (it was not saved as fully convolutional).")
    targets = plan_outputs(inputs, kinds, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"-o {out}: cannot create the output folder ({error.strerror}).") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CommandError(f"-o {out}: the output folder is not writable.")
    for path, target in zip(inputs, targets):
        restored, rate = restore_file(adapter, path, RestoreSettings.from_args(args), progress=not args.quiet)
        write_restoration(target, restored, rate)
        print(f"{path} -> {target}")


# ---------------------------------------------------------------------- evaluate
def _match(pred_dir: Path, ref_dir: Path) -> list[tuple[Path, Path]]:
    for name, folder in (("--pred", pred_dir), ("--ref", ref_dir)):
        if not folder.is_dir():
            raise CommandError(f"{name} {folder} is not a folder.")
    known = IMAGE_EXTENSIONS + AUDIO_EXTENSIONS
    refs = {p.stem: p for p in ref_dir.iterdir() if p.suffix.lower() in known}
    preds = [p for p in sorted(pred_dir.iterdir()) if p.suffix.lower() in known]
    pairs = [(p, refs[p.stem]) for p in preds if p.stem in refs]
    if not pairs:
        raise CommandError(f"no files in {pred_dir} have a reference of the same name in {ref_dir}.")
    pred_stems = {p.stem for p in preds}
    unmatched = [p.name for p in preds if p.stem not in refs]
    unmatched += [p.name for stem, p in sorted(refs.items()) if stem not in pred_stems]
    if unmatched:
        print(f"note: not scored, no file of the same name in the other folder: {', '.join(unmatched)}",
              file=sys.stderr)
    return pairs


def _lpips_from_factory(spec: str | None):
    """``(feature_network, linear_weights)`` from ``--lpips-network package.module:function``, or None."""
    if spec is None:
        return None
    built = _model_from_factory(spec, "--lpips-network")
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module)):
        raise CommandError(f"--lpips-network {spec!r} must return (feature_network, linear_weights): an nn.Module "
                           "giving a list of feature maps, and one channel-weight tensor per map.")
    return built[0].eval(), built[1]


def _scores(pred_path: Path, ref_path: Path, lpips_network=None) -> dict:
    """The metrics of one file against its reference: PSNR(Y), SSIM(Y) (and LPIPS) for images, SI-SNR,
    PESQ (wideband) and STOI for audio (PESQ and STOI when installed)."""
    from .contrib import metrics

    kind = _kind(pred_path)
    if kind != _kind(ref_path):
        raise CommandError(f"{pred_path} and {ref_path} are not the same kind of file.")
    if kind == "image":
        row = {}
        pred, ref = read_image(pred_path), read_image(ref_path)
        if pred.shape != ref.shape:
            raise CommandError(f"{pred_path}: size {pred.shape[:2]} differs from the reference's {ref.shape[:2]}.")
        p, r = (torch.from_numpy(a).permute(2, 0, 1)[None] for a in (pred, ref))
        row["PSNR_Y"] = metrics.psnr_y(p, r).item()
        row["SSIM_Y"] = metrics.ssim_y(p, r).item() if min(p.shape[-2:]) >= 11 else float("nan")
        if lpips_network is not None:
            row["LPIPS"] = metrics.lpips(p, r, *lpips_network).item()
        return row
    (pred, rate), (ref, ref_rate) = read_audio(pred_path), read_audio(ref_path)
    if rate != ref_rate or len(pred) != len(ref):
        raise CommandError(f"{pred_path}: {len(pred)} samples at {rate} Hz, but the reference has "
                           f"{len(ref)} at {ref_rate} Hz.")
    scores = metrics.speech_scores(torch.from_numpy(pred), torch.from_numpy(ref), sample_rate=rate)
    return {{"si_snr": "SI-SNR", "pesq": "PESQ", "stoi": "STOI"}[k]: v for k, v in scores.items()}


def evaluate_pairs(pairs: list[tuple[Path, Path]], lpips_network=None, degraded_dir: Path | None = None) -> list[dict]:
    """One row of metrics per ``(pred, ref)`` pair; ``lpips_network``: ``(feature_network, linear_weights)``
    to add LPIPS to the images' PSNR(Y) and SSIM(Y). ``degraded_dir``: a folder with the degraded inputs
    under the same names, whose scores against the references are added beside (columns ``..._input``)."""
    if degraded_dir is not None and not degraded_dir.is_dir():
        raise CommandError(f"--degraded {degraded_dir} is not a folder.")
    rows = []
    for pred_path, ref_path in pairs:
        row = {"file": pred_path.name, **_scores(pred_path, ref_path, lpips_network)}
        if degraded_dir is not None:
            matches = [p for p in sorted(degraded_dir.iterdir())
                       if p.stem == pred_path.stem and p.suffix.lower() in IMAGE_EXTENSIONS + AUDIO_EXTENSIONS]
            if not matches:
                raise CommandError(f"--degraded {degraded_dir} has no input named like {pred_path.name}.")
            row.update({f"{k}_input": v for k, v in _scores(matches[0], ref_path, lpips_network).items()})
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    columns = ["file"] + sorted({k for row in rows for k in row} - {"file"})
    means = {c: np.nanmean([r[c] for r in rows if c in r]) for c in columns[1:]}
    body = [[r["file"]] + [f"{r[c]:.4f}" if c in r else "-" for c in columns[1:]] for r in rows]
    body.append(["mean"] + [f"{means[c]:.4f}" for c in columns[1:]])
    widths = [max(len(str(x)) for x in col) for col in zip(columns, *body)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(b) for b in body])


def command_evaluate(args) -> None:
    rows = evaluate_pairs(_match(Path(args.pred), Path(args.ref)), _lpips_from_factory(args.lpips_network),
                          Path(args.degraded) if args.degraded else None)
    print(format_table(rows))


# ---------------------------------------------------------------------- show-prior
def prior_figure(adapter, path: Path):
    """A matplotlib figure of the file ``path`` beside the adapter's learned prior sigma for it.

    Images: the image and the sigma map (mean over channels). Audio: the spectrogram (at the adapter's
    rate) and sigma over time beneath it. The demo page shows the same figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.mlab as mlab
    import matplotlib.pyplot as plt

    device = next(adapter.parameters()).device
    if _check_kind(adapter, path) == "image":
        image = read_image(path)
        y = torch.from_numpy(image).permute(2, 0, 1)[None].to(device) * 2 - 1
        with torch.no_grad():
            sigma = adapter.prior_std(y)[0].mean(0).cpu().numpy()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        axes[0].imshow(image)
        axes[0].set_title(path.name)
        shown = axes[1].imshow(sigma, cmap="magma")
        axes[1].set_title("learned prior sigma (mean over channels)")
        fig.colorbar(shown, ax=axes[1], fraction=0.046, label=f"sigma: {sigma.min():.3g} to {sigma.max():.3g}")
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        return fig
    audio, rate = read_audio(path)
    audio, rate = _at_adapter_rate(adapter, path, audio, rate)
    y = torch.from_numpy(audio)[None, None].to(device)
    with torch.no_grad():
        sigma = adapter.prior_std(y)[0, 0].cpu().numpy()
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    window = min(512, len(audio))
    power, frequencies, times = mlab.specgram(audio, NFFT=window, Fs=rate, noverlap=window * 3 // 4)
    level = 10 * np.log10(power + 1e-20)  # digital silence stays finite
    axes[0].pcolormesh(times, frequencies, level, cmap="magma", vmin=level.max() - 100, vmax=level.max(),
                       shading="auto")
    axes[0].set_ylabel("frequency (Hz)")
    axes[0].set_title(path.name)
    axes[1].plot(np.arange(len(audio)) / rate, sigma, color="tab:red", linewidth=0.6)
    axes[1].set_title(f"learned prior sigma: {sigma.min():.3g} to {sigma.max():.3g}")
    axes[1].set_xlabel("time (s)")
    fig.tight_layout()
    return fig


def command_show_prior(args) -> None:
    adapter = load_adapter(args.adapter, args.model_factory, args.device)
    path = Path(args.input)
    if not path.is_file():
        raise CommandError(f"{path}: no such file.")
    save_figure(prior_figure(adapter, path), Path(args.output))
    print(f"wrote {args.output}")


# ---------------------------------------------------------------------- demo
def command_demo(args) -> None:
    try:
        importlib.import_module("gradio")
    except ImportError:
        raise CommandError('the demo needs Gradio: pip install "restoregrad_adapter[demo]"') from None
    from .demo import UploadLimits, launch_demo

    limits = UploadLimits(max_file_mb=args.max_file_mb, max_pixels=args.max_pixels, max_seconds=args.max_seconds)
    launch_demo(args.adapter, host=args.host, port=args.port, model_factory=args.model_factory, device=args.device,
                limits=limits)


# ---------------------------------------------------------------------- main
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restoregrad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def adapter_arguments(p):
        p.add_argument("--adapter", required=True, help="an adapter folder or a Hub repo id (org/name)")
        p.add_argument("--model-factory", default=None,
                       help="package.module:function building the denoiser model, for adapters saved as state dicts")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")

    restore = sub.add_parser("restore", help="restore image or WAV files")
    adapter_arguments(restore)
    restore.add_argument("inputs", nargs="+", metavar="INPUT")
    restore.add_argument("-o", "--output", required=True, help="output folder")
    restore.add_argument("--steps", type=_positive_int, default=None,
                         help="sampling steps for images (default: the adapter's integration's, e.g. 10)")
    restore.add_argument("--eta", type=_non_negative_float, default=0.0, help="DDIM eta for images")
    restore.add_argument("--stride", type=_positive_int, default=None,
                         help="patch stride for images larger than the model's patch (default patch / 4)")
    restore.add_argument("--patch-batch-size", type=_positive_int, default=64)
    restore.add_argument("--upscale", type=_positive_int, default=1,
                         help="enlarge each image this many times (bicubic, as in training) before restoring: the "
                              "input of a super-resolution adapter made from a small image (default 1: as it is)")
    restore.add_argument("--timestep-spacing", choices=("leading", "linspace", "trailing"), default=None,
                         help="images: how the sampling steps are spread over the training steps (diffusers' "
                              "timestep_spacing; default: the integration's sampler as it is, e.g. WeatherDiff's "
                              "leading); trailing starts from pure noise (docs/deblur_sr.md)")
    restore.add_argument("--self-ensemble", action="store_true",
                         help="images: restore the eight rotations and mirrors of each image and average them "
                              "(eight times the work; docs/deblur_sr.md)")
    restore.add_argument("--patch-size", type=_positive_int, default=None,
                         help="image patch side (default: the adapter's training crops; larger only for a fully "
                              "convolutional denoiser, e.g. the image trainer's)")
    restore.add_argument("--sr-consistency", action="store_true",
                         help="with --upscale: project each result onto the images whose bicubic down-sampling "
                              "is exactly the small input")
    restore.add_argument("--seed", type=int, default=0)
    restore.add_argument("--quiet", action="store_true", help="no progress bars")
    restore.set_defaults(run=command_restore)

    evaluate = sub.add_parser("evaluate", help="metrics of restored files against references of the same name")
    evaluate.add_argument("--pred", required=True)
    evaluate.add_argument("--ref", required=True)
    evaluate.add_argument("--lpips-network", default=None,
                          help="package.module:function returning (feature_network, linear_weights) for LPIPS "
                               "(restoregrad_adapter.contrib.metrics.lpips); images only")
    evaluate.add_argument("--degraded", default=None,
                          help="a folder with the degraded inputs under the same names: their scores against the "
                               "references are shown beside the restored files' (columns '..._input')")
    evaluate.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    evaluate.set_defaults(run=command_evaluate)

    show = sub.add_parser("show-prior", help="a PNG of the input beside its learned prior sigma map")
    adapter_arguments(show)
    show.add_argument("input", metavar="INPUT")
    show.add_argument("-o", "--output", required=True, help="PNG file")
    show.set_defaults(run=command_show_prior)

    demo = sub.add_parser("demo", help="a web page that restores uploads and shows the learned prior (Gradio)")
    adapter_arguments(demo)
    demo.add_argument("--port", type=_positive_int, default=7860, help="the page's port on --host (default 7860)")
    demo.add_argument("--host", default="127.0.0.1",
                      help="the address to serve on (default 127.0.0.1: this machine only)")
    demo.add_argument("--max-file-mb", type=_positive_float, default=20.0,
                      help="the largest upload, in MB (default 20)")
    demo.add_argument("--max-pixels", type=_positive_int, default=512 * 512,
                      help="the most pixels of an image to restore (default 262144, i.e. 512 x 512)")
    demo.add_argument("--max-seconds", type=_positive_float, default=30.0,
                      help="the longest recording to restore, in seconds (default 30)")
    demo.set_defaults(run=command_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (CommandError, InputFileError, ValueError) as error:
        # The library's ValueErrors name the argument and what was expected: one line, no traceback.
        if getattr(args, "debug", False):
            raise
        print(f"restoregrad {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
