"""Train a WeatherDiff-style patch diffusion model with RestoreGrad's learned prior, with Accelerate.

    accelerate launch examples/train_weather.py                    # built-in data, CPU-sized defaults
    accelerate launch examples/train_weather.py --train_data_dir data/allweather/allweather.txt \\
        --model_size weatherdiff64 --patch_size 64 --max_train_steps 200000 --mixed_precision bf16

Data (one of):
  --dataset_name NAME        a `datasets` dataset with degraded and clean image columns
                             (--degraded_column, --clean_column);
  --train_data_dir PATH      a WeatherDiff/AllWeather file list (.txt of input paths; the clean image is
                             the same path with the folder `input` replaced by `gt`), a RainDrop-style
                             folder with `input/` and `gt/` (names equal, or `rain` -> `clean`), or an
                             imagefolder with a metadata.jsonl (file_name + --clean_column);
  neither                    built-in: photos bundled with scikit-image, degraded in code by rain
                             streaks, snow and raindrops; held-out photos for validation.

The denoiser is the reference WeatherDiff-style UNet (restoregrad_adapter.reference_nets.WeatherUNet,
called as model(cat([y, x_t]), t) like the original); train your own WeatherDiff model by replacing
`build_unet`. Validation restores whole held-out images with overlapping patches (restore_image) and
reports PSNR and SSIM on the Y channel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples import training_common as common  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

UNET_SIZES = {
    # name: (ch, ch_mult, num_res_blocks, attn_resolutions)
    "tiny": (32, (1, 2), 1, ()),
    "small": (64, (1, 2, 2), 2, (16,)),
    "weatherdiff64": (128, (1, 2, 3, 4), 2, (16,)),  # the original's WeatherDiff64 configuration
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=None)
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--dataset_split", default="train")
    g.add_argument("--validation_split", default=None, help="a split of --dataset_name used for validation")
    g.add_argument("--degraded_column", default="input")
    g.add_argument("--clean_column", default="target")
    g.add_argument("--train_data_dir", default=None)
    g.add_argument("--validation_data_dir", default=None)
    g.add_argument("--num_validation_images", type=int, default=3)
    g.add_argument("--builtin_size", type=int, default=96, help="longest side of the built-in photos")
    g.add_argument("--max_validation_size", type=int, default=256,
                   help="validation images are downscaled so their longest side is at most this")
    g = parser.add_argument_group("model")
    g.add_argument("--model_size", choices=tuple(UNET_SIZES), default="tiny")
    g.add_argument("--patch_size", type=int, default=32)
    g.add_argument("--stride", type=int, default=16, help="patch stride of whole-image restoration")
    g.add_argument("--num_train_timesteps", type=int, default=1000)
    common.add_common_arguments(parser, dict(
        eta=0.01, lam=1.0, encoder_size="tiny", output_dir="outputs/train_weather", max_train_steps=1200,
        train_batch_size=16, learning_rate=1e-3, checkpointing_steps=600, validation_steps=400,
        num_inference_steps=10))
    args = parser.parse_args(argv)
    common.check_common_arguments(args)
    if args.dataset_name and args.train_data_dir:
        raise SystemExit("error: pass --dataset_name or --train_data_dir, not both")
    ch_mult = UNET_SIZES[args.model_size][1]
    if args.patch_size % (2 ** (len(ch_mult) - 1)):
        raise SystemExit(f"error: --patch_size must be a multiple of {2 ** (len(ch_mult) - 1)} for "
                         f"--model_size {args.model_size}")
    return args


# ---------------------------------------------------------------------- data
def load_image(path: str) -> np.ndarray:
    """An RGB image file -> HxWx3 float32 in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: cannot read image {path}: {error}") from None


