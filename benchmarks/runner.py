"""Training and evaluation runs of the convergence and sampling benchmarks, and the processes that run them.

A run is a :class:`Job` ``(mode, seed, lr)`` on a task (``tasks.py``). Every mode of a seed starts from
the same weights and sees the same batches, noise and timesteps (separate generators seeded alike), the
same held-out data and sampling noise; Adam, the same step budget and gradient clip for all.

Runs are independent, so a :class:`WorkerPool` trains them side by side in separate processes, each
with its share of the threads and its own copy of the task; a run's result depends only on its job,
not on which process ran it. The pool is created by the script and passed to what runs jobs.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import queue
import statistics
import time
import traceback
from typing import Callable, NamedTuple

import torch


class Job(NamedTuple):
    mode: str
    seed: int
    lr: float


def evaluation_steps(steps: int, eval_every: int, early_evals: int) -> set[int]:
    """Every ``eval_every`` steps and the last; plus ``early_evals`` evenly spaced inside the first interval,
    so that a mode reaching the target early is resolved (the speed-up measurable goes up that many times)."""
    first = min(eval_every, steps)
    early = {round(first * k / (early_evals + 1)) for k in range(1, early_evals + 1)}
    return {s for s in early if s > 0} | set(range(eval_every, steps + 1, eval_every)) | {steps}


def train(task, job: Job, finish: Callable | None = None) -> dict:
    """Train one run; the held-out metrics and the prior's std at step 0 and at every evaluation step.

    ``finish(adapter)``, when given, runs on the trained adapter and its result is returned under
    ``"finish"``.
    """
    config = task.config
    adapter = task.build(job.seed, job.mode)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=job.lr)  # unused encoders get no gradient: Adam skips them
    data_gen = torch.Generator().manual_seed(job.seed)  # batches: the same in every mode
    noise_gen = torch.Generator().manual_seed(1_000 + job.seed)  # z and t: the same in every mode
    steps, metrics, losses, prior_std = [], {}, [], []
    eval_steps = evaluation_steps(config.steps, config.eval_every, config.early_evals)
    start = time.perf_counter()

    def record(step):
        adapter.eval()
        values = task.evaluate(adapter, job.seed)
        # Where the prior stands: a learned sigma that stays near 1 makes RestoreGrad a standard DDPM.
        sigma = task.prior_std_stats(adapter)
        adapter.train()
        steps.append(step)
        for key, value in values.items():
            metrics.setdefault(key, []).append(value)
        prior_std.append(sigma)
        shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
        print(f"  {job.mode:25s} seed {job.seed} lr {job.lr:g} step {step:6d}: {shown}, prior sigma "
              f"{sigma['mean']:.3f} [{sigma['min']:.3f}, {sigma['max']:.3f}]  ({time.perf_counter() - start:.0f} s)",
              flush=True)

    record(0)
    adapter.train()
    running = []
    for step in range(1, config.steps + 1):
        x0, y = task.batch(data_gen)
        loss = adapter.training_loss(x0, y, generator=noise_gen).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(adapter.parameters(), config.grad_clip)
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


def train_run(task, job: Job) -> dict:
    """A convergence run: the training curves."""
    return train(task, job)


def sampling_sweep(task, job: Job, adapter) -> dict:
    """Held-out quality of a trained adapter for every sampler of its mode and every S of ``step_grid``."""
    out = {}
    for sampler in task.samplers(job.mode):
        out[sampler] = {}
        for s in task.config.step_grid:
            values = task.evaluate(adapter, job.seed, sampler, s)
            out[sampler][str(s)] = values
            shown = ", ".join(f"{k} {v:.3f}" for k, v in values.items())
            print(f"  {job.mode:25s} seed {job.seed} {sampler:12s} S = {s:2d}: {shown}", flush=True)
    return out


def train_and_sweep(task, job: Job) -> dict:
    """A sampling run: training as in the convergence benchmark, then the sweep over S of its final model."""
    return train(task, job, finish=functools.partial(sampling_sweep, task, job))


def choose_learning_rates(pool, modes, seed: int, learning_rates, key: str) -> tuple[dict, dict]:
    """Runs of ``seed`` for every (mode, lr); each mode's best lr by final held-out ``key`` (one rule for all).

    Returns (chosen lr per mode, mode -> repr(lr) -> run)."""
    jobs = [Job(mode, seed, lr) for mode in modes for lr in learning_rates]
    search, chosen = {mode: {} for mode in modes}, {}
    for job, run in zip(jobs, pool.map(train_run, jobs)):
        search[job.mode][repr(job.lr)] = run
    for mode in modes:
        finals = {lr: search[mode][repr(lr)]["metrics"][key][-1] for lr in learning_rates}
        scored = {lr: v for lr, v in finals.items() if isinstance(v, float) and math.isfinite(v)}
        chosen[mode] = max(scored, key=scored.get) if scored else learning_rates[0]
        print(f"{mode}: final {key} by lr {finals}; chosen lr {chosen[mode]:g}", flush=True)
    return chosen, search


def prepare(make_task: Callable, config, plan: str):
    """Set torch's threads (``config.threads``), build the task and print it with ``plan``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    task = make_task(config)
    print(f"{config.task}: {task.description}; {plan}", flush=True)
    return task


