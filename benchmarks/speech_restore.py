"""Score a trained speech adapter on held-out pairs under several restoration settings.

    python benchmarks/speech_restore.py --adapter outputs/train_speech/adapter --data_dir REAL_SPEECH \\
        [--settings default released blend noisy_start ...] [--output table.json]

Every held-out utterance of a VoiceBank+DEMAND-style folder (``clean_testset_wav/``,
``noisy_testset_wav/``) is restored whole, as ``restoregrad restore`` restores a file, with each named
setting of the CDiffuSE reverse process (:data:`SETTINGS`), and scored against its clean reference:
SI-SNR, PESQ (wideband) and STOI, beside the noisy input's. Every setting uses the same sampling
noise (seed 0 for each utterance, the command line's default).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from restoregrad_adapter import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6
from restoregrad_adapter.contrib.data.readers import read_audio_pair, voicebank_pair_files
from restoregrad_adapter.contrib.metrics import speech_scores

#: name -> keyword arguments of CDiffuSERestoreGrad.restore.
SETTINGS = {
    "default": {},
    "released": {"initial": "noisy", "clamp": True, "mix_noisy": True},
    "blend": {"mix_noisy": True},
    "blend_clamp": {"mix_noisy": True, "clamp": True},
    "noisy_start": {"initial": "noisy"},
    "noisy_start_blend": {"initial": "noisy", "mix_noisy": True},
    "steps3": {"inference_betas": FAST_INFERENCE_BETAS_3},
    "steps3_blend": {"inference_betas": FAST_INFERENCE_BETAS_3, "mix_noisy": True},
    "steps50": {"inference_betas": None},
    "blend0.1": {"mix_noisy": 0.1},
    "blend0.3": {"mix_noisy": 0.3},
    "blend0.4": {"mix_noisy": 0.4},
    "steps3_blend0.3": {"inference_betas": FAST_INFERENCE_BETAS_3, "mix_noisy": 0.3},
    "steps3_blend0.4": {"inference_betas": FAST_INFERENCE_BETAS_3, "mix_noisy": 0.4},
    "steps3_released": {"inference_betas": FAST_INFERENCE_BETAS_3, "initial": "noisy", "clamp": True,
                        "mix_noisy": True},
}


def mean_scores(pairs) -> dict[str, float]:
    """The mean of each of :func:`~restoregrad_adapter.contrib.metrics.speech_scores` over ``(signal, clean)`` pairs."""
    rows = [speech_scores(torch.from_numpy(signal).float(), torch.from_numpy(clean).float()) for signal, clean in pairs]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="a saved speech adapter folder")
    parser.add_argument("--data_dir", required=True, help="a VoiceBank+DEMAND-style folder (its test split is scored)")
    parser.add_argument("--settings", nargs="+", default=["default"], choices=tuple(SETTINGS))
    parser.add_argument("--limit", type=int, default=None, help="score only the first N held-out pairs")
    parser.add_argument("--output", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)

    from restoregrad_adapter.cli import load_adapter

    adapter = load_adapter(args.adapter, None, "cpu")
    pairs = voicebank_pair_files(args.data_dir, "test")[: args.limit]
    data = [read_audio_pair(clean, noisy, sample_rate=16000) for clean, noisy in pairs]
    table = {"noisy": mean_scores((noisy, clean) for clean, noisy in data)}
    print(f"{len(data)} held-out pairs; noisy input: " + ", ".join(f"{k} {v:.3f}" for k, v in table["noisy"].items()))
    for name in args.settings:
        start, restored = time.time(), []
        kwargs = dict(SETTINGS[name])
        betas = kwargs.pop("inference_betas", FAST_INFERENCE_BETAS_6)
        for clean, noisy in data:
            y = torch.from_numpy(noisy)[None, None]
            restored.append(adapter.restore(y, inference_betas=betas, generator=torch.Generator().manual_seed(0), **kwargs)[0, 0].numpy())
        table[name] = {**mean_scores(zip(restored, (clean for clean, _ in data))), "seconds": time.time() - start}
        print(f"{name:>18}: " + ", ".join(f"{k} {v:.3f}" for k, v in table[name].items()), flush=True)
    if args.output:
        from restoregrad_adapter.io import write_json

        write_json(table, args.output)


if __name__ == "__main__":
    sys.exit(main())
