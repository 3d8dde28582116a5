"""Benchmarks run in their seconds-long smoke configuration (the measurements are not asserted:
timings are noisy; the scripts must run and write their raw numbers and plots)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_overhead_benchmark_smoke(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/overhead.py", "--smoke", "--output_dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "overhead.json").read_text())
    for task in ("weather", "speech"):
        for what in ("train_step", "restore"):
            r = results[task][what]
            assert r["baseline_s"] > 0 and r["restoregrad_s"] > 0
            assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
        assert results[task]["encoder_parameters"] > 0
    assert results["scheduler_step"]["ratio"] > 0 and results["machine"]["smoke"] is True
    assert (tmp_path / "overhead.png").stat().st_size > 1000
