"""Train a WeatherDiff-style patch diffusion model with RestoreGrad's learned prior, with Accelerate:
bad weather, deblurring and super-resolution.

    accelerate launch examples/train_weather.py                    # built-in data, CPU-sized defaults
    accelerate launch examples/train_weather.py --degradation motion_blur   # deblurring
    accelerate launch examples/train_weather.py --degradation sr4           # x4 super-resolution
    accelerate launch examples/train_weather.py --train_data_dir data/allweather/allweather.txt \\
        --model_size weatherdiff64 --patch_size 64 --max_train_steps 200000 --mixed_precision bf16

--degradation names the task: mixed (rain, snow and raindrops; the default), rain, snow, raindrop,
motion_blur, defocus, gaussian_blur, sr2 or sr4. On the built-in data it is what is drawn on the
photos; on your own data it sets the task's defaults (e.g. DIV2K's scale, validation crops).

Data (one of):
  --dataset_name NAME        a `datasets` dataset with degraded and clean image columns
                             (--degraded_column, --clean_column);
  --train_data_dir PATH      a WeatherDiff/AllWeather file list (.txt of input paths; the clean image is
                             the same path with the folder `input` replaced by `gt`), a RealBlur file
                             list (.txt of `gt_path blur_path` lines, e.g. RealBlur_J_train_list.txt),
                             a RainDrop-style folder with `input/` and `gt/` (names equal, or `rain` ->
                             `clean`), an imagefolder with a metadata.jsonl (file_name +
                             --clean_column), or a DIV2K root (DIV2K_train_HR/ with
                             DIV2K_train_LR_bicubic/X4/; the LR images are up-sampled bicubically to the
                             HR size as `y`; scale --sr_scale, by default the --degradation's);
  neither                    built-in: photos bundled with scikit-image, degraded in code by the
                             --degradation; held-out photos for validation.

The denoiser is the reference WeatherDiff-style UNet (restoregrad_adapter.contrib.reference_nets.WeatherUNet,
called as model(cat([y, x_t]), t) like the original); train your own WeatherDiff model by replacing
`build_adapter`'s UNet. Validation restores whole held-out images with overlapping patches
(restore_image) and reports PSNR and SSIM on the Y channel, beside the degraded input's. Validation
images larger than --max_validation_size are downscaled for the weather tasks and centre-cropped for
deblurring and super-resolution, whose blur is measured in pixels (--validation_fit).

A super-resolution adapter restores the bicubically up-sampled image, the `y` it was trained on:
`restoregrad restore --upscale 4` makes it from a small image (docs/deblur_sr.md).

A resumed run (--resume_from_checkpoint latest) continues with exactly the losses of an
uninterrupted one: every training example and every noise draw depends only on the seed and the step.
"""

import argparse
import logging
import os
import time

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from restoregrad_adapter import (MODES, EncoderConfig, LearnedPriorScheduler, RestoreGrad, RestoreGradConfig,
                                 data_prior_std)
from restoregrad_adapter.adapter import build_encoders
from restoregrad_adapter.consistency import low_resolution_from_condition
from restoregrad_adapter.encoders import ENCODERS
from restoregrad_adapter.loss import WEIGHTINGS
from restoregrad_adapter.contrib.data import AUGMENTATIONS, LazyPairs
from restoregrad_adapter.contrib.data.blur_sr import KINDS as BLUR_SR_KINDS, SR_SCALES
from restoregrad_adapter.contrib.data.readers import (
    div2k_pair_files,
    downscale,
    image_pair_files,
    image_to_tensor,
    read_image_pair,
    read_sr_pair,
    tensor_to_image,
)
from restoregrad_adapter.contrib.figures import plot_curves, plot_image_restorations
from restoregrad_adapter.integrations.weatherdiff import TIMESTEP_SPACINGS, restore_image, wrap
from restoregrad_adapter.io import write_json
from restoregrad_adapter.contrib.metrics import psnr_y, ssim_y
from restoregrad_adapter.contrib.reference_nets import WeatherUNet
from restoregrad_adapter.contrib.training import (
    JsonLog,
    RandomCropDataset,
    StepBatchSampler,
    describe_defaults,
    describe_learning,
    ema_weights,
    gather_loss_terms,
    is_due,
    mean_loss_terms,
    noise_generator,
    prior_std_value,
    resolve_report_to,
    resume_from_checkpoint,
    save_checkpoint,
    usable_cpus,
)

