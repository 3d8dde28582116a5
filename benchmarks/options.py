"""The benchmarks' command-line settings and their presets.

A preset (``--preset default`` or ``--preset smoke``) gives a value to every setting in its table; a
flag given on the command line wins over it. The script prints the preset's values and what the
command line changed, and records both in its JSON under ``"preset"``. ``smoke`` is the seconds-long
configuration that CI runs (tiny models, a few steps, one seed, one learning rate, one worker); its
numbers check the pipeline, not the method.
"""

from __future__ import annotations

import argparse
import copy
import math
import os

from tasks import DEFAULT_MODES, DEFAULT_RECIPE, DEGRADATIONS, IMAGE_STEPS, MODES, RECIPES, SPEECH_STEPS, TASKS

PRESET_NAMES = ("default", "smoke")
LEARNING_RATE_GRID = [3e-4, 1e-3, 3e-3]

# setting: (its value in preset "default", in preset "smoke")
RUN_PRESETS = {
    "both": {"early_evals": (4, 0), "seeds": ([0, 1, 2], [0]), "learning_rates": (LEARNING_RATE_GRID, [1e-3]),
             "workers": ("auto", 1)},
    "speech": {"steps": (2000, 4), "eval_every": (250, 2), "batch_size": (4, 2), "num_train": (32, 2),
               "num_eval": (4, 1), "latent_weight": (0.1, 0.1), "prior_matching_weight": (0.5, 0.5),
               "residual_channels": (16, 8), "residual_layers": (6, 2), "embedding_dim": (64, 32),
               "conditioner_channels": (64, 8),
               "crop_frames": (8, 4), "eval_frames": (32, 4), "seconds": (1.0, 0.25), "pesq": (True, False),
               "step_grid": (list(SPEECH_STEPS), [1, 2])},
    "image": {"steps": (2000, 4), "eval_every": (250, 2), "batch_size": (16, 2), "num_train": (None, None),
              "num_eval": (18, 1), "latent_weight": (0.01, 0.01), "prior_matching_weight": (1.0, 1.0),
              "patch_size": (16, 16), "stride": (8, 8), "sampling_steps": (10, 2), "image_size": (32, 24),
              "variants": (2, 1), "unet_ch": (16, 8), "unet_ch_mult": ([1, 2], [1, 2]),
              "step_grid": (list(IMAGE_STEPS), [2, 3])},
}
PRESET_NOTES = ("workers auto: the number of CPUs, at most 4; pesq True: when the pesq package is installed;\n"
                "num_train None: every training image; eval_every, early_evals, learning_rates: convergence.py only;\n"
                "step_grid: sampling.py only")


