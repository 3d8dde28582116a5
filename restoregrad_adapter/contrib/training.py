"""Plain helpers for training scripts: resumable randomness, loss bookkeeping, checkpoints, a JSON log.

A run resumed from a checkpoint continues with exactly the losses of an uninterrupted one when every
random draw depends only on the seed and the step:

- training example ``i`` draws its pair and crop from :func:`example_rng` ``(seed, i)``;
- :class:`StepBatchSampler` gives micro-step ``m`` of process ``p`` the examples ``(m P + p) B + k``;
- the noise and timesteps of micro-step ``m`` come from :func:`noise_generator` ``(seed, m, p)``.

The scripts own the Accelerator, the DataLoader and the loop (see ``examples/train_weather.py``);
nothing here builds either: the helpers that checkpoint take the script's Accelerator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .data import check_augment, random_crop, random_flip_rotate
from ..io import atomic_path

__all__ = [
    "LOSS_TERMS",
    "example_rng",
    "noise_generator",
    "StepBatchSampler",
    "RandomCropDataset",
    "resolve_report_to",
    "usable_cpus",
    "is_due",
    "gather_loss_terms",
    "mean_loss_terms",
    "ema_weights",
    "find_checkpoint",
    "checkpoint_step",
    "prune_checkpoints",
    "resume_from_checkpoint",
    "save_checkpoint",
    "JsonLog",
    "describe_learning",
    "layered_default",
    "describe_defaults",
    "prior_std_value",
]

#: The loss terms of ``RestoreGradLossOutput`` that the scripts log, in this order.
LOSS_TERMS = ("loss", "latent_reg", "denoise", "prior_match")


# ---------------------------------------------------------------------- randomness
def example_rng(seed: int, index: int) -> np.random.Generator:
    """The random source of training example ``index`` (choice of pair, crop position, augmentation)."""
    return np.random.default_rng([seed, index])


def noise_generator(seed: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """The random source of the noise and timesteps of one micro-step on one process."""
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + micro_step * 7919 + process_index * 104_729) % (2**63 - 1))
    return generator


class StepBatchSampler(torch.utils.data.Sampler):
    """Example indices for micro-steps ``start .. stop - 1`` of one process (a DataLoader's ``batch_sampler``).

    Micro-step ``m`` of process ``p`` of ``P`` uses examples ``(m * P + p) * B + k``, ``k < B``:
    processes never share examples and a resumed run sees the examples it would have seen.
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


class RandomCropDataset(torch.utils.data.Dataset):
    """Training example ``i``: the same random crop of both signals of a random ``(x0, y)`` pair, both
    drawn from :func:`example_rng` ``(seed, i)`` only (index it with a :class:`StepBatchSampler`).

    Args:
        pairs: a sequence of ``(x0, y)`` numpy pairs (clean, degraded), e.g. a
            :class:`~restoregrad_adapter.contrib.data.LazyPairs`.
        size, crop_kwargs: the crop, as :func:`restoregrad_adapter.contrib.data.random_crop` takes it.
        seed: the run's seed.
        to_tensor: ``array -> tensor`` for each crop (e.g.
            :func:`restoregrad_adapter.contrib.data.readers.image_to_tensor`).
        augment: images only: the same random mirror and rotation of both crops, one of
            :data:`restoregrad_adapter.contrib.data.AUGMENTATIONS`
            (:func:`~restoregrad_adapter.contrib.data.random_flip_rotate`),
            drawn after the crop from the same generator, so ``"none"`` (the default) gives the crops of a
            dataset without it.

    Returns ``(x0, y)`` tensors.
    """

    def __init__(self, pairs: Sequence, size, seed: int, to_tensor: Callable, *, augment: str = "none",
                 **crop_kwargs):
        self.pairs, self.size, self.seed, self.to_tensor, self.crop_kwargs = pairs, size, seed, to_tensor, crop_kwargs
        self.augment = check_augment(augment)

    def __len__(self) -> int:
        return 2**62  # indexed by a StepBatchSampler, never iterated whole

    def __getitem__(self, index: int):
        rng = example_rng(self.seed, index)
        x0, y = self.pairs[int(rng.integers(len(self.pairs)))]
        x0, y = random_crop(x0, y, self.size, rng, **self.crop_kwargs)
        if self.augment != "none":
            x0, y = random_flip_rotate(x0, y, rng, self.augment)
        return self.to_tensor(x0), self.to_tensor(y)


def usable_cpus() -> int:
    """The CPU cores this process may run on: its affinity mask (``taskset``, a container's cpuset) where
    the platform has one, else ``os.cpu_count()``; at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def resolve_report_to(value: str):
    """Accelerate's ``log_with`` for a ``--report_to`` value: 'auto' is tensorboard when it is installed,
    'none' is nothing, anything else is passed on."""
    if value == "none":
        return None
    if value != "auto":
        return value
    for module in ("tensorboard", "tensorboardX"):
        try:
            __import__(module)
            return "tensorboard"
        except ImportError:
            pass
    return None


# ---------------------------------------------------------------------- the loop
def is_due(step: int, every: int, last: int) -> bool:
    """Whether something done every ``every`` steps and at the last step is due at ``step``."""
    return step % every == 0 or step == last


def gather_loss_terms(accelerator, terms) -> list[float]:
    """The :data:`LOSS_TERMS` of one micro-step's ``RestoreGradLossOutput``, averaged over all processes
    (one small all-gather)."""
    values = torch.stack([getattr(terms, name) for name in LOSS_TERMS]).detach()[None]
    return accelerator.gather(values).mean(0).tolist()


def mean_loss_terms(micro_steps: list[list[float]]) -> dict:
    """``{term: mean}`` over the micro-steps of one optimisation step (lists from :func:`gather_loss_terms`)."""
    return dict(zip(LOSS_TERMS, np.mean(micro_steps, axis=0).tolist()))


@contextlib.contextmanager
def ema_weights(ema, parameters):
    """Within the block ``parameters`` hold the EMA weights of ``ema`` (a diffusers ``EMAModel``); the
    training weights are put back after. ``ema=None``: the training weights."""
    if ema is None:
        yield
        return
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)


# ---------------------------------------------------------------------- checkpoints
def _checkpoints(output_dir) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest (smallest N) first."""
    found = [p for p in Path(output_dir).glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def find_checkpoint(output_dir, value: str | None) -> str | None:
    """The checkpoint folder to resume from: ``value`` itself, or the newest ``checkpoint-N`` for 'latest'
    (``None`` when there is none, or when ``value`` is ``None``)."""
    if value is None:
        return None
    if value != "latest":
        if not os.path.isdir(value):
            raise ValueError(f"resume_from_checkpoint {value!r} is not a folder")
        return value
    found = _checkpoints(output_dir)
    return str(found[-1]) if found else None


def checkpoint_step(path: str) -> int:
    """The step N of a checkpoint folder named ``checkpoint-N``."""
    match = re.search(r"checkpoint-(\d+)$", str(path).rstrip("/"))
    if not match:
        raise ValueError(f"cannot read the step from checkpoint folder name {path!r} (expected checkpoint-N)")
    return int(match.group(1))


def prune_checkpoints(output_dir, keep: int) -> None:
    """Delete all but the ``keep`` newest ``checkpoint-N`` folders of ``output_dir``."""
    found = _checkpoints(output_dir)
    for old in found[: max(0, len(found) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def _logger():
    from accelerate.logging import get_logger

    return get_logger(__name__)


def resume_from_checkpoint(accelerator, output_dir, value: str | None) -> int:
    """Load the checkpoint ``value`` names (a folder, or 'latest' in ``output_dir``) into the
    ``accelerator``'s prepared objects; the step to continue from (0 when there is none)."""
    checkpoint = find_checkpoint(output_dir, value)
    if checkpoint is None:
        if value is not None:
            _logger().info("no checkpoint to resume from: starting a new run", main_process_only=True)
        return 0
    accelerator.load_state(checkpoint)
    step = checkpoint_step(checkpoint)
    _logger().info(f"resumed from {checkpoint} at step {step}", main_process_only=True)
    return step


def save_checkpoint(accelerator, output_dir, step: int, total_limit: int) -> str:
    """``accelerator.save_state`` to ``output_dir/checkpoint-<step>``, keeping at most ``total_limit``
    checkpoints (all processes call it); the folder."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, max(0, total_limit - 1))
    path = os.path.join(output_dir, f"checkpoint-{step}")
    accelerator.save_state(path)
    _logger().info(f"saved {path}", main_process_only=True)
    return path


# ---------------------------------------------------------------------- log
class JsonLog:
    """An append-only JSON-lines log of training and validation records, e.g. ``{"kind": "train",
    "step": 3, "loss": ...}``.

    Opened with ``resume_from_step``, it keeps the records of steps up to that step and drops the
    later ones (those of the interrupted run after its checkpoint); otherwise it starts empty.
    """

    def __init__(self, path, resume_from_step: int | None = None):
        self.path = str(path)
        self.records: list[dict] = []
        if resume_from_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                self.records = [r for r in map(json.loads, f) if r.get("step", 0) <= resume_from_step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(record) + "\n" for record in self.records))

    def append(self, record: dict) -> None:
        self.records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def last(self, kind: str) -> dict | None:
        """The newest record of this kind, or ``None``."""
        return next((r for r in reversed(self.records) if r.get("kind") == kind), None)


def describe_learning(records: list[dict], metric: str, unit: str = "", input_metric: str | None = None,
                      digits: int = 2) -> str:
    """One honest line: the validation metric at the first and the last validation, and against the input.

    ``input_metric``: the record's key for the degraded input's score (e.g. ``"psnr_y_degraded"``); a
    restoration that scores below its own input is said to be worse than the input. ``digits``: decimals shown.
    """
    unit = f" {unit}" if unit else ""
    points = [(r["step"], r[metric], r.get(input_metric)) for r in records
              if r.get("kind") == "validation" and metric in r]
    if len(points) < 2:
        return f"validation {metric}: not enough validations to compare"
    (s0, v0, _), (s1, v1, degraded) = points[0], points[-1]
    line = f"validation {metric}: {v0:.{digits}f}{unit} at step {s0} -> {v1:.{digits}f}{unit} at step {s1}"
    if degraded is None:
        return line + (" (improved: the model is learning)" if v1 > v0 else " (did not improve yet: train longer)")
    gain = v1 - degraded
    verdict = (f"{gain:+.{digits}f}{unit} above the degraded input's {degraded:.{digits}f}{unit}" if gain > 0 else
               f"{gain:+.{digits}f}{unit}, BELOW the degraded input's {degraded:.{digits}f}{unit}: the restoration "
               "is worse than its input (train longer, or check the recipe)")
    return f"{line}, {verdict}"


# ---------------------------------------------------------------------- command lines
def _shown(value):
    """A default as --help writes it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def layered_default(name, flag, table):
    """'default: ...' of the option ``name`` that ``flag`` fills in from ``table`` ({choice: {name: value}}),
    written from the table itself: each value with the choices that give it, the commonest last as 'otherwise'."""
    choices_of = {}
    for choice, defaults in table.items():
        choices_of.setdefault(_shown(defaults[name]), []).append(choice)
    if len(choices_of) == 1:
        return f"default: {next(iter(choices_of))}"
    commonest = max(reversed(choices_of), key=lambda value: len(choices_of[value]))  # among equals the last
    named = [f"{value} with {flag} " + (", ".join(choices[:-1]) + " or " if len(choices) > 1 else "") + choices[-1]
             for value, choices in choices_of.items() if value != commonest]
    return "default: " + "; ".join(named + [f"{commonest} otherwise"])


def describe_defaults(parser, layers):
    """Make --help state each option's default: for an option that a (flag, table) of ``layers`` fills in,
    the table's values; for any other, its own default unless its help already says it."""
    for action in parser._actions:
        layered = [layered_default(action.dest, flag, table) for flag, table in layers
                   if action.dest in next(iter(table.values()))]
        says_default = "default" in {word.strip("(),;:") for word in (action.help or "").split()}
        if not layered and (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                            or says_default):
            continue
        said = layered[0] if layered else "default: %(default)s"
        action.help = f"{action.help} ({said})" if action.help else said


def prior_std_value(text: str):
    """``--prior_std``: a positive number or ``auto``."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number or auto, got {text!r}")
    return value