logger = get_logger("restoregrad_weather")

UNET_SIZES = {
    # name: (ch, ch_mult, num_res_blocks, attn_resolutions)
    "tiny": (32, (1, 2), 1, ()),
    "small": (64, (1, 2, 2), 2, (16,)),
    "weatherdiff64": (128, (1, 2, 3, 4), 2, (16,)),  # the original's WeatherDiff64 configuration
}


#: What the UNet predicts, what is diffused and how the denoising term is weighted. "restoring" is the
#: default because it restores within the default budget (docs/results.md, "The two commands"); "paper" is
#: the RestoreGrad paper's image recipe.
RECIPES = {
    "restoring": {"prediction_type": "sample", "residual": True, "loss_weighting": "x0"},
    "paper": {"prediction_type": "epsilon", "residual": False, "loss_weighting": "elbo"},
}


#: The tasks of --degradation: the weather of the built-in data (``mixed`` draws rain, snow and raindrops),
#: blurs and bicubic down-sampling (restoregrad_adapter.contrib.data.blur_sr).
WEATHER_DEGRADATIONS = ("mixed", "rain", "snow", "raindrop")
DEGRADATIONS = WEATHER_DEGRADATIONS + BLUR_SR_KINDS

#: Each task's defaults (a value given on the command line wins); docs/deblur_sr.md has the runs behind them.
#: Deblurring and super-resolution are measured in pixels, so their validation images are cropped rather
#: than downscaled. Their residual is small and spread over the whole image: they train at a higher
#: learning rate, and 2 sampling steps keep the restoration near the posterior mean (10 steps draw
#: textures that are not there). Super-resolution uses larger photos (a x4 low-resolution image of a
#: 96-pixel photo is 24 pixels wide), crops validation images to 128 pixels, and validates with one
#: DDIM step from pure noise (trailing spacing) averaged over the eight rotations and mirrors, each
#: crop restored as one 128-pixel patch (the UNet is fully convolutional: more context than the
#: 32-pixel training crops) and projected onto the images consistent with its low resolution.
WEATHER_DEFAULTS = {"builtin_size": 96, "augment": "none", "max_validation_size": 256, "validation_fit": "downscale",
                    "learning_rate": 1e-3, "num_inference_steps": 10, "timestep_spacing": "leading",
                    "self_ensemble": False}
BLUR_DEFAULTS = {**WEATHER_DEFAULTS, "validation_fit": "crop", "learning_rate": 3e-3, "num_inference_steps": 2}
SR_DEFAULTS = {**BLUR_DEFAULTS, "builtin_size": 192, "max_validation_size": 128, "num_inference_steps": 1,
               "timestep_spacing": "trailing", "self_ensemble": True}
DEGRADATION_DEFAULTS = {
    **{name: WEATHER_DEFAULTS for name in WEATHER_DEGRADATIONS},
    **{name: SR_DEFAULTS if name in SR_SCALES else BLUR_DEFAULTS for name in BLUR_SR_KINDS},
}


