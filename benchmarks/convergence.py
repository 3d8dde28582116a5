"""Convergence: held-out quality against training steps for the four modes of one adapter.

Standard DDPM (sigma = 1), PriorGrad (handcrafted energy prior), RestoreGrad without the Posterior
Net (paper eq. 11) and RestoreGrad (eq. 10) are trained under the same conditions:

- the same denoiser initialisation (built under the same seed, so the same weights in every mode),
  the same encoders' initialisation, the same training batches, diffusion noise and timesteps
  (separate generators seeded alike), the same held-out data and sampling noise;
- the same optimizer (Adam) and step budget; every mode gets its *own best* learning rate from the
  same grid (``--learning_rates``), chosen by the final held-out quality of seed 0, and then every
  seed runs at that rate. The grid search is the same for all modes, so no mode is tuned in
  RestoreGrad's favour.

Held-out quality is measured every ``--eval_every`` steps (and at step 0) by restoring the held-out
set: speech with CDiffuSE's 6-step fast sampler (SI-SNR, plus wide-band PESQ when ``pesq`` is
installed), images with WeatherDiff's overlapping-patch DDIM sampler (PSNR and SSIM on Y).

The headline: for each mode, the first evaluated step at which its mean quality (over seeds) reaches
the standard DDPM's final mean quality, and the ratio (DDPM's step budget) / (that step), i.e. how
many times fewer steps the mode needs; "not reached" when it never does.

    python benchmarks/convergence.py --task speech            # about 7 min on a 2-core CPU
    python benchmarks/convergence.py --task image             # about 15 min
    python benchmarks/convergence.py --task speech --smoke    # seconds (what CI runs)
    python benchmarks/convergence.py --task speech --data_dir VoiceBank-DEMAND/ --steps 20000 ...

``--data_dir``: speech, VoiceBank+DEMAND (``clean_trainset_28spk_wav/``, ``noisy_trainset_28spk_wav/``,
``clean_testset_wav/``, ``noisy_testset_wav/``); images, RainDrop-style ``input/`` and ``gt/`` folders,
either ``train/`` and ``test_a/`` (or ``test/``) under the folder, or one such folder whose last
``--num_eval`` pairs are held out. Writes ``convergence_<task>.json`` (raw per-seed curves, chosen
learning rates, headline) and ``convergence_<task>.png`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from examples.training_common import save_figure, write_json  # noqa: E402

MODES = ("ddpm", "priorgrad", "restoregrad_no_posterior", "restoregrad")
LABELS = {"ddpm": "standard DDPM", "priorgrad": "PriorGrad",
          "restoregrad_no_posterior": "RestoreGrad, no Posterior Net", "restoregrad": "RestoreGrad"}
HEADLINE_METRIC = {"speech": "si_snr", "image": "psnr_y"}


def mode_label(mode: str, config: dict) -> str:
    """The mode's name in tables and plots; the fixed-prior slot names the prior it ran with."""
    fixed = config.get("fixed_prior", "energy")
    if mode == "priorgrad" and fixed != "energy":
        return f"constant prior (sigma {float(fixed):g})"
    return LABELS[mode]


def constant_prior(y: torch.Tensor, value: float) -> torch.Tensor:
    """A fixed prior with the same standard deviation ``value`` everywhere (an ablation of PriorGrad's)."""
    return torch.full(y.shape, value, dtype=torch.float32, device=y.device)


def handcrafted_prior(args):
    """The fixed prior of mode "priorgrad": PriorGrad's energy prior (None: the adapter's default), or a constant."""
    return None if args.fixed_prior == "energy" else functools.partial(constant_prior, value=float(args.fixed_prior))


