"""The Accelerate training scripts run end to end on CPU in a tiny configuration, resume exactly,
and train on two processes; the helpers they share (restoregrad_adapter.contrib.training) behave."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY_WEATHER = ["--train_batch_size", "2", "--builtin_size", "40", "--patch_size", "16", "--num_validation_images",
                "1", "--num_inference_steps", "2", "--num_train_timesteps", "50", "--stride", "8", "--report_to",
                "none", "--max_validation_size", "40"]


def run(command, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def train_records(folder):
    with open(folder / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["kind"] == "train"]


def test_train_weather_writes_checkpoints_pictures_and_adapter(tmp_path):
    out = tmp_path / "run"
    log = run([sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--max_train_steps", "3",
               "--checkpointing_steps", "2", "--validation_steps", "2", "--output_dir", str(out)])
    assert "validation PSNR(Y)" in log and "saved the trained adapter" in log
    assert (out / "checkpoint-2").is_dir() and (out / "checkpoint-3").is_dir()
    pictures = sorted(p.name for p in (out / "validation").glob("*.png"))
    assert pictures == ["step-000000.png", "step-000002.png", "step-000003.png"]
    assert Image.open(out / "training_curves.png").size[0] > 300
    assert (out / "adapter" / "restoregrad_config.json").is_file()
    records = train_records(out)
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)

    from restoregrad_adapter import RestoreGrad

    adapter = RestoreGrad.from_pretrained(out / "adapter")
    assert adapter.config.integration == "weatherdiff" and adapter.metadata["metrics"]["psnr_y"] > 0


def test_resuming_continues_with_the_same_losses(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    common = [sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--checkpointing_steps", "2",
              "--validation_steps", "100"]
    run(common + ["--max_train_steps", "4", "--output_dir", str(straight)])
    run(common + ["--max_train_steps", "2", "--output_dir", str(resumed)])
    log = run(common + ["--max_train_steps", "4", "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    assert "resumed from" in log and "checkpoint-2" in log
    a, b = train_records(straight), train_records(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert x == y  # bit-identical loss terms


def test_two_process_cpu_training_saves_one_adapter(tmp_path):
    out = tmp_path / "ddp"
    # `accelerate launch --cpu --num_processes 2` starts several CPU processes only through MPI; torchrun's
    # launcher (--multi_gpu) with ACCELERATE_USE_CPU starts them without it, on the gloo backend.
    log = run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "examples/train_weather.py", *TINY_WEATHER, "--max_train_steps", "2", "--checkpointing_steps", "2",
               "--validation_steps", "100", "--mode", "restoregrad_no_posterior", "--output_dir", str(out)],
              env_extra={"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    assert "on 2 process(es)" in log
    assert (out / "adapter" / "restoregrad_config.json").is_file()
    assert len(list(tmp_path.glob("ddp/adapter*"))) == 1
    assert [r["step"] for r in train_records(out)] == [1, 2]


def test_train_weather_reads_a_raindrop_style_folder(tmp_path):
    data = tmp_path / "raindrop"
    for split in ("input", "gt"):
        (data / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        clean = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
        Image.fromarray(clean).save(data / "gt" / f"{i}_clean.png")
        Image.fromarray(np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8)).save(data / "input" / f"{i}_rain.png")
    out = tmp_path / "run"
    log = run([sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--train_data_dir", str(data),
               "--max_train_steps", "1", "--validation_steps", "1", "--checkpointing_steps", "1",
               "--output_dir", str(out)])
    assert "2 pairs from" in log
    shutil.rmtree(out)


TINY_SPEECH = ["--train_batch_size", "2", "--segment_length", "1024", "--builtin_utterances", "4",
               "--num_validation_utterances", "1", "--validation_seconds", "0.5", "--encoder_size", "tiny",
               "--report_to", "none"]


def test_train_speech_writes_checkpoints_pictures_wavs_and_adapter(tmp_path):
    out = tmp_path / "speech"
    log = run([sys.executable, "examples/train_speech.py", *TINY_SPEECH, "--max_train_steps", "2",
               "--checkpointing_steps", "2", "--validation_steps", "2", "--output_dir", str(out)])
    assert "validation SI-SNR" in log and "saved the trained adapter" in log
    assert (out / "checkpoint-2").is_dir()
    assert (out / "validation" / "step-000002.png").is_file()
    assert (out / "validation" / "step-000002-0-restored.wav").is_file()
    from restoregrad_adapter import RestoreGrad

    adapter = RestoreGrad.from_pretrained(out / "adapter")
    assert type(adapter).__name__ == "CDiffuSERestoreGrad" and adapter.config.sample_rate == 16000


def test_train_speech_reads_paired_folders_and_resamples(tmp_path):
    import soundfile

    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    clean_dir.mkdir(), noisy_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        clean = 0.3 * np.sin(2 * np.pi * 200 * np.arange(8000) / 8000 * (1 + i / 10)).astype(np.float32)
        soundfile.write(clean_dir / f"u{i}.wav", clean, 8000)  # 8 kHz: resampled to 16 kHz
        soundfile.write(noisy_dir / f"u{i}.wav", clean + 0.05 * rng.standard_normal(8000).astype(np.float32), 8000)
    out = tmp_path / "run"
    log = run([sys.executable, "examples/train_speech.py", *TINY_SPEECH, "--clean_dir", str(clean_dir), "--noisy_dir",
               str(noisy_dir), "--max_train_steps", "1", "--validation_steps", "1", "--checkpointing_steps", "1",
               "--output_dir", str(out)])
    assert "2 pairs from" in log and (out / "adapter").is_dir()


def test_restoregrad_restore_gives_a_held_out_file_exactly_what_validation_got(tmp_path):
    """Validation restores each held-out utterance whole, with the settings the adapter saves: the command
    line restoring the same file with that adapter writes the same samples."""
    import soundfile

    from restoregrad_adapter.cli import main as cli

    clean_dir, noisy_dir = tmp_path / "clean", tmp_path / "noisy"
    clean_dir.mkdir(), noisy_dir.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        length = 7001 + 300 * i  # not whole STFT frames
        clean = 0.3 * np.sin(2 * np.pi * 180 * (1 + i / 7) * np.arange(length) / 16000).astype(np.float32)
        soundfile.write(clean_dir / f"u{i}.wav", clean, 16000)
        soundfile.write(noisy_dir / f"u{i}.wav", 0.5 * clean + 0.04 * rng.standard_normal(length).astype(np.float32),
                        16000)
    out = tmp_path / "run"
    run([sys.executable, "examples/train_speech.py", *TINY_SPEECH, "--clean_dir", str(clean_dir), "--noisy_dir",
         str(noisy_dir), "--max_train_steps", "1", "--validation_steps", "1", "--checkpointing_steps", "1",
         "--final_blend", "0.2", "--clamp", "--sampling_start", "noisy", "--output_dir", str(out)])
    config = json.loads((out / "adapter" / "restoregrad_config.json").read_text())
    restoration = config["config"]["restoration"]
    assert restoration["mix_noisy"] == 0.2 and restoration["initial"] == "noisy"
    assert cli(["restore", "--adapter", str(out / "adapter"), str(noisy_dir / "u2.wav"), "-o", str(tmp_path / "cli"),
                "--quiet"]) == 0
    by_validation, _ = soundfile.read(out / "validation" / "step-000001-0-restored.wav", dtype="int16")
    by_command, _ = soundfile.read(tmp_path / "cli" / "u2.wav", dtype="int16")
    assert len(by_command) == 7601 and np.array_equal(by_command, by_validation)
    noisy, _ = soundfile.read(noisy_dir / "u2.wav", dtype="int16")
    assert not np.array_equal(by_command, noisy)


# ---------------------------------------------------------------------- the shared helpers
def test_step_batch_sampler_and_examples_depend_only_on_seed_and_step():
    from restoregrad_adapter.contrib.training import RandomCropDataset, StepBatchSampler, noise_generator

    batches = list(StepBatchSampler(2, 4, batch_size=3, process_index=1, num_processes=2))
    assert batches == [[15, 16, 17], [21, 22, 23]]  # (m * P + p) * B + k
    pairs = [(np.arange(40, dtype=np.float32), -np.arange(40, dtype=np.float32))]
    dataset = RandomCropDataset(pairs, 8, seed=0, to_tensor=lambda a: a)
    x0, y = dataset[17]
    again, _ = RandomCropDataset(pairs, 8, seed=0, to_tensor=lambda a: a)[17]
    assert np.array_equal(x0, again) and np.array_equal(y, -x0) and len(x0) == 8
    first = noise_generator(0, 5, 1, "cpu").initial_seed()
    assert first == noise_generator(0, 5, 1, "cpu").initial_seed() != noise_generator(0, 6, 1, "cpu").initial_seed()


def test_random_crop_dataset_augments_after_the_same_crop():
    from restoregrad_adapter.contrib.data import random_crop, random_flip_rotate
    from restoregrad_adapter.contrib.training import RandomCropDataset, example_rng

    image = np.random.default_rng(0).random((20, 24, 3)).astype(np.float32)
    pairs = [(image, 1 - image)]
    plain = RandomCropDataset(pairs, 8, seed=3, to_tensor=lambda a: a)
    assert plain.augment == "none"
    assert np.array_equal(RandomCropDataset(pairs, 8, seed=3, to_tensor=lambda a: a, augment="none")[5][0], plain[5][0])
    augmented = RandomCropDataset(pairs, 8, seed=3, to_tensor=lambda a: a, augment="dihedral")
    for index in range(8):
        rng = example_rng(3, index)  # the dataset's draws: the pair, the crop, then the symmetry
        x0, y = pairs[int(rng.integers(1))]
        expected = random_flip_rotate(*random_crop(x0, y, 8, rng), rng, "dihedral")
        got = augmented[index]
        assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], 1 - got[0])
    # The same crops as without augmentation, mirrored or turned: some differ, and each is a symmetry of its crop.
    changed = 0
    for index in range(8):
        crop, turned = plain[index][0], augmented[index][0]
        symmetries = [np.rot90(crop, k) for k in range(4)] + [np.rot90(crop, k)[:, ::-1] for k in range(4)]
        assert any(np.array_equal(turned, s) for s in symmetries)
        changed += not np.array_equal(turned, crop)
    assert changed > 0
    with pytest.raises(ValueError, match="augment must be one of"):
        RandomCropDataset(pairs, 8, seed=0, to_tensor=lambda a: a, augment="rotate")


def test_usable_cpus_follows_the_affinity_mask(monkeypatch):
    from restoregrad_adapter.contrib import training

    if hasattr(os, "sched_getaffinity"):
        assert training.usable_cpus() == len(os.sched_getaffinity(0))
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})  # e.g. `taskset -c 3`
        assert training.usable_cpus() == 1
        monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # no mask and an unknown count: one thread
    assert training.usable_cpus() == 1


def test_checkpoints_and_json_log(tmp_path):
    from restoregrad_adapter.contrib.training import JsonLog, checkpoint_step, find_checkpoint, prune_checkpoints

    assert find_checkpoint(tmp_path, "latest") is None and find_checkpoint(tmp_path, None) is None
    for step in (2, 10, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    latest = find_checkpoint(tmp_path, "latest")
    assert latest == str(tmp_path / "checkpoint-10") and checkpoint_step(latest) == 10
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-4", "checkpoint-x"]

    log = JsonLog(tmp_path / "metrics.jsonl")
    for step in (0, 1, 2, 3):
        log.append({"kind": "train", "step": step, "loss": float(step)})
    assert log.last("train")["step"] == 3 and log.last("validation") is None
    resumed = JsonLog(tmp_path / "metrics.jsonl", resume_from_step=2)  # drops what came after the checkpoint
    assert [r["step"] for r in resumed.records] == [0, 1, 2]
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert JsonLog(tmp_path / "metrics.jsonl").records == []  # a new run starts empty


def test_train_weather_recipes_fill_what_the_command_line_leaves_out():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_weather_recipes", ROOT / "examples" / "train_weather.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    default = script.parse_args([])
    assert (default.recipe, default.prediction_type, default.residual, default.loss_weighting) == (
        "restoring", "sample", True, "x0")
    paper = script.parse_args(["--recipe", "paper"])
    assert (paper.prediction_type, paper.residual, paper.loss_weighting) == ("epsilon", False, "elbo")
    mixed = script.parse_args(["--recipe", "paper", "--residual", "--loss_weighting", "min_snr"])
    assert (mixed.prediction_type, mixed.residual, mixed.loss_weighting) == ("epsilon", True, "min_snr")
    adapter = script.build_adapter(script.parse_args(["--model_size", "tiny"]))
    assert adapter.residual and adapter.scheduler.config.prediction_type == "sample"
    assert adapter.loss_fn.weighting == "x0"


def load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "examples" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_train_speech_recipes_fill_what_the_command_line_leaves_out():
    script = load_script("train_speech")
    default = script.parse_args([])
    assert (default.recipe, default.prediction_type, default.loss_weighting) == ("paper", "epsilon", "elbo")
    restoring = script.parse_args(["--recipe", "restoring"])
    assert (restoring.prediction_type, restoring.loss_weighting) == ("sample", "x0")
    assert (restoring.num_inference_steps, restoring.final_blend, restoring.sampling_start) == (3, 0.4, "prior")
    assert (default.num_inference_steps, default.final_blend, default.clamp) == (6, 0.0, False)
    assert (restoring.learning_rate, default.learning_rate) == (2e-3, 1e-3)
    assert script.parse_args(["--recipe", "restoring", "--learning_rate", "5e-4"]).learning_rate == 5e-4
    released = script.build_adapter(script.parse_args(["--recipe", "restoring", "--num_inference_steps", "50",
                                                       "--final_blend", "0.2", "--sampling_start", "noisy", "--clamp"]))
    assert released.restoration == {"inference_betas": "all", "initial": "noisy", "mix_noisy": 0.2, "clamp": True}
    adapter = script.build_adapter(script.parse_args(["--recipe", "restoring", "--prediction_type", "v_prediction"]))
    assert adapter.scheduler.config.prediction_type == "v_prediction" and adapter.loss_fn.weighting == "x0"
    assert adapter.input_peak == 0.95 and adapter.denoiser.model.config.conditioner_channels == 64
    assert script.build_adapter(script.parse_args(["--model_size", "cdiffuse"])).denoiser.model.config.conditioner_channels is None


def test_the_benchmarks_train_with_the_training_scripts_recipes(monkeypatch):
    from benchmark_modules import load

    tasks = load(monkeypatch, "tasks")
    for task, script in (("image", "train_weather"), ("speech", "train_speech")):
        assert {name: recipes[task] for name, recipes in tasks.RECIPES.items()} == load_script(script).RECIPES
        assert load_script(script).parse_args([]).recipe == tasks.DEFAULT_RECIPE[task]


def test_train_weather_degradation_defaults_keep_the_weather_preset():
    script = load_script("train_weather")
    default = script.parse_args([])
    assert default.degradation == "mixed" and default.validation_fit == "downscale"
    weather = (96, 256, 32, 1200, 1e-3, 10)
    chosen = lambda a: (a.builtin_size, a.max_validation_size, a.patch_size, a.max_train_steps,  # noqa: E731
                        a.learning_rate, a.num_inference_steps)
    assert chosen(default) == weather and default.lr_scheduler == "constant_with_warmup"
    for name in ("rain", "snow", "raindrop"):
        assert chosen(script.parse_args(["--degradation", name])) == weather
    for name in ("motion_blur", "defocus", "gaussian_blur"):
        args = script.parse_args(["--degradation", name])
        assert args.validation_fit == "crop" and chosen(args) == (96, 256, 32, 1200, 3e-3, 2)
    for name in ("sr2", "sr4"):
        args = script.parse_args(["--degradation", name])
        assert args.validation_fit == "crop" and chosen(args) == (192, 128, 32, 1200, 3e-3, 1)
        assert (args.timestep_spacing, args.self_ensemble) == ("trailing", True)
    for name in ("mixed", "rain", "gaussian_blur", "motion_blur"):
        args = script.parse_args(["--degradation", name])
        assert (args.timestep_spacing, args.self_ensemble) == ("leading", False)
    given = script.parse_args(["--degradation", "sr4", "--no-self_ensemble", "--timestep_spacing", "leading"])
    assert (given.timestep_spacing, given.self_ensemble) == ("leading", False)
    assert script.parse_args(["--self_ensemble", "--timestep_spacing", "trailing"]).self_ensemble is True
    # Super-resolution validates each crop as one patch, projected onto its low resolution; nothing else does.
    for name, scale in (("sr2", 2), ("sr4", 4)):
        args = script.parse_args(["--degradation", name])
        assert (args.validation_patch_size, args.sr_consistency, args.validation_scale) == (128, True, scale)
        assert script.parse_args(["--degradation", name, "--max_validation_size", "41"]).validation_patch_size == 42
    for name in ("mixed", "rain", "gaussian_blur", "motion_blur"):
        args = script.parse_args(["--degradation", name])
        assert (args.validation_patch_size, args.sr_consistency) == (32, False)
    given = script.parse_args(["--degradation", "sr4", "--no-sr_consistency", "--validation_patch_size", "64"])
    assert (given.validation_patch_size, given.sr_consistency) == (64, False)
    assert script.parse_args(["--sr_scale", "3"]).sr_consistency is True  # a DIV2K x3 root
    for argv, message in ((["--sr_consistency"], "--sr_consistency needs a super-resolution task"),
                          (["--validation_patch_size", "33"], "--validation_patch_size must be a positive multiple")):
        with pytest.raises(SystemExit, match=message):
            script.parse_args(argv)
    given = script.parse_args(["--degradation", "sr4", "--validation_fit", "downscale", "--learning_rate", "1e-4",
                               "--builtin_size", "64", "--num_inference_steps", "5"])
    assert (given.validation_fit, given.learning_rate, given.builtin_size, given.num_inference_steps) == (
        "downscale", 1e-4, 64, 5)
    assert {script.parse_args(["--degradation", name]).augment for name in script.DEGRADATIONS} == {"none"}
    assert script.parse_args(["--degradation", "sr4", "--augment", "dihedral"]).augment == "dihedral"
    image = np.arange(10 * 14 * 3, dtype=np.float32).reshape(10, 14, 3) / 500
    np.testing.assert_array_equal(script.fit_for_validation(image, 6, "crop"), image[2:8, 4:10])
    assert script.fit_for_validation(image, 7, "downscale").shape == (5, 7, 3)
    assert script.fit_for_validation(image, 20, "crop") is image
    # A super-resolution crop covers whole low-resolution pixels: sides and corner on the scale's grid.
    np.testing.assert_array_equal(script.fit_for_validation(image, 7, "crop", multiple=2), image[2:8, 4:10])
    np.testing.assert_array_equal(script.fit_for_validation(image, 20, "crop", multiple=4), image[:8, :12])


def test_train_weather_built_in_deblurring_and_super_resolution(tmp_path):
    for degradation, drawn in (("motion_blur", "motion blur drawn in code"),
                               ("sr4", "bicubic x4 down- and up-sampling drawn in code")):
        out = tmp_path / degradation
        log = run([sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--degradation", degradation,
                   "--num_validation_images", "2", "--max_train_steps", "1", "--validation_steps", "1",
                   "--checkpointing_steps", "1", "--augment", "dihedral", "--output_dir", str(out)])
        assert f"({drawn}), 2 held-out photos" in log
        assert json.loads((out / "args.json").read_text())["augment"] == "dihedral"
        validation = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                      if json.loads(line)["kind"] == "validation"]
        assert [r["step"] for r in validation] == [0, 1]
        assert all(r["psnr_y_degraded"] > 15 and 0 < r["ssim_y_degraded"] < 1 for r in validation)
        assert (out / "validation" / "step-000001.png").is_file() and (out / "adapter").is_dir()


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_train_weather_reads_realblur_lists_and_div2k(tmp_path):
    from restoregrad_adapter.contrib.data.blur_sr import bicubic_downsample

    rng = np.random.default_rng(0)
    realblur = tmp_path / "RealBlur"
    scene = "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene001"
    lines = []
    for i in range(3):
        _write_png(realblur / scene / "gt" / f"gt_{i}.png", rng.integers(0, 256, (24, 28, 3), dtype=np.uint8))
        _write_png(realblur / scene / "blur" / f"blur_{i}.png", rng.integers(0, 256, (24, 28, 3), dtype=np.uint8))
        lines.append(f"{scene}/gt/gt_{i}.png {scene}/blur/blur_{i}.png\n")
    (realblur / "RealBlur_J_train_list.txt").write_text("".join(lines))
    log = run([sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--degradation", "motion_blur",
               "--train_data_dir", str(realblur / "RealBlur_J_train_list.txt"), "--max_train_steps", "1",
               "--validation_steps", "1", "--checkpointing_steps", "1", "--output_dir", str(tmp_path / "run_rb")])
    assert "2 pairs from" in log and "RealBlur_J_train_list.txt" in log

    div2k = tmp_path / "DIV2K"
    for split, numbers in (("train", ("0001", "0002")), ("valid", ("0801",))):
        for number in numbers:
            high = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            _write_png(div2k / f"DIV2K_{split}_HR" / f"{number}.png", high)
            low = (bicubic_downsample(high.astype(np.float32) / 255, 4) * 255).round().astype(np.uint8)
            _write_png(div2k / f"DIV2K_{split}_LR_bicubic" / "X4" / f"{number}x4.png", low)
    log = run([sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--degradation", "sr4",
               "--train_data_dir", str(div2k), "--max_train_steps", "1", "--validation_steps", "1",
               "--checkpointing_steps", "1", "--output_dir", str(tmp_path / "run_div2k")])
    assert "2 DIV2K x4 pairs from" in log and "validation PSNR(Y)" in log
    failed = subprocess.run([sys.executable, "examples/train_weather.py", *TINY_WEATHER, "--degradation", "sr2",
                             "--train_data_dir", str(div2k), "--max_train_steps", "1",
                             "--output_dir", str(tmp_path / "run_x2")], cwd=ROOT, capture_output=True, text=True)
    assert failed.returncode != 0 and "DIV2K_train_LR_bicubic/X2 is not a folder" in failed.stderr
