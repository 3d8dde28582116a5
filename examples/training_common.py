"""Pieces shared by the Accelerate training scripts (train_weather.py, train_speech.py).

- command-line flags common to both scripts;
- deterministic sampling: the i-th training example and the noise of micro-step m depend only on
  (seed, i) and (seed, m, process), so a run resumed from a checkpoint continues exactly as an
  uninterrupted one would;
- checkpoints (``accelerator.save_state``) and ``--resume_from_checkpoint latest``;
- EMA of the adapter's weights; a JSON-lines log; PNG training curves; atomic file writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from pathlib import Path

import numpy as np
import torch

MODES = ("restoregrad", "restoregrad_no_posterior", "priorgrad", "ddpm")


def add_common_arguments(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """Flags of both training scripts; ``defaults`` sets the script's own defaults."""
    g = parser.add_argument_group("RestoreGrad")
    g.add_argument("--mode", choices=MODES, default="restoregrad",
                   help="restoregrad (eq. 10), restoregrad_no_posterior (eq. 11), priorgrad, ddpm")
    g.add_argument("--eta", type=float, default=defaults["eta"], help="weight of the latent regulariser")
    g.add_argument("--lam", type=float, default=defaults["lam"], help="weight of the prior-matching term")
    g.add_argument("--sigma_min", type=float, default=0.1, help="floor of the learned standard deviation")
    g.add_argument("--encoder_size", choices=("tiny", "base", "large"), default=defaults["encoder_size"])
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", default=defaults["output_dir"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max_train_steps", type=int, default=defaults["max_train_steps"])
    g.add_argument("--train_batch_size", type=int, default=defaults["train_batch_size"], help="per process")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--learning_rate", type=float, default=defaults["learning_rate"])
    g.add_argument("--lr_warmup_steps", type=int, default=0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None,
                   help="defaults to Accelerate's configuration")
    g.add_argument("--ema_decay", type=float, default=0.999, help="0 disables the EMA of the weights")
    g.add_argument("--checkpointing_steps", type=int, default=defaults["checkpointing_steps"])
    g.add_argument("--checkpoints_total_limit", type=int, default=2)
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--validation_steps", type=int, default=defaults["validation_steps"])
    g.add_argument("--num_inference_steps", type=int, default=defaults["num_inference_steps"])
    g.add_argument("--dataloader_num_workers", type=int, default=0)
    g.add_argument("--report_to", default="auto", help="'auto' (tensorboard when installed), 'all', 'none', ...")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)