# ---------------------------------------------------------------------- speech
class SpeechTask:
    """CDiffuSE (DiffWave) with the adapter; batches of random crops; SI-SNR (and PESQ) on held-out utterances."""

    name = "speech"

    def __init__(self, args):
        self.args = args
        train, held_out, self.description = self._load(args)
        hop = 256
        self.crop = hop * args.crop_frames
        # training utterances at least one crop long (zero-padded when shorter)
        self.train = [self._pad(noisy, clean, self.crop) for noisy, clean in train]
        length = hop * max(3, min(len(c) for _, c in held_out) // hop)  # one length for every held-out utterance
        length = min(length, hop * args.eval_frames)
        self.eval_noisy = torch.stack([torch.from_numpy(n[:length]) for n, _ in held_out])[:, None]
        self.eval_clean = torch.stack([torch.from_numpy(c[:length]) for _, c in held_out])[:, None]

    @staticmethod
    def _pad(noisy, clean, length):
        if len(clean) < length:
            noisy, clean = (np.pad(a, (0, length - len(a))) for a in (noisy, clean))
        return torch.from_numpy(noisy), torch.from_numpy(clean)

    @staticmethod
    def _load(args):
        from examples.train_speech import normalize_level, paired_files, read_wav

        if args.data_dir:
            root = Path(args.data_dir)
            train = paired_files(root / "clean_trainset_28spk_wav", root / "noisy_trainset_28spk_wav")[: args.num_train]
            test = paired_files(root / "clean_testset_wav", root / "noisy_testset_wav")[: args.num_eval]

            def load(pairs):
                out = []
                for noisy_path, clean_path in pairs:
                    noisy, clean = read_wav(noisy_path), read_wav(clean_path)
                    n = min(len(noisy), len(clean))
                    out.append(normalize_level(noisy[:n], clean[:n]))
                return out

            return load(train), load(test), f"VoiceBank+DEMAND ({args.data_dir}): {len(train)} train, {len(test)} test"
        from restoregrad_adapter.data.speech import builtin_speech_pairs

        train = builtin_speech_pairs("train", args.num_train, args.seconds, seed=0)
        held = builtin_speech_pairs("validation", args.num_eval, args.seconds, seed=0)
        return ([normalize_level(n, c) for n, c in train], [normalize_level(n, c) for n, c in held],
                f"built-in synthetic speech: {len(train)} train, {len(held)} held-out utterances of {args.seconds} s")

    def build(self, seed: int):
        from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad
        from restoregrad_adapter.reference_nets import DiffWaveDenoiser

        torch.manual_seed(seed)  # the denoiser first: its weights depend on the seed only, never on the mode
        model = DiffWaveDenoiser(residual_channels=self.args.residual_channels,
                                 residual_layers=self.args.residual_layers,
                                 dilation_cycle_length=min(10, self.args.residual_layers),
                                 embedding_dim=self.args.embedding_dim)
        a = self.args
        return CDiffuSERestoreGrad.from_model(model, size=a.encoder_size, latent_weight=a.latent_weight, prior_matching_weight=a.lam, sigma_min=a.sigma_min,
                                              handcrafted_prior=handcrafted_prior(a))

    def batch(self, generator: torch.Generator):
        picks = torch.randint(0, len(self.train), (self.args.batch_size,), generator=generator).tolist()
        noisy, clean = [], []
        for i in picks:
            n, c = self.train[i]
            start = int(torch.randint(0, len(c) - self.crop + 1, (1,), generator=generator))
            noisy.append(n[start:start + self.crop])
            clean.append(c[start:start + self.crop])
        return torch.stack(clean)[:, None], torch.stack(noisy)[:, None]

    @torch.no_grad()
    def evaluate(self, adapter, seed: int, inference_betas=None) -> dict:
        """Held-out quality with CDiffuSE's fast sampler (``inference_betas``, default the 6-step schedule)."""
        from restoregrad_adapter.metrics import pesq_wb, si_snr
        from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_6

        generator = torch.Generator().manual_seed(10_000 + seed)
        betas = FAST_INFERENCE_BETAS_6 if inference_betas is None else inference_betas
        enhanced = adapter.restore(self.eval_noisy, inference_betas=betas, generator=generator).float()
        result = {"si_snr": float(si_snr(enhanced[:, 0], self.eval_clean[:, 0]).mean())}
        if self.args.pesq:
            try:
                result["pesq"] = float(pesq_wb(enhanced[:, 0].clamp(-1, 1), self.eval_clean[:, 0]).mean())
            except ImportError:
                self.args.pesq = False
            except Exception as error:  # pesq.PesqError on silent or very short signals: recorded, not fatal
                result["pesq"] = float("nan")
                print(f"  pesq failed: {error}", flush=True)
        return result

    @torch.no_grad()
    def prior_std_stats(self, adapter) -> dict:
        """Mean, min and max of the sampling prior's std over the held-out conditions (1 for DDPM)."""
        return _std_stats([adapter.prior_std(self.eval_noisy)])

    def input_quality(self) -> dict:
        from restoregrad_adapter.metrics import si_snr

        return {"si_snr": float(si_snr(self.eval_noisy[:, 0], self.eval_clean[:, 0]).mean())}


def _std_stats(maps: list[torch.Tensor]) -> dict:
    values = torch.cat([m.detach().float().flatten() for m in maps])
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


# ---------------------------------------------------------------------- images
class ImageTask:
    """WeatherDiff (UNet on patches) with the adapter; PSNR/SSIM on Y of whole held-out images."""

    name = "image"

    def __init__(self, args):
        from examples.train_weather import to_tensor

        self.args = args
        train, held_out, self.description = self._load(args)
        p = args.patch_size
        self.train = [(to_tensor(d), to_tensor(c)) for d, c in train if min(d.shape[:2]) >= p]
        if not self.train:
            raise SystemExit(f"error: no training image is at least {p} x {p}")
        self.held_out = [(to_tensor(d)[None], to_tensor(c)[None]) for d, c in held_out]

    @staticmethod
    def _load(args):
        from examples.train_weather import downscale, load_image, pairs_from_input_gt

        size = args.image_size
        if args.data_dir:
            root = Path(args.data_dir)
            test_dir = next((root / n for n in ("test_a", "test") if (root / n / "input").is_dir()), None)
            if (root / "train" / "input").is_dir() and test_dir is not None:
                train, test = pairs_from_input_gt(root / "train")[: args.num_train], pairs_from_input_gt(test_dir)
            elif (root / "input").is_dir():
                pairs = pairs_from_input_gt(root)
                if len(pairs) <= args.num_eval:
                    raise SystemExit(f"error: {root} has {len(pairs)} pairs; need more than --num_eval {args.num_eval}")
                train, test = pairs[: -args.num_eval][: args.num_train], pairs[-args.num_eval:]
            else:
                raise SystemExit(f"error: {root} has neither input/ and gt/ nor train/ and test_a/ (or test/) "
                                 "holding them")
            test = test[: args.num_eval]

            def load(pairs):
                return [(downscale(load_image(d), size), downscale(load_image(c), size)) for d, c in pairs]

            return load(train), load(test), f"RainDrop-style ({args.data_dir}): {len(train)} train, {len(test)} test"
        from restoregrad_adapter.data.weather import builtin_weather_pairs

        train = [(d, c) for d, c, _, _ in builtin_weather_pairs("train", size=size, variants=args.variants)]
        # two degraded versions of each of the 9 held-out photos and 3 kinds: 18 images by default
        held = [(d, c) for d, c, _, _ in builtin_weather_pairs("validation", size=size, variants=2)][: args.num_eval]
        return train, held, (f"built-in weather photos (rain, snow, raindrop) at {size} px: {len(train)} train, "
                             f"{len(held)} held-out images")

    def build(self, seed: int):
        from restoregrad_adapter import LearnedPriorScheduler, PosteriorNet, PriorNet, RestoreGrad, RestoreGradLoss
        from restoregrad_adapter.integrations.weatherdiff import wrap
        from restoregrad_adapter.reference_nets import WeatherUNet

        a = self.args
        torch.manual_seed(seed)  # the denoiser first: its weights depend on the seed only, never on the mode
        unet = WeatherUNet(in_channels=6, out_channels=3, ch=a.unet_ch, ch_mult=tuple(a.unet_ch_mult),
                           num_res_blocks=a.unet_blocks, attn_resolutions=(), image_size=a.patch_size)
        prior = PriorNet(dims=2, in_channels=3, size=a.encoder_size, sigma_min=a.sigma_min)
        posterior = PosteriorNet(dims=2, in_channels=3, size=a.encoder_size, sigma_min=a.sigma_min)
        scheduler = LearnedPriorScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02)
        return RestoreGrad(wrap(unet, patch_size=a.patch_size), prior, posterior, scheduler=scheduler,
                           loss=RestoreGradLoss(latent_weight=a.latent_weight, prior_matching_weight=a.lam), handcrafted_prior=handcrafted_prior(a))

    def batch(self, generator: torch.Generator):
        p = self.args.patch_size
        picks = torch.randint(0, len(self.train), (self.args.batch_size,), generator=generator).tolist()
        degraded, clean = [], []
        for i in picks:
            d, c = self.train[i]
            top = int(torch.randint(0, d.shape[1] - p + 1, (1,), generator=generator))
            left = int(torch.randint(0, d.shape[2] - p + 1, (1,), generator=generator))
            degraded.append(d[:, top:top + p, left:left + p])
            clean.append(c[:, top:top + p, left:left + p])
        return torch.stack(clean), torch.stack(degraded)

    @torch.no_grad()
    def evaluate(self, adapter, seed: int, num_inference_steps: int | None = None, scheduler=None) -> dict:
        """Held-out quality with WeatherDiff's patch sampler: its DDIM (eta 0), or ``scheduler`` whitened."""
        from restoregrad_adapter.integrations.weatherdiff import restore_image
        from restoregrad_adapter.metrics import psnr_y, ssim_y

        a = self.args
        generator = torch.Generator().manual_seed(10_000 + seed)
        steps = a.sampling_steps if num_inference_steps is None else num_inference_steps
        psnrs, ssims = [], []
        for y, x0 in self.held_out:
            out = restore_image(adapter, y, patch_size=a.patch_size, stride=a.stride,
                                num_inference_steps=steps, eta=0.0, generator=generator,
                                progress=False, scheduler=scheduler).clamp(-1, 1)
            pred, target = (out + 1) / 2, (x0 + 1) / 2
            psnrs.append(float(psnr_y(pred, target).mean()))
            ssims.append(float(ssim_y(pred, target).mean()))
        return {"psnr_y": statistics.fmean(psnrs), "ssim_y": statistics.fmean(ssims)}

    @torch.no_grad()
    def prior_std_stats(self, adapter) -> dict:
        """Mean, min and max of the sampling prior's std over the held-out images' pixels (1 for DDPM)."""
        return _std_stats([adapter.prior_std(y) for y, _ in self.held_out])

    def input_quality(self) -> dict:
        from restoregrad_adapter.metrics import psnr_y, ssim_y

        pairs = [((y + 1) / 2, (x0 + 1) / 2) for y, x0 in self.held_out]
        return {"psnr_y": statistics.fmean(float(psnr_y(p, t).mean()) for p, t in pairs),
                "ssim_y": statistics.fmean(float(ssim_y(p, t).mean()) for p, t in pairs)}