def pairs_from_file_list(list_file: Path) -> list[tuple[str, str]]:
    """WeatherDiff/AllWeather lists: one degraded path per line; the clean one has `gt` for `input`."""
    pairs = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        degraded = Path(line) if Path(line).is_absolute() else (list_file.parent / line)
        if not degraded.exists() and Path(line).exists():
            degraded = Path(line)
        parts = list(degraded.parts)
        if "input" not in parts:
            raise SystemExit(f"error: {list_file}: path {line!r} has no folder named 'input' to map to 'gt'")
        index = len(parts) - 1 - parts[::-1].index("input")
        clean = Path(*parts[:index], "gt", *parts[index + 1:])
        pairs.append((str(degraded), str(clean)))
    return pairs


def pairs_from_input_gt(folder: Path) -> list[tuple[str, str]]:
    """RainDrop-style: input/NAME and gt/NAME (or gt/NAME with 'rain' replaced by 'clean')."""
    pairs = []
    for degraded in sorted((folder / "input").iterdir()):
        if degraded.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        for name in (degraded.name, degraded.name.replace("rain", "clean")):
            if (folder / "gt" / name).exists():
                pairs.append((str(degraded), str(folder / "gt" / name)))
                break
        else:
            raise SystemExit(f"error: no clean image in {folder / 'gt'} for {degraded.name}")
    return pairs