def check_common_arguments(args) -> None:
    for name in ("max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                 "validation_steps", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.ema_decay < 1:
        raise SystemExit(f"error: --ema_decay must be in [0, 1), got {args.ema_decay}")
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("error: --push_to_hub needs --hub_model_id (e.g. your-name/restoregrad-weather)")


def report_to(value: str):
    """Accelerate's ``log_with``: 'auto' means tensorboard when it is installed, else nothing."""
    if value == "none":
        return None
    if value == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            try:
                import tensorboardX  # noqa: F401
            except ImportError:
                return None
        return "tensorboard"
    return value


def ddp_kwargs(mode: str):
    """Modules unused in a mode (the Posterior Net outside 'restoregrad', both encoders in the
    baselines) must not stall DistributedDataParallel waiting for their gradients."""
    from accelerate import DistributedDataParallelKwargs

    return DistributedDataParallelKwargs(find_unused_parameters=mode != "restoregrad")


def example_rng(seed: int, index: int) -> np.random.Generator:
    """The random source of training example ``index`` (crop position, choice of pair)."""
    return np.random.default_rng([seed, index])


def noise_generator(seed: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """The random source of the noise and timesteps of one micro-step on one process."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + micro_step * 7919 + process_index * 104_729) % (2**63 - 1))
    return generator


class StepBatchSampler(torch.utils.data.Sampler):
    """Example indices for micro-steps ``start .. stop - 1`` of one process.

    Micro-step ``m`` of process ``p`` uses examples ``(m * P + p) * B + k``, ``k < B``: processes
    never share examples and a resumed run sees the same examples it would have seen.
    """

    def __init__(self, start: int, stop: int, batch_size: int, process_index: int, num_processes: int):
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.process_index, self.num_processes = process_index, num_processes

    def __iter__(self):
        for m in range(self.start, self.stop):
            first = (m * self.num_processes + self.process_index) * self.batch_size
            yield list(range(first, first + self.batch_size))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


class PairSource:
    """Indexable (degraded, clean) pairs: ``loader(items[i])``, with an optional LRU cache."""

    def __init__(self, items, loader, cache_size: int = 0):
        from collections import OrderedDict

        self.items, self.loader, self.cache_size = items, loader, cache_size
        self.cache: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index]
        pair = self.loader(self.items[index])
        if self.cache_size > 0:
            self.cache[index] = pair
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        return pair


# ---------------------------------------------------------------------- checkpoints
def find_checkpoint(output_dir: str, value: str | None) -> str | None:
    """The checkpoint folder to resume from: a path, or the newest ``checkpoint-N`` for 'latest'."""
    if value is None:
        return None
    if value != "latest":
        if not os.path.isdir(value):
            raise SystemExit(f"error: --resume_from_checkpoint {value!r} is not a folder")
        return value
    found = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    if not found:
        return None
    return str(max(found, key=lambda p: int(p.name.split("-")[1])))


def checkpoint_step(path: str) -> int:
    match = re.search(r"checkpoint-(\d+)$", path.rstrip("/"))
    if not match:
        raise SystemExit(f"error: cannot read the step from checkpoint folder name {path!r} (expected checkpoint-N)")
    return int(match.group(1))


def prune_checkpoints(output_dir: str, keep: int) -> None:
    found = sorted((p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)),
                   key=lambda p: int(p.name.split("-")[1]))
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- logs and pictures
class JsonLog:
    """Append-only JSON-lines log of training and validation records (main process only)."""

    def __init__(self, path: str, resume_from_step: int | None):
        self.path = path
        self.records: list[dict] = []
        if resume_from_step is not None and os.path.exists(path):
            with open(path) as f:
                self.records = [r for r in map(json.loads, f) if r.get("step", 0) <= resume_from_step]
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for record in self.records:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, self.path)

    def append(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def write_json(obj, path: str) -> None:
    """Write ``obj`` as indented JSON atomically (temporary name, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def save_figure(fig, path: str, dpi: int = 90) -> None:
    """Save a matplotlib figure atomically (temporary name, then rename) and close it."""
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_curves(records: list[dict], metric_names: list[str], path: str) -> None:
    """Training loss terms and validation metrics against steps, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    validation = [r for r in records if r.get("kind") == "validation"]
    fig, axes = plt.subplots(1, 1 + len(metric_names), figsize=(5 * (1 + len(metric_names)), 3.6))
    axes = np.atleast_1d(axes)
    for term in ("loss", "denoise", "latent_reg", "prior_match"):
        values = [r[term] for r in train if term in r]
        if values and any(v != 0 for v in values):
            steps = [r["step"] for r in train if term in r]
            window = max(1, len(values) // 50)
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            axes[0].plot(steps[window - 1:], smooth, label=term)
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss terms (smoothed)")
    axes[0].legend()
    for ax, name in zip(axes[1:], metric_names):
        points = [(r["step"], r[name]) for r in validation if name in r and math.isfinite(r[name])]
        if points:
            ax.plot(*zip(*points), marker="o")
        ax.set_xlabel("step")
        ax.set_title(f"validation {name}")
    fig.tight_layout()
    save_figure(fig, path)


def describe_learning(records: list[dict], metric: str, unit: str) -> str:
    """One honest line: the validation metric at the first and the last validation."""
    points = [(r["step"], r[metric]) for r in records if r.get("kind") == "validation" and metric in r]
    if len(points) < 2:
        return f"validation {metric}: not enough validations to compare"
    (s0, v0), (s1, v1) = points[0], points[-1]
    verdict = "improved: the model is learning" if v1 > v0 else "did not improve yet: train longer"
    return f"validation {metric}: {v0:.2f} {unit} at step {s0} -> {v1:.2f} {unit} at step {s1} ({verdict})"


# ---------------------------------------------------------------------- the training loop
def train(args, project: str, build_adapter, build_data, validate, headline: tuple[str, str],
          curve_metrics: list[str], describe_validation, describe_batch: str) -> None:
    """Train a RestoreGrad adapter with Accelerate (both scripts' main loop).

    Args:
        build_adapter: ``args -> RestoreGrad``.
        build_data: ``() -> (dataset indexed by example id, validation items, description)``; the
            dataset's item i is ``(x0, y)`` and depends only on (seed, i).
        validate: ``(adapter, validation items, step, device, folder) -> metrics dict`` (main process).
        headline: the validation metric summarised at the end, and its unit.
        curve_metrics: validation metrics plotted in training_curves.png.
        describe_validation: ``metrics -> str`` for the log.
        describe_batch: a few words on one training example, for the log.
    """
    import logging
    import time

    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    log = get_logger(project)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        log_with=report_to(args.report_to),
        project_config=ProjectConfiguration(project_dir=args.output_dir,
                                            logging_dir=os.path.join(args.output_dir, "logs")),
        kwargs_handlers=[ddp_kwargs(args.mode)],
    )
    set_seed(args.seed)
    start_time = time.time()
    validation_dir = os.path.join(args.output_dir, "validation")
    if accelerator.is_main_process:
        os.makedirs(validation_dir, exist_ok=True)

    dataset, validation, description = build_data()
    log.info(f"data: {description}", main_process_only=True)
    adapter = build_adapter(args)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=args.learning_rate, weight_decay=0.0)
    lr_scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=args.lr_warmup_steps)
    ema = EMAModel(adapter.parameters(), decay=args.ema_decay) if args.ema_decay > 0 else None
    adapter, optimizer, lr_scheduler = accelerator.prepare(adapter, optimizer, lr_scheduler)
    if ema is not None:
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    global_step = 0
    checkpoint = find_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint:
        accelerator.load_state(checkpoint)
        global_step = checkpoint_step(checkpoint)
        log.info(f"resumed from {checkpoint} at step {global_step}", main_process_only=True)
    elif args.resume_from_checkpoint:
        log.info("no checkpoint to resume from: starting a new run", main_process_only=True)
    history = None
    if accelerator.is_main_process:
        history = JsonLog(os.path.join(args.output_dir, "metrics.jsonl"), global_step if checkpoint else None)
        accelerator.init_trackers(project, config={k: v for k, v in vars(args).items()
                                                   if isinstance(v, (int, float, str, bool))})
        with open(os.path.join(args.output_dir, "args.json"), "w") as f:
            json.dump(vars(args), f, indent=2)

    acc = args.gradient_accumulation_steps
    sampler = StepBatchSampler(global_step * acc, args.max_train_steps * acc, args.train_batch_size,
                               accelerator.process_index, accelerator.num_processes)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=args.dataloader_num_workers)
    parameters = list(accelerator.unwrap_model(adapter).parameters())

    def run_validation(step):
        if not accelerator.is_main_process:
            return
        model = accelerator.unwrap_model(adapter)
        if ema is not None:  # validate the EMA weights, then put the training weights back
            ema.store(parameters)
            ema.copy_to(parameters)
        metrics = validate(model, validation, step, accelerator.device, validation_dir)
        if ema is not None:
            ema.restore(parameters)
        history.append({"kind": "validation", "step": step, **metrics})
        accelerator.log({f"validation/{k}": v for k, v in metrics.items()}, step=step)
        log.info(f"step {step}: validation {describe_validation(metrics)}; wrote "
                 f"{validation_dir}/step-{step:06d}.png", main_process_only=True)

    if global_step == 0:
        run_validation(0)
    log.info(f"training {args.mode} for {args.max_train_steps} steps on {accelerator.num_processes} process(es), "
             f"batch {args.train_batch_size} x {acc} accumulation, {describe_batch}", main_process_only=True)
    bar = tqdm(total=args.max_train_steps, initial=global_step, desc="training",
               disable=not accelerator.is_local_main_process)
    adapter.train()
    term_names = ("loss", "latent_reg", "denoise", "prior_match")
    running: list[list[float]] = []
    for micro_step, (x0, y) in enumerate(loader, start=global_step * acc):
        x0, y = x0.to(accelerator.device), y.to(accelerator.device)
        generator = noise_generator(args.seed, micro_step, accelerator.process_index, accelerator.device)
        with accelerator.accumulate(adapter):
            terms = adapter(x0, y, generator=generator)
            accelerator.backward(terms.loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(adapter.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        # The loss terms averaged over all processes (one small all-gather per micro-step).
        values = torch.stack([getattr(terms, name) for name in term_names]).detach()[None]
        running.append(accelerator.gather(values).mean(0).tolist())
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        if ema is not None:
            ema.step(parameters)
        record = dict(zip(term_names, np.mean(running, axis=0).tolist()))
        running = []
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4f}", dm=f"{record['denoise']:.4f}",
                        lr_term=f"{record['latent_reg']:.3f}", pm=f"{record['prior_match']:.3f}")
        accelerator.log({f"train/{k}": v for k, v in record.items()}, step=global_step)
        if accelerator.is_main_process:
            history.append({"kind": "train", "step": global_step, **record})
        if global_step % args.checkpointing_steps == 0 or global_step == args.max_train_steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                prune_checkpoints(args.output_dir, max(0, args.checkpoints_total_limit - 1))
            path = os.path.join(args.output_dir, f"checkpoint-{global_step}")
            accelerator.save_state(path)
            log.info(f"saved {path}", main_process_only=True)
        if global_step % args.validation_steps == 0 or global_step == args.max_train_steps:
            run_validation(global_step)
            accelerator.wait_for_everyone()
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(adapter)
        if ema is not None:
            ema.copy_to(parameters)
        last = [r for r in history.records if r["kind"] == "validation"][-1:]
        metrics = {k: v for k, v in (last[0].items() if last else []) if k in curve_metrics}
        metadata = {"training_data": description, "metrics": metrics}
        if getattr(args, "sample_rate", None):
            metadata["sample_rate"] = args.sample_rate
        folder = model.save_pretrained(os.path.join(args.output_dir, "adapter"), **metadata)
        plot_curves(history.records, curve_metrics, os.path.join(args.output_dir, "training_curves.png"))
        log.info(f"saved the trained adapter to {folder}" + (" (EMA weights)" if ema is not None else ""),
                 main_process_only=True)
        log.info(f"{describe_learning(history.records, *headline)}; wall time {time.time() - start_time:.0f} s; "
                 f"curves in {os.path.join(args.output_dir, 'training_curves.png')}", main_process_only=True)
        if args.push_to_hub:
            url = model.push_to_hub(args.hub_model_id, token=args.hub_token, **metadata)
            log.info(f"pushed to {url}", main_process_only=True)
    accelerator.end_training()
