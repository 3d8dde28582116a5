"""WeatherDiff with RestoreGrad's learned prior: train on patches, restore whole photos.

A tiny ``WeatherUNet`` (WeatherDiff's call signature ``model(cat([y, x_t], 1), t)``, 32 x 32
patches) is wrapped for RestoreGrad and trained jointly with the Prior and Posterior Nets on random
crops, WeatherDiff-style (several crops per image, antithetic timesteps). A held-out photo is then
restored at full size with WeatherDiff's overlapping-patch DDIM sampler, the learned prior being
one sigma map for the whole photo. Writes ``weatherdiff_restore.png`` (degraded / restored / clean /
learned sigma) to ``--output_dir``.

Runs on a CPU in about two minutes with nothing to download: the photos ship with scikit-image and
the rain, snow and raindrops are drawn in code (restoregrad_adapter.contrib.data.weather). With ``--data_dir`` it
reads your own pairs instead: ``input/`` and ``gt/`` images with matching names (the last name, in
sorted order, is held out), or another layout of ``restoregrad_adapter.contrib.data.readers.image_pair_files``.

The default run shows the mechanics, not a useful restorer: sampling from pure noise needs noise
estimates far more accurate than a couple of minutes of CPU training give (WeatherDiff trains for
about two million iterations), so the restored PSNR stays below the degraded input's. Longer
training (``--steps``, preferably on a GPU) is what improves it.

    python guides/weatherdiff_restore.py                   # defaults
    python guides/weatherdiff_restore.py --steps 20000     # longer training
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from restoregrad_adapter import LearnedPriorScheduler, RestoreGrad
from restoregrad_adapter.contrib.data.readers import image_pair_files, image_to_tensor, read_image_pair, tensor_to_image
from restoregrad_adapter.contrib.data.weather import builtin_weather_pairs
from restoregrad_adapter.contrib.figures import plot_image_restorations
from restoregrad_adapter.integrations.weatherdiff import (
    antithetic_timesteps,
    random_patch_pairs,
    restore_image,
    wrap,
)
from restoregrad_adapter.contrib.metrics import psnr_y
from restoregrad_adapter.contrib.reference_nets import WeatherUNet


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((image + 1) / 2).clamp(0, 1)


def as_tensors(pair):
    """A pair of HxWx3 arrays in [0, 1] -> a pair of (1, 3, H, W) tensors in [-1, 1] (WeatherDiff's ``2 x - 1``)."""
    return tuple(image_to_tensor(image)[None] for image in pair)


def get_data(args):
    """Training pairs and one held-out pair, as ``(x0, y)`` = (clean, degraded) tensors (1, 3, H, W) in
    [-1, 1], and the held-out pair's name."""
    if args.data_dir:
        files = image_pair_files(args.data_dir)  # input/ and gt/ (or another supported layout)
        pairs = [read_image_pair(clean, degraded) for clean, degraded in files]
        if len(pairs) == 1:
            print("warning: --data_dir has one image; it is used for training and for the held-out restoration")
        held_out, name = pairs[-1], Path(files[-1][1]).name
        train = pairs[:-1] or pairs
    else:
        kinds = ("rain", "snow", "raindrop")
        train = builtin_weather_pairs("train", kinds=kinds, seed=args.seed, size=128)
        validation = builtin_weather_pairs("validation", kinds=kinds, seed=args.seed, size=128)
        print(f"data: {len(train)} training pairs, {len(validation)} held out (rain, snow and raindrops drawn in code)")
        clean, degraded, kind, photo = validation[0]
        held_out, name = (clean, degraded), f"{photo} ({kind})"
        train = [(clean, degraded) for clean, degraded, _, _ in train]
    return [as_tensors(pair) for pair in train], as_tensors(held_out), name


def crop_batch(pairs, patch_size, images, patches_per_image, generator):
    """WeatherDiff's training batch: ``patches_per_image`` aligned crops from each of ``images`` pairs."""
    clean, degraded = [], []
    for i in torch.randint(0, len(pairs), (images,), generator=generator).tolist():
        x0, y = random_patch_pairs(*pairs[i], patch_size=patch_size, patches_per_image=patches_per_image,
                                   generator=generator)
        clean.append(x0)
        degraded.append(y)
    return torch.cat(clean), torch.cat(degraded)


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
                                        latent_weight=0.01, prior_matching_weight=1.0)
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
    plot_image_restorations(path, degraded=tensor_to_image(y_val), restored=tensor_to_image(restored),
                            clean=tensor_to_image(x0_val), sigma=sigma.mean(1).numpy(),
                            scores=[(f"{before:.2f} dB", f"{after:.2f} dB")],
                            title=f"{held_out_name} after {args.steps} training steps")
    print(f"wrote {path}")
    return {"psnr_degraded": before, "psnr_restored": after, "loss_first": float(np.mean(losses[:window])),
            "loss_last": float(np.mean(losses[-window:]))}


if __name__ == "__main__":
    main()
