"""CDiffuSE speech enhancement with RestoreGrad's learned prior, on a CPU in about a minute.

A small DiffWave network with CDiffuSE's call signature stands in for a CDiffuSE model object; it is
wrapped (``restoregrad_adapter.integrations.cdiffuse``), trained jointly with the Prior and Posterior
Nets on noisy speech with CDiffuSE's conditional forward process, and restores a held-out utterance
with CDiffuSE's 6-step fast sampler. Nothing is downloaded: by default the speech and noise are
synthesised in code (restoregrad_adapter/data/speech.py); ``--data_dir`` reads your own pairs instead.

    python integrations/cdiffuse_enhance.py                    # defaults
    python integrations/cdiffuse_enhance.py --steps 2000       # better enhancement
    python integrations/cdiffuse_enhance.py --data_dir DIR     # DIR/clean/*.wav and DIR/noisy/*.wav, same names
    python integrations/cdiffuse_enhance.py --threads 1        # on a machine busy with other work

Writes ``noisy.wav``, ``enhanced.wav``, ``clean.wav`` and ``cdiffuse_enhance.png`` (waveforms,
spectrograms and the learned sigma) to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from restoregrad_adapter.data.speech import builtin_speech_pairs  # noqa: E402
from examples.training_common import save_figure as write_png  # noqa: E402
from restoregrad_adapter import FAST_INFERENCE_BETAS_6  # noqa: E402
from restoregrad_adapter.integrations.cdiffuse import (  # noqa: E402
    HOP_LENGTH,
    CDiffuSERestoreGrad,
    log_magnitude_spectrogram,
)
from restoregrad_adapter.metrics import si_snr  # noqa: E402
from restoregrad_adapter.reference_nets import DiffWaveDenoiser  # noqa: E402

SAMPLE_RATE = 16000


def crop_to_hop(signal: np.ndarray) -> np.ndarray:
    """Drop the samples past the last multiple of 256 (CDiffuSE needs L = 256 x frames)."""
    return signal[: len(signal) // HOP_LENGTH * HOP_LENGTH]


def peak_normalise(pairs, peak: float = 0.95):
    """Scale each (noisy, clean) pair together so the noisy peak is ``peak`` (the SNR is unchanged)."""
    out = []
    for noisy, clean in pairs:
        scale = np.float32(peak / max(float(np.abs(noisy).max()), 1e-8))
        out.append((noisy * scale, clean * scale))
    return out


def read_pairs(data_dir: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(noisy, clean) float32 mono pairs from ``data_dir/noisy`` and ``data_dir/clean`` (same file names)."""
    import soundfile

    clean_dir, noisy_dir = os.path.join(data_dir, "clean"), os.path.join(data_dir, "noisy")
    names = sorted(n for n in os.listdir(clean_dir) if n.lower().endswith(".wav"))
    pairs = []
    for name in names:
        noisy_path = os.path.join(noisy_dir, name)
        if not os.path.exists(noisy_path):
            raise ValueError(f"{noisy_path} is missing: every clean/ file needs a noisy/ file of the same name.")
        clean, rate_c = soundfile.read(os.path.join(clean_dir, name), dtype="float32", always_2d=True)
        noisy, rate_n = soundfile.read(noisy_path, dtype="float32", always_2d=True)
        if rate_c != SAMPLE_RATE or rate_n != SAMPLE_RATE:
            raise ValueError(f"{name}: expected {SAMPLE_RATE} Hz audio, got {rate_c} and {rate_n} Hz.")
        length = min(len(clean), len(noisy))
        pairs.append((noisy[:length, 0], clean[:length, 0]))
    if len(pairs) < 2:
        raise ValueError(f"{data_dir} needs at least two clean/noisy pairs (one is held out), found {len(pairs)}.")
    return pairs


def random_segments(pairs, frames: int, count: int, generator: torch.Generator):
    """``count`` aligned random crops of ``256 * frames`` samples: (clean, noisy), each (count, 1, L)."""
    length = frames * HOP_LENGTH
    clean, noisy = [], []
    for i in torch.randint(0, len(pairs), (count,), generator=generator).tolist():
        y, x0 = pairs[i]
        if len(x0) < length:  # zero-pad short utterances, as CDiffuSE's collator does
            y, x0 = np.pad(y, (0, length - len(y))), np.pad(x0, (0, length - len(x0)))
        start = int(torch.randint(0, len(x0) - length + 1, (1,), generator=generator)) // HOP_LENGTH * HOP_LENGTH
        clean.append(torch.from_numpy(x0[start:start + length].copy()))
        noisy.append(torch.from_numpy(y[start:start + length].copy()))
    return torch.stack(clean).unsqueeze(1), torch.stack(noisy).unsqueeze(1)


