"""PSNR on the Y channel (BT.601 studio swing), as an `evaluate` metric.

Load it from its folder, without network access::

    import evaluate
    from restoregrad_adapter.contrib.metrics import evaluate_module_path

    psnr = evaluate.load(evaluate_module_path("psnr_y"))
    psnr.compute(predictions=[pred_chw], references=[target_chw])
"""

from __future__ import annotations

from typing import Any

import datasets
import evaluate
import numpy as np
import torch

from restoregrad_adapter.contrib.metrics import psnr_y

_DESCRIPTION = """\
Peak signal-to-noise ratio computed on the luma (Y) channel of ITU-R BT.601
studio-swing YCbCr (MATLAB `rgb2ycbcr` / WeatherDiff convention), one value per
image, averaged over the images. Each image may have its own size.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: list of images shaped (C, H, W), C in {1, 3}, values in
        [0, data_range] (nested lists or numpy arrays).
    references: list of reference images, each with the shape of the matching
        prediction.
    data_range: maximum value of the input scale, 1.0 by default.
Returns:
    psnr_y: mean PSNR in dB over the images (inf when every pair is identical).
    psnr_y_per_image: list of the per-image PSNR values in dB.
"""

_CITATION = """\
@article{ozdenizci2023weatherdiff,
  title   = {Restoring Vision in Adverse Weather Conditions with Patch-Based Denoising Diffusion Models},
  author  = {Ozdenizci, Ozan and Legenstein, Robert},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year    = {2023}
}
"""


class PsnrY(evaluate.Metric):
    """Y-channel PSNR of restored images against references."""

    def _info(self) -> evaluate.MetricInfo:
        image = datasets.Sequence(datasets.Sequence(datasets.Sequence(datasets.Value("float64"))))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": image, "references": image}),
        )

    def _compute(
        self,
        predictions: list[Any],
        references: list[Any],
        data_range: float = 1.0,
    ) -> dict[str, Any]:
        values = [
            psnr_y(_as_batch(pred, "predictions"), _as_batch(ref, "references"), data_range=data_range)[0].item()
            for pred, ref in zip(predictions, references)
        ]
        return {"psnr_y": float(np.mean(values)), "psnr_y_per_image": values}


def _as_batch(image: Any, name: str) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"each item of `{name}` must be shaped (C, H, W), got shape {array.shape}")
    return torch.from_numpy(array).unsqueeze(0)
