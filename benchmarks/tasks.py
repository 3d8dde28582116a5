"""What the convergence and sampling benchmarks restore: per task its data, model, modes and scores.

Two tasks, each an existing diffusion restorer with the adapter around it:

- ``speech``: CDiffuSE (a DiffWave with CDiffuSE's conditioner) through
  :class:`~restoregrad_adapter.integrations.cdiffuse.CDiffuSERestoreGrad`; batches of random crops;
  held-out SI-SNR (and wide-band PESQ) after ``CDiffuSERestoreGrad.restore`` with CDiffuSE's fast
  schedules (sampler ``"cdiffuse"``, S = 1..6 steps, :func:`fast_inference_betas`).
- ``image``: a WeatherDiff UNet on patches; held-out PSNR and SSIM on Y of whole images after
  ``integrations.weatherdiff.restore_image``: WeatherDiff's DDIM (sampler ``"ddim"``), and for
  RestoreGrad also diffusers' ``DDPMScheduler`` (``"ddpm"``) and DPM-Solver++ 2M (``"dpmsolver++"``)
  sampling the learned prior by whitening (docs/design.md). CDiffuSE's forward process mixes y into
  x_t, so a stock diffusers scheduler does not describe speech.

Modes (:data:`MODES`): the library's four (``ddpm``, ``priorgrad``, ``restoregrad_no_posterior``,
``restoregrad``) and ``constant_prior``, an ablation of the learned prior: sigma is the constant
``config.constant_prior_std`` everywhere (the library's ``mode="priorgrad"`` with that constant as
``handcrafted_prior``), and ``restoregrad_paper_encoder``, RestoreGrad with the paper's full-resolution
ResNet-20 encoders in place of the library's default reduced-resolution ones (is anything lost?). In
every mode the denoiser's initial weights depend on the seed only.

Both tasks train with one of the training scripts' recipes (:data:`RECIPES`, ``--recipe``), by
default the script's own: for images x0 prediction of the residual ``x0 - y`` with a plain x0 loss,
for speech the paper's noise prediction with eq. 10.

The built-in data comes in two degradations per task (:data:`DEGRADATIONS`, ``--degradation``), the
first the default: speech noise at one level per utterance (``stationary``) or one whose level moves
within it (``nonstationary``: bursts, silent gaps, an SNR ramp from +20 dB to -5 dB); images with the
weather all over (``full``) or over a soft-edged band, side or blob of 20-50% of the image only
(``partial``), the rest exactly clean. Where the degradation is strong in some places and absent in
others, a prior map can do what a constant prior std cannot.

A task is built from the run's settings (an ``argparse.Namespace``, see ``options.py``) and holds its
training and held-out data as (clean, degraded) pairs, the library's ``(x0, y)``; ``input_quality``
scores the degraded input with the restorations' metrics.
"""

from __future__ import annotations

import functools
import math
import statistics
from pathlib import Path

import numpy as np
import torch

MODES = ("ddpm", "priorgrad", "constant_prior", "restoregrad_no_posterior", "restoregrad", "restoregrad_paper_encoder")
DEFAULT_MODES = ("ddpm", "priorgrad", "restoregrad_no_posterior", "restoregrad")
LABELS = {"ddpm": "standard DDPM", "priorgrad": "PriorGrad", "constant_prior": "constant prior",
          "restoregrad_no_posterior": "RestoreGrad, no Posterior Net", "restoregrad": "RestoreGrad",
          "restoregrad_paper_encoder": "RestoreGrad, paper's full-resolution encoders"}
# the library mode a benchmark mode runs as (default: its name)
LIBRARY_MODE = {"constant_prior": "priorgrad", "restoregrad_paper_encoder": "restoregrad"}
# the named encoders (restoregrad_adapter.encoders.ENCODERS) a benchmark mode builds (default: the library's)
ENCODER_OF_MODE = {"restoregrad_paper_encoder": "paper"}
TASKS = ("speech", "image")
#: The built-in data's degradations per task (``--degradation``), the default first: the ``noise_profile``
#: of ``builtin_speech_pairs`` and the ``coverage`` of ``builtin_weather_pairs``.
DEGRADATIONS = {"speech": ("stationary", "nonstationary"), "image": ("full", "partial")}

