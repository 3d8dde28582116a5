"""What the adapter costs: time and peak memory of a training step and of a restoration, with and without it.

Ratios are measured within one run, the two variants interleaved and repeated, so machine noise
affects both alike; the median ratio is reported with its spread (min-max over repetitions). On a
GPU the clock is wall time after a synchronisation; on a CPU it is the process's CPU time
(``time.process_time``, all its threads), which other jobs on a shared machine barely change, while
they can double a wall time.

- training step (forward + backward + Adam) of the bare denoiser with the standard DDPM loss, against
  the same denoiser inside RestoreGrad (Prior Net, Posterior Net, eq. 10 loss);
- restoration: the same sampler with sigma = 1 (mode "ddpm") against the learned prior (Prior Net
  once, sigma-scaled noise every step), through ``integrations.weatherdiff.restore_image`` and
  ``CDiffuSERestoreGrad.restore``;
- one scheduler step: LearnedPriorScheduler.step with a sigma map against DDPMScheduler.step, on a small and a
  large sample, with the map checked at every step (``validate_args=True``, the default) and not
  (``validate_args=False``, the restoration loop's), and without a map;
- peak tensor memory of a training step (parameters, gradients, optimizer state, activations): on CUDA
  the allocator's peak; on CPU the peak of the torch profiler's memory timeline over one step.

Also recorded: training throughput (samples per second, from the same step times), and how far a
training step is from the device's matmul ceiling: the step's floating-point operations (counted by
``torch.utils.flop_counter``) per second of its time, against a large square matmul's, in the same
precision. ``mixed_precision`` "bf16" runs the forward passes under ``torch.autocast`` in bfloat16 (the
loss terms stay float32, as in the training scripts); "no" is float32.

The targets the adapter is held to (``TARGETS``): a training step at most 1.05x, peak training memory
at most 1.10x, a restoration at most 1.01x, a scheduler step at most 1.2x ``DDPMScheduler.step``.

The models' sizes come from the settings (``overhead.py``'s preset): ``weather_unet`` "weatherdiff64"
(WeatherDiff64: ch 128, multipliers 1-2-3-4) or "tiny", ``speech_model`` "cdiffuse" (30 residual
layers, 64 channels) or "tiny".
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from tasks import parameter_counts

#: The most each ratio (with RestoreGrad / without) may be.
TARGETS = {"train_step": 1.05, "train_peak_memory": 1.10, "restore": 1.01, "scheduler_step": 1.2}


def autocast(settings, device):
    """The precision of the forward passes: bf16 autocast for ``settings.mixed_precision == "bf16"``."""
    if getattr(settings, "mixed_precision", "no") == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def step_flops(step) -> int:
    """Floating-point operations of one call of ``step`` (forward, backward and optimizer)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def matmul_flops_per_s(device, dtype, size: int, repeats: int = 5) -> float:
    """The device's ceiling for dense work: a ``size`` x ``size`` matmul's FLOP/s in ``dtype`` (best of ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size ** 3 / max(best, 1e-9)


def clock_name(device) -> str:
    return "wall time (synchronised)" if device.type == "cuda" else "process CPU time"


def timed(fn, device) -> float:
    """Seconds ``fn`` takes on the clock of ``device`` (see :func:`clock_name`)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def compare(baseline, candidate, repeats: int, device) -> dict:
    """Interleaved timings; the ratio candidate / baseline per repetition."""
    baseline(), candidate()  # warm-up
    base_times, cand_times = [], []
    for _ in range(repeats):
        base_times.append(timed(baseline, device))
        cand_times.append(timed(candidate, device))
    ratios = [c / b for b, c in zip(base_times, cand_times)]
    return {"baseline_s": statistics.median(base_times), "restoregrad_s": statistics.median(cand_times),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def peak_memory(step, device) -> int | None:
    """Peak CUDA memory allocated during ``step`` (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device)


def cpu_peak_memory(step) -> int | None:
    """Peak tensor memory on the CPU during ``step``: the torch profiler records every allocation and free,
    and its memory timeline (all categories: parameters, gradients, optimizer state, activations, temporaries)
    is summed at each instant. ``step`` is run once before, so the optimizer's state exists in both variants.

    ``export_memory_timeline`` is marked deprecated in favour of CUDA-only tools, and has no CPU successor;
    where a torch no longer has it, None is returned (not measured)."""
    import tempfile
    import warnings

    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    if not hasattr(prof, "export_memory_timeline"):
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "timeline.json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)  # [times, sizes per instant and category]
    return int(max(sum(row) for row in sizes))


def step_peak_memory(bare, full, device) -> dict:
    """Peak memory of one training step, baseline and RestoreGrad, and their ratio."""
    if device.type == "cuda":
        out = {"what": "peak CUDA memory allocated during a step",
               "baseline": peak_memory(bare, device), "restoregrad": peak_memory(full, device)}
    else:
        out = {"what": "peak CPU tensor memory during a step (torch profiler memory timeline)",
               "baseline": cpu_peak_memory(bare), "restoregrad": cpu_peak_memory(full)}
    measured = out["baseline"] is not None and out["restoregrad"] is not None
    out["ratio"] = out["restoregrad"] / out["baseline"] if measured else None
    return out


def training_pair(adapter, x0, y, device, settings):
    """(bare DDPM step, RestoreGrad step) closures on the same denoiser."""
    scheduler = adapter.scheduler
    bare_opt = torch.optim.Adam(adapter.denoiser.parameters(), lr=1e-5)
    full_opt = torch.optim.Adam(adapter.parameters(), lr=1e-5)
    generator = torch.Generator(device=device).manual_seed(0)

    def bare():
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        with autocast(settings, device):
            prediction = adapter.denoiser(scheduler.add_noise(x0, noise, t), y, t)
        loss = F.mse_loss(prediction.float(), noise)
        bare_opt.zero_grad()
        loss.backward()
        bare_opt.step()

    def full():
        with autocast(settings, device):
            loss = adapter.training_loss(x0, y, generator=generator).loss
        full_opt.zero_grad()
        loss.backward()
        full_opt.step()

    return bare, full


def measure(adapter, steps, restore, settings, device) -> dict:
    """Time and peak memory of the (baseline, RestoreGrad) training ``steps``, and the time of
    ``restore(adapter)`` in mode "ddpm" (sigma = 1) against the learned prior."""
    bare, full = steps
    counts = parameter_counts(adapter)
    result = {"denoiser_parameters": counts["denoiser"], "encoder_parameters": counts["encoders"],
              "train_step": compare(bare, full, settings.repeats, device)}
    result["train_peak_memory_bytes"] = step_peak_memory(bare, full, device)

    result["train_samples_per_s"] = {
        "baseline": settings.batch_size / result["train_step"]["baseline_s"],
        "restoregrad": settings.batch_size / result["train_step"]["restoregrad_s"]}
    result["train_step_vs_matmul_ceiling"] = ceiling_fraction(steps, result["train_step"], settings, device)

    def restoring(mode):
        def run():
            adapter.mode = mode
            with torch.no_grad(), autocast(settings, device):
                restore(adapter)
        return run

    result["restore"] = compare(restoring("ddpm"), restoring("restoregrad"), settings.repeats, device)
    adapter.mode = "restoregrad"
    return result


def ceiling_fraction(steps, timing: dict, settings, device) -> dict:
    """FLOP/s a training step reaches (its counted FLOPs over its median time), as a fraction of a large
    matmul's in the step's precision."""
    bare, full = steps
    dtype = torch.bfloat16 if getattr(settings, "mixed_precision", "no") == "bf16" else torch.float32
    ceiling = matmul_flops_per_s(device, dtype, 8192 if device.type == "cuda" else 1024)
    out = {"matmul_flops_per_s": ceiling, "matmul_dtype": str(dtype).replace("torch.", "")}
    for name, step, seconds in (("baseline", bare, timing["baseline_s"]), ("restoregrad", full, timing["restoregrad_s"])):
        flops = step_flops(step)
        out[name] = {"flops_per_step": flops, "flops_per_s": flops / seconds, "fraction": flops / seconds / ceiling}
    return out


def weather_setup(settings, device):
    """The WeatherDiff adapter of ``settings.weather_unet`` and its (bare DDPM step, RestoreGrad step) closures."""
    from restoregrad_adapter import RestoreGrad
    from restoregrad_adapter.integrations.weatherdiff import wrap
    from restoregrad_adapter.contrib.reference_nets import WeatherUNet

    size = settings.patch_size
    unet = (WeatherUNet(image_size=size) if settings.weather_unet == "weatherdiff64"
            else WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=size))
    adapter = RestoreGrad.with_encoders(wrap(unet, patch_size=size), dims=2, in_channels=3,
                                        size=settings.encoder_size, encoder=settings.encoder).to(device)
    x0 = torch.rand(settings.batch_size, 3, size, size, device=device) * 2 - 1
    y = (x0 + 0.2 * torch.randn_like(x0)).clamp(-1, 1)
    return adapter, training_pair(adapter, x0, y, device, settings)


def bench_weather(settings, device) -> dict:
    """WeatherDiff: a training step on patches; ``restore_image`` of an image of 4 overlapping patches."""
    from restoregrad_adapter.integrations.weatherdiff import restore_image

    adapter, steps = weather_setup(settings, device)
    size = settings.patch_size
    image = torch.rand(1, 3, size + size // 2, size + size // 2, device=device) * 2 - 1

    def restore(adapter):
        restore_image(adapter, image, patch_size=size, stride=size // 2, num_inference_steps=settings.sampling_steps,
                      generator=torch.Generator(device=device).manual_seed(0), progress=False)

    return measure(adapter, steps, restore, settings, device)


def speech_setup(settings, device):
    """The CDiffuSE adapter of ``settings.speech_model``, its (CDiffuSE step, RestoreGrad step) closures and a
    noisy input."""
    from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad
    from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser

    model = (DiffWaveDenoiser() if settings.speech_model == "cdiffuse"
             else DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32))
    adapter = CDiffuSERestoreGrad.from_model(model, size=settings.encoder_size, encoder=settings.encoder).to(device)
    x0 = 0.3 * torch.randn(settings.batch_size, 1, 256 * settings.speech_frames, device=device)
    y = x0 + 0.1 * torch.randn_like(x0)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-5)

    def step(mode):  # mode "ddpm" is CDiffuSE itself: its process and loss with sigma = 1
        def run():
            adapter.mode = mode
            with autocast(settings, device):
                loss = adapter.training_loss(x0, y, generator=torch.Generator(device=device).manual_seed(1)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    return adapter, (step("ddpm"), step("restoregrad")), y[:1]


def bench_speech(settings, device) -> dict:
    """CDiffuSE: a training step on waveforms; ``CDiffuSERestoreGrad.restore`` with its 6-step fast sampler."""
    adapter, steps, noisy = speech_setup(settings, device)

    def restore(adapter):
        adapter.restore(noisy, generator=torch.Generator(device=device).manual_seed(0), progress=False)

    return measure(adapter, steps, restore, settings, device)


def page_faults(fn, calls: int) -> float | None:
    """Minor page faults of the process per call, over one run of ``fn`` that makes ``calls`` calls (None where
    the ``resource`` module is missing). On a CPU they tell whether freed memory went back to the system and
    had to be mapped again: glibc gives the top of its heap back once more than its trim threshold (twice
    the largest block it has freed) is free there, which two freed temporaries of a 1 x 3 x 256 x 256 sample
    (768 KiB each) reach."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


#: The samples of the scheduler-step comparison: a small image's and a large one's.
SCHEDULER_SHAPES = ((1, 3, 64, 64), (1, 3, 256, 256))
#: How LearnedPriorScheduler.step is called in each case: "checked" is the default step (``validate_args=True``:
#: it checks the map's values, one host synchronisation, as a user's own loop does), "unchecked" the
#: library's restoration loop's (the map checked once per restoration, every step ``validate_args=False``),
#: "no_prior" the step without a map (DDPM's own step).
SCHEDULER_CASES = ("checked", "unchecked", "no_prior")


def bench_scheduler(settings, device) -> dict:
    """One reverse step at training step 500: ``DDPMScheduler.step`` against ``LearnedPriorScheduler.step``
    with a sigma map, on each of ``SCHEDULER_SHAPES``, in each of ``SCHEDULER_CASES``.

    Each comparison times ``settings.scheduler_steps`` steps of each scheduler, interleaved and repeated
    ``settings.scheduler_repeats`` times; both loops draw their noise from a generator seeded alike.
    ``cases`` holds every comparison, with the time of one step and the page faults of one more run of each
    loop (:func:`page_faults`); the top-level ratio is the first case (the smaller sample, "checked"), the
    one this benchmark reported before it measured the others."""
    from diffusers import DDPMScheduler

    from restoregrad_adapter import LearnedPriorScheduler

    ours, stock = LearnedPriorScheduler(), DDPMScheduler(clip_sample=False)
    steps, repeats = settings.scheduler_steps, settings.scheduler_repeats

    def loop(step):
        def run():
            generator = torch.Generator(device=device).manual_seed(0)
            for _ in range(steps):
                step(generator)
        return run

    def compared(output, sample, kwargs):
        baseline = loop(lambda g: stock.step(output, 500, sample, generator=g))
        candidate = loop(lambda g: ours.step(output, 500, sample, generator=g, **kwargs))
        r = compare(baseline, candidate, repeats, device)
        for name, run in (("baseline", baseline), ("restoregrad", candidate)):
            r[f"{name}_us_per_step"] = r[f"{name}_s"] / steps * 1e6
            r[f"{name}_page_faults_per_step"] = page_faults(run, steps)
        return r

    cases = []
    for shape in SCHEDULER_SHAPES:
        sample = torch.randn(shape, device=device)
        output = torch.randn_like(sample)
        sigma = torch.rand_like(sample) + 0.1
        for case in SCHEDULER_CASES:
            kwargs = {} if case == "no_prior" else {"prior_std": sigma, "validate_args": case == "checked"}
            cases.append({"shape": list(shape), "case": case, **compared(output, sample, kwargs)})
    return {"steps": steps, "repeats": repeats, "timestep": 500, "cases": cases,
            **{k: cases[0][k] for k in ("baseline_s", "restoregrad_s", "ratio", "ratio_min", "ratio_max")}}
