"""Convergence: held-out quality against training steps for the modes of one adapter.

Standard DDPM (sigma = 1), PriorGrad (handcrafted energy prior), RestoreGrad without the Posterior
Net (paper eq. 11) and RestoreGrad (eq. 10), and on request a constant prior (``--modes ...
constant_prior --constant_prior_std S``), are trained under the same conditions (runner.py): the same
initial weights, batches, noise and timesteps, held-out data and sampling noise, Adam and step budget.
Every mode gets its *own best* learning rate from the same grid (``--learning_rates``), chosen by the
final held-out quality of the first seed; then every seed runs at that rate. The grid search is the
same for all modes, so no mode is tuned in RestoreGrad's favour.

Held-out quality is measured at step 0, every ``--eval_every`` steps and ``--early_evals`` times inside
the first interval, by restoring the held-out set (tasks.py): speech with CDiffuSE's 6-step fast sampler
(SI-SNR, plus wide-band PESQ when ``pesq`` is installed), images with WeatherDiff's overlapping-patch
DDIM sampler (PSNR and SSIM on Y). The degraded input is scored alike.

The headline (report.py): for each mode, the first evaluated step at which its mean quality (over
seeds) reaches standard DDPM's final mean quality, and the ratio (DDPM's step budget) / (that step),
i.e. how many times fewer steps the mode needs; "not reached" when it never does.

    python benchmarks/convergence.py --task speech                   # about 8 min on a 2-core CPU
    python benchmarks/convergence.py --task image                    # about 13 min
    python benchmarks/convergence.py --task speech --preset smoke    # seconds (what CI runs)
    python benchmarks/convergence.py --task speech --degradation nonstationary   # bursts, gaps, an SNR ramp
    python benchmarks/convergence.py --task image --degradation partial          # weather over part of each image
    python benchmarks/convergence.py --task speech --data_dir VoiceBank-DEMAND/ --steps 20000 ...

``--degradation`` picks the built-in data's degradation (tasks.py): speech ``stationary`` (default) or
``nonstationary`` noise, images ``full`` (default) or ``partial`` coverage.

``--data_dir``: speech, VoiceBank+DEMAND (``clean_trainset_28spk_wav/``, ``noisy_trainset_28spk_wav/``,
``clean_testset_wav/``, ``noisy_testset_wav/``); images, RainDrop-style ``input/`` and ``gt/`` folders,
either ``train/`` and ``test_a/`` (or ``test/``) under the folder, or one such folder whose last
``--num_eval`` pairs are held out. Writes ``convergence_<task>.json`` (raw per-seed curves, chosen
learning rates, headline, the preset's values) and ``convergence_<task>.png`` to ``--output_dir``.
"""

from __future__ import annotations

import json
import time

import options
import report
import runner
import tasks


def parse_args(argv=None):
    parser = options.run_parser(__doc__)
    parser.add_argument("--summarize_only", metavar="JSON", default=None,
                        help="recompute the summary, headline and plot of a finished run's JSON (no training)")
    parser.add_argument("--eval_every", type=int, help="training steps between held-out evaluations")
    parser.add_argument("--early_evals", type=int,
                        help="extra evaluations evenly spaced inside the first eval_every steps")
    parser.add_argument("--learning_rates", type=float, nargs="+", help="Adam grid shared by every mode")
    args = parser.parse_args(argv)
    return options.resolve_run(parser, args, exclude=("step_grid",))


def finish(results: dict, output_dir: str) -> dict:
    """Name the modes, summarise, write the JSON and plot, print the report."""
    results["labels"] = tasks.mode_labels(results["modes"], results["config"].get("constant_prior_std"))
    results["headline_metric"] = tasks.HEADLINE_METRIC[results["task"]]
    report.summarize_convergence(results)
    path = report.write(results, output_dir, f"convergence_{results['task']}", report.plot_convergence)
    report.print_convergence(results)
    print(f"wrote {path} and convergence_{results['task']}.png")
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.summarize_only:
        with open(args.summarize_only) as f:
            return finish(report.upgrade(json.load(f)), args.output_dir)
    plan = (f"{args.steps} steps, eval every {args.eval_every}, seeds {args.seeds}, learning rates "
            f"{args.learning_rates}, modes {args.modes}")
    task = runner.prepare(tasks.build_task, args, plan)
    key = tasks.HEADLINE_METRIC[args.task]
    start = time.perf_counter()

    seed0, later_seeds = args.seeds[0], args.seeds[1:]
    workers = min(args.workers, len(args.modes) * max(len(args.learning_rates), len(later_seeds)))
    with runner.open_pool(task, tasks.build_task, workers, args.threads) as pool:
        chosen, search = runner.choose_learning_rates(pool, args.modes, seed0, args.learning_rates, key)
        curves = {mode: [search[mode][repr(chosen[mode])]] for mode in args.modes}  # the first seed's run is reused
        jobs = [runner.Job(mode, seed, chosen[mode]) for seed in later_seeds for mode in args.modes]
        for job, run in zip(jobs, pool.map(runner.train_run, jobs)):
            curves[job.mode].append(run)

    results = {
        **runner.run_record(task, workers),
        "parameters": tasks.parameter_counts(task.build(seed0, "restoregrad")),
        "steps": curves["ddpm"][0]["steps"],
        "chosen_learning_rates": chosen,
        "learning_rate_search": {mode: {lr: {"final": run["metrics"][key][-1], "curve": run["metrics"][key]}
                                        for lr, run in runs.items()} for mode, runs in search.items()},
        "curves": {mode: {str(seed): run for seed, run in zip(args.seeds, curves[mode])} for mode in args.modes},
        "wall_seconds": time.perf_counter() - start,
    }
    finish(results, args.output_dir)
    print(f"({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
