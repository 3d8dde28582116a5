"""Quickstart: add RestoreGrad's learned prior to a diffusers UNet and remove rain from photos.

Runs on a CPU in a couple of minutes with nothing to download: the photos ship with scikit-image
and the rain is drawn in code (restoregrad_adapter.contrib.data.weather). It trains a small ``UNet2DModel`` jointly
with the Prior and Posterior Nets on 32 x 32 crops, then restores held-out photos with DDIM through
the learned prior and writes ``quickstart.png`` (degraded / restored / clean / learned sigma).

    python examples/quickstart.py                 # defaults
    python examples/quickstart.py --steps 2000    # better restorations
"""

import argparse
import os
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel
from tqdm.auto import tqdm

from restoregrad_adapter import LearnedPriorScheduler, RestoreGrad
from restoregrad_adapter.contrib.data import random_batch, random_crop
from restoregrad_adapter.contrib.data.readers import image_to_tensor, tensor_to_image
from restoregrad_adapter.contrib.data.weather import builtin_weather_pairs
from restoregrad_adapter.contrib.figures import plot_image_restorations
from restoregrad_adapter.contrib.metrics import psnr_y
from restoregrad_adapter.integrations.diffusers import wrap


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--sampling_steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/quickstart")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    train = builtin_weather_pairs("train", kinds=("rain",), seed=args.seed, size=96)
    validation = builtin_weather_pairs("validation", kinds=("rain",), seed=args.seed, size=96)
    train_pairs = [(clean, degraded) for clean, degraded, _, _ in train]  # (x0, y), HxWx3 in [0, 1]
    crops = [random_crop(clean, degraded, 64) for clean, degraded, _, _ in validation]  # rng=None: centred
    x0_val = image_to_tensor(np.stack([x0 for x0, _ in crops]))  # (B, 3, 64, 64) in [-1, 1]
    y_val = image_to_tensor(np.stack([y for _, y in crops]))
    print(f"data: {len(train)} training photos, {len(validation)} held out (rain drawn in code)")

    # The user's diffusers UNet, conditioned by channel concatenation: 3 (x_t) + 3 (y) inputs.
    unet = UNet2DModel(sample_size=args.crop, in_channels=6, out_channels=3, layers_per_block=1,
                       block_out_channels=(32, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    adapter = RestoreGrad.with_encoders(wrap(unet), dims=2, in_channels=3, size="tiny",
                                        scheduler=LearnedPriorScheduler(num_train_timesteps=1000),
                                        latent_weight=0.01, prior_matching_weight=1.0)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    start = time.time()
    bar = tqdm(range(args.steps), desc="training")
    losses = []
    for _ in bar:
        x0, y = random_batch(train_pairs, args.crop, args.batch_size, generator)  # aligned random crops
        out = adapter.training_loss(image_to_tensor(x0), image_to_tensor(y), generator=generator)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", dm=f"{out.denoise.item():.3f}")
    print(f"loss: first 20 steps {np.mean(losses[:20]):.3f} -> last 20 steps {np.mean(losses[-20:]):.3f} "
          f"({time.time() - start:.0f} s)")

    # Any stock diffusers scheduler samples the learned prior by whitening: here DDIM.
    ddim = DDIMScheduler.from_config(adapter.scheduler.config, clip_sample=False)
    adapter.eval()
    restored = adapter.restore(y_val, num_inference_steps=args.sampling_steps, scheduler=ddim,
                               generator=torch.Generator().manual_seed(args.seed), progress=True).clamp(-1, 1)
    with torch.no_grad():
        sigma = adapter.prior_std(y_val)
    before = psnr_y((y_val + 1) / 2, (x0_val + 1) / 2).mean().item()
    after = psnr_y((restored + 1) / 2, (x0_val + 1) / 2).mean().item()
    print(f"held-out PSNR (Y): degraded {before:.2f} dB -> restored {after:.2f} dB")
    path = os.path.join(args.output_dir, "quickstart.png")
    plot_image_restorations(path, degraded=tensor_to_image(y_val), restored=tensor_to_image(restored),
                            clean=tensor_to_image(x0_val), sigma=sigma.mean(1).numpy(), dpi=80)
    print(f"wrote {path}")
    return {"psnr_degraded": before, "psnr_restored": after, "loss_first": float(np.mean(losses[:20])),
            "loss_last": float(np.mean(losses[-20:]))}


if __name__ == "__main__":
    main()
