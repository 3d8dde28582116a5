"""benchmarks/convergence.py in its seconds-long smoke configuration, both tasks: it must run and write
per-seed curves for every mode, the chosen learning rates, the headline and the plot (the numbers of a
few training steps are not asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ddpm", "priorgrad", "restoregrad_no_posterior", "restoregrad")


@pytest.mark.parametrize("task, metric", [("speech", "si_snr"), ("image", "psnr_y")])
def test_convergence_benchmark_smoke(tmp_path, task, metric):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "benchmarks/convergence.py", "--task", task, "--smoke",
                          "--output_dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / f"convergence_{task}.json").read_text())
    assert results["task"] == task and results["machine"]["smoke"] is True
    assert results["modes"] == list(MODES)
    steps = results["steps"]
    assert steps[0] == 0 and steps[-1] == results["config"]["steps"] and steps == sorted(steps)
    for mode in MODES:
        assert results["chosen_learning_rates"][mode] in results["config"]["learning_rates"]
        runs = results["curves"][mode]
        assert set(runs) == {str(s) for s in results["seeds"]}
        for run in runs.values():
            assert run["steps"] == steps
            assert len(run["metrics"][metric]) == len(steps)
            assert all(math.isfinite(v) for v in run["metrics"][metric])
            assert all(math.isfinite(v) for v in run["train_loss"])
        summary = results["summary"][mode][metric]
        assert all(math.isfinite(v) for k in ("mean", "std", "min", "max") for v in summary[k])
    headline = results["headline"]
    assert headline["metric"] == metric and math.isfinite(headline["target"])
    assert headline["target"] == results["summary"]["ddpm"][metric]["mean"][-1]
    for mode in MODES:
        h = headline["modes"][mode]
        assert set(h) >= {"final_mean", "final_std", "steps_to_reach_ddpm_final", "reached", "speedup_vs_ddpm"}
        assert h["reached"] == (h["steps_to_reach_ddpm_final"] is not None)
    assert headline["modes"]["ddpm"]["reached"]  # its own final value, at the latest at the last step
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
    assert (tmp_path / f"convergence_{task}.png").stat().st_size > 1000


def test_parallel_workers_give_the_same_runs_as_one_process(tmp_path):
    """Runs are independent: two worker processes of one thread each reproduce a one-thread sequential run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for workers in (1, 2):
        out_dir = tmp_path / f"workers{workers}"
        out = subprocess.run([sys.executable, "benchmarks/convergence.py", "--task", "speech", "--smoke",
                              "--learning_rates", "1e-3", "3e-3", "--workers", str(workers),
                              "--threads", str(workers), "--output_dir", str(out_dir)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        results[workers] = json.loads((out_dir / "convergence_speech.json").read_text())
    assert results[2]["machine"]["workers"] == 2
    for mode in MODES:
        for lr, run in results[1]["learning_rate_search"][mode].items():
            assert results[2]["learning_rate_search"][mode][lr]["curve"] == run["curve"]
        assert results[2]["curves"][mode]["0"]["train_loss"] == results[1]["curves"][mode]["0"]["train_loss"]
    assert results[2]["headline"] == results[1]["headline"]