#: Training examples whose diffused signal sets ``--prior_std auto``.
AUTO_PRIOR_EXAMPLES = 64


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--degradation", choices=DEGRADATIONS, default="mixed",
                   help="the task: what the built-in data draws on its photos (mixed: rain, snow and raindrops), "
                        "and the task's defaults on your own data")
    g.add_argument("--sr_scale", type=int, choices=(2, 3, 4), default=None,
                   help="DIV2K's down-sampling factor (X2, X3, X4) for a DIV2K --train_data_dir "
                        "(default: the --degradation's, "
                        + " and ".join(f"{scale} for {name}" for name, scale in SR_SCALES.items()) + ")")
    g.add_argument("--dataset_name", default=None)
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--dataset_split", default="train")
    g.add_argument("--validation_split", default=None, help="a split of --dataset_name used for validation")
    g.add_argument("--degraded_column", default="input")
    g.add_argument("--clean_column", default="target")
    g.add_argument("--train_data_dir", default=None)
    g.add_argument("--validation_data_dir", default=None)
    g.add_argument("--num_validation_images", type=int, default=3)
    g.add_argument("--builtin_size", type=int, default=None,
                   help="longest side of the built-in photos")
    g.add_argument("--max_validation_size", type=int, default=None,
                   help="validation images are brought to at most this longest side, as --validation_fit says")
    g.add_argument("--validation_fit", choices=("downscale", "crop"), default=None,
                   help="how a larger validation image is brought to --max_validation_size: downscaled or "
                        "centre-cropped")
    g.add_argument("--augment", choices=AUGMENTATIONS, default=None,
                   help="the same random mirror and rotation of both training crops: none, hflip (left-right "
                        "mirror) or dihedral (any of the square's 8 symmetries)")
    g = parser.add_argument_group("model")
    g.add_argument("--model_size", choices=tuple(UNET_SIZES), default="tiny")
    g.add_argument("--patch_size", type=int, default=32)
    g.add_argument("--stride", type=int, default=16, help="patch stride of whole-image restoration")
    g.add_argument("--validation_patch_size", type=int, default=None,
                   help="patch side of validation's whole-image restoration: the UNet is fully convolutional, so "
                        "it may exceed --patch_size for more context (default --patch_size; for sr2 and sr4 "
                        "--max_validation_size, the whole validation crop)")
    g.add_argument("--num_train_timesteps", type=int, default=1000)
    g.add_argument("--recipe", choices=tuple(RECIPES), default="restoring",
                   help="restoring (default): the UNet predicts the clean residual x0 - y with a plain x0 loss; "
                        "paper: the paper's image recipe, noise prediction of x0 itself with eq. 10 (docs/results.md)")
    g.add_argument("--prediction_type", choices=("epsilon", "sample", "v_prediction"), default=None,
                   help="what the UNet predicts: the noise, x0 (sample) or v")
    g.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="diffuse the residual x0 - y and restore y + r0_hat")
    g.add_argument("--loss_weighting", choices=WEIGHTINGS, default=None,
                   help="the denoising term's weighting: elbo (the paper's eq. 10), min_snr, x0 (plain x0 MSE)")
    g.add_argument("--snr_gamma", type=float, default=5.0, help="gamma of --loss_weighting min_snr")
    g = parser.add_argument_group("RestoreGrad")
    g.add_argument("--mode", choices=MODES, default="restoregrad",
                   help="restoregrad (eq. 10), restoregrad_no_posterior (eq. 11), priorgrad, constant_prior "
                        "(one sigma everywhere, --prior_std), ddpm")
    g.add_argument("--prior_std", type=prior_std_value, default=None,
                   help="sigma of --mode constant_prior: a number, or auto: the root mean square of what is "
                        f"diffused over the first {AUTO_PRIOR_EXAMPLES} training crops, at least --sigma_min")
    g.add_argument("--latent_weight", type=float, default=0.01,
                   help="weight of the latent regulariser (the paper's eta)")
    g.add_argument("--prior_matching_weight", type=float, default=1.0,
                   help="weight of the prior-matching term (the paper's lambda)")
    g.add_argument("--sigma_min", type=float, default=0.1, help="floor of the learned standard deviation")
    g.add_argument("--sigma_max", type=float, default=None,
                   help="an upper bound (above 1) on the learned standard deviation, which is then squashed into "
                        "(sigma_min, sigma_max); none when left out")
    g.add_argument("--encoder_size", choices=("tiny", "base", "large"), default="tiny")
    g.add_argument("--encoder", choices=tuple(ENCODERS), default="reduced",
                   help="reduced (default: the Prior/Posterior Nets' body below the signal's resolution, sigma interpolated back) or paper (the paper's full-resolution ResNet-20)")
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", default="outputs/train_weather")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max_train_steps", type=int, default=1200)
    g.add_argument("--train_batch_size", type=int, default=16, help="per process")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=None,
                   help="the learning rate after the warm-up")
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--lr_scheduler", choices=("constant_with_warmup", "cosine"), default="constant_with_warmup",
                   help="the learning rate after the warm-up: constant (every task's default) or a cosine decay to 0 "
                        "at --max_train_steps")
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                   help="defaults to Accelerate's configuration")
    g.add_argument("--ema_decay", type=float, default=0.999, help="0 disables the EMA of the weights")
    g.add_argument("--checkpointing_steps", type=int, default=600)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--validation_steps", type=int, default=400)
    g.add_argument("--num_inference_steps", type=int, default=None,
                   help="sampling steps of validation")
    g.add_argument("--timestep_spacing", choices=TIMESTEP_SPACINGS, default=None,
                   help="how validation's DDIM steps are spread: leading (WeatherDiff's), diffusers' linspace or "
                        "trailing (from pure noise)")
    g.add_argument("--sr_consistency", action=argparse.BooleanOptionalAction, default=None,
                   help="super-resolution validation: project each restoration onto the images whose bicubic "
                        "down-sampling is the low-resolution input (recovered from y; "
                        "restoregrad_adapter.consistency); default on for sr2, sr4 and DIV2K")
    g.add_argument("--self_ensemble", action=argparse.BooleanOptionalAction, default=None,
                   help="validate on the mean of each image's eight rotations and mirrors, restored and turned "
                        "back, eight times the work")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--report_to", default="auto", help="'auto' (tensorboard when installed), 'all', 'none', ...")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    describe_defaults(parser, (("--recipe", RECIPES), ("--degradation", DEGRADATION_DEFAULTS)))
    args = parser.parse_args(argv)
    for name, value in {**RECIPES[args.recipe], **DEGRADATION_DEFAULTS[args.degradation]}.items():
        if getattr(args, name) is None:  # what the command line leaves out
            setattr(args, name, value)

    for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                 "validation_steps", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, got {getattr(args, name)}")
    if (args.mode == "constant_prior") != (args.prior_std is not None):
        raise SystemExit("error: --prior_std goes with --mode constant_prior, and only with it")
    if not 0 <= args.ema_decay < 1:
        raise SystemExit(f"error: --ema_decay must be in [0, 1), got {args.ema_decay}")
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("error: --push_to_hub needs --hub_model_id (e.g. your-name/restoregrad-weather)")
    if args.dataset_name and args.train_data_dir:
        raise SystemExit("error: pass --dataset_name or --train_data_dir, not both")
    if args.max_validation_size < 16:
        raise SystemExit(f"error: --max_validation_size must be >= 16, got {args.max_validation_size}")
    ch_mult = UNET_SIZES[args.model_size][1]
    factor = 2 ** (len(ch_mult) - 1)
    if args.validation_patch_size is None:  # super-resolution: the whole validation crop in one patch
        whole_crop = -(-args.max_validation_size // factor) * factor
        args.validation_patch_size = whole_crop if args.degradation in SR_SCALES else args.patch_size
    for name in ("patch_size", "validation_patch_size"):
        if getattr(args, name) < 1 or getattr(args, name) % factor:
            raise SystemExit(f"error: --{name} must be a positive multiple of {factor} for "
                             f"--model_size {args.model_size}, got {getattr(args, name)}")
    args.validation_scale = args.sr_scale or SR_SCALES.get(args.degradation)
    if args.sr_consistency is None:
        args.sr_consistency = args.validation_scale is not None
    elif args.sr_consistency and args.validation_scale is None:
        raise SystemExit("error: --sr_consistency needs a super-resolution task (--degradation sr2/sr4 or "
                         f"--sr_scale), got --degradation {args.degradation}")
    return args


# ---------------------------------------------------------------------- data
def load_data(args):
    """Training pairs and validation pairs ``(x0, y)`` (clean, degraded; HxWx3 in [0, 1]), and a description."""
    if args.dataset_name:
        import datasets

        train_split = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)
        for column in (args.degraded_column, args.clean_column):
            if column not in train_split.column_names:
                raise SystemExit(f"error: column {column!r} not in {args.dataset_name} ({train_split.column_names}); "
                                 "set --degraded_column / --clean_column")

        def read_row(i, split=train_split):
            row = split[int(i)]
            return read_image_pair(row[args.clean_column], row[args.degraded_column])

        if args.validation_split:
            held = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.validation_split)
            validation = [read_row(i, held) for i in range(min(args.num_validation_images, len(held)))]
            train_rows = range(len(train_split))
        else:
            count = min(args.num_validation_images, len(train_split) - 1)
            validation = [read_row(i) for i in range(len(train_split) - count, len(train_split))]
            train_rows = range(len(train_split) - count)
        return LazyPairs(train_rows, read_row), validation, f"dataset {args.dataset_name}"

    if args.train_data_dir and is_div2k(args.train_data_dir):
        return load_div2k(args)

    if args.train_data_dir:
        files = image_pair_files(args.train_data_dir, args.clean_column)
        if args.validation_data_dir:
            held = image_pair_files(args.validation_data_dir, args.clean_column)[: args.num_validation_images]
        else:
            count = min(args.num_validation_images, len(files) - 1)
            held, files = files[len(files) - count:], files[: len(files) - count]
        return (LazyPairs(files, lambda paths: read_image_pair(*paths), cache_size=256),
                [read_image_pair(*paths) for paths in held],
                f"{len(files)} pairs from {args.train_data_dir}")

    if args.degradation in BLUR_SR_KINDS:
        from restoregrad_adapter.contrib.data.blur_sr import builtin_blur_sr_pairs

        train = builtin_blur_sr_pairs(args.degradation, "train", seed=args.seed, size=args.builtin_size)
        held_out = builtin_blur_sr_pairs(args.degradation, "validation", seed=args.seed, size=args.builtin_size)
        drawn = args.degradation.replace("_", " ") if args.degradation not in SR_SCALES else \
            f"bicubic x{SR_SCALES[args.degradation]} down- and up-sampling"
    else:
        from restoregrad_adapter.contrib.data.weather import KINDS, builtin_weather_pairs

        kinds = KINDS if args.degradation == "mixed" else (args.degradation,)
        train = builtin_weather_pairs("train", kinds=kinds, seed=args.seed, size=args.builtin_size)
        held_out = builtin_weather_pairs("validation", kinds=kinds, seed=args.seed, size=args.builtin_size)
        drawn = "rain, snow, raindrops" if args.degradation == "mixed" else args.degradation
    # One held-out photo per kind of degradation (while there are kinds left), so that each validation
    # image shows a different degradation where there are several.
    validation, seen_kinds, seen_names = [], set(), set()
    all_kinds = {kind for _, _, kind, _ in held_out}
    for clean, degraded, kind, name in held_out:
        kind_wanted = kind not in seen_kinds or seen_kinds == all_kinds
        if name not in seen_names and kind_wanted and len(validation) < args.num_validation_images:
            validation.append((clean, degraded))
            seen_kinds.add(kind)
            seen_names.add(name)
    return ([(clean, degraded) for clean, degraded, _, _ in train], validation,
            f"built-in: {len(train)} degraded photos ({drawn} drawn in code), "
            f"{len(validation)} held-out photos")


