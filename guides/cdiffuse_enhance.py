"""CDiffuSE speech enhancement with RestoreGrad's learned prior, on a CPU in about a minute.

A small DiffWave network with CDiffuSE's call signature stands in for a CDiffuSE model object; it is
wrapped (``restoregrad_adapter.integrations.cdiffuse``), trained jointly with the Prior and Posterior
Nets on noisy speech with CDiffuSE's conditional forward process, and restores a held-out utterance
with CDiffuSE's 6-step fast sampler. Nothing is downloaded: by default the speech and noise are
synthesised in code (restoregrad_adapter.contrib.data.speech); ``--data_dir`` reads your own pairs instead.

    python guides/cdiffuse_enhance.py                    # defaults
    python guides/cdiffuse_enhance.py --steps 2000       # better enhancement
    python guides/cdiffuse_enhance.py --data_dir DIR     # DIR/clean/*.wav and DIR/noisy/*.wav, same names
    python guides/cdiffuse_enhance.py --threads 1        # on a machine busy with other work

Writes ``noisy.wav``, ``enhanced.wav``, ``clean.wav`` and ``cdiffuse_enhance.png`` (waveforms,
spectrograms and the learned sigma) to ``--output_dir``.
"""

import argparse
import os
import time

import numpy as np
import torch

from restoregrad_adapter import FAST_INFERENCE_BETAS_6
from restoregrad_adapter.contrib.data import random_batch
from restoregrad_adapter.contrib.data.readers import audio_pair_files, normalize_level, read_audio_pair
from restoregrad_adapter.contrib.data.speech import builtin_speech_pairs
from restoregrad_adapter.integrations.cdiffuse import HOP_LENGTH, CDiffuSERestoreGrad, log_magnitude_spectrogram
from restoregrad_adapter.io import save_figure, write_audio
from restoregrad_adapter.contrib.metrics import si_snr
from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

SAMPLE_RATE = 16000


def read_pairs(data_dir: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(x0, y)`` = (clean, noisy) 16 kHz mono pairs from ``data_dir/clean`` and ``data_dir/noisy``
    (files of the same name; other rates are resampled)."""
    files = audio_pair_files(os.path.join(data_dir, "clean"), os.path.join(data_dir, "noisy"))
    if len(files) < 2:
        raise ValueError(f"{data_dir} needs at least two clean/noisy pairs (one is held out), found {len(files)}.")
    return [read_audio_pair(clean, noisy, sample_rate=SAMPLE_RATE) for clean, noisy in files]


def plot_enhancement(path: str, noisy, enhanced, clean, sigma) -> None:
    """Waveforms and spectrograms of the noisy, enhanced and clean utterance, and the learned sigma."""
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
    save_figure(fig, path, dpi=80)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8, help="training crop, in 256-sample frames")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--residual_channels", type=int, default=32, help="DiffWave width (CDiffuSE: 64)")
    parser.add_argument("--residual_layers", type=int, default=6, help="DiffWave depth (CDiffuSE: 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", default=None, help="folder with clean/ and noisy/ WAV pairs (resampled to 16 kHz)")
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
        train, (clean_val, noisy_val) = pairs[:-1], pairs[-1]
    else:
        train = builtin_speech_pairs("train", num_utterances=24, seconds=1.5, seed=args.seed)
        clean_val, noisy_val = builtin_speech_pairs("validation", num_utterances=1, seconds=2.0, seed=args.seed)[0]
    # Level-normalise every utterance (enhancement is scale-free; SI-SNR too): the learned sigma
    # then has room above the encoders' floor sigma_min = 0.1 wherever the speech is loud.
    train = [normalize_level(x0, y) for x0, y in train]
    whole_frames = len(clean_val) // HOP_LENGTH * HOP_LENGTH  # CDiffuSE needs L = 256 x frames
    clean_val, noisy_val = normalize_level(clean_val[:whole_frames], noisy_val[:whole_frames])
    print(f"data: {len(train)} training utterances, 1 held out ({len(clean_val) / SAMPLE_RATE:.2f} s)")

    # The user's CDiffuSE model object; here a small DiffWave with the same call signature.
    model = DiffWaveDenoiser(residual_channels=args.residual_channels, residual_layers=args.residual_layers,
                             dilation_cycle_length=min(args.residual_layers, 10), embedding_dim=128)
    adapter = CDiffuSERestoreGrad.from_model(model, size="tiny", latent_weight=0.1, prior_matching_weight=0.5)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    start, losses = time.time(), []
    for step in range(1, args.steps + 1):
        # Aligned random crops of 256 x frames samples starting on a frame; short utterances are
        # padded with zeros, as CDiffuSE's collator does.
        x0, y = random_batch(train, args.frames * HOP_LENGTH, args.batch_size, generator, align=HOP_LENGTH,
                             pad="zeros")
        out = adapter.training_loss(torch.from_numpy(x0)[:, None], torch.from_numpy(y)[:, None], generator=generator)
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

    enhanced_np = enhanced[0, 0].numpy()
    for name, signal in (("noisy", noisy_val), ("enhanced", enhanced_np), ("clean", clean_val)):
        write_audio(os.path.join(args.output_dir, f"{name}.wav"), np.clip(signal, -1, 1), SAMPLE_RATE)
    path = os.path.join(args.output_dir, "cdiffuse_enhance.png")
    plot_enhancement(path, noisy_val, enhanced_np, clean_val, sigma[0, 0].numpy())
    print(f"wrote {args.output_dir}/{{noisy,enhanced,clean}}.wav and {path} ({time.time() - start:.0f} s in all)")
    return {"si_snr_noisy": before, "si_snr_enhanced": after, "loss_first": float(np.mean(losses[:50])),
            "loss_last": float(np.mean(losses[-50:]))}


if __name__ == "__main__":
    main()
