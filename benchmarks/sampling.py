"""Sampling steps: held-out quality against the number of reverse steps S, for every mode.

The four modes of benchmarks/convergence.py (standard DDPM, PriorGrad, RestoreGrad without and with
the Posterior Net) are trained exactly as there: same denoiser initialisation, batches, noise,
optimizer and step budget, for each seed. Each trained adapter is then restored with every S:

- speech (CDiffuSE's fast sampler): S = 1..6 with the schedules of :func:`fast_inference_betas`:
  the published 6-step ``[1e-4, 1e-3, 0.01, 0.05, 0.2, 0.35]`` and 3-step ``[0.05, 0.2, 0.35]``
  schedules, the last S betas of the 6-step one for S = 4, 5, and for S = 1, 2 the 3-step one with
  its first steps merged (same final alpha_bar);
- images (WeatherDiff's overlapping-patch sampler): S = 2..25 with WeatherDiff's DDIM (eta 0) for
  every mode, and for RestoreGrad also diffusers' ``DDPMScheduler`` and ``DPMSolverMultistepScheduler``
  (DPM-Solver++ 2M) sampling the learned prior by whitening (DESIGN.md, "Whitening"). CDiffuSE's
  conditional forward process mixes y into x_t, so stock diffusers schedulers do not apply to speech.

The headline: standard DDPM's mean quality at the largest S is the target; for each mode (and
sampler), the fewest S whose mean quality reaches it, and the ratio (largest S) / (that S), i.e.
how many times fewer sampling steps it needs.

    python benchmarks/sampling.py --task speech            # about 15 min on a 2-core CPU
    python benchmarks/sampling.py --task image
    python benchmarks/sampling.py --task speech --smoke    # seconds (what CI runs)
    python benchmarks/sampling.py --task image --learning_rates_from outputs/benchmarks/convergence_image.json

Every option of benchmarks/convergence.py applies (model sizes, ``--data_dir``, ``--steps``, ``--seeds``,
``--workers``); the learning rate is one per mode: ``--learning_rate`` for all (default 1e-3), or each
mode's choice in a convergence JSON (``--learning_rates_from``). Writes ``sampling_<task>.json`` (raw
numbers per seed) and ``sampling_<task>.png`` to ``--output_dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convergence  # noqa: E402  (the tasks and the training loop are shared with the convergence benchmark)
from convergence import HEADLINE_METRIC, MODES, mode_label  # noqa: E402
from examples.training_common import save_figure, write_json  # noqa: E402

SPEECH_STEPS = (1, 2, 3, 4, 5, 6)
IMAGE_STEPS = (2, 3, 4, 5, 6, 8, 10, 15, 20, 25)
IMAGE_SCHEDULERS = ("ddim", "ddpm", "dpmsolver++")  # the last two for RestoreGrad only


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


def samplers_for(task_name: str, mode: str) -> tuple[str, ...]:
    if task_name == "speech":
        return ("cdiffuse",)
    return IMAGE_SCHEDULERS if mode == "restoregrad" else ("ddim",)


class SamplingSweep:
    """``finish`` callback of a training run: held-out quality of the trained adapter for every (sampler, S)."""

    def __init__(self, task, mode: str, seed: int, step_grid: list[int]):
        self.task, self.mode, self.seed, self.step_grid = task, mode, seed, step_grid

    def __call__(self, adapter) -> dict:
        out = {}
        for sampler in samplers_for(self.task.name, self.mode):
            out[sampler] = {}
            for s in self.step_grid:
                if sampler == "cdiffuse":
                    values = self.task.evaluate(adapter, self.seed, inference_betas=fast_inference_betas(s))
                elif sampler == "ddim":
                    values = self.task.evaluate(adapter, self.seed, num_inference_steps=s)
                else:
                    values = self.task.evaluate(adapter, self.seed, num_inference_steps=s,
                                                scheduler=stock_scheduler(sampler, adapter))
                out[sampler][str(s)] = values
                shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
                print(f"  {self.mode:25s} seed {self.seed} {sampler:12s} S = {s:2d}: {shown}", flush=True)
        return out


def train_and_sweep(task, job, args) -> dict:
    """One training run (as in the convergence benchmark), then the sampling sweep of its final model."""
    mode, seed, lr = job
    return convergence.train_curve(task, mode, seed, lr, args, finish=SamplingSweep(task, mode, seed, args.step_grid))


def fewest_steps(results: dict, key: str) -> dict:
    """Target: DDPM's mean at the largest S. For each (mode, sampler), the fewest S whose mean reaches it.

    The ratio (largest S) / (that S) is a sampling speed-up only if quality rises with S and levels off.
    Each entry also gives the S of the best mean; ``falls_with_steps`` is true when the mean at the
    largest S is below that best by more than the seeds' spread (the larger std of the two points), and
    ``target_is_saturated`` is false when that holds for DDPM itself: then the target is no plateau.
    """
    grid = results["step_grid"]
    reference = grid[-1]
    first_sampler = samplers_for(results["task"], "ddpm")[0]
    target = results["summary"]["ddpm"][first_sampler][key]["mean"][-1]
    out = {"metric": key, "target": target, "reference_steps": reference,
           "target_what": f"standard DDPM's mean {key} with {reference} steps ({first_sampler})", "modes": {}}
    for mode in MODES:
        out["modes"][mode] = {}
        for sampler, summary in results["summary"][mode].items():
            mean, std = summary[key]["mean"], summary[key]["std"]
            reached = next((s for s, v in zip(grid, mean) if math.isfinite(v) and v >= target), None)
            finite = [i for i, v in enumerate(mean) if math.isfinite(v)]
            best = max(finite, key=lambda i: mean[i]) if finite else len(grid) - 1
            out["modes"][mode][sampler] = {
                "steps_to_reach": reached, "reached": reached is not None,
                "fewer_steps": reference / reached if reached else None,
                "at_reference_mean": mean[-1], "at_reference_std": std[-1],
                "best_steps": grid[best], "best_mean": mean[best],
                "falls_with_steps": bool(mean[-1] < mean[best] - max(std[best], std[-1])),
            }
    out["target_is_saturated"] = not out["modes"]["ddpm"][first_sampler]["falls_with_steps"]
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_sampler = samplers_for(results["task"], "ddpm")[0]
    keys = list(results["summary"]["ddpm"][first_sampler].keys())
    grid = results["step_grid"]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for mode in MODES:
            for sampler, summary in results["summary"][mode].items():
                mean, low, high = (np.array(summary[key][k]) for k in ("mean", "min", "max"))
                label = mode_label(mode, results["config"])
                label += "" if sampler == first_sampler else f" via {sampler} (whitened)"
                style = "-" if sampler == first_sampler else "--"
                line, = ax.plot(grid, mean, style, marker="o", markersize=3, label=label)
                if len(results["seeds"]) > 1:
                    ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.15)
        if key in results["input_quality"]:
            ax.axhline(results["input_quality"][key], color="gray", linestyle=":", label="degraded input")
        if key == results["headline"]["metric"]:
            ax.axhline(results["headline"]["target"], color="black", linewidth=0.8, linestyle="--",
                       label=f"DDPM at S = {grid[-1]}")
        ax.set_xlabel("sampling steps S")
        ax.set_ylabel(f"held-out {key}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Sampling steps, {results['task']}, after {results['config']['steps']} training steps "
                 f"({convergence.seed_band(results['seeds'])})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--step_grid", type=int, nargs="+", default=None,
                        help="sampling steps S to evaluate (default speech 1..6, images 2 3 4 5 6 8 10 15 20 25)")
    parser.add_argument("--learning_rate", type=float, default=None, help="Adam lr of every mode (default 1e-3)")
    parser.add_argument("--learning_rates_from", default=None,
                        help="a convergence_<task>.json: each mode trains at its chosen learning rate there")
    parser.add_argument("-h", "--help", action="store_true")
    own, rest = parser.parse_known_args(argv)
    if own.help:
        print(__doc__)
        print("Options of this script:\n" + parser.format_help().split("\n", 1)[1])
        print("And those of benchmarks/convergence.py:")
        convergence.parse_args(["--help"])
    args = convergence.parse_args(rest)
    if args.smoke and own.step_grid is None:
        own.step_grid = [1, 2] if args.task == "speech" else [2, 3]
    grid = own.step_grid or list(SPEECH_STEPS if args.task == "speech" else IMAGE_STEPS)
    if sorted(set(grid)) != grid or grid[0] < 1:
        parser.error("--step_grid must be distinct positive integers in increasing order")
    if args.task == "speech" and grid[-1] > len(SPEECH_STEPS):
        parser.error(f"--step_grid: speech fast sampling has at most {len(SPEECH_STEPS)} steps")
    args.step_grid = grid
    if own.learning_rate is not None and own.learning_rates_from:
        parser.error("give --learning_rate or --learning_rates_from, not both")
    if own.learning_rates_from:
        with open(own.learning_rates_from) as f:
            chosen = json.load(f)
        if chosen.get("task") != args.task:
            parser.error(f"--learning_rates_from: {own.learning_rates_from} is a {chosen.get('task')!r} run, "
                         f"not {args.task!r}")
        args.mode_learning_rates = {mode: float(chosen["chosen_learning_rates"][mode]) for mode in MODES}
    else:
        lr = 1e-3 if own.learning_rate is None else own.learning_rate
        if not (lr > 0 and math.isfinite(lr)):
            parser.error("--learning_rate must be a positive number")
        args.mode_learning_rates = {mode: lr for mode in MODES}
    args.eval_every, args.early_evals = args.steps, 0  # only the final model is swept over S
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    task = convergence.build_task(args)
    key = HEADLINE_METRIC[args.task]
    print(f"{args.task}: {task.description}; {args.steps} training steps, seeds {args.seeds}, "
          f"learning rates {args.mode_learning_rates}, S in {args.step_grid}", flush=True)
    start = time.perf_counter()

    jobs = [(mode, seed, args.mode_learning_rates[mode]) for seed in args.seeds for mode in MODES]
    runs = {(mode, seed): run for (mode, seed, _), run
            in zip(jobs, convergence.run_jobs(task, jobs, args, run=train_and_sweep))}

    raw, summary = {}, {}
    for mode in MODES:
        raw[mode], summary[mode] = {}, {}
        for sampler in samplers_for(args.task, mode):
            per_seed = {str(seed): runs[(mode, seed)]["finish"][sampler] for seed in args.seeds}
            raw[mode][sampler] = per_seed
            metric_keys = list(per_seed[str(args.seeds[0])][str(args.step_grid[0])].keys())
            summary[mode][sampler] = {
                k: convergence.spread([[per_seed[str(seed)][str(s)][k] for s in args.step_grid] for seed in args.seeds])
                for k in metric_keys}
    results = {
        "task": args.task,
        "data": task.description,
        "config": {k: v for k, v in vars(args).items()},
        "machine": convergence.machine_info(args),
        "modes": list(MODES),
        "seeds": args.seeds,
        "step_grid": args.step_grid,
        "learning_rates": args.mode_learning_rates,
        "input_quality": task.input_quality(),
        "training": {mode: {str(seed): {k: runs[(mode, seed)][k]
                                        for k in ("steps", "metrics", "prior_std", "train_loss", "seconds")}
                            for seed in args.seeds} for mode in MODES},
        "raw": raw,
        "summary": summary,
    }
    results["headline"] = fewest_steps(results, key)
    results["wall_seconds"] = time.perf_counter() - start
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, f"sampling_{args.task}.json")
    write_json(results, path)
    plot(results, os.path.join(args.output_dir, f"sampling_{args.task}.png"))

    h = results["headline"]
    print(f"\nheld-out {key} of the degraded input: {results['input_quality'][key]:.3f}")
    print(f"target: {h['target_what']} = {h['target']:.3f}")
    for mode in MODES:
        for sampler, m in h["modes"][mode].items():
            reach = (f"reaches it with S = {m['steps_to_reach']} ({m['fewer_steps']:.2f}x fewer steps)"
                     if m["reached"] else "not reached")
            best = (f"; best {m['best_mean']:.3f} at S = {m['best_steps']}, quality falls with more steps"
                    if m["falls_with_steps"] else "")
            print(f"  {mode_label(mode, results['config']):30s} {sampler:12s} at S = {h['reference_steps']}: "
                  f"{m['at_reference_mean']:.3f} +- {m['at_reference_std']:.3f}; {reach}{best}")
    if not h["target_is_saturated"]:
        print("warning: standard DDPM's quality falls with more sampling steps, so its value at the largest S is no "
              "plateau and the ratios above are not sampling speed-ups; train longer (--steps) before comparing S.")
    print(f"wrote {path} and sampling_{args.task}.png ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
