"""benchmarks/convergence.py in its seconds-long smoke preset, both tasks: it must run and write
per-seed curves for every mode, the chosen learning rates, the headline and the plot (the numbers of a
few training steps are not asserted); its presets, the constant-prior mode and --summarize_only."""

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
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def convergence_module(monkeypatch):
    return load(monkeypatch, "tasks", "options", "runner", "report", "convergence")


def run_convergence(*args, timeout=300):
    return subprocess.run([sys.executable, "benchmarks/convergence.py", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("task, metric", [("speech", "si_snr"), ("image", "psnr_y")])
def test_convergence_benchmark_smoke(tmp_path, task, metric):
    out = run_convergence("--task", task, "--preset", "smoke", "--output_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / f"convergence_{task}.json").read_text())
    assert results["task"] == task and results["preset"]["name"] == "smoke" and results["preset"]["given"] == {}
    assert results["modes"] == list(MODES)
    # the preset's values are printed, recorded, and are the run's settings
    assert "preset smoke: " in out.stdout
    for name, value in results["preset"]["values"].items():
        assert results["config"][name] == value or (name, task) == ("pesq", "speech")  # pesq: whether installed
    assert results["config"]["steps"] == 4 and results["config"]["seeds"] == [0]
    assert set(results["input_quality"]) == set(results["summary"]["ddpm"])  # the degraded input, every metric
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
    results = {}
    for workers in (1, 2):
        out_dir = tmp_path / f"workers{workers}"
        out = run_convergence("--task", "speech", "--preset", "smoke", "--learning_rates", "1e-3", "3e-3",
                              "--workers", str(workers), "--threads", str(workers), "--output_dir", str(out_dir))
        assert out.returncode == 0, out.stderr[-3000:]
        results[workers] = json.loads((out_dir / "convergence_speech.json").read_text())
    assert results[2]["machine"]["workers"] == 2
    assert results[2]["preset"]["given"] == {"learning_rates": [1e-3, 3e-3], "workers": 2}
    for mode in MODES:
        for lr, run in results[1]["learning_rate_search"][mode].items():
            assert results[2]["learning_rate_search"][mode][lr]["curve"] == run["curve"]
        assert results[2]["curves"][mode]["0"]["train_loss"] == results[1]["curves"][mode]["0"]["train_loss"]
    assert results[2]["headline"] == results[1]["headline"]


def test_evaluation_steps_resolve_early_convergence(monkeypatch):
    convergence = convergence_module(monkeypatch)
    runner = sys.modules["runner"]

    def evaluation_steps(argv):
        args = convergence.parse_args(argv)
        return sorted(runner.evaluation_steps(args.steps, args.eval_every, args.early_evals))

    assert evaluation_steps(["--task", "speech"]) == [50, 100, 150, 200, 250, 500, 750, 1000, 1250, 1500, 1750, 2000]
    assert evaluation_steps(["--task", "image", "--early_evals", "0", "--steps", "1100"]) == [250, 500, 750, 1000, 1100]
    short = ["--task", "speech", "--steps", "3", "--eval_every", "10", "--early_evals", "2"]
    assert evaluation_steps(short) == [1, 2, 3]


def test_default_preset_is_the_documented_setup(monkeypatch):
    """docs/benchmarks.md's setups: the default preset's values, whatever the machine."""
    convergence = convergence_module(monkeypatch)
    speech = convergence.parse_args(["--task", "speech", "--workers", "2"])
    assert (speech.steps, speech.eval_every, speech.early_evals, speech.seeds) == (2000, 250, 4, [0, 1, 2])
    assert (speech.recipe, speech.conditioner_channels) == ("paper", 64)
    assert speech.learning_rates == [3e-4, 1e-3, 3e-3] and speech.modes == list(MODES)
    assert (speech.residual_channels, speech.residual_layers, speech.batch_size, speech.crop_frames) == (16, 6, 4, 8)
    assert (speech.num_train, speech.num_eval, speech.seconds, speech.eval_frames) == (32, 4, 1.0, 32)
    assert (speech.latent_weight, speech.prior_matching_weight, speech.sigma_min) == (0.1, 0.5, 0.1)
    image = convergence.parse_args(["--task", "image", "--workers", "2"])
    assert (image.steps, image.eval_every, image.batch_size, image.patch_size, image.stride) == (2000, 250, 16, 16, 8)
    assert (image.unet_ch, image.unet_ch_mult, image.image_size, image.num_eval, image.sampling_steps) == (
        16, [1, 2], 32, 18, 10)
    assert (image.latent_weight, image.prior_matching_weight, image.num_train) == (0.01, 1.0, None)
    assert image.recipe == "restoring"
    assert convergence.parse_args(["--task", "image", "--recipe", "paper"]).recipe == "paper"


def test_recipe_ablations_override_one_setting_and_build_what_they_name(monkeypatch):
    """--prediction_type, --loss_weighting and --sigma_max change the recipe's setting and nothing else."""
    convergence = convergence_module(monkeypatch)
    import tasks

    args = convergence.parse_args(["--task", "image", "--preset", "smoke", "--loss_weighting", "elbo",
                                   "--sigma_max", "3"])
    assert tasks.recipe_of(args, "image") == {**tasks.RECIPES["restoring"]["image"], "loss_weighting": "elbo"}
    adapter = tasks.build_task(args).build(0, "restoregrad")
    assert adapter.prior_net.config.sigma_max == 3 and adapter.posterior_net.config.sigma_max == 3
    assert adapter.loss_fn.weighting == "elbo" and adapter.config.prediction_type == "sample"
    plain = convergence.parse_args(["--task", "image", "--preset", "smoke"])
    assert tasks.recipe_of(plain, "image") == tasks.RECIPES["restoring"]["image"] and plain.sigma_max is None
    v = convergence.parse_args(["--task", "speech", "--preset", "smoke", "--prediction_type", "v_prediction"])
    assert tasks.recipe_of(v, "speech")["prediction_type"] == "v_prediction"
    with pytest.raises(SystemExit):
        convergence.parse_args(["--task", "image", "--sigma_max", "0.5"])


def test_schedule_ablations_build_and_sample_what_they_name(monkeypatch):
    """--residual, --zero_terminal_snr and --timestep_spacing (images): the adapter diffuses what --residual
    says, its training schedule ends at abar_T = 0 exactly, and the held-out DDIM starts at t = T."""
    convergence = convergence_module(monkeypatch)
    import tasks
    from restoregrad_adapter.integrations import weatherdiff

    args = convergence.parse_args(["--task", "image", "--preset", "smoke", "--recipe", "paper", "--residual", "on",
                                   "--prediction_type", "v_prediction", "--zero_terminal_snr",
                                   "--timestep_spacing", "trailing"])
    assert tasks.recipe_of(args, "image") == {**tasks.RECIPES["paper"]["image"], "residual": True,
                                              "prediction_type": "v_prediction"}
    task = tasks.build_task(args)
    adapter = task.build(0, "restoregrad")
    assert adapter.residual and adapter.scheduler.alphas_cumprod[-1] == 0
    assert tasks.build_task(convergence.parse_args(["--task", "image", "--preset", "smoke"])).build(
        0, "ddpm").scheduler.alphas_cumprod[-1] > 1e-5  # the plain schedule: SNR about 4e-5 at t = T
    spacings = []
    real_restore_image = weatherdiff.restore_image
    monkeypatch.setattr(weatherdiff, "restore_image", lambda *a, **k: spacings.append(k["timestep_spacing"])
                        or real_restore_image(*a, **k))
    scores = task.evaluate(adapter, seed=0)
    assert set(spacings) == {"trailing"} and all(v == v for v in scores.values())  # finite: no 0/0 at t = T
    off = convergence.parse_args(["--task", "image", "--preset", "smoke", "--residual", "off"])
    assert not tasks.build_task(off).build(0, "ddpm").residual


@pytest.mark.parametrize("argv, error", [
    (["--task", "image", "--recipe", "paper", "--zero_terminal_snr"], "divides by sqrt(abar_T) = 0"),
    (["--task", "speech", "--residual", "on"], "are image settings"),
    (["--task", "speech", "--timestep_spacing", "trailing"], "are image settings"),
])
def test_schedule_ablations_refuse_what_cannot_work(monkeypatch, argv, error, capsys):
    convergence = convergence_module(monkeypatch)
    with pytest.raises(SystemExit):
        convergence.parse_args(argv)
    assert error in capsys.readouterr().err


def test_summarize_only_recomputes_the_headline_with_its_spread(tmp_path):
    run = run_convergence("--task", "speech", "--preset", "smoke", "--seeds", "0", "1",
                          "--output_dir", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "convergence_speech.json").read_text())
    # Make seed 1 of RestoreGrad reach DDPM's final mean at the second evaluation, seed 0 at the last.
    target = saved["headline"]["target"]
    steps = saved["steps"]
    saved["curves"]["restoregrad"]["0"]["metrics"]["si_snr"] = [target - 1] * (len(steps) - 1) + [target + 1]
    saved["curves"]["restoregrad"]["1"]["metrics"]["si_snr"] = [target - 1] + [target + 1] * (len(steps) - 1)

    def summarize_only(results: dict, name: str) -> dict:
        (tmp_path / f"{name}.json").write_text(json.dumps(results))
        out = run_convergence("--task", "speech", "--summarize_only", str(tmp_path / f"{name}.json"),
                              "--output_dir", str(tmp_path / name), timeout=120)
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

    # A run saved when the constant prior ran in PriorGrad's slot (--fixed_prior) and the loss weights were
    # eta and lam: summarised in today's terms.
    config = saved["config"]
    config["eta"], config["lam"] = config.pop("latent_weight"), config.pop("prior_matching_weight")
    config["fixed_prior"] = "0.25"
    del config["constant_prior_std"], config["modes"], saved["labels"], saved["headline_metric"], saved["preset"]
    renamed = summarize_only(saved, "renamed")
    assert renamed["modes"] == ["ddpm", "constant_prior", "restoregrad_no_posterior", "restoregrad"]
    assert renamed["labels"]["constant_prior"] == "constant prior (sigma 0.25)"
    assert renamed["config"]["constant_prior_std"] == 0.25 and renamed["config"]["latent_weight"] == 0.1
    assert renamed["headline"]["modes"]["constant_prior"] == older["headline"]["modes"]["priorgrad"]


def test_constant_prior_is_a_mode_of_its_own(tmp_path):
    """The ablation of the learned prior: a constant sigma everywhere, recorded, named in the report."""
    out = run_convergence("--task", "image", "--preset", "smoke", "--modes", "ddpm", "priorgrad", "constant_prior",
                          "--constant_prior_std", "0.25", "--output_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "constant prior (sigma 0.25)" in out.stdout
    results = json.loads((tmp_path / "convergence_image.json").read_text())
    assert results["config"]["constant_prior_std"] == 0.25
    assert results["modes"] == ["ddpm", "priorgrad", "constant_prior"]
    assert results["labels"]["constant_prior"] == "constant prior (sigma 0.25)"
    for sigma in results["curves"]["constant_prior"]["0"]["prior_std"]:
        assert sigma == {"mean": 0.25, "min": 0.25, "max": 0.25}
    assert results["curves"]["priorgrad"]["0"]["prior_std"][0]["min"] < 0.25 < 1.0  # PriorGrad's energy prior


@pytest.mark.parametrize("argv", [["--constant_prior_std", value] for value in ("abc", "0", "-1", "inf")])
def test_constant_prior_std_must_be_a_positive_number(monkeypatch, argv, capsys):
    convergence = convergence_module(monkeypatch)
    with pytest.raises(SystemExit):
        convergence.parse_args(["--task", "speech", "--modes", "ddpm", "constant_prior", *argv])
    assert "--constant_prior_std: must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("argv, error", [
    (["--modes", "ddpm", "constant_prior"], "--constant_prior_std and mode constant_prior in --modes go together"),
    (["--constant_prior_std", "0.2"], "--constant_prior_std and mode constant_prior in --modes go together"),
    (["--modes", "restoregrad"], "--modes must be distinct and include ddpm"),
    (["--modes", "ddpm", "ddpm"], "--modes must be distinct and include ddpm"),
])
def test_modes_are_checked(monkeypatch, argv, error, capsys):
    """constant_prior and its sigma go together; DDPM, the reference, is always run; no mode twice."""
    convergence = convergence_module(monkeypatch)
    with pytest.raises(SystemExit):
        convergence.parse_args(["--task", "speech", *argv])
    assert error in capsys.readouterr().err


@pytest.mark.parametrize("task, default, other",
                         [("speech", "stationary", "nonstationary"), ("image", "full", "partial")])
def test_degradation_is_a_per_task_choice_of_the_builtin_data(monkeypatch, capsys, task, default, other):
    """--degradation: the task's default when left out; the other task's names and --data_dir are refused; the
    task builds its built-in data with it (the same clean held-out signals, another degraded input)."""
    import torch

    convergence = convergence_module(monkeypatch)
    tasks = sys.modules["tasks"]
    smoke = ["--task", task, "--preset", "smoke"]
    assert convergence.parse_args(smoke).degradation == default
    wrong = {"speech": "partial", "image": "nonstationary"}[task]
    for argv, error in ((["--degradation", wrong], f"--degradation: the {task} task takes {default} or {other}"),
                        (["--degradation", other, "--data_dir", "data"], "--data_dir's pairs bring their own")):
        with pytest.raises(SystemExit):
            convergence.parse_args([*smoke, *argv])
        assert error in capsys.readouterr().err
    built = {name: tasks.build_task(convergence.parse_args([*smoke, "--degradation", name]))
             for name in (default, other)}
    assert other in built[other].description and default not in built[default].description
    quality = {name: t.input_quality()[tasks.HEADLINE_METRIC[task]] for name, t in built.items()}
    assert all(math.isfinite(v) for v in quality.values()) and quality[default] != quality[other]
    if task == "image":
        base, varied = (built[name].held_out for name in (default, other))
        assert all(torch.equal(x0, x0_other) for (x0, _), (x0_other, _) in zip(base, varied))
        assert quality["partial"] > quality["full"]  # the same weather over part of each image only
    else:
        base, varied = built[default].eval_clean, built[other].eval_clean
        assert abs(float((base * varied).sum() / (base.norm() * varied.norm())) - 1) < 1e-5  # up to the level


def test_degradation_smoke_is_recorded(tmp_path):
    out = run_convergence("--task", "image", "--preset", "smoke", "--modes", "ddpm", "--degradation", "partial",
                          "--output_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "convergence_image.json").read_text())
    assert results["config"]["degradation"] == "partial" and "over part of each image" in results["data"]
    assert all(math.isfinite(v) for v in results["curves"]["ddpm"]["0"]["metrics"]["psnr_y"])
