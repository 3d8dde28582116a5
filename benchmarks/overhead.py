"""What the adapter costs: time of a training step and of a restoration, and peak training memory,
with and without RestoreGrad (what is measured: costs.py).

    python benchmarks/overhead.py                     # WeatherDiff64 and CDiffuSE sizes
    python benchmarks/overhead.py --preset smoke      # tiny sizes, seconds (what CI runs)

Writes overhead.json (with the preset's values) and overhead.png to --output_dir.
"""

from __future__ import annotations

import platform

import torch

import costs
import options
import report

# setting: (its value in preset "default", in preset "smoke")
OVERHEAD_PRESET = {"repeats": (5, 2), "scheduler_steps": (500, 20), "scheduler_repeats": (21, 2),
                   "weather_unet": ("weatherdiff64", "tiny"),
                   "patch_size": (64, 16), "speech_model": ("cdiffuse", "tiny"), "speech_frames": (63, 8),
                   "encoder_size": ("base", "tiny")}


def parse_args(argv=None):
    parser = options.preset_parser(__doc__, {"overhead": OVERHEAD_PRESET})
    parser.add_argument("--repeats", type=int, help="interleaved repetitions of each comparison")
    parser.add_argument("--scheduler_steps", type=int, help="scheduler steps per timed loop")
    parser.add_argument("--scheduler_repeats", type=int,
                        help="interleaved repetitions of each scheduler-step comparison (a step takes microseconds "
                             "to milliseconds, so its ratio needs more of them than the others)")
    parser.add_argument("--weather_unet", choices=("weatherdiff64", "tiny"))
    parser.add_argument("--patch_size", type=int, help="WeatherDiff patch side")
    parser.add_argument("--speech_model", choices=("cdiffuse", "tiny"))
    parser.add_argument("--speech_frames", type=int, help="training waveform length in 256-sample frames")
    parser.add_argument("--encoder_size", choices=("tiny", "base", "large"))
    parser.add_argument("--encoder", choices=("reduced", "paper"), default="reduced",
                        help="the library's default reduced-resolution encoders, or the paper's full-resolution ones")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--sampling_steps", type=int, default=10, help="DDIM steps of the image restoration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--mixed_precision", choices=("no", "bf16"), default="no",
                        help="bf16: forward passes under bfloat16 autocast (loss terms in float32)")
    args = parser.parse_args(argv)
    args.preset_record = options.apply_preset(args, OVERHEAD_PRESET)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"error: --threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                           f"CPU, {torch.get_num_threads()} threads ({platform.processor() or platform.machine()})",
                           "torch": torch.__version__, "repeats": args.repeats, "batch_size": args.batch_size,
                           "clock": costs.clock_name(device), "encoder": args.encoder,
                           "mixed_precision": args.mixed_precision},
               "targets": costs.TARGETS,
               "preset": args.preset_record}
    for name, bench in (("weather", costs.bench_weather), ("speech", costs.bench_speech),
                        ("scheduler_step", costs.bench_scheduler)):
        print(f"measuring {name} ...", flush=True)
        results[name] = bench(args, device)
    path = report.write(results, args.output_dir, "overhead", report.plot_overhead)
    report.print_overhead(results)
    print(f"wrote {path} and overhead.png")
    return results


if __name__ == "__main__":
    main()