def machine_info(workers: int) -> dict:
    return {"device": f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})",
            "cpus": os.cpu_count(), "workers": workers, "torch": torch.__version__}


def run_record(task, workers: int) -> dict:
    """What every results JSON of a run starts with: the task, its data and settings (and the preset they
    came from), the machine, the modes and seeds, and the degraded input's held-out scores."""
    config = task.config
    return {"task": config.task, "data": task.description, "preset": config.preset_record,
            "config": {k: v for k, v in vars(config).items() if k != "preset_record"},
            "machine": machine_info(workers), "modes": list(config.modes), "seeds": config.seeds,
            "input_quality": task.input_quality()}


# ---------------------------------------------------------------------- processes
class InlinePool:
    """Runs jobs one after another in this process, on the given task."""

    def __init__(self, task):
        self.task = task

    def map(self, run: Callable, jobs: list) -> list:
        return [run(self.task, job) for job in jobs]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _serve(make_task: Callable, config, threads: int, jobs, results) -> None:
    """A worker process: build the task once, then run jobs until told to stop (None)."""
    torch.set_num_threads(threads)
    task = make_task(config)
    while (item := jobs.get()) is not None:
        index, run, job = item
        try:
            results.put((index, run(task, job), None))
        except Exception:
            results.put((index, None, traceback.format_exc()))


class WorkerPool:
    """``workers`` spawned processes, each building its task with ``make_task(config)`` (a module-level
    function: processes receive it by reference) and running jobs with ``threads`` torch threads.

    ``map`` returns results in the jobs' order; a run that raises, or a process that dies, raises here.
    """

    def __init__(self, make_task: Callable, config, workers: int, threads: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._jobs, self._results = context.Queue(), context.Queue()
        self._processes = [context.Process(target=_serve, args=(make_task, config, threads, self._jobs,
                                                                self._results), daemon=True)
                           for _ in range(workers)]
        for process in self._processes:
            process.start()

    def map(self, run: Callable, jobs: list) -> list:
        """``run(task, job)`` for every job, in the workers; ``run`` must be a module-level function."""
        for index, job in enumerate(jobs):
            self._jobs.put((index, run, job))
        results = [None] * len(jobs)
        for _ in jobs:
            index, result, error = self._next_result()
            if error is not None:
                raise RuntimeError(f"run {jobs[index]} failed in a worker process:\n{error}")
            results[index] = result
        return results

    def _next_result(self):
        while True:
            try:
                return self._results.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in self._processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"a worker process ended (exit code {dead[0]}) before its runs did") from None

    def close(self, wait: bool = True) -> None:
        for process in self._processes:
            if wait and process.is_alive():
                self._jobs.put(None)
        for process in self._processes:
            if wait:
                process.join()
            else:
                process.terminate()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(wait=exc_type is None)
        return False


def open_pool(task, make_task: Callable, workers: int, threads: int | None):
    """A :class:`WorkerPool` of ``workers`` processes sharing ``threads`` (default: torch's), or an
    :class:`InlinePool` on ``task`` for one worker."""
    if workers <= 1:
        return InlinePool(task)
    per_worker = max(1, (threads or torch.get_num_threads()) // workers)
    return WorkerPool(make_task, task.config, workers, per_worker)
