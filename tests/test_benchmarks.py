"""Benchmarks run in their seconds-long smoke configuration (timings are not asserted: they are noisy;
the scripts must run and write their raw numbers and plots), and the CPU memory measure against closed forms."""

import json
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
    assert results["scheduler_step"]["ratio"] > 0 and results["preset"]["name"] == "smoke"
    assert results["preset"]["values"]["repeats"] == results["machine"]["repeats"] == 2
    assert (tmp_path / "overhead.png").stat().st_size > 1000


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