# ---------------------------------------------------------------------- training
def evaluation_steps(args) -> set[int]:
    """Every ``eval_every`` steps and the last; plus ``early_evals`` evenly spaced inside the first interval,
    so that a mode reaching the target early is resolved (the speed-up measurable goes up that many times)."""
    first = min(args.eval_every, args.steps)
    early = {round(first * k / (args.early_evals + 1)) for k in range(1, args.early_evals + 1)}
    return ({s for s in early if s > 0} | set(range(args.eval_every, args.steps + 1, args.eval_every))
            | {args.steps})


def train_curve(task, mode: str, seed: int, lr: float, args, finish=None) -> dict:
    """Train one (mode, seed, lr) run; the held-out metrics at step 0 and every eval_every steps.

    ``finish(adapter)``, when given, runs on the trained adapter and its result is returned under
    ``"finish"`` (the sampling benchmark evaluates its samplers there).
    """
    adapter = task.build(seed)
    adapter.mode = mode
    optimizer = torch.optim.Adam(adapter.parameters(), lr=lr)  # unused encoders get no gradient: Adam skips them
    data_gen = torch.Generator().manual_seed(seed)  # batches: the same in every mode
    noise_gen = torch.Generator().manual_seed(1_000 + seed)  # z and t: the same in every mode
    steps, metrics, losses, prior_std = [], {}, [], []
    eval_steps = evaluation_steps(args)
    start = time.perf_counter()

    def record(step):
        adapter.eval()
        values = task.evaluate(adapter, seed)
        # Where the prior stands: a learned sigma that stays near 1 makes RestoreGrad a standard DDPM.
        sigma = task.prior_std_stats(adapter)
        adapter.train()
        steps.append(step)
        for key, value in values.items():
            metrics.setdefault(key, []).append(value)
        prior_std.append(sigma)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
        print(f"  {mode:25s} seed {seed} lr {lr:g} step {step:6d}: {shown}, prior sigma {sigma['mean']:.3f} "
              f"[{sigma['min']:.3f}, {sigma['max']:.3f}]  ({time.perf_counter() - start:.0f} s)", flush=True)

    record(0)
    adapter.train()
    running = []
    for step in range(1, args.steps + 1):
        x0, y = task.batch(data_gen)
        loss = adapter.training_loss(x0, y, generator=noise_gen).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), args.grad_clip)
        optimizer.step()
        running.append(float(loss.detach()))
        if step in eval_steps:
            losses.append(statistics.fmean(running))
            running = []
            record(step)
    result = {"steps": steps, "metrics": metrics, "prior_std": prior_std, "train_loss": losses,
              "seconds": time.perf_counter() - start}
    if finish is not None:
        adapter.eval()
        result["finish"] = finish(adapter)
    return result


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


