"""Figures of restoration runs, written as PNGs with :func:`restoregrad_adapter.io.save_figure`.

- :func:`plot_image_restorations`: rows of degraded / restored / clean / learned prior sigma;
- :func:`plot_curves`: training loss terms and validation metrics against steps.

Needs the ``images`` extra (matplotlib), imported when a figure is drawn.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..io import save_figure

__all__ = ["plot_image_restorations", "plot_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_image_restorations(path, degraded: Sequence, restored: Sequence, clean: Sequence, sigma: Sequence,
                            scores: Sequence | None = None, title: str | None = None, dpi: int = 90) -> None:
    """One row per image: degraded | restored | clean | learned prior sigma, as a PNG.

    Args:
        path: the PNG file.
        degraded, restored, clean: ``HxWx3`` arrays in ``[0, 1]`` (clipped), one per row; rows may differ
            in size.
        sigma: the learned prior's standard deviation per row, ``HxW`` (e.g. the mean over channels).
        scores: optional ``(degraded, restored)`` texts per row (e.g. ``"24.02 dB"``), shown in the titles.
        title: the figure's title.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(degraded), 4, figsize=(13, 3.2 * len(degraded)), squeeze=False)
    for r, row in enumerate(zip(degraded, restored, clean)):
        labels = ("degraded", "restored", "clean")
        if scores is not None:
            labels = (f"degraded  {scores[r][0]}", f"restored  {scores[r][1]}", "clean")
        for ax, image, label in zip(axes[r], row, labels):
            ax.imshow(np.clip(image, 0, 1))
            ax.set_title(label, fontsize=9)
        shown = axes[r, 3].imshow(sigma[r], cmap="magma")
        fig.colorbar(shown, ax=axes[r, 3], fraction=0.046)
        axes[r, 3].set_title("learned prior sigma", fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    if title:
        fig.suptitle(title)
    save_figure(fig, path, dpi=dpi)


def plot_curves(records: list[dict], metric_names: list[str], path, dpi: int = 90) -> None:
    """One PNG: the training loss terms (smoothed) and each validation metric against steps."""
    plt = _pyplot()
    train = [r for r in records if r.get("kind") == "train"]
    validation = [r for r in records if r.get("kind") == "validation"]
    fig, axes = plt.subplots(1, 1 + len(metric_names), figsize=(5 * (1 + len(metric_names)), 3.6))
    axes = np.atleast_1d(axes)
    for term in ("loss", "denoise", "latent_reg", "prior_match"):
        values = [r[term] for r in train if term in r]
        if values and any(v != 0 for v in values):
            steps = [r["step"] for r in train if term in r]
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            axes[0].plot(steps[window - 1:], smooth, label=term)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss terms (smoothed)")
    axes[0].legend()
    for ax, name in zip(axes[1:], metric_names):
        points = [(r["step"], r[name]) for r in validation if name in r and math.isfinite(r[name])]
        if points:
            ax.plot(*zip(*points), marker="o")
        ax.set_xlabel("step")
        ax.set_title(f"validation {name}")
    fig.tight_layout()
    save_figure(fig, path, dpi=dpi)