def save_figure(path: str, noisy, enhanced, clean, sigma) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = np.arange(len(clean)) / SAMPLE_RATE
    fig, axes = plt.subplots(4, 2, figsize=(13, 10), gridspec_kw={"width_ratios": [1, 1]})
    for row, (signal, title) in enumerate(((noisy, "noisy"), (enhanced, "enhanced"), (clean, "clean"))):
        axes[row, 0].plot(seconds, signal, linewidth=0.4)
        axes[row, 0].set_title(f"{title} waveform")
        axes[row, 0].set_xlim(seconds[0], seconds[-1])
        spec = log_magnitude_spectrogram(torch.from_numpy(signal)[None])[0].numpy()
        axes[row, 1].imshow(spec, origin="lower", aspect="auto", cmap="magma",
                            extent=(0, seconds[-1], 0, SAMPLE_RATE / 2000))
        axes[row, 1].set_title(f"{title}: log(1 + |STFT|)")
        axes[row, 1].set_ylabel("kHz")
    frames = len(sigma) // HOP_LENGTH
    frame_sigma = sigma[: frames * HOP_LENGTH].reshape(frames, HOP_LENGTH).mean(1)
    frame_clean = np.sqrt((clean[: frames * HOP_LENGTH].reshape(frames, HOP_LENGTH) ** 2).mean(1))
    axes[3, 0].plot(seconds, np.abs(noisy), color="0.75", linewidth=0.3, label="|noisy|")
    axes[3, 0].plot(seconds, sigma, color="tab:red", linewidth=0.3, alpha=0.5, label="sigma (per sample)")
    axes[3, 0].step(np.arange(frames) * HOP_LENGTH / SAMPLE_RATE, frame_sigma, where="post", color="darkred",
                    linewidth=1.2, label="sigma (frame mean)")
    axes[3, 0].set_title("learned prior standard deviation (Prior Net)")
    axes[3, 0].set_xlim(seconds[0], seconds[-1])
    axes[3, 0].legend(loc="upper right", fontsize=8)
    axes[3, 0].set_xlabel("seconds")
    axes[3, 1].scatter(frame_clean, frame_sigma, s=6)
    axes[3, 1].set_xlabel("clean RMS per 256-sample frame")
    axes[3, 1].set_ylabel("mean sigma per frame")
    axes[3, 1].set_title("learned sigma against the clean speech level")
    fig.tight_layout()
    write_png(fig, path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8, help="training crop, in 256-sample frames")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--residual_channels", type=int, default=32, help="DiffWave width (CDiffuSE: 64)")
    parser.add_argument("--residual_layers", type=int, default=6, help="DiffWave depth (CDiffuSE: 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=None, help="folder with clean/ and noisy/ WAV pairs (16 kHz)")
    parser.add_argument("--output_dir", default="outputs/cdiffuse_enhance")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default; 1 is best on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    if args.data_dir:
        pairs = read_pairs(args.data_dir)
        train, (noisy_val, clean_val) = pairs[:-1], pairs[-1]
    else:
        train = builtin_speech_pairs("train", num_utterances=24, seconds=1.5, seed=args.seed)
        noisy_val, clean_val = builtin_speech_pairs("validation", num_utterances=1, seconds=2.0, seed=args.seed)[0]
    # Level-normalise every utterance (enhancement is scale-free; SI-SNR too): the learned sigma
    # then has room above the encoders' floor sigma_min = 0.1 wherever the speech is loud.
    train = peak_normalise(train)
    ((noisy_val, clean_val),) = peak_normalise([(crop_to_hop(noisy_val), crop_to_hop(clean_val))])
    print(f"data: {len(train)} training utterances, 1 held out ({len(clean_val) / SAMPLE_RATE:.2f} s)")

    # The user's CDiffuSE model object; here a small DiffWave with the same call signature.
    model = DiffWaveDenoiser(residual_channels=args.residual_channels, residual_layers=args.residual_layers,
                             dilation_cycle_length=min(args.residual_layers, 10), embedding_dim=128)
    adapter = CDiffuSERestoreGrad.from_model(model, size="tiny", latent_weight=0.1, prior_matching_weight=0.5)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    start, losses = time.time(), []
    for step in range(1, args.steps + 1):
        x0, y = random_segments(train, args.frames, args.batch_size, generator)
        out = adapter.training_loss(x0, y, generator=generator)
        optimizer.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        optimizer.step()
        losses.append(out.loss.item())
        if step % 50 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {np.mean(losses[-50:]):.4f}  ({time.time() - start:.0f} s)", flush=True)

    adapter.eval()
    y_val = torch.from_numpy(noisy_val)[None, None]
    x0_val = torch.from_numpy(clean_val)[None, None]
    enhanced = adapter.restore(y_val, inference_betas=FAST_INFERENCE_BETAS_6,
                               generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        sigma = adapter.prior_std(y_val)
    before = si_snr(y_val[:, 0], x0_val[:, 0]).item()
    after = si_snr(enhanced[:, 0], x0_val[:, 0]).item()
    print(f"held-out SI-SNR: noisy {before:.2f} dB -> enhanced {after:.2f} dB (6-step fast sampling)")

    import soundfile

    enhanced_np = enhanced[0, 0].numpy()
    for name, signal in (("noisy", noisy_val), ("enhanced", enhanced_np), ("clean", clean_val)):
        soundfile.write(os.path.join(args.output_dir, f"{name}.wav"), np.clip(signal, -1, 1), SAMPLE_RATE)
    path = os.path.join(args.output_dir, "cdiffuse_enhance.png")
    save_figure(path, noisy_val, enhanced_np, clean_val, sigma[0, 0].numpy())
    print(f"wrote {args.output_dir}/{{noisy,enhanced,clean}}.wav and {path} ({time.time() - start:.0f} s in all)")
    return {"si_snr_noisy": before, "si_snr_enhanced": after, "loss_first": float(np.mean(losses[:50])),
            "loss_last": float(np.mean(losses[-50:]))}


if __name__ == "__main__":
    main()
