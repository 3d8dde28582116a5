"""Benchmarks run in their seconds-long smoke configuration (timings are not asserted: they are noisy;
the scripts must run and write their raw numbers and plots), and the CPU memory measure against closed forms."""

import json
import re
import subprocess
import sys
from pathlib import Path

from benchmark_modules import load

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/overhead.py", "--preset", "smoke", "--output_dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "overhead.json").read_text())
    for task in ("weather", "speech"):
        for what in ("train_step", "restore"):
            r = results[task][what]
            assert r["baseline_s"] > 0 and r["restoregrad_s"] > 0
            assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert results[task]["encoder_parameters"] > 0
        memory = results[task]["train_peak_memory_bytes"]
        assert memory["baseline"] > 0 and memory["restoregrad"] > memory["baseline"]  # the encoders' share
        assert memory["ratio"] == memory["restoregrad"] / memory["baseline"]
        throughput, timing = results[task]["train_samples_per_s"], results[task]["train_step"]
        assert throughput["baseline"] == results["machine"]["batch_size"] / timing["baseline_s"]
        assert throughput["restoregrad"] == results["machine"]["batch_size"] / timing["restoregrad_s"]
        ceiling = results[task]["train_step_vs_matmul_ceiling"]
        assert ceiling["matmul_dtype"] == "float32" and ceiling["matmul_flops_per_s"] > 0
        # The encoders add work; each fraction is the step's FLOP/s over the matmul's.
        assert ceiling["restoregrad"]["flops_per_step"] > ceiling["baseline"]["flops_per_step"] > 0
        for variant in ("baseline", "restoregrad"):
            c = ceiling[variant]
            assert c["flops_per_s"] == c["flops_per_step"] / timing[f"{variant}_s"]
            assert c["fraction"] == c["flops_per_s"] / ceiling["matmul_flops_per_s"]
    assert results["scheduler_step"]["ratio"] > 0 and results["preset"]["name"] == "smoke"
    scheduler = results["scheduler_step"]
    assert scheduler["repeats"] == results["preset"]["values"]["scheduler_repeats"] == 2
    assert scheduler["steps"] == results["preset"]["values"]["scheduler_steps"] == 20
    # Both sizes, each with the map checked at every step, unchecked (the restoration loop's) and without a map.
    assert [(c["shape"], c["case"]) for c in scheduler["cases"]] == [
        (shape, case) for shape in ([1, 3, 64, 64], [1, 3, 256, 256]) for case in ("checked", "unchecked", "no_prior")]
    for c in scheduler["cases"]:
        assert c["baseline_s"] > 0 and c["restoregrad_s"] > 0 and c["ratio_min"] <= c["ratio"] <= c["ratio_max"]
        assert c["baseline_us_per_step"] == c["baseline_s"] / scheduler["steps"] * 1e6
        assert c["restoregrad_us_per_step"] == c["restoregrad_s"] / scheduler["steps"] * 1e6
        assert c["baseline_page_faults_per_step"] >= 0 and c["restoregrad_page_faults_per_step"] >= 0
    first = scheduler["cases"][0]  # the top-level ratio: the small sample, checked
    assert all(scheduler[k] == first[k] for k in ("baseline_s", "restoregrad_s", "ratio", "ratio_min", "ratio_max"))
    for shape in ("1 x 3 x 64 x 64", "1 x 3 x 256 x 256"):
        for case in ("checked", "unchecked", "no_prior"):
            assert re.search(rf"scheduler step {shape} +{case} .*ratio .*target <= 1\.2", out.stdout), (shape, case)
    assert results["preset"]["values"]["repeats"] == results["machine"]["repeats"] == 2
    assert results["machine"]["clock"] == "process CPU time" and results["machine"]["encoder"] == "reduced"
    assert results["targets"] == {"train_step": 1.05, "train_peak_memory": 1.10, "restore": 1.01,
                                  "scheduler_step": 1.2}
    assert "target <= 1.05" in out.stdout
    assert (tmp_path / "overhead.png").stat().st_size > 1000


def test_step_flops_and_bf16_autocast_match_closed_forms(monkeypatch):
    """A linear layer's forward is 2 * batch * in * out FLOPs; its backward as much again for the weight's
    gradient, and again for the input's when the input needs one. Under the
    benchmark's "bf16" setting the forward runs in bfloat16, under "no" in float32."""
    import argparse

    import torch

    costs = load(monkeypatch, "tasks", "costs")
    model = torch.nn.Linear(64, 32)
    x = torch.randn(8, 64)
    with torch.no_grad():
        assert costs.step_flops(lambda: model(x)) == 2 * 8 * 64 * 32
    assert costs.step_flops(lambda: model(x).sum().backward()) == 2 * 2 * 8 * 64 * 32
    x.requires_grad_(True)
    assert costs.step_flops(lambda: model(x).sum().backward()) == 3 * 2 * 8 * 64 * 32
    cpu = torch.device("cpu")
    with costs.autocast(argparse.Namespace(mixed_precision="bf16"), cpu):
        assert model(x).dtype == torch.bfloat16
    with costs.autocast(argparse.Namespace(mixed_precision="no"), cpu):
        assert model(x).dtype == torch.float32
    assert costs.matmul_flops_per_s(cpu, torch.float32, 64, repeats=2) > 0


def test_cpu_peak_memory_counts_the_tensors_a_step_holds(monkeypatch):
    """Closed forms: a no-grad forward of a linear layer holds its parameters (and a 1 x 1000 output);
    an Adam step holds at least parameters, gradients and the two moment buffers."""
    import torch

    costs = load(monkeypatch, "tasks", "costs")
    torch.manual_seed(0)
    model = torch.nn.Linear(1000, 1000)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    x = torch.randn(1, 1000)

    def forward():
        with torch.no_grad():
            model(x)

    assert parameter_bytes <= costs.cpu_peak_memory(forward) <= parameter_bytes + 16 * 1000

    optimizer = torch.optim.Adam(model.parameters())

    def train():
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert costs.cpu_peak_memory(train) >= 4 * parameter_bytes