def is_div2k(location) -> bool:
    """Whether ``location`` is a DIV2K root: a folder holding ``DIV2K_train_HR/``."""
    return os.path.isdir(os.path.join(location, "DIV2K_train_HR"))


def load_div2k(args):
    """DIV2K's training pairs (LR up-sampled bicubically to the HR size) and validation pairs: the first
    images of the ``valid`` split of --validation_data_dir (a DIV2K root) or of the training root when it
    has one, otherwise the last training images."""
    scale = args.sr_scale or SR_SCALES.get(args.degradation)
    if scale is None:
        raise SystemExit("error: a DIV2K --train_data_dir needs --sr_scale (2, 3 or 4) or --degradation sr2/sr4")
    files = div2k_pair_files(args.train_data_dir, "train", scale)
    if args.validation_data_dir:
        held = div2k_pair_files(args.validation_data_dir, "valid", scale)[: args.num_validation_images]
    elif os.path.isdir(os.path.join(args.train_data_dir, "DIV2K_valid_HR")):
        held = div2k_pair_files(args.train_data_dir, "valid", scale)[: args.num_validation_images]
    else:
        count = min(args.num_validation_images, len(files) - 1)
        held, files = files[len(files) - count:], files[: len(files) - count]
    read = lambda paths: read_sr_pair(*paths, scale)  # noqa: E731
    # A DIV2K image pair is about 66 MB as float32: keep a few dozen in memory, not hundreds.
    return (LazyPairs(files, read, cache_size=32), [read(paths) for paths in held],
            f"{len(files)} DIV2K x{scale} pairs from {args.train_data_dir}")


