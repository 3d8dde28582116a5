"""benchmarks/sampling.py: its fast-sampling schedules against CDiffuSE's published ones, and its
seconds-long smoke configuration for both tasks (the numbers of a few training steps are not asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark_modules import load

ROOT = Path(__file__).resolve().parents[1]
MODES = ("ddpm", "priorgrad", "restoregrad_no_posterior", "restoregrad")


def test_fast_schedules_are_cdiffuses_and_end_below_one_half(monkeypatch):
    from restoregrad_adapter.integrations.cdiffuse import reverse_schedule
    from restoregrad_adapter.scheduler import FAST_INFERENCE_BETAS_3, FAST_INFERENCE_BETAS_6

    tasks = load(monkeypatch, "tasks")
    assert tasks.fast_inference_betas(6) == FAST_INFERENCE_BETAS_6
    assert tasks.fast_inference_betas(3) == FAST_INFERENCE_BETAS_3
    assert tasks.fast_inference_betas(5) == FAST_INFERENCE_BETAS_6[1:]
    assert tasks.fast_inference_betas(2) == pytest.approx((1 - 0.95 * 0.8, 0.35), abs=1e-12)
    assert tasks.fast_inference_betas(1) == pytest.approx((1 - 0.95 * 0.8 * 0.65,), abs=1e-12)
    for steps in range(1, 7):
        betas = tasks.fast_inference_betas(steps)
        assert len(betas) == steps
        assert math.prod(1 - b for b in betas) < 0.5  # what CDiffuSE's reverse process needs
        if steps <= 3:  # merged steps keep the 3-step schedule's final alpha_bar
            assert math.prod(1 - b for b in betas) == pytest.approx(0.95 * 0.8 * 0.65, rel=1e-12)
        training_betas = [1e-4 + (0.05 - 1e-4) * i / 49 for i in range(50)]  # CDiffuSE's training schedule
        assert len(reverse_schedule(training_betas, betas)) == steps
    for bad in (0, 7, 2.0, True):
        with pytest.raises(ValueError, match="num_steps"):
            tasks.fast_inference_betas(bad)


@pytest.mark.parametrize("task, metric, samplers", [
    ("speech", "si_snr", {mode: ["cdiffuse"] for mode in MODES}),
    ("image", "psnr_y", {**{mode: ["ddim"] for mode in MODES}, "restoregrad": ["ddim", "ddpm", "dpmsolver++"]}),
])
def test_sampling_benchmark_smoke(tmp_path, task, metric, samplers):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "benchmarks/sampling.py", "--task", task, "--preset", "smoke",
                          "--output_dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / f"sampling_{task}.json").read_text())
    assert results["task"] == task and results["preset"]["name"] == "smoke"
    assert results["step_grid"] == results["preset"]["values"]["step_grid"]
    assert set(results["input_quality"]) == set(results["summary"]["ddpm"][samplers["ddpm"][0]])  # degraded input
    grid = results["step_grid"]
    assert grid == sorted(grid) and len(grid) >= 2
    for mode in MODES:
        assert sorted(results["summary"][mode]) == sorted(samplers[mode])
        for sampler in samplers[mode]:
            per_seed = results["raw"][mode][sampler]
            assert set(per_seed) == {str(s) for s in results["seeds"]}
            for values in per_seed.values():
                assert set(values) == {str(s) for s in grid}
                assert all(math.isfinite(v[metric]) for v in values.values())
            assert len(results["summary"][mode][sampler][metric]["mean"]) == len(grid)
    headline = results["headline"]
    assert headline["reference_steps"] == grid[-1]
    assert headline["target"] == results["summary"]["ddpm"][samplers["ddpm"][0]][metric]["mean"][-1]
    assert headline["modes"]["ddpm"][samplers["ddpm"][0]]["reached"]  # at the latest at its own reference
    assert not list(tmp_path.glob("*.tmp*"))
    assert (tmp_path / f"sampling_{task}.png").stat().st_size > 1000


def test_learning_rates_from_a_convergence_run_of_another_task_are_refused(tmp_path):
    (tmp_path / "convergence_image.json").write_text(json.dumps({"task": "image", "chosen_learning_rates": {}}))
    out = subprocess.run([sys.executable, "benchmarks/sampling.py", "--task", "speech", "--preset", "smoke",
                          "--learning_rates_from", str(tmp_path / "convergence_image.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--learning_rates_from" in out.stderr and "'image'" in out.stderr


def test_learning_rates_from_a_convergence_run_without_a_mode_are_refused(tmp_path):
    run = {"task": "speech", "config": {}, "modes": list(MODES), "chosen_learning_rates": {m: 1e-3 for m in MODES}}
    (tmp_path / "convergence_speech.json").write_text(json.dumps(run))
    out = subprocess.run([sys.executable, "benchmarks/sampling.py", "--task", "speech", "--preset", "smoke",
                          "--modes", "ddpm", "constant_prior", "--constant_prior_std", "0.2",
                          "--learning_rates_from", str(tmp_path / "convergence_speech.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "has no mode constant_prior" in out.stderr


def test_headline_flags_quality_that_falls_with_more_steps(monkeypatch):
    """The fewest-S ratio is a speed-up only when quality rises with S; falling quality is flagged."""
    report = load(monkeypatch, "report")

    def results(ddpm_mean, std=0.1):
        def entry(mean):
            return {"psnr_y": {"mean": mean, "std": [std] * len(mean)}}

        summary = {mode: {"ddim": entry(ddpm_mean)} for mode in MODES}
        summary["restoregrad"]["ddim"] = entry([11.0, 12.0, 12.5, 12.6])
        return {"task": "image", "step_grid": [2, 5, 10, 25], "summary": summary}

    rising = report.fewest_steps(results([10.0, 11.0, 12.0, 12.5]), "psnr_y")
    assert rising["target_is_saturated"] and rising["target"] == 12.5
    rg = rising["modes"]["restoregrad"]["ddim"]
    assert rg["steps_to_reach"] == 10 and rg["fewer_steps"] == 2.5
    assert rg["best_steps"] == 25 and not rg["falls_with_steps"]

    falling = report.fewest_steps(results([18.0, 13.0, 12.0, 11.5]), "psnr_y")
    ddpm = falling["modes"]["ddpm"]["ddim"]
    assert ddpm["best_steps"] == 2 and ddpm["best_mean"] == 18.0 and ddpm["falls_with_steps"]
    assert not falling["target_is_saturated"]
    # within the seeds' spread it is not called a fall
    assert report.fewest_steps(results([12.0, 11.6, 11.7, 11.5], std=0.6), "psnr_y")["target_is_saturated"]