#: What the denoiser predicts, what is diffused and how the denoising term is weighted, per task: the
#: training scripts' recipes (examples/train_weather.py, examples/train_speech.py). "paper" is the
#: RestoreGrad paper's (noise prediction of x0 itself, eq. 10); "restoring" predicts x0 with a plain x0
#: loss (images: of the residual x0 - y). CDiffuSE's process already mixes y into x_t, so speech never
#: diffuses the residual. Each task's default is its training script's (DEFAULT_RECIPE).
RECIPES = {
    "restoring": {"image": {"prediction_type": "sample", "residual": True, "loss_weighting": "x0"},
                  "speech": {"prediction_type": "sample", "loss_weighting": "x0"}},
    "paper": {"image": {"prediction_type": "epsilon", "residual": False, "loss_weighting": "elbo"},
              "speech": {"prediction_type": "epsilon", "loss_weighting": "elbo"}},
}
DEFAULT_RECIPE = {"image": "restoring", "speech": "paper"}
HEADLINE_METRIC = {"speech": "si_snr", "image": "psnr_y"}

SPEECH_STEPS = (1, 2, 3, 4, 5, 6)
IMAGE_STEPS = (2, 3, 4, 5, 6, 8, 10, 15, 20, 25)
IMAGE_SCHEDULERS = ("ddim", "ddpm", "dpmsolver++")  # the last two for RestoreGrad only
HOP = 256  # CDiffuSE's frame: waveform lengths are multiples of it
SAMPLE_RATE = 16_000


def recipe_of(config, task: str) -> dict:
    """The run's recipe for ``task``: ``RECIPES[config.recipe]``, with ``--prediction_type``,
    ``--loss_weighting`` and ``--residual`` instead of the recipe's when given (ablations)."""
    recipe = dict(RECIPES[config.recipe][task])
    for name in ("prediction_type", "loss_weighting"):
        if getattr(config, name, None) is not None:
            recipe[name] = getattr(config, name)
    if getattr(config, "residual", None) is not None:
        recipe["residual"] = config.residual == "on"
    return recipe


def mode_label(mode: str, constant_prior_std: float | None = None) -> str:
    """The mode's name in tables and plots; the constant prior names its sigma."""
    if mode == "constant_prior":
        return f"constant prior (sigma {constant_prior_std:g})"
    return LABELS[mode]


def mode_labels(modes, constant_prior_std: float | None = None) -> dict:
    return {mode: mode_label(mode, constant_prior_std) for mode in modes}


def constant_prior(y: torch.Tensor, value: float) -> torch.Tensor:
    """A fixed prior with the same standard deviation ``value`` everywhere."""
    return torch.full(y.shape, value, dtype=torch.float32, device=y.device)


def handcrafted_prior(mode: str, config):
    """The adapter's fixed prior for ``mode``: the constant of ``constant_prior``, else the library's default
    (PriorGrad's energy prior, used by mode ``priorgrad`` only)."""
    if mode == "constant_prior":
        return functools.partial(constant_prior, value=float(config.constant_prior_std))
    return None


def fast_inference_betas(num_steps: int) -> tuple[float, ...]:
    """CDiffuSE fast-sampling betas for 1..6 steps.

    S >= 3: the last S betas of the 6-step schedule (S = 3 and 6 are the published schedules).
    S < 3: the 3-step schedule with its first 4 - S steps merged into one step of the same alpha
    product, so the chain still ends at alpha_bar = 0.494 (CDiffuSE needs alpha_bar_N < 1/2):
    S = 2 gives [0.24, 0.35], S = 1 gives [0.506].
    """
    from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6

    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= 6:
        raise ValueError(f"`num_steps` must be an integer in 1..6, got {num_steps!r}.")
    if num_steps >= 3:
        return tuple(FAST_INFERENCE_BETAS_6[-num_steps:])
    merged = 4 - num_steps
    return (1.0 - math.prod(1.0 - b for b in FAST_INFERENCE_BETAS_3[:merged]),) + FAST_INFERENCE_BETAS_3[merged:]