# ---------------------------------------------------------------------- model
def build_adapter(args):
    scheduler = LearnedPriorScheduler(num_train_timesteps=args.num_train_timesteps, beta_start=1e-4, beta_end=0.02,
                                      prediction_type=args.prediction_type)
    config = RestoreGradConfig(
        encoder=EncoderConfig(dims=2, in_channels=3, size=args.encoder_size, sigma_min=args.sigma_min,
                              architecture=args.encoder, sigma_max=args.sigma_max),
        mode=args.mode, prediction_type=args.prediction_type, residual=args.residual,
        latent_weight=args.latent_weight, prior_matching_weight=args.prior_matching_weight,
        weighting=args.loss_weighting, snr_gamma=args.snr_gamma, prior_std=args.prior_std)
    prior, posterior = build_encoders(config.encoder)  # before the UNet: the order of their random initialisation
    ch, ch_mult, num_res_blocks, attn_resolutions = UNET_SIZES[args.model_size]
    # Fully convolutional: trained on --patch_size crops, it may restore with larger patches.
    unet = WeatherUNet(in_channels=6, out_channels=3, ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks,
                       attn_resolutions=attn_resolutions, image_size=args.patch_size, fixed_size=False)
    return RestoreGrad(wrap(unet, patch_size=args.patch_size, fully_convolutional=True), config, prior_net=prior,
                       posterior_net=posterior, scheduler=scheduler)


