"""WeatherDiff with RestoreGrad's learned prior: train on patches, restore whole photos.

A tiny ``WeatherUNet`` (WeatherDiff's call signature ``model(cat([y, x_t], 1), t)``, 32 x 32
patches) is wrapped for RestoreGrad and trained jointly with the Prior and Posterior Nets on random
crops, WeatherDiff-style (several crops per image, antithetic timesteps). A held-out photo is then
restored at full size with WeatherDiff's overlapping-patch DDIM sampler, the learned prior being
one sigma map for the whole photo. Writes ``weatherdiff_restore.png`` (degraded / restored / clean /
learned sigma) to ``--output_dir``.

Runs on a CPU in about two minutes with nothing to download: the photos ship with scikit-image and
the rain, snow and raindrops are drawn in code (restoregrad_adapter/data/weather.py). With ``--data_dir`` it
reads your own pairs instead: ``input/`` and ``gt/`` images with matching names (the last name, in
sorted order, is held out).

The default run shows the mechanics, not a useful restorer: sampling from pure noise needs noise
estimates far more accurate than a couple of minutes of CPU training give (WeatherDiff trains for
about two million iterations), so the restored PSNR stays below the degraded input's. Longer
training (``--steps``, preferably on a GPU) is what improves it.

    python integrations/weatherdiff_restore.py                   # defaults
    python integrations/weatherdiff_restore.py --steps 20000     # longer training
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm.auto import tqdm  # noqa: E402

from examples.training_common import save_figure as write_png  # noqa: E402
from restoregrad_adapter import LearnedPriorScheduler, RestoreGrad, RestoreGradLoss  # noqa: E402
from restoregrad_adapter.integrations.weatherdiff import (  # noqa: E402
    antithetic_timesteps,
    random_patch_pairs,
    restore_image,
    wrap,
)
from restoregrad_adapter.metrics import psnr_y  # noqa: E402
from restoregrad_adapter.reference_nets import WeatherUNet  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """An HxWx3 array in [0, 1] -> (1, 3, H, W) in [-1, 1] (WeatherDiff's ``2 * x - 1``)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() * 2 - 1


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((image + 1) / 2).clamp(0, 1)


def load_folder_pairs(data_dir: str):
    """``(degraded, clean, name)`` float32 HxWx3 arrays in [0, 1] from ``input/`` and ``gt/``."""
    from PIL import Image

    inputs, targets = os.path.join(data_dir, "input"), os.path.join(data_dir, "gt")
    if not (os.path.isdir(inputs) and os.path.isdir(targets)):
        raise SystemExit(f"--data_dir {data_dir!r} must contain the folders input/ and gt/.")
    names = sorted(n for n in os.listdir(inputs) if n.lower().endswith(IMAGE_EXTENSIONS))
    missing = [n for n in names if not os.path.isfile(os.path.join(targets, n))]
    if not names or missing:
        raise SystemExit(f"--data_dir: no images in input/, or no gt/ image for {missing[:5]}.")
    pairs = []
    for name in names:
        degraded = np.asarray(Image.open(os.path.join(inputs, name)).convert("RGB"), dtype=np.float32) / 255
        clean = np.asarray(Image.open(os.path.join(targets, name)).convert("RGB"), dtype=np.float32) / 255
        if degraded.shape != clean.shape:
            raise SystemExit(f"--data_dir: input/{name} is {degraded.shape[:2]} but gt/{name} is {clean.shape[:2]}.")
        pairs.append((degraded, clean, name))
    return pairs


def get_data(args):
    """Training pairs and one held-out pair, as (clean, degraded) tensors (1, 3, H, W) in [-1, 1]."""
    if args.data_dir:
        pairs = load_folder_pairs(args.data_dir)
        held_out = pairs[-1]
        train = pairs[:-1] or pairs
        if len(pairs) == 1:
            print("warning: --data_dir has one image; it is used for training and for the held-out restoration")
        train = [(to_tensor(clean), to_tensor(degraded)) for degraded, clean, _ in train]
        return train, (to_tensor(held_out[1]), to_tensor(held_out[0])), held_out[2]

    from restoregrad_adapter.data.weather import builtin_weather_pairs

    kinds = ("rain", "snow", "raindrop")
    train = builtin_weather_pairs("train", kinds=kinds, seed=args.seed, size=128)
    validation = builtin_weather_pairs("validation", kinds=kinds, seed=args.seed, size=128)
    print(f"data: {len(train)} training pairs, {len(validation)} held out (rain, snow and raindrops drawn in code)")
    degraded, clean, kind, name = validation[0]
    train = [(to_tensor(c), to_tensor(d)) for d, c, _, _ in train]
    return train, (to_tensor(clean), to_tensor(degraded)), f"{name} ({kind})"


def crop_batch(pairs, patch_size, images, patches_per_image, generator):
    """WeatherDiff's training batch: ``patches_per_image`` aligned crops from each of ``images`` pairs."""
    clean, degraded = [], []
    for i in torch.randint(0, len(pairs), (images,), generator=generator).tolist():
        x0, y = random_patch_pairs(*pairs[i], patch_size=patch_size, patches_per_image=patches_per_image,
                                   generator=generator)
        clean.append(x0)
        degraded.append(y)
    return torch.cat(clean), torch.cat(degraded)


def save_figure(path, degraded, restored, clean, sigma, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(14, 4))
    panels = [(to_unit(degraded), "degraded"), (to_unit(restored), "restored"), (to_unit(clean), "clean")]
    for ax, (image, label) in zip(axes, panels):
        ax.imshow(image[0].permute(1, 2, 0).numpy())
        ax.set_title(label)
    shown = axes[3].imshow(sigma[0].mean(0).numpy(), cmap="magma")
    axes[3].set_title("learned prior sigma")
    fig.colorbar(shown, ax=axes[3], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    write_png(fig, path, dpi=90)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800, help="training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/weatherdiff_restore")
    parser.add_argument("--data_dir", default=None, help="optional folder with input/ and gt/ images")
    parser.add_argument("--patch_size", type=int, default=32)
    parser.add_argument("--images_per_step", type=int, default=2)
    parser.add_argument("--patches_per_image", type=int, default=8, help="WeatherDiff: 16 for 64 x 64 patches")
    parser.add_argument("--stride", type=int, default=16, help="grid stride r of the patch sampler")
    parser.add_argument("--sampling_steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    train, (x0_val, y_val), held_out_name = get_data(args)
    p = args.patch_size
    small = [tuple(x.shape[-2:]) for x, _ in train if min(x.shape[-2:]) < p]
    if small:
        raise SystemExit(f"training images must be at least {p} x {p}; got {small[:3]}")

    # The user's WeatherDiff model: y and x_t concatenated (6 channels), noise of x_t out.
    model = WeatherUNet(in_channels=6, out_channels=3, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                        attn_resolutions=(), image_size=p)
    adapter = RestoreGrad.with_encoders(wrap(model, patch_size=p), dims=2, in_channels=3, size="tiny",
                                        scheduler=LearnedPriorScheduler(num_train_timesteps=1000),
                                        loss=RestoreGradLoss(latent_weight=0.01, prior_matching_weight=1.0))
    optimizer = torch.optim.Adam(adapter.parameters(), lr=args.lr)
    T = adapter.scheduler.config.num_train_timesteps
    generator = torch.Generator().manual_seed(args.seed)

    start = time.time()
    losses = []
    bar = tqdm(range(args.steps), desc="training")
    for _ in bar:
        x0, y = crop_batch(train, p, args.images_per_step, args.patches_per_image, generator)
        t = antithetic_timesteps(x0.shape[0], T, generator=generator)
        out = adapter.training_loss(x0, y, generator=generator, timesteps=t)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", dm=f"{out.denoise.item():.3f}")
    window = min(20, len(losses))
    print(f"loss: first {window} steps {np.mean(losses[:window]):.3f} -> last {window} steps "
          f"{np.mean(losses[-window:]):.3f} ({time.time() - start:.0f} s)")

    adapter.eval()
    start = time.time()
    restored = restore_image(adapter, y_val, patch_size=p, stride=args.stride, num_inference_steps=args.sampling_steps,
                             generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        sigma = adapter.prior_std(y_val)
    height, width = y_val.shape[-2:]
    print(f"restored {held_out_name}, {height} x {width}, from {p} x {p} patches ({time.time() - start:.0f} s)")

    before = psnr_y(to_unit(y_val), to_unit(x0_val)).item()
    after = psnr_y(to_unit(restored), to_unit(x0_val)).item()
    print(f"held-out PSNR (Y): degraded {before:.2f} dB -> restored {after:.2f} dB")
    print(f"learned sigma: mean {sigma.mean():.3f}, range [{sigma.min():.3f}, {sigma.max():.3f}]")
    path = os.path.join(args.output_dir, "weatherdiff_restore.png")
    save_figure(path, y_val, restored, x0_val, sigma,
                f"{held_out_name}: PSNR {before:.2f} dB -> {after:.2f} dB after {args.steps} training steps")
    print(f"wrote {path}")
    return {"psnr_degraded": before, "psnr_restored": after, "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:]))}


if __name__ == "__main__":
    main()