# ---------------------------------------------------------------------- parallel runs
# Runs are independent, so ``--workers`` processes (each with its share of the threads) train them
# side by side; a run's result depends only on (mode, seed, lr), not on which process ran it.
_WORKER_TASK = None


def build_task(args):
    return SpeechTask(args) if args.task == "speech" else ImageTask(args)


def _init_worker(args, threads: int) -> None:
    global _WORKER_TASK
    torch.set_num_threads(threads)
    _WORKER_TASK = build_task(args)


def train_job(task, job: tuple, args) -> dict:
    mode, seed, lr = job
    return train_curve(task, mode, seed, lr, args)


def _run_in_worker(run, job: tuple, args) -> dict:
    return run(_WORKER_TASK, job, args)


def run_jobs(task, jobs: list[tuple], args, run=train_job) -> list[dict]:
    """``run(task, job, args)`` for every (mode, seed, lr) of ``jobs``; results in the same order.

    ``run`` must be a module-level function (workers receive it by reference).
    """
    workers = min(args.workers, len(jobs))
    if workers <= 1:
        return [run(task, job, args) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (args.threads or torch.get_num_threads()) // workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(args, threads)) as pool:
        futures = [pool.submit(_run_in_worker, run, job, args) for job in jobs]
        return [future.result() for future in futures]


def machine_info(args) -> dict:
    return {"device": f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})",
            "cpus": os.cpu_count(), "workers": args.workers, "torch": torch.__version__, "smoke": args.smoke}


