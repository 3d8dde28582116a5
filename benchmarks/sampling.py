"""Sampling steps: held-out quality against the number of reverse steps S, for every mode.

The modes are trained exactly as in convergence.py (runner.py: same initial weights, batches, noise,
optimizer and step budget, for each seed). Each trained adapter then restores the held-out set with
every S of ``--step_grid`` (tasks.py):

- speech (``CDiffuSERestoreGrad.restore``): S = 1..6 with CDiffuSE's fast schedules: the published
  6-step ``[1e-4, 1e-3, 0.01, 0.05, 0.2, 0.35]`` and 3-step ``[0.05, 0.2, 0.35]`` schedules, the last S
  betas of the 6-step one for S = 4, 5, and for S = 1, 2 the 3-step one with its first steps merged
  (same final alpha_bar);
- images (``integrations.weatherdiff.restore_image``): S = 2..25 with WeatherDiff's DDIM (eta 0) for
  every mode, and for RestoreGrad also diffusers' ``DDPMScheduler`` and ``DPMSolverMultistepScheduler``
  (DPM-Solver++ 2M) sampling the learned prior by whitening (docs/design.md). CDiffuSE's conditional
  forward process mixes y into x_t, so stock diffusers schedulers do not apply to speech.

The headline (report.py): standard DDPM's mean quality at the largest S is the target; for each mode
(and sampler), the fewest S whose mean quality reaches it, and the ratio (largest S) / (that S), with
a flag where quality falls with more steps (then the ratio is no speed-up). The degraded input's
scores are reported beside them.

    python benchmarks/sampling.py --task speech --learning_rates_from outputs/benchmarks/convergence_speech.json
    python benchmarks/sampling.py --task image --learning_rates_from outputs/benchmarks/convergence_image.json
    python benchmarks/sampling.py --task speech --preset smoke    # seconds (what CI runs)

The learning rate is one per mode: ``--learning_rate`` for all (default 1e-3), or each mode's choice in
a convergence JSON (``--learning_rates_from``). Writes ``sampling_<task>.json`` (raw numbers per seed,
the preset's values) and ``sampling_<task>.png`` to ``--output_dir``.
"""

from __future__ import annotations

import json
import math
import time

import options
import report
import runner
import tasks


def parse_args(argv=None):
    parser = options.run_parser(__doc__)
    parser.add_argument("--step_grid", type=int, nargs="+", help="sampling steps S to evaluate")
    parser.add_argument("--learning_rate", type=float, default=None, help="Adam lr of every mode (default 1e-3)")
    parser.add_argument("--learning_rates_from", default=None,
                        help="a convergence_<task>.json: each mode trains at its chosen learning rate there")
    args = options.resolve_run(parser, parser.parse_args(argv), exclude=("eval_every", "early_evals", "learning_rates"))
    grid = args.step_grid
    if sorted(set(grid)) != grid or grid[0] < 1:
        parser.error("--step_grid must be distinct positive integers in increasing order")
    if args.task == "speech" and grid[-1] > len(tasks.SPEECH_STEPS):
        parser.error(f"--step_grid: speech fast sampling has at most {len(tasks.SPEECH_STEPS)} steps")
    if args.learning_rate is not None and args.learning_rates_from:
        parser.error("give --learning_rate or --learning_rates_from, not both")
    if args.learning_rates_from:
        with open(args.learning_rates_from) as f:
            chosen = report.upgrade(json.load(f))
        if chosen.get("task") != args.task:
            parser.error(f"--learning_rates_from: {args.learning_rates_from} is a {chosen.get('task')!r} run, "
                         f"not {args.task!r}")
        missing = [mode for mode in args.modes if mode not in chosen["chosen_learning_rates"]]
        if missing:
            parser.error(f"--learning_rates_from: {args.learning_rates_from} has no mode {', '.join(missing)}")
        args.mode_learning_rates = {mode: float(chosen["chosen_learning_rates"][mode]) for mode in args.modes}
    else:
        lr = 1e-3 if args.learning_rate is None else args.learning_rate
        if not (lr > 0 and math.isfinite(lr)):
            parser.error("--learning_rate must be a positive number")
        args.mode_learning_rates = {mode: lr for mode in args.modes}
    args.eval_every, args.early_evals = args.steps, 0  # only the final model is swept over S
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    plan = (f"{args.steps} training steps, seeds {args.seeds}, learning rates {args.mode_learning_rates}, "
            f"S in {args.step_grid}")
    task = runner.prepare(tasks.build_task, args, plan)
    start = time.perf_counter()

    jobs = [runner.Job(mode, seed, args.mode_learning_rates[mode]) for seed in args.seeds for mode in args.modes]
    workers = min(args.workers, len(jobs))
    with runner.open_pool(task, tasks.build_task, workers, args.threads) as pool:
        runs = {(job.mode, job.seed): run for job, run in zip(jobs, pool.map(runner.train_and_sweep, jobs))}

    results = {
        **runner.run_record(task, workers),
        "labels": tasks.mode_labels(args.modes, args.constant_prior_std),
        "headline_metric": tasks.HEADLINE_METRIC[args.task],
        "step_grid": args.step_grid,
        "learning_rates": args.mode_learning_rates,
        "training": {mode: {str(seed): {k: runs[(mode, seed)][k]
                                        for k in ("steps", "metrics", "prior_std", "train_loss", "seconds")}
                            for seed in args.seeds} for mode in args.modes},
        # mode -> sampler -> seed -> S -> held-out scores
        "raw": {mode: {sampler: {str(seed): runs[(mode, seed)]["finish"][sampler] for seed in args.seeds}
                       for sampler in task.samplers(mode)} for mode in args.modes},
    }
    report.summarize_sampling(results)
    results["wall_seconds"] = time.perf_counter() - start
    path = report.write(results, args.output_dir, f"sampling_{args.task}", report.plot_sampling)
    report.print_sampling(results)
    print(f"wrote {path} and sampling_{args.task}.png ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
