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
            # the prior's std on the held-out set at every evaluation: exactly 1 for DDPM, else positive,
            # and for the learned prior never below its floor sigma_min
            assert len(run["prior_std"]) == len(steps)
            for sigma in run["prior_std"]:
                assert sigma["min"] <= sigma["mean"] <= sigma["max"]
                if mode == "ddpm":
                    assert sigma == {"mean": 1.0, "min": 1.0, "max": 1.0}
                else:
                    assert sigma["min"] > 0
                if mode.startswith("restoregrad"):
                    assert sigma["min"] >= results["config"]["sigma_min"] - 1e-6
        summary = results["summary"][mode][metric]
        assert all(math.isfinite(v) for k in ("mean", "std", "min", "max") for v in summary[k])
    assert results["prior_std_summary"]["ddpm"]["mean"] == [1.0] * len(steps)
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


def test_evaluation_steps_resolve_early_convergence():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import convergence
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    speech = convergence.parse_args(["--task", "speech"])
    assert sorted(convergence.evaluation_steps(speech)) == [5, 10, 15, 20, 25, 50, 75, 100, 125, 150]
    image = convergence.parse_args(["--task", "image", "--early_evals", "0", "--steps", "1100"])
    assert sorted(convergence.evaluation_steps(image)) == [250, 500, 750, 1000, 1100]  # and always the last
    short = convergence.parse_args(["--task", "speech", "--steps", "3", "--eval_every", "10", "--early_evals", "2"])
    assert sorted(convergence.evaluation_steps(short)) == [1, 2, 3]


def test_summarize_only_recomputes_the_headline_with_its_spread(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "benchmarks/convergence.py", "--task", "speech", "--smoke", "--seeds", "0", "1",
                          "--output_dir", str(tmp_path / "run")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "convergence_speech.json").read_text())
    # Make seed 1 of RestoreGrad reach DDPM's final mean at the second evaluation, seed 0 at the last.
    target = saved["headline"]["target"]
    steps = saved["steps"]
    saved["curves"]["restoregrad"]["0"]["metrics"]["si_snr"] = [target - 1] * (len(steps) - 1) + [target + 1]
    saved["curves"]["restoregrad"]["1"]["metrics"]["si_snr"] = [target - 1] + [target + 1] * (len(steps) - 1)

    def summarize_only(results: dict, name: str) -> dict:
        (tmp_path / f"{name}.json").write_text(json.dumps(results))
        out = subprocess.run([sys.executable, "benchmarks/convergence.py", "--task", "speech", "--summarize_only",
                              str(tmp_path / f"{name}.json"), "--output_dir", str(tmp_path / name)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads((tmp_path / name / "convergence_speech.json").read_text())

    again = summarize_only(saved, "again")
    h = again["headline"]["modes"]["restoregrad"]
    assert h["per_seed_steps_to_reach"] == {"0": steps[-1], "1": steps[1]}
    assert h["speedup_min_median_max"] == [1.0, (1.0 + steps[-1] / steps[1]) / 2, steps[-1] / steps[1]]
    assert again["headline"]["largest_measurable_speedup"] == steps[-1] / steps[1]
    assert (tmp_path / "again" / "convergence_speech.png").stat().st_size > 1000
    assert again["prior_std_summary"]["ddpm"]["mean"] == [1.0] * len(steps)

    # A run saved before the prior's std was recorded is still summarised, without that summary.
    for runs in saved["curves"].values():
        for curve in runs.values():
            del curve["prior_std"]
    older = summarize_only(saved, "older")
    assert "prior_std_summary" not in older and older["headline"] == again["headline"]


def test_fixed_prior_can_be_a_constant(tmp_path):
    """The ablation of PriorGrad's slot: a constant sigma everywhere, recorded, named in the report."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "benchmarks/convergence.py", "--task", "image", "--smoke", "--fixed_prior",
                          "0.25", "--output_dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "constant prior (sigma 0.25)" in out.stdout
    results = json.loads((tmp_path / "convergence_image.json").read_text())
    assert results["config"]["fixed_prior"] == "0.25"
    for sigma in results["curves"]["priorgrad"]["0"]["prior_std"]:
        assert sigma == {"mean": 0.25, "min": 0.25, "max": 0.25}


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
def test_fixed_prior_refuses_what_is_not_energy_or_a_positive_number(value, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import convergence
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    with pytest.raises(SystemExit):
        convergence.parse_args(["--task", "speech", "--fixed_prior", value])
    assert "--fixed_prior must be 'energy' or a positive number" in capsys.readouterr().err