def choose_learning_rates(task, args, key: str) -> tuple[dict, dict]:
    """Seed 0 of every (mode, lr); each mode's best lr by final held-out quality (same rule for all modes)."""
    seed0 = args.seeds[0]
    jobs = [(mode, seed0, lr) for mode in MODES for lr in args.learning_rates]
    search, chosen = {mode: {} for mode in MODES}, {}
    for (mode, _, lr), run in zip(jobs, run_jobs(task, jobs, args)):
        search[mode][repr(lr)] = run
    for mode in MODES:
        finals = {lr: search[mode][repr(lr)]["metrics"][key][-1] for lr in args.learning_rates}
        scored = {lr: v for lr, v in finals.items() if finite(v)}
        chosen[mode] = max(scored, key=scored.get) if scored else args.learning_rates[0]
        print(f"{mode}: final {key} by lr {finals}; chosen lr {chosen[mode]:g}", flush=True)
    return chosen, search


def spread(values) -> dict:
    """Mean, std, min and max over seeds (axis 0) of a (seeds, points) table."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "min": values.min(0).tolist(),
            "max": values.max(0).tolist()}


def summarize(curves: list[dict], key: str) -> dict:
    return spread([c["metrics"][key] for c in curves])  # (seeds, evals)


def seed_band(seeds: list[int]) -> str:
    """What a plot's shaded band shows."""
    return f"mean and min-max over seeds {seeds}" if len(seeds) > 1 else f"seed {seeds}"


def first_reach(steps: list[int], curve: list[float], target: float):
    return next((s for s, v in zip(steps, curve) if math.isfinite(v) and v >= target), None)


def headline(summary: dict, steps: list[int], key: str, curves: dict | None = None) -> dict:
    """First step at which each mode's mean reaches DDPM's final mean; speed-up = DDPM's budget / that step.

    With ``curves`` (mode -> seed -> run), also each seed's own first step and speed-up, for the spread.
    Speed-ups are bounded by the evaluation grid: at most (budget / first evaluated step).
    """
    target = summary["ddpm"][key]["mean"][-1]
    budget = steps[-1]
    out = {"metric": key, "target": target, "target_what": f"standard DDPM's final mean {key} at step {budget}",
           "largest_measurable_speedup": budget / steps[1] if len(steps) > 1 else None, "modes": {}}
    first = {}
    for mode in MODES:
        first[mode] = first_reach(steps, summary[mode][key]["mean"], target)
    for mode in MODES:
        reached = first[mode]
        out["modes"][mode] = {
            "final_mean": summary[mode][key]["mean"][-1], "final_std": summary[mode][key]["std"][-1],
            "steps_to_reach_ddpm_final": reached,
            "reached": reached is not None,
            # DDPM's budget / this mode's first step there (None when not reached, or reached at step 0)
            "speedup_vs_ddpm": (budget / reached) if reached else None,
            # the same against the first step at which DDPM's own mean curve gets there (<= the budget)
            "speedup_vs_ddpm_first_reach": (first["ddpm"] / reached) if reached and first["ddpm"] else None,
        }
        if curves is not None:
            per_seed = {seed: first_reach(steps, run["metrics"][key], target) for seed, run in curves[mode].items()}
            speedups = [budget / s for s in per_seed.values() if s]  # None: not reached; 0: before training
            out["modes"][mode]["per_seed_steps_to_reach"] = per_seed
            out["modes"][mode]["per_seed_speedup"] = {seed: (budget / s if s else None) for seed, s in per_seed.items()}
            out["modes"][mode]["seeds_reaching"] = sum(s is not None for s in per_seed.values())
            out["modes"][mode]["speedup_min_median_max"] = (
                [min(speedups), statistics.median(speedups), max(speedups)] if speedups else None)
    return out


