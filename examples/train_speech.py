"""Train CDiffuSE-style speech enhancement with RestoreGrad's learned prior, with Accelerate.

    accelerate launch examples/train_speech.py                       # built-in data, CPU-sized defaults
    accelerate launch examples/train_speech.py --data_dir VoiceBank-DEMAND --model_size cdiffuse \\
        --segment_length 16384 --max_train_steps 100000 --mixed_precision bf16

Data (one of):
  --data_dir DIR              VoiceBank+DEMAND: clean_trainset_28spk_wav/, noisy_trainset_28spk_wav/,
                              clean_testset_wav/, noisy_testset_wav/;
  --clean_dir A --noisy_dir B any two folders of WAV files with matching names (validation: the last
                              few, or --validation_clean_dir / --validation_noisy_dir);
  --dataset_name NAME         a `datasets` dataset whose --clean_column / --noisy_column hold audio
                              (read undecoded: paths or bytes, decoded with soundfile);
  none of them                built-in: speech-like signals generated in code with additive noise at
                              0-15 dB SNR (restoregrad_adapter/data/speech.py).
Audio is resampled to 16 kHz. The denoiser is the reference DiffWave-style network with CDiffuSE's
call signature (restoregrad_adapter.reference_nets.DiffWaveDenoiser); train your own CDiffuSE model
by replacing `build_model`. Validation enhances held-out utterances with the fast 6-step sampler and
reports SI-SNR, plus PESQ (wideband) and STOI when `pesq` / `pystoi` are installed.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import training_common as common  # noqa: E402

SAMPLE_RATE = 16000
HOP = 256
MODEL_SIZES = {
    # name: (residual_layers, residual_channels, dilation_cycle_length)
    "tiny": (10, 32, 10),
    "cdiffuse": (30, 64, 10),  # the original CDiffuSE configuration
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default=None, help="a VoiceBank+DEMAND folder")
    g.add_argument("--clean_dir", default=None)
    g.add_argument("--noisy_dir", default=None)
    g.add_argument("--validation_clean_dir", default=None)
    g.add_argument("--validation_noisy_dir", default=None)
    g.add_argument("--dataset_name", default=None)
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--dataset_split", default="train")
    g.add_argument("--clean_column", default="clean")
    g.add_argument("--noisy_column", default="noisy")
    g.add_argument("--num_validation_utterances", type=int, default=3)
    g.add_argument("--validation_seconds", type=float, default=2.0, help="held-out utterances are cut to this")
    g.add_argument("--builtin_utterances", type=int, default=48)
    g.add_argument("--segment_length", type=int, default=HOP * 24, help="training crop, a multiple of 256 samples")
    g = parser.add_argument_group("model")
    g.add_argument("--model_size", choices=tuple(MODEL_SIZES), default="tiny")
    common.add_common_arguments(parser, dict(
        latent_weight=0.1, prior_matching_weight=0.5, encoder_size="base", output_dir="outputs/train_speech", max_train_steps=1500,
        train_batch_size=8, learning_rate=1e-3, checkpointing_steps=500, validation_steps=500,
        num_inference_steps=6))
    args = parser.parse_args(argv)
    common.check_common_arguments(args)
    args.sample_rate = SAMPLE_RATE
    if args.segment_length % HOP or args.segment_length < 3 * HOP:
        raise SystemExit(f"error: --segment_length must be a multiple of {HOP} of at least {3 * HOP}, "
                         f"got {args.segment_length}")
    if args.num_inference_steps not in (3, 6):
        raise SystemExit("error: --num_inference_steps must be 6 or 3 (CDiffuSE's fast schedules)")
    if sum(x is not None for x in (args.data_dir, args.clean_dir, args.dataset_name)) > 1:
        raise SystemExit("error: pass one of --data_dir, --clean_dir/--noisy_dir and --dataset_name")
    if (args.clean_dir is None) != (args.noisy_dir is None):
        raise SystemExit("error: --clean_dir and --noisy_dir go together")
    return args


# ---------------------------------------------------------------------- data
def read_wav(source) -> np.ndarray:
    """A mono 16 kHz float32 waveform from a path or bytes (resampled when needed)."""
    import soundfile

    from restoregrad_adapter.data.speech import resample

    try:
        audio, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32",
                                     always_2d=True)
    except (RuntimeError, OSError) as error:
        raise SystemExit(f"error: cannot read audio {source if not isinstance(source, bytes) else '<bytes>'}: "
                         f"{error}") from None
    audio = audio.mean(axis=1)  # mono
    return resample(audio, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else audio


def paired_files(clean_dir: str, noisy_dir: str) -> list[tuple[str, str]]:
    """(noisy, clean) paths of the WAV files whose names appear in both folders."""
    clean, noisy = Path(clean_dir), Path(noisy_dir)
    for flag, folder in (("clean", clean), ("noisy", noisy)):
        if not folder.is_dir():
            raise SystemExit(f"error: the {flag} folder {folder} does not exist")
    names = sorted(p.name for p in clean.iterdir() if p.suffix.lower() in (".wav", ".flac"))
    pairs = [(str(noisy / n), str(clean / n)) for n in names if (noisy / n).exists()]
    if not pairs:
        raise SystemExit(f"error: no files with the same name in {clean} and {noisy}")
    return pairs


def normalize_level(noisy: np.ndarray, clean: np.ndarray, peak: float = 0.95):
    """Scale a pair by one factor so that the noisy peak is ``peak`` (the SNR is unchanged).

    The learned prior's scale follows the signal's: at very low levels sigma sits at its floor
    sigma_min everywhere, so utterances are brought to a common level first.
    """
    top = float(np.abs(noisy).max())
    return (noisy, clean) if top == 0 else (noisy * (peak / top), clean * (peak / top))


def aligned_pair(noisy: np.ndarray, clean: np.ndarray):
    """Cut a pair to its common length, then level-normalise it."""
    length = min(len(noisy), len(clean))
    return normalize_level(noisy[:length], clean[:length])


def speech_source(items, loader) -> common.PairSource:
    """(noisy, clean) 16 kHz float32 waveforms, loaded lazily, aligned, level-normalised, cached."""
    return common.PairSource(items, lambda item: aligned_pair(*loader(item)), cache_size=512)


def build_sources(args):
    """(training source, validation (noisy, clean) pairs, description)."""
    def load_files(pair):
        return read_wav(pair[0]), read_wav(pair[1])

    if args.data_dir:
        root = Path(args.data_dir)
        train = paired_files(root / "clean_trainset_28spk_wav", root / "noisy_trainset_28spk_wav")
        test = paired_files(root / "clean_testset_wav", root / "noisy_testset_wav")
        validation = [aligned_pair(*load_files(p)) for p in test[: args.num_validation_utterances]]
        return speech_source(train, load_files), validation, f"VoiceBank+DEMAND: {len(train)} training pairs"
    if args.clean_dir:
        pairs = paired_files(args.clean_dir, args.noisy_dir)
        if args.validation_clean_dir:
            held = paired_files(args.validation_clean_dir, args.validation_noisy_dir)[: args.num_validation_utterances]
        else:
            count = min(args.num_validation_utterances, len(pairs) - 1)
            held, pairs = pairs[len(pairs) - count:], pairs[: len(pairs) - count]
        return (speech_source(pairs, load_files), [aligned_pair(*load_files(p)) for p in held],
                f"{len(pairs)} pairs from {args.clean_dir} and {args.noisy_dir}")
    if args.dataset_name:
        import datasets

        ds = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)
        for column in (args.clean_column, args.noisy_column):
            if column not in ds.column_names:
                raise SystemExit(f"error: column {column!r} not in {args.dataset_name} ({ds.column_names})")
            ds = ds.cast_column(column, datasets.Audio(decode=False))  # decoded here with soundfile

        def load_row(i):
            row = ds[int(i)]
            pick = lambda a: a["bytes"] if a.get("bytes") else a["path"]  # noqa: E731
            return read_wav(pick(row[args.noisy_column])), read_wav(pick(row[args.clean_column]))

        count = min(args.num_validation_utterances, len(ds) - 1)
        validation = [aligned_pair(*load_row(i)) for i in range(len(ds) - count, len(ds))]
        return (speech_source(list(range(len(ds) - count)), load_row), validation,
                f"dataset {args.dataset_name} ({len(ds) - count} training pairs)")

    from restoregrad_adapter.data.speech import builtin_speech_pairs

    train = builtin_speech_pairs("train", num_utterances=args.builtin_utterances, seconds=2.0, seed=args.seed)
    held = builtin_speech_pairs("validation", num_utterances=args.num_validation_utterances,
                                seconds=args.validation_seconds, seed=args.seed)
    held = [normalize_level(noisy, clean) for noisy, clean in held]
    return (speech_source(train, lambda pair: pair), held,
            f"built-in: {len(train)} synthetic utterances with noise at 0-15 dB SNR, {len(held)} held out")


class SegmentDataset(torch.utils.data.Dataset):
    """Example i: a random ``segment_length`` crop of a random pair, drawn from (seed, i) only."""

    def __init__(self, source: common.PairSource, segment_length: int, seed: int):
        self.source, self.segment_length, self.seed = source, segment_length, seed

    def __len__(self):
        return 2**62  # indexed by a StepBatchSampler, never iterated whole

    def __getitem__(self, index: int):
        rng = common.example_rng(self.seed, index)
        noisy, clean = self.source[int(rng.integers(len(self.source)))]
        n = self.segment_length
        if len(clean) < n:  # zero-pad short utterances
            noisy, clean = np.pad(noisy, (0, n - len(noisy))), np.pad(clean, (0, n - len(clean)))
        start = int(rng.integers(len(clean) - n + 1))
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a[start:start + n]))[None].float()  # noqa: E731
        return as_tensor(clean), as_tensor(noisy)


# ---------------------------------------------------------------------- model
def build_model(args):
    from restoregrad_adapter.reference_nets import DiffWaveDenoiser

    layers, channels, cycle = MODEL_SIZES[args.model_size]
    return DiffWaveDenoiser(residual_channels=channels, residual_layers=layers, dilation_cycle_length=cycle)


def build_adapter(args):
    from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad

    return CDiffuSERestoreGrad.from_model(build_model(args), size=args.encoder_size, mode=args.mode, eta=args.latent_weight,
                                          prior_matching_weight=args.prior_matching_weight, sigma_min=args.sigma_min)


# ---------------------------------------------------------------------- validation
def _crop(noisy: np.ndarray, clean: np.ndarray, seconds: float):
    length = min(len(clean), int(seconds * SAMPLE_RATE))
    length -= length % HOP
    if length < 3 * HOP:
        raise SystemExit(f"error: a validation utterance is shorter than {3 * HOP} samples")
    return noisy[:length], clean[:length]


@torch.no_grad()
def validate(adapter, validation, args, step, device, out_dir):
    """Enhance held-out utterances; SI-SNR (PESQ, STOI when installed); a PNG and WAVs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile

    from restoregrad_adapter import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6
    from restoregrad_adapter.metrics import pesq_wb, si_snr, stoi

    betas = FAST_INFERENCE_BETAS_6 if args.num_inference_steps == 6 else FAST_INFERENCE_BETAS_3
    was_training = adapter.training
    adapter.eval()
    scores: dict[str, list[float]] = {}
    fig, axes = plt.subplots(len(validation), 4, figsize=(15, 2.6 * len(validation)), squeeze=False)
    for i, (noisy, clean) in enumerate(validation):
        noisy, clean = _crop(noisy, clean, args.validation_seconds)
        y = torch.from_numpy(noisy)[None, None].to(device)
        x0 = torch.from_numpy(clean)[None, None].to(device)
        generator = torch.Generator(device=device).manual_seed(args.seed + i)
        restored = adapter.restore(y, inference_betas=betas, generator=generator).float()
        sigma = adapter.prior_std(y)[0, 0].float().cpu().numpy()
        for name, value in (("si_snr", si_snr(restored[:, 0], x0[:, 0])), ("si_snr_noisy", si_snr(y[:, 0], x0[:, 0]))):
            scores.setdefault(name, []).append(value.item())
        for name, fn in (("pesq", pesq_wb), ("stoi", stoi)):
            try:
                scores.setdefault(name, []).append(fn(restored[:, 0].cpu(), x0[:, 0].cpu()).item())
            except ImportError:
                scores.pop(name, None)
        waves = {"noisy": noisy, "restored": restored[0, 0].cpu().numpy(), "clean": clean}
        for c, (title, wave) in enumerate(waves.items()):
            axes[i, c].specgram(wave + 1e-9, NFFT=512, Fs=SAMPLE_RATE, noverlap=384, cmap="magma", vmin=-120)
            extra = f"  SI-SNR {scores['si_snr'][-1]:.1f} dB" if title == "restored" else (
                f"  SI-SNR {scores['si_snr_noisy'][-1]:.1f} dB" if title == "noisy" else "")
            axes[i, c].set_title(title + extra, fontsize=9)
            if step == args.max_train_steps or step == 0:
                soundfile.write(os.path.join(out_dir, f"step-{step:06d}-{i}-{title}.wav"), wave, SAMPLE_RATE)
        axes[i, 3].plot(np.arange(len(sigma)) / SAMPLE_RATE, sigma, color="tab:red", linewidth=0.6)
        axes[i, 3].set_title("learned prior sigma", fontsize=9)
    fig.suptitle(f"validation at step {step} ({args.mode}, {len(betas)} sampling steps)")
    fig.tight_layout()
    common.save_figure(fig, os.path.join(out_dir, f"step-{step:06d}.png"))
    adapter.train(was_training)
    return {name: float(np.mean(values)) for name, values in scores.items()}


# ---------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)

    def data():
        source, validation, description = build_sources(args)
        return SegmentDataset(source, args.segment_length, args.seed), validation, description

    def describe(m):
        text = f"SI-SNR {m['si_snr']:.2f} dB (noisy {m['si_snr_noisy']:.2f} dB)"
        return text + "".join(f", {k.upper()} {m[k]:.3f}" for k in ("pesq", "stoi") if k in m)

    common.train(
        args,
        project="restoregrad_speech",
        build_adapter=build_adapter,
        build_data=data,
        validate=lambda adapter, validation, step, device, out_dir: validate(adapter, validation, args, step, device,
                                                                             out_dir),
        headline=("si_snr", "dB"),
        curve_metrics=["si_snr", "pesq", "stoi"],
        describe_validation=describe,
        describe_batch=f"segments of {args.segment_length} samples at {SAMPLE_RATE} Hz",
    )


if __name__ == "__main__":
    main()