def pairs_from_metadata(folder: Path, clean_column: str) -> list[tuple[str, str]]:
    """An imagefolder whose metadata.jsonl rows name the degraded file_name and the clean image."""
    pairs = []
    for number, line in enumerate((folder / "metadata.jsonl").read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "file_name" not in row or clean_column not in row:
            raise SystemExit(f"error: {folder / 'metadata.jsonl'} line {number} needs 'file_name' and "
                             f"'{clean_column}' (set --clean_column)")
        pairs.append((str(folder / row["file_name"]), str(folder / row[clean_column])))
    return pairs


def pairs_from_dir(path: str, clean_column: str) -> list[tuple[str, str]]:
    location = Path(path)
    if location.is_file() and location.suffix == ".txt":
        pairs = pairs_from_file_list(location)
    elif (location / "input").is_dir() and (location / "gt").is_dir():
        pairs = pairs_from_input_gt(location)
    elif (location / "metadata.jsonl").is_file():
        pairs = pairs_from_metadata(location, clean_column)
    else:
        raise SystemExit(f"error: {path} is not a .txt file list, a folder with input/ and gt/, or an imagefolder "
                         "with metadata.jsonl")
    missing = [p for pair in pairs for p in pair if not os.path.exists(p)]
    if missing:
        raise SystemExit(f"error: {len(missing)} listed image(s) do not exist, e.g. {missing[0]}")
    if not pairs:
        raise SystemExit(f"error: no image pairs found in {path}")
    return pairs


def _load_file_pair(pair):
    return load_image(pair[0]), load_image(pair[1])


def build_sources(args):
    """(training source, list of validation (degraded, clean) pairs, description)."""
    if args.dataset_name:
        import datasets

        ds = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)
        for column in (args.degraded_column, args.clean_column):
            if column not in ds.column_names:
                raise SystemExit(f"error: column {column!r} not in {args.dataset_name} ({ds.column_names}); "
                                 "set --degraded_column / --clean_column")

        def to_array(image):
            return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0

        def load_row(i, split=ds):
            row = split[int(i)]
            return to_array(row[args.degraded_column]), to_array(row[args.clean_column])

        if args.validation_split:
            val_ds = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.validation_split)
            validation = [load_row(i, val_ds) for i in range(min(args.num_validation_images, len(val_ds)))]
            train_items = list(range(len(ds)))
        else:
            held = min(args.num_validation_images, len(ds) - 1)
            validation = [load_row(i) for i in range(len(ds) - held, len(ds))]
            train_items = list(range(len(ds) - held))
        return common.PairSource(train_items, load_row), validation, f"dataset {args.dataset_name}"

    if args.train_data_dir:
        pairs = pairs_from_dir(args.train_data_dir, args.clean_column)
        if args.validation_data_dir:
            validation_pairs = pairs_from_dir(args.validation_data_dir, args.clean_column)[: args.num_validation_images]
        else:
            held = min(args.num_validation_images, len(pairs) - 1)
            validation_pairs, pairs = pairs[len(pairs) - held:], pairs[: len(pairs) - held]
        validation = [_load_file_pair(p) for p in validation_pairs]
        return (common.PairSource(pairs, _load_file_pair, cache_size=256), validation,
                f"{len(pairs)} pairs from {args.train_data_dir}")

    from restoregrad_adapter.data.weather import builtin_weather_pairs

    train = builtin_weather_pairs("train", seed=args.seed, size=args.builtin_size)
    held_out = builtin_weather_pairs("validation", seed=args.seed, size=args.builtin_size)
    # One held-out photo per kind of weather, so each validation shows a different degradation.
    chosen, seen_kinds, seen_names = [], set(), set()
    for degraded, clean, kind, name in held_out:
        if kind not in seen_kinds and name not in seen_names and len(chosen) < args.num_validation_images:
            chosen.append((degraded, clean))
            seen_kinds.add(kind)
            seen_names.add(name)
    source = common.PairSource([(d, c) for d, c, _, _ in train], lambda pair: pair)
    return source, chosen, (f"built-in: {len(train)} degraded photos (rain, snow, raindrops drawn in code), "
                            f"{len(chosen)} held-out photos")


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 in [0, 1] -> (3, H, W) in [-1, 1] (WeatherDiff's normalisation)."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() * 2 - 1


def downscale(image: np.ndarray, longest: int) -> np.ndarray:
    height, width = image.shape[:2]
    if max(height, width) <= longest:
        return image
    from PIL import Image

    scale = longest / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    as_uint8 = Image.fromarray((image * 255).round().astype(np.uint8))
    return np.asarray(as_uint8.resize(size, Image.BICUBIC), dtype=np.float32) / 255.0


class PatchDataset(torch.utils.data.Dataset):
    """Example i: an aligned random patch of a random pair, both drawn from (seed, i) only."""

    def __init__(self, source: common.PairSource, patch_size: int, seed: int):
        self.source, self.patch_size, self.seed = source, patch_size, seed

    def __len__(self):
        return 2**62  # indexed by a StepBatchSampler, never iterated whole

    def __getitem__(self, index: int):
        rng = common.example_rng(self.seed, index)
        degraded, clean = self.source[int(rng.integers(len(self.source)))]
        if degraded.shape != clean.shape:
            raise ValueError(f"a degraded image {degraded.shape} and its clean image {clean.shape} differ in size")
        p = self.patch_size
        height, width = clean.shape[:2]
        if height < p or width < p:  # pad small images by reflection so a patch fits
            pad = ((0, max(0, p - height)), (0, max(0, p - width)), (0, 0))
            degraded, clean = np.pad(degraded, pad, mode="reflect"), np.pad(clean, pad, mode="reflect")
            height, width = clean.shape[:2]
        top, left = int(rng.integers(height - p + 1)), int(rng.integers(width - p + 1))
        crop = (slice(top, top + p), slice(left, left + p))
        return to_tensor(clean[crop]), to_tensor(degraded[crop])


# ---------------------------------------------------------------------- model
def build_unet(args):
    from restoregrad_adapter.reference_nets import WeatherUNet

    ch, ch_mult, blocks, attn = UNET_SIZES[args.model_size]
    return WeatherUNet(in_channels=6, out_channels=3, ch=ch, ch_mult=ch_mult, num_res_blocks=blocks,
                       attn_resolutions=attn, image_size=args.patch_size)


def build_adapter(args):
    from restoregrad_adapter import LearnedPriorScheduler, PosteriorNet, PriorNet, RestoreGrad, RestoreGradLoss
    from restoregrad_adapter.integrations.weatherdiff import wrap

    scheduler = LearnedPriorScheduler(num_train_timesteps=args.num_train_timesteps, beta_start=1e-4, beta_end=0.02)
    prior = PriorNet(dims=2, in_channels=3, size=args.encoder_size, sigma_min=args.sigma_min)
    posterior = PosteriorNet(dims=2, in_channels=3, size=args.encoder_size, sigma_min=args.sigma_min)
    return RestoreGrad(wrap(build_unet(args), patch_size=args.patch_size), prior, posterior, scheduler=scheduler,
                       loss=RestoreGradLoss(latent_weight=args.latent_weight, prior_matching_weight=args.lam), mode=args.mode)


# ---------------------------------------------------------------------- validation
@torch.no_grad()
def validate(adapter, validation, args, step, device, out_dir):
    """Restore whole held-out images; PSNR/SSIM on Y; one PNG of degraded / restored / clean / sigma."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from restoregrad_adapter.integrations.weatherdiff import restore_image
    from restoregrad_adapter.metrics import psnr_y, ssim_y

    was_training = adapter.training
    adapter.eval()
    rows, psnrs, ssims, psnrs_in = [], [], [], []
    for i, (degraded, clean) in enumerate(validation):
        degraded, clean = downscale(degraded, args.max_validation_size), downscale(clean, args.max_validation_size)
        y = to_tensor(degraded)[None].to(device)
        x0 = to_tensor(clean)[None].to(device)
        generator = torch.Generator(device=device).manual_seed(args.seed + i)
        restored = restore_image(adapter, y, patch_size=args.patch_size, stride=args.stride,
                                 num_inference_steps=args.num_inference_steps, eta=0.0, generator=generator,
                                 progress=False).clamp(-1, 1)
        sigma = adapter.prior_std(y)
        as01 = [(t.float() + 1) / 2 for t in (y, restored, x0)]
        psnrs_in.append(psnr_y(as01[0], as01[2]).item())
        psnrs.append(psnr_y(as01[1], as01[2]).item())
        ssims.append(ssim_y(as01[1], as01[2]).item() if min(y.shape[-2:]) >= 11 else float("nan"))
        rows.append([t[0].permute(1, 2, 0).cpu().numpy() for t in as01] + [sigma[0].mean(0).float().cpu().numpy()])
    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 3.2 * len(rows)), squeeze=False)
    titles = ("degraded", "restored", "clean", "learned prior sigma")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r, c]
            if c < 3:
                ax.imshow(np.clip(image, 0, 1))
                label = titles[c] + (f"  {psnrs_in[r]:.2f} dB" if c == 0 else f"  {psnrs[r]:.2f} dB" if c == 1 else "")
                ax.set_title(label, fontsize=9)
            else:
                shown = ax.imshow(image, cmap="magma")
                fig.colorbar(shown, ax=ax, fraction=0.046)
                ax.set_title(titles[3], fontsize=9)
            ax.axis("off")
    fig.suptitle(f"validation at step {step} ({args.mode}, {args.num_inference_steps} sampling steps)")
    common.save_figure(fig, os.path.join(out_dir, f"step-{step:06d}.png"))
    adapter.train(was_training)
    return {"psnr_y": float(np.mean(psnrs)), "ssim_y": float(np.nanmean(ssims)),
            "psnr_y_degraded": float(np.mean(psnrs_in))}


# ---------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    common.train(
        args,
        project="restoregrad_weather",
        build_adapter=build_adapter,
        build_data=lambda: _data(args),
        validate=lambda adapter, validation, step, device, out_dir: validate(adapter, validation, args, step, device,
                                                                             out_dir),
        headline=("psnr_y", "dB"),
        curve_metrics=["psnr_y", "ssim_y"],
        describe_validation=lambda m: (f"PSNR(Y) {m['psnr_y']:.2f} dB (degraded {m['psnr_y_degraded']:.2f} dB), "
                                       f"SSIM(Y) {m['ssim_y']:.4f}"),
        describe_batch=f"patches {args.patch_size}",
    )


def _data(args):
    source, validation, description = build_sources(args)
    return PatchDataset(source, args.patch_size, args.seed), validation, description


if __name__ == "__main__":
    main()
