"""Scale-invariant SNR of waveforms, as an `evaluate` metric.

Load it from its folder, without network access::

    import evaluate
    from restoregrad_adapter.contrib.metrics import evaluate_module_path

    si_snr = evaluate.load(evaluate_module_path("si_snr"))
    si_snr.compute(predictions=[pred_wave], references=[clean_wave])
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from restoregrad_adapter.contrib.metrics import si_snr

_DESCRIPTION = """\
Scale-invariant signal-to-noise ratio (SI-SNR, a.k.a. SI-SDR) in dB, one value
per waveform, averaged over the waveforms. Each waveform may have its own
length.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of 1-D waveforms shaped (L,), L >= 2 (nested lists or
        numpy arrays), any amplitude range.
    references: list of clean waveforms, each as long as the matching
        prediction.
Returns:
    si_snr: mean SI-SNR in dB over the waveforms.
    si_snr_per_item: list of the per-waveform SI-SNR values in dB.
"""

_CITATION = """\
@inproceedings{leroux2019sdr,
  title     = {{SDR} -- Half-baked or Well Done?},
  author    = {Le Roux, Jonathan and Wisdom, Scott and Erdogan, Hakan and Hershey, John R.},
  booktitle = {IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  year      = {2019}
}
"""


class SiSnr(evaluate.Metric):
    """SI-SNR of restored waveforms against clean references."""

    def _info(self) -> evaluate.MetricInfo:
        waveform = datasets.Sequence(datasets.Value("float64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": waveform, "references": waveform}),
        )

    def _compute(self, predictions: list[Any], references: list[Any]) -> dict[str, Any]:
        values = [
            si_snr(_as_batch(pred, "predictions"), _as_batch(ref, "references"))[0].item()
            for pred, ref in zip(predictions, references)
        ]
        return {"si_snr": float(np.mean(values)), "si_snr_per_item": values}


def _as_batch(waveform: Any, name: str) -> torch.Tensor:
    array = np.asarray(waveform, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"each item of `{name}` must be shaped (L,), got shape {array.shape}")
    return torch.from_numpy(array).unsqueeze(0)
