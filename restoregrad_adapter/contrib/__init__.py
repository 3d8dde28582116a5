"""Tooling around the adapter: example data, figures, metrics, training helpers and reference networks.

Nothing here is needed to wrap a model with :class:`restoregrad_adapter.RestoreGrad`, train it or
restore with it. These modules serve the examples, the benchmarks and ``restoregrad evaluate``:

- :mod:`.data`: built-in example data synthesised in code (rain, snow and raindrops, blur and low
  resolution on photos, noisy speech), readers of paired-file layouts (WeatherDiff, RainDrop,
  RealBlur, DIV2K, VoiceBank+DEMAND), aligned random crops, and ``python -m
  restoregrad_adapter.contrib.data.real_speech``, the builder of a real-recording speech set;
- :mod:`.metrics`: PSNR/SSIM on Y, LPIPS, FID, SI-SNR, PESQ, STOI, and ``evaluate`` modules (those
  need the ``evaluate`` extra);
- :mod:`.figures`: figures of restorations and training curves;
- :mod:`.training`: the plain helpers the training scripts share (resumable randomness,
  checkpoints, EMA);
- :mod:`.reference_nets`: small networks with CDiffuSE's and WeatherDiff's call signatures.

Their dependencies (numpy, scipy, soundfile, Pillow, scikit-image, matplotlib, torchmetrics, pesq,
pystoi) come with the ``contrib`` extra: ``pip install "restoregrad_adapter[contrib]"``.
``import restoregrad_adapter.contrib`` itself imports none of these modules, and the core package
imports this one only inside the functions that use it (``restoregrad evaluate``, resampling audio
and ``--upscale`` in ``restoregrad restore``), never when it is imported.
"""