def positive_number(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def run_presets(task: str) -> dict:
    """The preset table of a convergence or sampling run of ``task``."""
    return {**RUN_PRESETS["both"], **RUN_PRESETS[task]}


def describe_presets(tables: dict, notes: str = "") -> str:
    """Help text: a table of every setting's value in each preset, one column per table (task)."""
    settings = list(dict.fromkeys(k for table in tables.values() for k in table))
    header = ["setting"] + [f"{name}: {' / '.join(PRESET_NAMES)}" for name in tables]
    rows = [header] + [[k] + [" / ".join(map(str, table[k])) if k in table else "-" for table in tables.values()]
                       for k in settings]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([f"presets (--preset {' | '.join(PRESET_NAMES)}):", *lines] + ([notes] if notes else []))


def apply_preset(args, table: dict, exclude=()) -> dict:
    """Give every setting of ``table`` that the command line left out its value in preset ``args.preset``.

    The parser must leave those settings out of ``args`` when not given (``argument_default=SUPPRESS``).
    Prints and returns the record kept in the JSON: the preset's name, its values, and the settings
    the command line gave.
    """
    column = PRESET_NAMES.index(args.preset)
    values = {k: column_values[column] for k, column_values in table.items() if k not in exclude}
    given = {k: getattr(args, k) for k in values if hasattr(args, k)}
    for k, v in values.items():
        if k not in given:
            setattr(args, k, copy.deepcopy(v))
    shown = ", ".join(f"{k} {v}" for k, v in values.items())
    changed = ", ".join(f"{k} {v}" for k, v in given.items()) or "nothing"
    print(f"preset {args.preset}: {shown}; given on the command line: {changed}", flush=True)
    return {"name": args.preset, "values": values, "given": given}


def preset_parser(doc: str, tables: dict, notes: str = "") -> argparse.ArgumentParser:
    """A parser whose flags are absent from the namespace unless given (presets fill them), with --preset."""
    parser = argparse.ArgumentParser(description=doc, epilog=describe_presets(tables, notes),
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--preset", choices=PRESET_NAMES, default="default",
                        help="the values of every setting not given (listed below); 'smoke' runs in seconds")
    parser.add_argument("--output_dir", default="outputs/benchmarks")
    return parser


def recipe_prediction(args) -> str:
    """The prediction type a run will use: ``--prediction_type``, else its recipe's."""
    recipe = args.recipe if args.recipe is not None else DEFAULT_RECIPE[args.task]
    return args.prediction_type or RECIPES[recipe][args.task]["prediction_type"]


def run_parser(doc: str) -> argparse.ArgumentParser:
    """The settings of a training run, shared by convergence.py and sampling.py."""
    parser = preset_parser(doc, {task: run_presets(task) for task in TASKS}, PRESET_NOTES)
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--recipe", choices=tuple(RECIPES), default=None,
                        help="paper: the paper's noise prediction with eq. 10; restoring: x0 prediction with an x0 "
                             "loss (images: of the residual x0 - y); default: the task's training script's "
                             f"({', '.join(f'{task} {name}' for task, name in DEFAULT_RECIPE.items())})")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES),
                        help=f"modes to train (default: {' '.join(DEFAULT_MODES)}); ddpm is the reference")
    parser.add_argument("--constant_prior_std", type=positive_number, default=None,
                        help="sigma of mode constant_prior, the same everywhere (an ablation: is it the learned "
                             "map or its scale that helps?)")
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--batch_size", type=int, help="speech crops / image patches per batch")
    parser.add_argument("--grad_clip", type=float, default=1.0, help="global gradient-norm clip, 0 for none")
    parser.add_argument("--encoder_size", choices=("tiny", "base", "large"), default="tiny")
    parser.add_argument("--latent_weight", type=float,
                        help="the paper's eta, weight of the latent-regulariser term (speech 0.1 as the paper; "
                             "images 0.01, in the paper's image range)")
    parser.add_argument("--prior_matching_weight", type=float,
                        help="the paper's lambda, weight of the prior-matching term (speech 0.5 as the paper; "
                             "images 1.0)")
    parser.add_argument("--sigma_min", type=float, default=0.1, help="floor of the learned std (paper: 0.1)")
    parser.add_argument("--sigma_max", type=float, default=None,
                        help="an upper bound (above 1) on the learned std, squashed into (sigma_min, sigma_max); "
                             "none when left out")
    parser.add_argument("--prediction_type", choices=("epsilon", "sample", "v_prediction"), default=None,
                        help="what the denoiser predicts, instead of the recipe's (an ablation)")
    parser.add_argument("--loss_weighting", choices=("elbo", "min_snr", "x0"), default=None,
                        help="the denoising term's weighting, instead of the recipe's (an ablation)")
    parser.add_argument("--residual", choices=("on", "off"), default=None,
                        help="images: diffuse the residual x0 - y (on) or x0 (off), instead of the recipe's choice "
                             "(an ablation)")
    parser.add_argument("--zero_terminal_snr", action="store_true",
                        help="images: rescale the training schedule to end at pure noise (zero terminal SNR, Lin et "
                             "al. 2024); use it with --timestep_spacing trailing and v prediction: an x0 estimate "
                             "from a noise prediction divides by zero at the last training step")
    parser.add_argument("--timestep_spacing", choices=("leading", "linspace", "trailing"), default=None,
                        help="images: how the held-out restorations' DDIM steps are spread (default WeatherDiff's "
                             "leading, which starts at t = T - T/S; trailing starts at t = T)")
    parser.add_argument("--data_dir", default=None, help="VoiceBank+DEMAND (speech) or RainDrop-style (image) folder")
    parser.add_argument("--degradation", choices=tuple(d for names in DEGRADATIONS.values() for d in names),
                        default=None,
                        help="the built-in data's degradation (not with --data_dir). speech: stationary (the "
                             "default; one noise level per utterance, 0-15 dB SNR) or nonstationary (the level "
                             "moves within the utterance: an SNR ramp from +20 dB to -5 dB, short bursts at -10 "
                             "to -5 dB, gaps without noise); image: full (the default; weather all over the "
                             "photo) or partial (weather over a soft-edged band, side or blob of 20-50%% of the "
                             "image, the rest exactly clean)")
    parser.add_argument("--num_train", type=int, help="training utterances / images")
    parser.add_argument("--num_eval", type=int, help="held-out utterances / images")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in all (default: torch's)")
    parser.add_argument("--workers", type=int,
                        help="runs trained side by side in separate processes, sharing the threads")
    g = parser.add_argument_group("speech")
    g.add_argument("--residual_channels", type=int, help="DiffWave channels")
    g.add_argument("--residual_layers", type=int, help="DiffWave layers")
    g.add_argument("--embedding_dim", type=int)
    g.add_argument("--conditioner_channels", type=int,
                   help="DiffWave's conditioner compressed to this many rows at the frame rate (0: CDiffuSE's 513)")
    g.add_argument("--crop_frames", type=int, help="training crop in 256-sample frames")
    g.add_argument("--eval_frames", type=int, help="held-out length cap in frames")
    g.add_argument("--seconds", type=float, help="built-in utterance length")
    g.add_argument("--no_pesq", dest="pesq", action="store_const", const=False, help="skip PESQ even when installed")
    g = parser.add_argument_group("image")
    g.add_argument("--patch_size", type=int)
    g.add_argument("--stride", type=int, help="restoration patch stride")
    g.add_argument("--sampling_steps", type=int, help="WeatherDiff DDIM steps of the held-out restorations")
    g.add_argument("--image_size", type=int, help="longest side of the images")
    g.add_argument("--variants", type=int, help="built-in degraded versions per training photo")
    g.add_argument("--unet_ch", type=int)
    g.add_argument("--unet_ch_mult", type=int, nargs="+")
    g.add_argument("--unet_blocks", type=int, default=1)
    return parser


def resolve_run(parser: argparse.ArgumentParser, args, exclude=()):
    """Apply the preset (``exclude``: settings this script does not have), then check every setting."""
    args.preset_record = apply_preset(args, run_presets(args.task), exclude)
    if args.recipe is None:
        args.recipe = DEFAULT_RECIPE[args.task]
    choices = DEGRADATIONS[args.task]
    if args.degradation is None:
        args.degradation = choices[0]
    elif args.degradation not in choices:
        parser.error(f"--degradation: the {args.task} task takes {' or '.join(choices)}, got {args.degradation}")
    if args.data_dir and args.degradation != choices[0]:
        parser.error(f"--degradation {args.degradation} draws the built-in data; --data_dir's pairs bring their own "
                     "degradation (leave one of the two out)")
    speech = args.task == "speech"
    if args.workers == "auto":
        args.workers = max(1, min(4, os.cpu_count() or 1))
    if speech and args.pesq:
        import importlib.util

        args.pesq = importlib.util.find_spec("pesq") is not None  # settled here, before runs go to workers
    for name in ("workers", "steps", "eval_every", "batch_size", "num_train", "num_eval", "crop_frames",
                 "eval_frames", "patch_size", "stride", "sampling_steps"):
        value = getattr(args, name, None)  # absent: not a setting of this task or script; num_train None: all
        if value is not None and value < 1:
            parser.error(f"--{name} must be a positive integer")
    if getattr(args, "early_evals", 0) < 0:
        parser.error("--early_evals must be >= 0")
    if args.sigma_max is not None and not (1 < args.sigma_max < math.inf):
        parser.error("--sigma_max must be a number above 1 (the learned std starts at 1)")
    for name in ("latent_weight", "prior_matching_weight", "sigma_min"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            parser.error(f"--{name} must be a finite number >= 0")
    schedule_ablations = [getattr(args, name, None) for name in ("residual", "zero_terminal_snr", "timestep_spacing")]
    if speech and any(value not in (None, False) for value in schedule_ablations):
        parser.error("--residual, --zero_terminal_snr and --timestep_spacing are image settings (CDiffuSE's process "
                     "mixes y into x_t and samples with its own fast schedule)")
    if getattr(args, "zero_terminal_snr", False) and recipe_prediction(args) == "epsilon":
        parser.error("--zero_terminal_snr with noise prediction cannot sample: the x0 estimate divides by "
                     "sqrt(abar_T) = 0; add --prediction_type v_prediction (or sample)")
    if speech and args.crop_frames < 3:
        parser.error("--crop_frames must be at least 3 (the conditioner's STFT needs more than 512 samples)")
    if any(not (lr > 0 and math.isfinite(lr)) for lr in getattr(args, "learning_rates", [1.0])):
        parser.error("--learning_rates must be positive numbers")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    if len(set(args.modes)) != len(args.modes) or "ddpm" not in args.modes:
        parser.error("--modes must be distinct and include ddpm (the reference)")
    if ("constant_prior" in args.modes) != (args.constant_prior_std is not None):
        parser.error("--constant_prior_std and mode constant_prior in --modes go together")
    return args