def stock_scheduler(name: str, adapter):
    """A diffusers scheduler on the adapter's training schedule, ready for whitened sampling."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    config = adapter.scheduler.config
    if name == "ddpm":
        return DDPMScheduler.from_config(config, clip_sample=False, thresholding=False)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=False)
    raise ValueError(f"unknown scheduler {name!r}")


def std_stats(maps: list[torch.Tensor]) -> dict:
    """Mean, min and max over every element of the given std maps."""
    values = torch.cat([m.detach().float().flatten() for m in maps])
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def parameter_counts(adapter) -> dict:
    return {"denoiser": sum(p.numel() for p in adapter.denoiser.parameters()),
            "encoders": sum(p.numel() for n in (adapter.prior_net, adapter.posterior_net) for p in n.parameters())}


def build_task(config):
    return (SpeechTask if config.task == "speech" else ImageTask)(config)


class _Task:
    """What both tasks share: the adapter's mode and prior, and the prior's std on the held-out set."""

    name = ""
    default_steps = 0

    def __init__(self, config):
        self.config = config

    def build(self, seed: int, mode: str):
        """The adapter of ``mode``; the denoiser is built first under ``seed``, so its weights never depend on
        the mode."""
        torch.manual_seed(seed)
        adapter = self._build(handcrafted_prior(mode, self.config), ENCODER_OF_MODE.get(mode, "reduced"))
        adapter.mode = LIBRARY_MODE.get(mode, mode)
        return adapter

    def samplers(self, mode: str) -> tuple[str, ...]:
        """The samplers a mode is restored with; the first is the task's own."""
        raise NotImplementedError

    def held_out_conditions(self) -> list[torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def prior_std_stats(self, adapter) -> dict:
        """Mean, min and max of the sampling prior's std over the held-out conditions (1 for DDPM)."""
        return std_stats([adapter.prior_std(y) for y in self.held_out_conditions()])


# ---------------------------------------------------------------------- speech
def load_speech(config):
    """(train, held-out, description): level-normalised (clean, noisy) float32 waveform pairs."""
    from restoregrad_adapter.contrib.data.readers import normalize_level, voicebank_pair_files
    from restoregrad_adapter.contrib.data.speech import builtin_speech_pairs
    from restoregrad_adapter.io import read_audio

    if config.data_dir:
        def load(files):
            pairs = []
            for paths in files:
                x0, y = (read_audio(path, sample_rate=SAMPLE_RATE, mix_to_mono=True)[0] for path in paths)
                pairs.append((x0[: len(y)], y[: len(x0)]))
            return pairs

        train = load(voicebank_pair_files(config.data_dir, "train")[: config.num_train])
        held = load(voicebank_pair_files(config.data_dir, "test")[: config.num_eval])
        what = f"VoiceBank+DEMAND ({config.data_dir}): {len(train)} train, {len(held)} test utterances"
    else:
        profile = config.degradation
        train = builtin_speech_pairs("train", config.num_train, config.seconds, seed=0, noise_profile=profile)
        held = builtin_speech_pairs("validation", config.num_eval, config.seconds, seed=0, noise_profile=profile)
        noise = "" if profile == DEGRADATIONS["speech"][0] else f" with {profile} noise"
        what = (f"built-in synthetic speech{noise}: {len(train)} train, {len(held)} held-out utterances of "
                f"{config.seconds} s")
    return [normalize_level(*pair) for pair in train], [normalize_level(*pair) for pair in held], what


class SpeechTask(_Task):
    """CDiffuSE (DiffWave) with the adapter; batches of random crops; SI-SNR (and PESQ) on held-out utterances."""

    name = "speech"
    default_steps = len(SPEECH_STEPS)  # CDiffuSE's 6-step fast sampler

    def __init__(self, config):
        super().__init__(config)
        train, held_out, self.description = load_speech(config)
        self.crop = HOP * config.crop_frames
        self.train = [self._pad(x0, y, self.crop) for x0, y in train]  # at least one crop long
        length = HOP * max(3, min(len(x0) for x0, _ in held_out) // HOP)  # one length for every held-out utterance
        length = min(length, HOP * config.eval_frames)
        self.eval_clean = torch.stack([torch.from_numpy(x0[:length]) for x0, _ in held_out])[:, None]
        self.eval_noisy = torch.stack([torch.from_numpy(y[:length]) for _, y in held_out])[:, None]
        self.pesq = bool(config.pesq)

    @staticmethod
    def _pad(x0, y, length):
        if len(x0) < length:
            x0, y = (np.pad(a, (0, length - len(a))) for a in (x0, y))
        return torch.from_numpy(x0), torch.from_numpy(y)

    def _build(self, prior, encoder: str):
        from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad
        from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

        from restoregrad_adapter import LearnedPriorScheduler
        from restoregrad_adapter.integrations.cdiffuse import cdiffuse_scheduler

        c = self.config
        recipe = recipe_of(c, "speech")
        model = DiffWaveDenoiser(residual_channels=c.residual_channels, residual_layers=c.residual_layers,
                                 dilation_cycle_length=min(10, c.residual_layers), embedding_dim=c.embedding_dim,
                                 conditioner_channels=getattr(c, "conditioner_channels", 0) or None)
        scheduler = LearnedPriorScheduler.from_config(cdiffuse_scheduler().config,
                                                      prediction_type=recipe["prediction_type"])
        return CDiffuSERestoreGrad.from_model(model, size=c.encoder_size, encoder=encoder, latent_weight=c.latent_weight,
                                              prior_matching_weight=c.prior_matching_weight,
                                              sigma_min=c.sigma_min, handcrafted_prior=prior, scheduler=scheduler,
                                              weighting=recipe["loss_weighting"],
                                              sigma_max=getattr(c, "sigma_max", None))

    def batch(self, generator: torch.Generator):
        """(clean, noisy) crops of random training utterances, all drawn from ``generator``."""
        picks = torch.randint(0, len(self.train), (self.config.batch_size,), generator=generator).tolist()
        clean, noisy = [], []
        for i in picks:
            x0, y = self.train[i]
            start = int(torch.randint(0, len(x0) - self.crop + 1, (1,), generator=generator))
            clean.append(x0[start:start + self.crop])
            noisy.append(y[start:start + self.crop])
        return torch.stack(clean)[:, None], torch.stack(noisy)[:, None]

    def samplers(self, mode: str) -> tuple[str, ...]:
        return ("cdiffuse",)

    def held_out_conditions(self) -> list[torch.Tensor]:
        return [self.eval_noisy]

    @torch.no_grad()
    def evaluate(self, adapter, seed: int, sampler: str = "cdiffuse", steps: int | None = None) -> dict:
        """Held-out quality after ``CDiffuSERestoreGrad.restore`` with the ``steps``-step fast schedule."""
        if sampler != "cdiffuse":
            raise ValueError(f"speech has only CDiffuSE's sampler, not {sampler!r}")
        betas = fast_inference_betas(self.default_steps if steps is None else steps)
        generator = torch.Generator().manual_seed(10_000 + seed)
        return self.scores(adapter.restore(self.eval_noisy, inference_betas=betas, generator=generator).float())

    def input_quality(self) -> dict:
        return self.scores(self.eval_noisy)

    def scores(self, waveforms: torch.Tensor) -> dict:
        """SI-SNR (and wide-band PESQ) of held-out-shaped ``waveforms`` against the clean utterances."""
        from restoregrad_adapter.contrib.metrics import pesq_wb, si_snr

        result = {"si_snr": float(si_snr(waveforms[:, 0], self.eval_clean[:, 0]).mean())}
        if self.pesq:
            try:
                result["pesq"] = float(pesq_wb(waveforms[:, 0].clamp(-1, 1), self.eval_clean[:, 0]).mean())
            except ImportError:
                self.pesq = False
            except Exception as error:  # pesq.PesqError on silent or very short signals: recorded, not fatal
                result["pesq"] = float("nan")
                print(f"  pesq failed: {error}", flush=True)
        return result


# ---------------------------------------------------------------------- images
def load_images(config):
    """(train, held-out, description): (clean, degraded) HxWx3 float32 image pairs in [0, 1]."""
    from restoregrad_adapter.contrib.data.readers import downscale, image_pair_files
    from restoregrad_adapter.contrib.data.weather import builtin_weather_pairs
    from restoregrad_adapter.io import read_image

    size = config.image_size
    if config.data_dir:
        root = Path(config.data_dir)
        test_dir = next((root / n for n in ("test_a", "test") if (root / n / "input").is_dir()), None)
        if (root / "train" / "input").is_dir() and test_dir is not None:
            train, held = image_pair_files(root / "train"), image_pair_files(test_dir)[: config.num_eval]
        else:  # one location (an input/ + gt/ folder, a file list, an imagefolder): its last pairs held out
            pairs = image_pair_files(root)
            if len(pairs) <= config.num_eval:
                raise SystemExit(f"error: {root} has {len(pairs)} pairs; need more than --num_eval {config.num_eval}")
            train, held = pairs[: -config.num_eval], pairs[-config.num_eval:]
        train, held = ([tuple(downscale(read_image(path), size) for path in paths) for paths in files]
                       for files in (train[: config.num_train], held))
        what = f"{config.data_dir}: {len(train)} train, {len(held)} test images"
    else:
        coverage = config.degradation
        train = [(x0, y) for x0, y, _, _ in builtin_weather_pairs("train", size=size, variants=config.variants,
                                                                  coverage=coverage)]
        train = train[: config.num_train]
        # two degraded versions of each of the 9 held-out photos and 3 kinds: 18 images by default
        held = [(x0, y) for x0, y, _, _ in builtin_weather_pairs("validation", size=size, variants=2,
                                                                 coverage=coverage)]
        held = held[: config.num_eval]
        where = "" if coverage == DEGRADATIONS["image"][0] else " over part of each image: partial coverage"
        what = (f"built-in weather photos (rain, snow, raindrop{where}) at {size} px: {len(train)} train, "
                f"{len(held)} held-out images")
    return train, held, what


class ImageTask(_Task):
    """WeatherDiff (UNet on patches) with the adapter; PSNR/SSIM on Y of whole held-out images."""

    name = "image"

    def __init__(self, config):
        from restoregrad_adapter.contrib.data.readers import image_to_tensor

        super().__init__(config)
        self.default_steps = config.sampling_steps
        train, held_out, self.description = load_images(config)
        p = config.patch_size
        self.train = [(image_to_tensor(x0), image_to_tensor(y)) for x0, y in train if min(x0.shape[:2]) >= p]
        if not self.train:
            raise SystemExit(f"error: no training image is at least {p} x {p}")
        self.held_out = [(image_to_tensor(x0)[None], image_to_tensor(y)[None]) for x0, y in held_out]

    def _build(self, prior, encoder: str):
        from restoregrad_adapter import EncoderConfig, LearnedPriorScheduler, RestoreGrad, RestoreGradConfig
        from restoregrad_adapter.adapter import build_encoders
        from restoregrad_adapter.integrations.weatherdiff import wrap
        from restoregrad_adapter.contrib.reference_nets import WeatherUNet

        c = self.config
        recipe = recipe_of(c, "image")
        unet = WeatherUNet(in_channels=6, out_channels=3, ch=c.unet_ch, ch_mult=tuple(c.unet_ch_mult),
                           num_res_blocks=c.unet_blocks, attn_resolutions=(), image_size=c.patch_size)
        config = RestoreGradConfig(
            encoder=EncoderConfig(dims=2, in_channels=3, size=c.encoder_size, sigma_min=c.sigma_min,
                                  architecture=encoder, sigma_max=getattr(c, "sigma_max", None)),
            prediction_type=recipe["prediction_type"], residual=recipe["residual"], latent_weight=c.latent_weight,
            prior_matching_weight=c.prior_matching_weight, weighting=recipe["loss_weighting"])
        prior_net, posterior_net = build_encoders(config.encoder)  # after the UNet, as always here
        scheduler = LearnedPriorScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                          prediction_type=recipe["prediction_type"],
                                          rescale_betas_zero_snr=bool(getattr(c, "zero_terminal_snr", False)))
        return RestoreGrad(wrap(unet, patch_size=c.patch_size), config, prior_net=prior_net,
                           posterior_net=posterior_net, scheduler=scheduler, handcrafted_prior=prior)

    def batch(self, generator: torch.Generator):
        """(clean, degraded) aligned random patches of random training images, all drawn from ``generator``."""
        p = self.config.patch_size
        picks = torch.randint(0, len(self.train), (self.config.batch_size,), generator=generator).tolist()
        clean, degraded = [], []
        for i in picks:
            x0, y = self.train[i]
            top = int(torch.randint(0, x0.shape[1] - p + 1, (1,), generator=generator))
            left = int(torch.randint(0, x0.shape[2] - p + 1, (1,), generator=generator))
            clean.append(x0[:, top:top + p, left:left + p])
            degraded.append(y[:, top:top + p, left:left + p])
        return torch.stack(clean), torch.stack(degraded)

    def samplers(self, mode: str) -> tuple[str, ...]:
        return IMAGE_SCHEDULERS if mode == "restoregrad" else IMAGE_SCHEDULERS[:1]

    def held_out_conditions(self) -> list[torch.Tensor]:
        return [y for _, y in self.held_out]

    @torch.no_grad()
    def evaluate(self, adapter, seed: int, sampler: str = "ddim", steps: int | None = None) -> dict:
        """Held-out quality after ``restore_image``: WeatherDiff's DDIM (eta 0), or a stock scheduler whitened."""
        from restoregrad_adapter.integrations.weatherdiff import restore_image

        c = self.config
        scheduler = None if sampler == "ddim" else stock_scheduler(sampler, adapter)
        generator = torch.Generator().manual_seed(10_000 + seed)
        restored = [restore_image(adapter, y, patch_size=c.patch_size, stride=c.stride,
                                  num_inference_steps=self.default_steps if steps is None else steps, eta=0.0,
                                  generator=generator, progress=False, scheduler=scheduler,
                                  timestep_spacing=None if scheduler is not None else
                                  getattr(c, "timestep_spacing", None)).clamp(-1, 1)
                    for _, y in self.held_out]
        return self.scores(restored)

    def input_quality(self) -> dict:
        return self.scores(self.held_out_conditions())

    def scores(self, images: list[torch.Tensor]) -> dict:
        """Mean PSNR and SSIM on Y of ``images`` (one per held-out image, in [-1, 1]) against the clean ones."""
        from restoregrad_adapter.contrib.metrics import psnr_y, ssim_y

        pairs = [((image + 1) / 2, (x0 + 1) / 2) for image, (x0, _) in zip(images, self.held_out)]
        return {"psnr_y": statistics.fmean(float(psnr_y(p, t).mean()) for p, t in pairs),
                "ssim_y": statistics.fmean(float(ssim_y(p, t).mean()) for p, t in pairs)}
