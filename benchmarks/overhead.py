"""What the adapter costs: time of a training step and of a restoration, with and without RestoreGrad.

Ratios are measured within one run, the two variants interleaved and repeated, so machine noise
affects both alike; the median ratio is reported with its spread (min-max over repetitions).

    python benchmarks/overhead.py                     # WeatherDiff64 and CDiffuSE sizes
    python benchmarks/overhead.py --smoke             # tiny sizes, seconds (what CI runs)

Measured:
- training step (forward + backward + Adam) of the bare denoiser with the standard DDPM loss, against
  the same denoiser inside RestoreGrad (Prior Net, Posterior Net, eq. 10 loss);
- restoration: the same sampler with sigma = 1 (mode "ddpm") against the learned prior (Prior Net
  once, sigma-scaled noise every step);
- one scheduler step: LearnedPriorScheduler.step with a sigma map against DDPMScheduler.step;
- peak tensor memory of a training step (parameters, gradients, optimizer state, activations): on CUDA
  the allocator's peak; on CPU the peak of the torch profiler's memory timeline over one step.
Writes overhead.json and overhead.png to --output_dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from examples.training_common import save_figure, write_json  # noqa: E402


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


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


def training_pair(adapter, x0, y, device):
    """(bare DDPM step, RestoreGrad step) closures on the same denoiser."""
    scheduler = adapter.scheduler
    bare_opt = torch.optim.Adam(adapter.denoiser.parameters(), lr=1e-5)
    full_opt = torch.optim.Adam(adapter.parameters(), lr=1e-5)
    generator = torch.Generator(device=device).manual_seed(0)

    def bare():
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=device)
        noise = torch.randn(x0.shape, generator=generator, device=device)
        loss = F.mse_loss(adapter.denoiser(scheduler.add_noise(x0, noise, t), y, t), noise)
        bare_opt.zero_grad()
        loss.backward()
        bare_opt.step()

    def full():
        loss = adapter.training_loss(x0, y, generator=generator).loss
        full_opt.zero_grad()
        loss.backward()
        full_opt.step()

    return bare, full


def weather_setup(args, device):
    """WeatherDiff64 (smoke: a tiny UNet): the adapter and its (bare DDPM step, RestoreGrad step) closures."""
    from restoregrad_adapter import RestoreGrad
    from restoregrad_adapter.integrations.weatherdiff import wrap
    from restoregrad_adapter.reference_nets import WeatherUNet

    size = 16 if args.smoke else 64
    unet = (WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=size) if args.smoke
            else WeatherUNet(image_size=size))  # WeatherDiff64: ch 128, multipliers (1, 2, 3, 4)
    adapter = RestoreGrad.with_encoders(wrap(unet, patch_size=size), dims=2, in_channels=3,
                                        size="tiny" if args.smoke else "base").to(device)
    x0 = torch.rand(args.batch_size, 3, size, size, device=device) * 2 - 1
    y = (x0 + 0.2 * torch.randn_like(x0)).clamp(-1, 1)
    return adapter, training_pair(adapter, x0, y, device)


def bench_weather(args, device) -> dict:
    from restoregrad_adapter.integrations.weatherdiff import restore_image

    adapter, (bare, full) = weather_setup(args, device)
    size = adapter.denoiser.patch_size
    result = {"denoiser_parameters": sum(p.numel() for p in adapter.denoiser.parameters()),
              "encoder_parameters": sum(p.numel() for n in (adapter.prior_net, adapter.posterior_net)
                                        for p in n.parameters()),
              "train_step": compare(bare, full, args.repeats, device)}
    result["train_peak_memory_bytes"] = step_peak_memory(bare, full, device)
    image = torch.rand(1, 3, size + size // 2, size + size // 2, device=device) * 2 - 1  # 4 overlapping patches

    def restore(mode):
        def run():
            adapter.mode = mode
            with torch.no_grad():
                restore_image(adapter, image, patch_size=size, stride=size // 2, num_inference_steps=args.sampling_steps,
                              generator=torch.Generator(device=device).manual_seed(0), progress=False)
        return run

    result["restore"] = compare(restore("ddpm"), restore("restoregrad"), args.repeats, device)
    adapter.mode = "restoregrad"
    return result


def speech_setup(args, device):
    """CDiffuSE size (smoke: tiny): the adapter, its (CDiffuSE step, RestoreGrad step) closures, a noisy input."""
    from restoregrad_adapter.integrations.cdiffuse import CDiffuSERestoreGrad
    from restoregrad_adapter.reference_nets import DiffWaveDenoiser

    model = (DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32) if args.smoke
             else DiffWaveDenoiser())  # CDiffuSE: 30 residual layers, 64 channels
    adapter = CDiffuSERestoreGrad.from_model(model, size="tiny" if args.smoke else "base").to(device)
    length = 256 * (8 if args.smoke else 63)  # about one second at 16 kHz
    x0 = 0.3 * torch.randn(args.batch_size, 1, length, device=device)
    y = x0 + 0.1 * torch.randn_like(x0)
    optimizer = torch.optim.Adam(adapter.parameters(), lr=1e-5)

    def step(mode):  # mode "ddpm" is CDiffuSE itself: its process and loss with sigma = 1
        def run():
            adapter.mode = mode
            loss = adapter.training_loss(x0, y, generator=torch.Generator(device=device).manual_seed(1)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    return adapter, (step("ddpm"), step("restoregrad")), y[:1]


def bench_speech(args, device) -> dict:
    adapter, (bare, full), noisy = speech_setup(args, device)
    result = {"denoiser_parameters": sum(p.numel() for p in adapter.denoiser.parameters()),
              "encoder_parameters": sum(p.numel() for n in (adapter.prior_net, adapter.posterior_net)
                                        for p in n.parameters()),
              "train_step": compare(bare, full, args.repeats, device)}
    result["train_peak_memory_bytes"] = step_peak_memory(bare, full, device)

    def restore(mode):
        def run():
            adapter.mode = mode
            adapter.restore(noisy, generator=torch.Generator(device=device).manual_seed(0))
        return run

    result["restore"] = compare(restore("ddpm"), restore("restoregrad"), args.repeats, device)
    adapter.mode = "restoregrad"
    return result


def bench_scheduler(args, device) -> dict:
    from diffusers import DDPMScheduler

    from restoregrad_adapter import LearnedPriorScheduler

    ours, stock = LearnedPriorScheduler(), DDPMScheduler(clip_sample=False)
    sample = torch.randn(1, 3, 64, 64, device=device)
    output = torch.randn_like(sample)
    sigma = torch.rand_like(sample) + 0.1
    reps = 20 if args.smoke else 500

    def loop(step):
        def run():
            generator = torch.Generator(device=device).manual_seed(0)
            for _ in range(reps):
                step(generator)
        return run

    return compare(loop(lambda g: stock.step(output, 500, sample, generator=g)),
                   loop(lambda g: ours.step(output, 500, sample, generator=g, prior_std=sigma)), args.repeats, device)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, ratios, low, high = [], [], [], []
    for task in ("weather", "speech"):
        for what in ("train_step", "restore"):
            r = results[task][what]
            labels.append(f"{task}\n{what.replace('_', ' ')}")
            ratios.append(r["ratio"])
            low.append(r["ratio"] - r["ratio_min"])
            high.append(r["ratio_max"] - r["ratio"])
    r = results["scheduler_step"]
    labels.append("scheduler\nstep")
    ratios.append(r["ratio"])
    low.append(r["ratio"] - r["ratio_min"])
    high.append(r["ratio_max"] - r["ratio"])
    colors = ["tab:blue"] * len(labels)
    for task in ("weather", "speech"):  # one measurement each: no spread
        if results[task]["train_peak_memory_bytes"]["ratio"] is None:
            continue
        labels.append(f"{task}\nstep memory")
        ratios.append(results[task]["train_peak_memory_bytes"]["ratio"])
        low.append(0.0)
        high.append(0.0)
        colors.append("tab:orange")
    fig, ax = plt.subplots(figsize=(9.5, 3.8))
    ax.bar(labels, ratios, yerr=[low, high], capsize=4, color=colors)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("with RestoreGrad / without\n(blue: time, orange: peak memory)")
    ax.set_title(f"RestoreGrad overhead ({results['machine']['device']})")
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and few repetitions (seconds)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--sampling_steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output_dir", default="outputs/benchmarks")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (2 if args.smoke else 5)
    device = torch.device(args.device)
    torch.manual_seed(0)
    results = {"machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                           f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})",
                           "torch": torch.__version__, "smoke": args.smoke, "repeats": args.repeats,
                           "batch_size": args.batch_size}}
    for name, bench in (("weather", bench_weather), ("speech", bench_speech), ("scheduler_step", bench_scheduler)):
        print(f"measuring {name} ...", flush=True)
        results[name] = bench(args, device)
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(args.output_dir, "overhead.json")
    write_json(results, path)
    plot(results, os.path.join(args.output_dir, "overhead.png"))
    for task in ("weather", "speech"):
        for what in ("train_step", "restore"):
            r = results[task][what]
            print(f"{task:8s} {what:10s} {r['baseline_s'] * 1e3:9.1f} ms -> {r['restoregrad_s'] * 1e3:9.1f} ms  "
                  f"ratio {r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]")
        memory = results[task]["train_peak_memory_bytes"]
        if memory["ratio"] is not None:
            print(f"{task:8s} step memory {memory['baseline'] / 2**20:7.1f} MiB -> "
                  f"{memory['restoregrad'] / 2**20:7.1f} MiB  ratio {memory['ratio']:.3f}  ({memory['what']})")
    r = results["scheduler_step"]
    print(f"scheduler step ratio {r['ratio']:.3f} [{r['ratio_min']:.3f}, {r['ratio_max']:.3f}]")
    print(f"wrote {path} and overhead.png")
    return results


if __name__ == "__main__":
    main()