# ---------------------------------------------------------------------- validation
def fit_for_validation(image: np.ndarray, longest: int, how: str, multiple: int = 1) -> np.ndarray:
    """``image`` with its longest side at most ``longest``: downscaled bicubically, or its centre cropped
    (so that a blur or a resolution keeps its size in pixels); smaller images are returned as they are.
    A crop's sides and corner are multiples of ``multiple`` (a super-resolution scale: the crop then
    covers whole low-resolution pixels)."""
    if how == "downscale":
        return downscale(image, longest)
    height, width = image.shape[:2]
    crop_height, crop_width = (min(side, longest) // multiple * multiple for side in (height, width))
    if (crop_height, crop_width) == (height, width):
        return image
    top = (height - crop_height) // 2 // multiple * multiple
    left = (width - crop_width) // 2 // multiple * multiple
    return image[top:top + crop_height, left:left + crop_width]


@torch.no_grad()
def log_validation(adapter, validation, args, step, device, folder):
    """Restore whole held-out images; PSNR/SSIM on Y beside the degraded input's; one PNG."""
    was_training = adapter.training
    adapter.eval()
    shown = {"degraded": [], "restored": [], "clean": [], "sigma": []}
    psnrs, ssims, psnrs_degraded, ssims_degraded = [], [], [], []
    multiple = args.validation_scale if args.sr_consistency else 1

    def fit(image):
        return fit_for_validation(image, args.max_validation_size, args.validation_fit, multiple)

    for i, (clean, degraded) in enumerate(validation):
        x0 = image_to_tensor(fit(clean))[None].to(device)
        y = image_to_tensor(fit(degraded))[None].to(device)
        # The low-resolution image that y enlarges, for the projection (restoregrad_adapter.consistency).
        low = low_resolution_from_condition(y, args.validation_scale) if args.sr_consistency else None
        generator = torch.Generator(device=device).manual_seed(args.seed + i)
        restored = restore_image(adapter, y, patch_size=args.validation_patch_size, stride=args.stride,
                                 num_inference_steps=args.num_inference_steps, eta=0.0, generator=generator,
                                 progress=False, timestep_spacing=args.timestep_spacing,
                                 self_ensemble=args.self_ensemble, low_resolution=low).clamp(-1, 1)
        y01, restored01, x01 = ((t.float() + 1) / 2 for t in (y, restored, x0))
        psnrs_degraded.append(psnr_y(y01, x01).item())
        psnrs.append(psnr_y(restored01, x01).item())
        ssims.append(ssim_y(restored01, x01).item() if min(y.shape[-2:]) >= 11 else float("nan"))
        ssims_degraded.append(ssim_y(y01, x01).item() if min(y.shape[-2:]) >= 11 else float("nan"))
        for key, tensor in (("degraded", y), ("restored", restored), ("clean", x0)):
            shown[key].append(tensor_to_image(tensor[0]))
        shown["sigma"].append(adapter.prior_std(y)[0].mean(0).float().cpu().numpy())
    steps = f"{args.num_inference_steps} sampling step" + ("" if args.num_inference_steps == 1 else "s")
    plot_image_restorations(os.path.join(folder, f"step-{step:06d}.png"), **shown,
                            scores=[(f"{a:.2f} dB", f"{b:.2f} dB") for a, b in zip(psnrs_degraded, psnrs)],
                            title=f"{args.degradation}: validation at step {step} ({args.mode}, {steps}, "
                                  f"{args.timestep_spacing}"
                                  f"{', self-ensemble' if args.self_ensemble else ''}"
                                  f"{', SR-consistent' if args.sr_consistency else ''})")
    adapter.train(was_training)
    return {"psnr_y": float(np.mean(psnrs)), "ssim_y": float(np.nanmean(ssims)),
            "psnr_y_degraded": float(np.mean(psnrs_degraded)), "ssim_y_degraded": float(np.nanmean(ssims_degraded))}


# ---------------------------------------------------------------------- training
def main(args):
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=resolve_report_to(args.report_to),
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, "logs")),
        # Modules unused in a mode (the Posterior Net outside 'restoregrad', both encoders in the
        # baselines) must not stall DistributedDataParallel waiting for their gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.mode != "restoregrad")],
    )
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1:
        # `accelerate launch` pins one thread per process (OMP_NUM_THREADS=1); a single process may use
        # every core it is allowed (taskset, cpuset).
        torch.set_num_threads(usable_cpus())
    set_seed(args.seed)
    start_time = time.time()
    validation_dir = os.path.join(args.output_dir, "validation")
    if accelerator.is_main_process:
        os.makedirs(validation_dir, exist_ok=True)

    # Data: example i is an aligned random patch of a random pair, drawn from (seed, i) only.
    pairs, validation, description = load_data(args)
    logger.info(f"data: {description}", main_process_only=True)
    dataset = RandomCropDataset(pairs, args.patch_size, args.seed, image_to_tensor, augment=args.augment)
    if args.prior_std == "auto":  # the scale of what is diffused (x0, or the residual x0 - y), from training crops
        args.prior_std = data_prior_std((dataset[i] for i in range(AUTO_PRIOR_EXAMPLES)), residual=args.residual,
                                        minimum=args.sigma_min)
        logger.info(f"--prior_std auto: sigma = {args.prior_std:.4f}", main_process_only=True)

    # Model, optimizer, EMA of the weights.
    adapter = build_adapter(args)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=args.learning_rate, weight_decay=0.0)
    # Accelerate steps a prepared scheduler once per process at every optimizer step.
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    ema = EMAModel(adapter.parameters(), decay=args.ema_decay) if args.ema_decay > 0 else None
    adapter, optimizer, lr_scheduler = accelerator.prepare(adapter, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    parameters = list(accelerator.unwrap_model(adapter).parameters())

    global_step = resume_from_checkpoint(accelerator, args.output_dir, args.resume_from_checkpoint)
    if accelerator.is_main_process:  # metrics.jsonl: records up to the checkpoint's step are kept
        history = JsonLog(os.path.join(args.output_dir, "metrics.jsonl"), resume_from_step=global_step or None)
        accelerator.init_trackers("restoregrad_weather", config={k: v for k, v in vars(args).items()
                                                                 if isinstance(v, (int, float, str, bool))})
        write_json(vars(args), os.path.join(args.output_dir, "args.json"))
    accumulation = args.gradient_accumulation_steps
    sampler = StepBatchSampler(global_step * accumulation, args.max_train_steps * accumulation, args.train_batch_size,
                               accelerator.process_index, accelerator.num_processes)
    train_dataloader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                                   num_workers=args.dataloader_num_workers)

    def run_validation(step):
        if accelerator.is_main_process:
            with ema_weights(ema, parameters):  # validate the EMA weights
                metrics = log_validation(accelerator.unwrap_model(adapter), validation, args, step,
                                         accelerator.device, validation_dir)
            history.append({"kind": "validation", "step": step, **metrics})
            accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=step)
            logger.info(f"step {step}: validation PSNR(Y) {metrics['psnr_y']:.2f} dB (degraded "
                        f"{metrics['psnr_y_degraded']:.2f} dB), SSIM(Y) {metrics['ssim_y']:.4f} (degraded "
                        f"{metrics['ssim_y_degraded']:.4f}); wrote "
                        f"{validation_dir}/step-{step:06d}.png", main_process_only=True)
        accelerator.wait_for_everyone()

    if global_step == 0:
        run_validation(0)
    logger.info(f"training {args.mode} for {args.max_train_steps} steps on {accelerator.num_processes} process(es), "
                f"batch {args.train_batch_size} x {accumulation} accumulation, patches {args.patch_size}",
                main_process_only=True)
    progress_bar = tqdm(total=args.max_train_steps, initial=global_step, desc="training",
                        disable=not accelerator.is_local_main_process)
    adapter.train()
    micro_step_terms = []
    for micro_step, (x0, y) in enumerate(train_dataloader, start=global_step * accumulation):
        generator = noise_generator(args.seed, micro_step, accelerator.process_index, accelerator.device)
        with accelerator.accumulate(adapter):
            terms = adapter(x0.to(accelerator.device), y.to(accelerator.device), generator=generator)
            accelerator.backward(terms.loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(adapter.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        micro_step_terms.append(gather_loss_terms(accelerator, terms))  # averaged over the processes
        if not accelerator.sync_gradients:
            continue

        global_step += 1
        if ema is not None:
            ema.step(parameters)
        record, micro_step_terms = mean_loss_terms(micro_step_terms), []
        progress_bar.update(1)
        progress_bar.set_postfix(loss=f"{record['loss']:.4f}", dm=f"{record['denoise']:.4f}",
                                 lr_term=f"{record['latent_reg']:.3f}", pm=f"{record['prior_match']:.3f}")
        accelerator.log({f"train/{k}": v for k, v in record.items()}, step=global_step)
        if accelerator.is_main_process:
            history.append({"kind": "train", "step": global_step, **record})
        if is_due(global_step, args.checkpointing_steps, args.max_train_steps):
            save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
        if is_due(global_step, args.validation_steps, args.max_train_steps):
            run_validation(global_step)
    progress_bar.close()

    # Save the adapter with the EMA weights, the training curves, and push to the Hub.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        adapter = accelerator.unwrap_model(adapter)
        if ema is not None:
            ema.copy_to(parameters)
        last = history.last("validation") or {}
        metadata = {"training_data": description,
                    "metrics": {k: v for k, v in last.items()
                                if k in ("psnr_y", "ssim_y", "psnr_y_degraded", "ssim_y_degraded")}}
        folder = adapter.save_pretrained(os.path.join(args.output_dir, "adapter"), **metadata)
        curves = os.path.join(args.output_dir, "training_curves.png")
        plot_curves(history.records, ["psnr_y", "ssim_y"], curves)
        logger.info(f"saved the trained adapter to {folder}" + (" (EMA weights)" if ema is not None else ""),
                    main_process_only=True)
        logger.info(f"{describe_learning(history.records, 'psnr_y', 'dB', 'psnr_y_degraded')}; wall time "
                    f"{time.time() - start_time:.0f} s; curves in {curves}", main_process_only=True)
        logger.info(f"{describe_learning(history.records, 'ssim_y', '', 'ssim_y_degraded', digits=4)}", main_process_only=True)
        if args.push_to_hub:
            url = adapter.push_to_hub(args.hub_model_id, token=args.hub_token, **metadata)
            logger.info(f"pushed to {url}", main_process_only=True)
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