# ---------------------------------------------------------------------- output
def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results["summary"]["ddpm"].keys())
    sigma = results.get("prior_std_summary")
    panels = len(keys) + (sigma is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    steps = results["steps"]
    for ax, key in zip(axes[0], keys):
        for mode in MODES:
            s = results["summary"][mode][key]
            mean, low, high = (np.array(s[k]) for k in ("mean", "min", "max"))
            line, = ax.plot(steps, mean, marker="o", markersize=3,
                            label=f"{mode_label(mode, results['config'])} (lr {results['chosen_learning_rates'][mode]:g})")
            if len(results["seeds"]) > 1:
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        if key in results["input_quality"]:
            ax.axhline(results["input_quality"][key], color="gray", linestyle=":", label="degraded input")
        if key == results["headline"]["metric"]:
            ax.axhline(results["headline"]["target"], color="black", linewidth=0.8, linestyle="--",
                       label="DDPM final mean")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"held-out {key}")
        ax.grid(alpha=0.3)
    if sigma is not None:
        ax = axes[0][-1]
        for mode in MODES:
            ax.plot(steps, sigma[mode]["mean"], marker="o", markersize=3, label=mode_label(mode, results["config"]))
        ax.axhline(1.0, color="gray", linestyle=":")
        ax.set_xlabel("training step")
        ax.set_ylabel("prior sigma, mean over held-out elements")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Convergence, {results['task']} ({seed_band(results['seeds'])})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("speech", "image"), required=True)
    parser.add_argument("--summarize_only", metavar="JSON", default=None,
                        help="recompute the summary, headline and plot of a finished run's JSON (no training)")
    parser.add_argument("--smoke", action="store_true", help="tiny nets, a few steps, 1 seed, 1 lr (seconds)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default speech 150, image 2000; smoke 4)")
    parser.add_argument("--eval_every", type=int, default=None, help="(default speech 25, image 250; smoke 2)")
    parser.add_argument("--early_evals", type=int, default=None,
                        help="extra evaluations evenly spaced inside the first eval_every steps (default 4; smoke 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="(default 0 1 2; smoke 0)")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=None,
                        help="Adam grid shared by every mode (default 3e-4 1e-3 3e-3; smoke 1e-3)")
    parser.add_argument("--batch_size", type=int, default=None, help="(default speech 4 crops, image 16 patches)")
    parser.add_argument("--grad_clip", type=float, default=1.0, help="global gradient-norm clip, 0 for none")
    parser.add_argument("--encoder_size", choices=("tiny", "base", "large"), default="tiny")
    parser.add_argument("--eta", type=float, default=None,
                        help="weight of the LR term (default: the paper's speech 0.1; images 0.01, as train_weather)")
    parser.add_argument("--lam", type=float, default=None,
                        help="weight of the PM term (default: the paper's speech 0.5; images 1.0, as train_weather)")
    parser.add_argument("--sigma_min", type=float, default=0.1, help="floor of the learned std (paper: 0.1)")
    parser.add_argument("--fixed_prior", default="energy",
                        help="the fixed prior of mode 'priorgrad': 'energy' (PriorGrad's, the default) or a number, "
                             "a constant std everywhere (an ablation: is it the learned map or its scale that helps?)")
    parser.add_argument("--data_dir", default=None, help="VoiceBank+DEMAND (speech) or RainDrop-style (image) folder")
    parser.add_argument("--num_train", type=int, default=None, help="training utterances / images (default 32 / all)")
    parser.add_argument("--num_eval", type=int, default=None, help="held-out utterances / images (default 4 / 18)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in all (default: torch's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs trained side by side in separate processes, sharing the threads "
                             "(default: the number of CPUs, at most 4; smoke 1)")
    parser.add_argument("--output_dir", default="outputs/benchmarks")
    g = parser.add_argument_group("speech")
    g.add_argument("--residual_channels", type=int, default=None, help="DiffWave channels (default 16; smoke 8)")
    g.add_argument("--residual_layers", type=int, default=None, help="DiffWave layers (default 6; smoke 2)")
    g.add_argument("--embedding_dim", type=int, default=None, help="(default 64; smoke 32)")
    g.add_argument("--crop_frames", type=int, default=None, help="training crop in 256-sample frames (default 8)")
    g.add_argument("--eval_frames", type=int, default=None, help="held-out length cap in frames (default 32, ~0.5 s)")
    g.add_argument("--seconds", type=float, default=None, help="built-in utterance length (default 1.0)")
    g.add_argument("--no_pesq", dest="pesq", action="store_false", help="skip PESQ even when installed")
    g = parser.add_argument_group("image")
    g.add_argument("--patch_size", type=int, default=None, help="(default 16)")
    g.add_argument("--stride", type=int, default=None, help="restoration patch stride (default 8)")
    g.add_argument("--sampling_steps", type=int, default=None, help="DDIM steps of restoration (default 10)")
    g.add_argument("--image_size", type=int, default=None, help="longest side of the images (default 32; smoke 24)")
    g.add_argument("--variants", type=int, default=None, help="built-in degraded versions per photo (default 2)")
    g.add_argument("--unet_ch", type=int, default=None, help="(default 16; smoke 8)")
    g.add_argument("--unet_ch_mult", type=int, nargs="+", default=None, help="(default 1 2)")
    g.add_argument("--unet_blocks", type=int, default=1)
    args = parser.parse_args(argv)

    speech, smoke = args.task == "speech", args.smoke
    defaults = dict(
        early_evals=0 if smoke else 4,
        steps=4 if smoke else (150 if speech else 2000), eval_every=2 if smoke else (25 if speech else 250), seeds=[0] if smoke else [0, 1, 2],
        learning_rates=[1e-3] if smoke else [3e-4, 1e-3, 3e-3],
        batch_size=(2 if smoke else 4) if speech else (2 if smoke else 16),
        num_train=(2 if smoke else 32) if speech else (10 ** 9),
        num_eval=(1 if smoke else 4) if speech else (1 if smoke else 18),
        residual_channels=8 if smoke else 16, residual_layers=2 if smoke else 6, embedding_dim=32 if smoke else 64,
        crop_frames=4 if smoke else 8, eval_frames=4 if smoke else 32, seconds=0.25 if smoke else 1.0,
        patch_size=16, stride=8, sampling_steps=2 if smoke else 10,
        eta=0.1 if speech else 0.01, lam=0.5 if speech else 1.0,
        image_size=24 if smoke else 32, variants=1 if smoke else 2, unet_ch=8 if smoke else 16, unet_ch_mult=[1, 2],
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if smoke:
        args.pesq = False  # PESQ needs speech-like signals of some length; the smoke test checks the pipeline
    elif speech and args.pesq:
        import importlib.util

        args.pesq = importlib.util.find_spec("pesq") is not None  # settled here, before runs go to workers
    if args.early_evals < 0:
        parser.error("--early_evals must be >= 0")
    if args.workers is None:
        args.workers = 1 if smoke else max(1, min(4, os.cpu_count() or 1))
    for name in ("workers", "steps", "eval_every", "batch_size", "num_train", "num_eval", "crop_frames", "eval_frames",
                 "patch_size", "stride", "sampling_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    if args.fixed_prior != "energy":
        try:
            constant = float(args.fixed_prior)
        except ValueError:
            constant = float("nan")
        if not (constant > 0 and math.isfinite(constant)):
            parser.error(f"--fixed_prior must be 'energy' or a positive number, got {args.fixed_prior!r}")
    for name in ("eta", "lam", "sigma_min"):
        value = getattr(args, name)
        if not (value >= 0 and math.isfinite(value)):
            parser.error(f"--{name} must be a finite number >= 0")
    if speech and args.crop_frames < 3:
        parser.error("--crop_frames must be at least 3 (the conditioner's STFT needs more than 512 samples)")
    if any(not (lr > 0 and math.isfinite(lr)) for lr in args.learning_rates):
        parser.error("--learning_rates must be positive numbers")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct")
    return args


def summarize_results(results: dict) -> dict:
    """(Re)compute the summary over seeds and the headline from the raw per-seed curves."""
    key = HEADLINE_METRIC[results["task"]]
    curves = {mode: [results["curves"][mode][str(seed)] for seed in results["seeds"]] for mode in MODES}
    metric_keys = list(curves["ddpm"][0]["metrics"].keys())
    results["summary"] = {mode: {k: summarize(curves[mode], k) for k in metric_keys} for mode in MODES}
    results.pop("prior_std_summary", None)
    if all("prior_std" in c for runs in curves.values() for c in runs):  # absent in runs saved before it was recorded
        results["prior_std_summary"] = {
            mode: spread([[s["mean"] for s in c["prior_std"]] for c in curves[mode]]) for mode in MODES}
    results["headline"] = headline(results["summary"], results["steps"], key, curves=results["curves"])
    return results


def write_results(results: dict, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, f"convergence_{results['task']}.json")
    write_json(results, path)
    plot(results, os.path.join(output_dir, f"convergence_{results['task']}.png"))
    return path


def report(results: dict) -> None:
    key = HEADLINE_METRIC[results["task"]]
    h = results["headline"]
    print(f"\nheld-out {key} of the degraded input: {results['input_quality'][key]:.3f}")
    print(f"target: {h['target_what']} = {h['target']:.3f}")
    for mode in MODES:
        m = h["modes"][mode]
        if not m["reached"]:
            reach = "not reached"
        elif m["speedup_vs_ddpm"] is None:
            reach = "reached at step 0 (before training)"
        else:
            reach = f"reaches it at step {m['steps_to_reach_ddpm_final']} ({m['speedup_vs_ddpm']:.2f}x fewer steps)"
        spread = m.get("speedup_min_median_max")
        seeds = (f"; per seed {m['seeds_reaching']}/{len(results['seeds'])} reach it"
                 + (f", {spread[0]:.2f}x-{spread[2]:.2f}x (median {spread[1]:.2f}x)" if spread else ""))
        print(f"  {mode_label(mode, results['config']):30s} lr {results['chosen_learning_rates'][mode]:<8g} final {m['final_mean']:.3f} "
              f"+- {m['final_std']:.3f}  {reach}{seeds}")
    if h.get("largest_measurable_speedup"):
        print(f"(with evaluations every {results['steps'][1]} steps, no speed-up above "
              f"{h['largest_measurable_speedup']:.2f}x can be measured)")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.summarize_only:
        with open(args.summarize_only) as f:
            results = summarize_results(json.load(f))
        path = write_results(results, args.output_dir)
        report(results)
        print(f"wrote {path} and convergence_{results['task']}.png")
        return results
    if args.threads:
        torch.set_num_threads(args.threads)
    task = build_task(args)
    key = HEADLINE_METRIC[args.task]
    print(f"{args.task}: {task.description}; {args.steps} steps, eval every {args.eval_every}, seeds {args.seeds}, "
          f"learning rates {args.learning_rates}", flush=True)
    start = time.perf_counter()

    chosen, search = choose_learning_rates(task, args, key)
    curves = {mode: [search[mode][repr(chosen[mode])]] for mode in MODES}  # seed 0 at its chosen lr is reused
    jobs = [(mode, seed, chosen[mode]) for seed in args.seeds[1:] for mode in MODES]
    for (mode, _, _), run in zip(jobs, run_jobs(task, jobs, args)):
        curves[mode].append(run)

    adapter = task.build(args.seeds[0])
    results = {
        "task": args.task,
        "data": task.description,
        "config": {k: v for k, v in vars(args).items()},
        "machine": machine_info(args),
        "parameters": {"denoiser": sum(p.numel() for p in adapter.denoiser.parameters()),
                       "encoders": sum(p.numel() for n in (adapter.prior_net, adapter.posterior_net)
                                       for p in n.parameters())},
        "modes": list(MODES),
        "seeds": args.seeds,
        "steps": curves["ddpm"][0]["steps"],
        "input_quality": task.input_quality(),
        "chosen_learning_rates": chosen,
        "learning_rate_search": {mode: {lr: {"final": run["metrics"][key][-1], "curve": run["metrics"][key]}
                                        for lr, run in runs.items()} for mode, runs in search.items()},
        "curves": {mode: {str(seed): run for seed, run in zip(args.seeds, curves[mode])} for mode in MODES},
    }
    summarize_results(results)
    results["wall_seconds"] = time.perf_counter() - start
    path = write_results(results, args.output_dir)
    report(results)
    print(f"wrote {path} and convergence_{args.task}.png ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
