"""Train CDiffuSE-style speech enhancement with RestoreGrad's learned prior, with Accelerate.

    accelerate launch examples/train_speech.py                       # built-in data, CPU-sized defaults
    accelerate launch examples/train_speech.py --data_dir VoiceBank-DEMAND --model_size cdiffuse \\
        --segment_length 16384 --max_train_steps 100000 --mixed_precision bf16

Data (one of):
  --data_dir DIR              VoiceBank+DEMAND: clean_trainset_28spk_wav/, noisy_trainset_28spk_wav/,
                              clean_testset_wav/, noisy_testset_wav/;
  --clean_dir A --noisy_dir B any two folders of WAV files with matching names (validation: the last
                              few, or --validation_clean_dir / --validation_noisy_dir);
  --dataset_name NAME         a `datasets` dataset whose --clean_column / --noisy_column hold audio
                              (read undecoded: paths or bytes, decoded with soundfile);
  none of them                built-in: speech-like signals generated in code with additive noise at
                              0-15 dB SNR (restoregrad_adapter.contrib.data.speech).
Audio is mixed down to mono and resampled to 16 kHz (`restoregrad restore` resamples a file at
another rate the same way, and its result back). The denoiser is the reference DiffWave-style
network with CDiffuSE's call signature (restoregrad_adapter.contrib.reference_nets.DiffWaveDenoiser); train
your own CDiffuSE model by replacing `build_adapter`'s model. Validation enhances held-out utterances
with the fast 6-step sampler and reports SI-SNR beside the noisy input's, plus PESQ (wideband) and
STOI when `pesq` / `pystoi` are installed.

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

from restoregrad_adapter import (FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6, MODES, LearnedPriorScheduler,
                                 data_prior_std)
from restoregrad_adapter.contrib.data import LazyPairs
from restoregrad_adapter.encoders import ENCODERS
from restoregrad_adapter.contrib.data.readers import (
    SPEECH_PEAK,
    audio_pair_files,
    normalize_level,
    read_audio_pair,
    voicebank_pair_files,
)
from restoregrad_adapter.contrib.figures import plot_curves
from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad, cdiffuse_scheduler
from restoregrad_adapter.loss import WEIGHTINGS
from restoregrad_adapter.io import save_figure, write_audio, write_json
from restoregrad_adapter.contrib.metrics import speech_scores
from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser
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

logger = get_logger("restoregrad_speech")

SAMPLE_RATE = 16000
HOP = 256  # CDiffuSE's STFT hop: training crops are whole numbers of frames
#: --num_inference_steps -> the reverse process's schedule ("all": every training step).
INFERENCE_BETAS = {6: list(FAST_INFERENCE_BETAS_6), 3: list(FAST_INFERENCE_BETAS_3), 50: "all"}
MODEL_SIZES = {
    # name: (residual_layers, residual_channels, dilation_cycle_length, conditioner_channels)
    "tiny": (10, 32, 10, 64),  # the spectrogram compressed to 64 rows: about 5x cheaper on a CPU
    "cdiffuse": (30, 64, 10, None),  # the original CDiffuSE configuration
}

#: What the network predicts and how the denoising term is weighted. "paper", the RestoreGrad
#: paper's speech recipe (CDiffuSE's noise prediction, eq. 10), is the default on the built-in data.
#: "restoring" (x0 prediction with a plain x0 loss, the image default) is the recipe for real
#: recordings (docs/real_speech.md). CDiffuSE's process mixes y into x_t, so neither diffuses a residual.
RECIPES = {
    "restoring": {"prediction_type": "sample", "loss_weighting": "x0"},
    "paper": {"prediction_type": "epsilon", "loss_weighting": "elbo"},
}
#: Each recipe's learning rate and how it restores (validation, and the saved adapter's `restoration`):
#: the reverse steps, the chain's start, the weight of the noisy signal in the last step's blend, and
#: clipping. An x0 predictor gains from fewer noisy steps and a blend with y (docs/real_speech.md).
RECIPE_DEFAULTS = {
    "restoring": {"learning_rate": 2e-3, "num_inference_steps": 3, "sampling_start": "prior", "final_blend": 0.4,
                  "clamp": False},
    "paper": {"learning_rate": 1e-3, "num_inference_steps": 6, "sampling_start": "prior", "final_blend": 0.0,
              "clamp": False},
}


#: Training examples whose diffused signal sets ``--prior_std auto``.
AUTO_PRIOR_EXAMPLES = 64


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default=None, help="a VoiceBank+DEMAND folder")
    g.add_argument("--clean_dir", default=None)
    g.add_argument("--noisy_dir", default=None)
    g.add_argument("--validation_clean_dir", default=None)
    g.add_argument("--validation_noisy_dir", default=None)
    g.add_argument("--dataset_name", default=None)
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--dataset_split", default="train")
    g.add_argument("--clean_column", default="clean")
    g.add_argument("--noisy_column", default="noisy")
    g.add_argument("--num_validation_utterances", type=int, default=None,
                   help="held-out utterances validated, whole (default: every held-out pair of a folder or dataset; "
                        "3 of the built-in data)")
    g.add_argument("--validation_seconds", type=float, default=2.0, help="length of the built-in held-out utterances")
    g.add_argument("--builtin_utterances", type=int, default=48)
    g.add_argument("--segment_length", type=int, default=HOP * 24, help="training crop, a multiple of 256 samples")
    g = parser.add_argument_group("model")
    g.add_argument("--model_size", choices=tuple(MODEL_SIZES), default="tiny")
    g.add_argument("--recipe", choices=tuple(RECIPES), default="paper",
                   help="paper (default): the paper's speech recipe, CDiffuSE's noise prediction with eq. 10; "
                        "restoring (for real recordings): the network predicts the clean waveform x0 with a "
                        "plain x0 loss, with fewer sampling steps and a final blend with the noisy signal "
                        "(docs/real_speech.md); the options below list what each recipe sets")
    g.add_argument("--prediction_type", choices=("epsilon", "sample", "v_prediction"), default=None,
                   help="what the network predicts: CDiffuSE's combined noise, x0 (sample) or v")
    g.add_argument("--loss_weighting", choices=WEIGHTINGS, default=None,
                   help="the denoising term's weighting: elbo (the paper's eq. 10), min_snr, x0 (plain x0 MSE)")
    g.add_argument("--snr_gamma", type=float, default=5.0, help="gamma of --loss_weighting min_snr")
    g = parser.add_argument_group("RestoreGrad")
    g.add_argument("--mode", choices=MODES, default="restoregrad",
                   help="restoregrad (eq. 10), restoregrad_no_posterior (eq. 11), priorgrad, constant_prior "
                        "(one sigma everywhere, --prior_std), ddpm")
    g.add_argument("--prior_std", type=prior_std_value, default=None,
                   help="sigma of --mode constant_prior: a number, or auto: the root mean square of what is "
                        f"diffused over the first {AUTO_PRIOR_EXAMPLES} training segments, at least --sigma_min")
    g.add_argument("--latent_weight", type=float, default=0.1,
                   help="weight of the latent regulariser (the paper's eta)")
    g.add_argument("--prior_matching_weight", type=float, default=0.5,
                   help="weight of the prior-matching term (the paper's lambda)")
    g.add_argument("--sigma_min", type=float, default=0.1, help="floor of the learned standard deviation")
    g.add_argument("--sigma_max", type=float, default=None,
                   help="an upper bound (above 1) on the learned standard deviation, which is then squashed into "
                        "(sigma_min, sigma_max); none when left out")
    g.add_argument("--encoder_size", choices=("tiny", "base", "large"), default="base")
    g.add_argument("--encoder", choices=tuple(ENCODERS), default="reduced",
                   help="reduced (default: the Prior/Posterior Nets' body below the signal's resolution, sigma interpolated back) or paper (the paper's full-resolution ResNet-20)")
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", default="outputs/train_speech")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max_train_steps", type=int, default=1000)
    g.add_argument("--train_batch_size", type=int, default=8, help="per process")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=None, help="the learning rate after the warm-up")
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                   help="defaults to Accelerate's configuration")
    g.add_argument("--ema_decay", type=float, default=0.999, help="0 disables the EMA of the weights")
    g.add_argument("--checkpointing_steps", type=int, default=500)
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--validation_steps", type=int, default=500)
    g.add_argument("--num_inference_steps", type=int, choices=(3, 6, 50), default=None,
                   help="reverse steps: CDiffuSE's fast schedules (6 or 3) or every training step (50)")
    g.add_argument("--sampling_start", choices=("prior", "noisy"), default=None,
                   help="the reverse chain starts from the learned prior of eq. 10 or, as CDiffuSE's released "
                        "inference, from the noisy signal")
    g.add_argument("--final_blend", type=float, default=None,
                   help="weight w of the noisy signal in the last step's (1 - w) x0 + w y (CDiffuSE's released "
                        "inference: 0.2)")
    g.add_argument("--clamp", action=argparse.BooleanOptionalAction, default=None,
                   help="clip every reverse step to [-1, 1] as CDiffuSE's released inference does")
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--report_to", default="auto", help="'auto' (tensorboard when installed), 'all', 'none', ...")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    describe_defaults(parser, (("--recipe", RECIPES), ("--recipe", RECIPE_DEFAULTS)))
    args = parser.parse_args(argv)
    for name, value in {**RECIPES[args.recipe], **RECIPE_DEFAULTS[args.recipe]}.items():  # what the command line leaves out
        if getattr(args, name) is None:
            setattr(args, name, value)

    for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                 "validation_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, got {getattr(args, name)}")
    if (args.mode == "constant_prior") != (args.prior_std is not None):
        raise SystemExit("error: --prior_std goes with --mode constant_prior, and only with it")
    if not 0 <= args.ema_decay < 1:
        raise SystemExit(f"error: --ema_decay must be in [0, 1), got {args.ema_decay}")
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("error: --push_to_hub needs --hub_model_id (e.g. your-name/restoregrad-speech)")
    args.sample_rate = SAMPLE_RATE
    if args.segment_length % HOP or args.segment_length < 3 * HOP:
        raise SystemExit(f"error: --segment_length must be a multiple of {HOP} of at least {3 * HOP}, "
                         f"got {args.segment_length}")
    if args.final_blend is not None and not 0 <= args.final_blend <= 1:
        raise SystemExit(f"error: --final_blend must be a weight in [0, 1], got {args.final_blend}")
    if args.num_validation_utterances is not None and args.num_validation_utterances < 1:
        raise SystemExit(f"error: --num_validation_utterances must be >= 1, got {args.num_validation_utterances}")
    if sum(x is not None for x in (args.data_dir, args.clean_dir, args.dataset_name)) > 1:
        raise SystemExit("error: pass one of --data_dir, --clean_dir/--noisy_dir and --dataset_name")
    if (args.clean_dir is None) != (args.noisy_dir is None):
        raise SystemExit("error: --clean_dir and --noisy_dir go together")
    return args


# ---------------------------------------------------------------------- data
def read_utterance(clean, noisy):
    """A ``(x0, y)`` = (clean, noisy) pair of 16 kHz mono waveforms from paths or bytes, as in the files."""
    return read_audio_pair(clean, noisy, sample_rate=SAMPLE_RATE)


def load_data(args):
    """Training pairs (level-normalised) and held-out pairs ``(x0, y)`` (clean, noisy waveforms as in
    their files: validation restores them as ``restoregrad restore`` restores a file), and a description."""
    def read_files(paths):
        return normalize_level(*read_utterance(*paths))

    def read_held_out(files):
        return [read_utterance(*paths) for paths in files[: args.num_validation_utterances]]

    if args.data_dir:
        train = voicebank_pair_files(args.data_dir, "train")
        test = read_held_out(voicebank_pair_files(args.data_dir, "test"))
        return (LazyPairs(train, read_files, cache_size=2048), test,
                f"{os.path.basename(os.path.normpath(args.data_dir))} (a VoiceBank+DEMAND-style folder): "
                f"{len(train)} training pairs, {len(test)} held out")
    if args.clean_dir:
        files = audio_pair_files(args.clean_dir, args.noisy_dir)
        if args.validation_clean_dir:
            held = read_held_out(audio_pair_files(args.validation_clean_dir, args.validation_noisy_dir))
        else:
            count = min(args.num_validation_utterances or 3, len(files) - 1)
            held, files = read_held_out(files[len(files) - count:]), files[: len(files) - count]
        return (LazyPairs(files, read_files, cache_size=2048), held,
                f"{len(files)} pairs from {args.clean_dir} and {args.noisy_dir}")
    if args.dataset_name:
        import datasets

        rows = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)
        for column in (args.clean_column, args.noisy_column):
            if column not in rows.column_names:
                raise SystemExit(f"error: column {column!r} not in {args.dataset_name} ({rows.column_names})")
            rows = rows.cast_column(column, datasets.Audio(decode=False))  # decoded here with soundfile

        def read_row(i):
            row = rows[int(i)]
            clean, noisy = row[args.clean_column], row[args.noisy_column]
            return read_utterance(clean.get("bytes") or clean["path"], noisy.get("bytes") or noisy["path"])

        count = min(args.num_validation_utterances or 3, len(rows) - 1)
        validation = [read_row(i) for i in range(len(rows) - count, len(rows))]
        return (LazyPairs(range(len(rows) - count), lambda i: normalize_level(*read_row(i)), cache_size=2048), validation,
                f"dataset {args.dataset_name} ({len(rows) - count} training pairs)")

    from restoregrad_adapter.contrib.data.speech import builtin_speech_pairs

    train = builtin_speech_pairs("train", num_utterances=args.builtin_utterances, seconds=2.0, seed=args.seed)
    held = builtin_speech_pairs("validation", num_utterances=args.num_validation_utterances or 3,
                                seconds=args.validation_seconds, seed=args.seed)
    return ([normalize_level(x0, y) for x0, y in train], held,
            f"built-in: {len(train)} synthetic utterances with noise at 0-15 dB SNR, {len(held)} held out")


def waveform_to_tensor(waveform: np.ndarray) -> torch.Tensor:
    """``(L,)`` float32 -> a ``(1, L)`` tensor (one channel)."""
    return torch.from_numpy(np.ascontiguousarray(waveform))[None].float()


# ---------------------------------------------------------------------- model
def build_adapter(args):
    layers, channels, cycle, conditioner = MODEL_SIZES[args.model_size]
    model = DiffWaveDenoiser(residual_channels=channels, residual_layers=layers, dilation_cycle_length=cycle,
                             conditioner_channels=conditioner)
    scheduler = LearnedPriorScheduler.from_config(cdiffuse_scheduler().config, prediction_type=args.prediction_type)
    # Training brings every pair to one level (normalize_level); the adapter records it, so restoring a
    # file at any level applies the same normalisation and undoes it on the output. It also records how
    # validation restores, so that `restoregrad restore` restores a file exactly as validation did.
    restoration = {"inference_betas": INFERENCE_BETAS[args.num_inference_steps], "initial": args.sampling_start,
                   "mix_noisy": args.final_blend, "clamp": args.clamp}
    return CDiffuSERestoreGrad.from_model(model, size=args.encoder_size, encoder=args.encoder, mode=args.mode,
                                          latent_weight=args.latent_weight,
                                          prior_matching_weight=args.prior_matching_weight, sigma_min=args.sigma_min,
                                          scheduler=scheduler, weighting=args.loss_weighting,
                                          snr_gamma=args.snr_gamma, input_peak=SPEECH_PEAK, restoration=restoration,
                                          prior_std=args.prior_std, sigma_max=args.sigma_max)


# ---------------------------------------------------------------------- validation
#: The sampling seed of every held-out utterance: `restoregrad restore`'s default --seed.
RESTORE_SEED = 0
#: Held-out utterances drawn in the validation PNG, spread over the set (and written as WAVs at the first
#: and the last step, named by their index in the held-out set).
SHOWN_UTTERANCES = 3


def input_scores(validation) -> list[dict[str, float]]:
    """SI-SNR, PESQ and STOI of each held-out noisy input against its clean reference (computed once: they
    do not change during training)."""
    return [speech_scores(torch.from_numpy(noisy), torch.from_numpy(clean)) for clean, noisy in validation]


@torch.no_grad()
def log_validation(adapter, validation, noisy_scores, args, step, device, folder):
    """Enhance every held-out utterance whole, exactly as ``restoregrad restore`` enhances a file (the
    adapter's own restoration settings, sampling seed 0); SI-SNR, PESQ (wideband) and STOI beside the
    noisy input's (``noisy_scores``, from :func:`input_scores`; PESQ and STOI when installed); a PNG of
    noisy, restored and clean spectrograms with the learned sigma; the WAVs at the first and the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import mlab

    was_training = adapter.training
    adapter.eval()
    restored_scores = []
    shown = min(SHOWN_UTTERANCES, len(validation))
    rows = {len(validation) * k // shown: k for k in range(shown)}  # spread over the set: other utterances
    fig, axes = plt.subplots(shown, 4, figsize=(15, 2.6 * shown), squeeze=False)
    for i, (clean, noisy) in enumerate(validation):
        x0 = torch.from_numpy(clean)[None, None].to(device)
        y = torch.from_numpy(noisy)[None, None].to(device)
        generator = torch.Generator(device=device).manual_seed(RESTORE_SEED)
        restored = adapter.restore(y, generator=generator).float()
        restored_scores.append(speech_scores(restored.cpu(), x0.cpu()))
        if i not in rows:
            continue
        row = rows[i]
        sigma = adapter.prior_std(y * adapter.input_scale(y))[0, 0].float().cpu().numpy()  # what restore used
        waves = {"noisy": noisy, "restored": restored[0, 0].cpu().numpy(), "clean": clean}
        labels = {"noisy": f"  SI-SNR {noisy_scores[i]['si_snr']:.1f} dB",
                  "restored": f"  SI-SNR {restored_scores[i]['si_snr']:.1f} dB", "clean": ""}
        # One colour scale per row, from the clean spectrogram (a silent restoration stays drawable).
        top = 10 * np.log10(mlab.specgram(clean + 1e-9, NFFT=512, Fs=SAMPLE_RATE, noverlap=384)[0].max() + 1e-20)
        for ax, (title, wave) in zip(axes[row], waves.items()):
            ax.specgram(wave + 1e-9, NFFT=512, Fs=SAMPLE_RATE, noverlap=384, cmap="magma", vmin=top - 100, vmax=top)
            ax.set_title(title + labels[title], fontsize=9)
            if step in (0, args.max_train_steps):
                write_audio(os.path.join(folder, f"step-{step:06d}-{i}-{title}.wav"), wave, SAMPLE_RATE)
        axes[row, 3].plot(np.arange(len(sigma)) / SAMPLE_RATE, sigma, color="tab:red", linewidth=0.6)
        axes[row, 3].set_title("learned prior sigma (at the training level)", fontsize=9)
        axes[row, 3].set_xlim(0, len(sigma) / SAMPLE_RATE)
    fig.suptitle(f"validation at step {step} ({args.mode}, {args.num_inference_steps} sampling steps; "
                 f"{len(validation)} held-out utterances, {shown} shown)")
    fig.tight_layout()
    save_figure(fig, os.path.join(folder, f"step-{step:06d}.png"), dpi=90)
    adapter.train(was_training)
    means = {}
    for suffix, rows_of_scores in (("", restored_scores), ("_noisy", noisy_scores)):
        means.update({name + suffix: float(np.mean([r[name] for r in rows_of_scores])) for name in rows_of_scores[0]})
    return means


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

    # Data: example i is an aligned random segment of a random pair, drawn from (seed, i) only;
    # utterances shorter than a segment are padded with zeros, as CDiffuSE's collator does.
    pairs, validation, description = load_data(args)
    logger.info(f"data: {description}", main_process_only=True)
    noisy_scores = input_scores(validation) if accelerator.is_main_process else None
    dataset = RandomCropDataset(pairs, args.segment_length, args.seed, waveform_to_tensor, pad="zeros")
    if args.prior_std == "auto":  # the scale of what is diffused (x0), from training segments
        args.prior_std = data_prior_std((dataset[i] for i in range(AUTO_PRIOR_EXAMPLES)), minimum=args.sigma_min)
        logger.info(f"--prior_std auto: sigma = {args.prior_std:.4f}", main_process_only=True)

    # Model, optimizer, EMA of the weights.
    adapter = build_adapter(args)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=args.learning_rate, weight_decay=0.0)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=args.lr_warmup_steps)
    ema = EMAModel(adapter.parameters(), decay=args.ema_decay) if args.ema_decay > 0 else None
    adapter, optimizer, lr_scheduler = accelerator.prepare(adapter, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    parameters = list(accelerator.unwrap_model(adapter).parameters())

    global_step = resume_from_checkpoint(accelerator, args.output_dir, args.resume_from_checkpoint)
    if accelerator.is_main_process:  # metrics.jsonl: records up to the checkpoint's step are kept
        history = JsonLog(os.path.join(args.output_dir, "metrics.jsonl"), resume_from_step=global_step or None)
        accelerator.init_trackers("restoregrad_speech", config={k: v for k, v in vars(args).items()
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
                metrics = log_validation(accelerator.unwrap_model(adapter), validation, noisy_scores, args, step,
                                         accelerator.device, validation_dir)
            history.append({"kind": "validation", "step": step, **metrics})
            accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=step)
            optional = "".join(f", {k.upper()} {metrics[k]:.3f} (noisy {metrics[k + '_noisy']:.3f})"
                               for k in ("pesq", "stoi") if k in metrics)
            logger.info(f"step {step}: validation SI-SNR {metrics['si_snr']:.2f} dB (noisy "
                        f"{metrics['si_snr_noisy']:.2f} dB){optional}; wrote {validation_dir}/step-{step:06d}.png",
                        main_process_only=True)
        accelerator.wait_for_everyone()

    if global_step == 0:
        run_validation(0)
    logger.info(f"training {args.mode} for {args.max_train_steps} steps on {accelerator.num_processes} process(es), "
                f"batch {args.train_batch_size} x {accumulation} accumulation, segments of {args.segment_length} "
                f"samples at {SAMPLE_RATE} Hz", main_process_only=True)
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
                    "metrics": {k: v for k, v in last.items() if k in ("si_snr", "pesq", "stoi")},
                    "sample_rate": SAMPLE_RATE}
        folder = adapter.save_pretrained(os.path.join(args.output_dir, "adapter"), **metadata)
        curves = os.path.join(args.output_dir, "training_curves.png")
        plot_curves(history.records, ["si_snr", "pesq", "stoi"], curves)
        logger.info(f"saved the trained adapter to {folder}" + (" (EMA weights)" if ema is not None else ""),
                    main_process_only=True)
        for metric, unit in (("pesq", ""), ("stoi", "")):
            if metric in last:
                logger.info(describe_learning(history.records, metric, unit, metric + "_noisy", digits=3),
                            main_process_only=True)
        logger.info(f"{describe_learning(history.records, 'si_snr', 'dB', 'si_snr_noisy')}; wall time "
                    f"{time.time() - start_time:.0f} s; curves in {curves}", main_process_only=True)
        if args.push_to_hub:
            url = adapter.push_to_hub(args.hub_model_id, token=args.hub_token, **metadata)
            logger.info(f"pushed to {url}", main_process_only=True)
    accelerator.end_training()


if __name__ == "__main__":
    main(parse_args())
