"""Bad inputs across the public API, one table per area: each case must raise a ValueError (the
CLI: exit status 2 and one line on stderr, no traceback) whose message names the problem; file cases
also check that nothing the user owns was lost and nothing was left half-written.

In the style of diffusers' and PEFT's save/load tests: tiny models, generated data, no downloads.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import soundfile
import torch
from conftest import TinyConvDenoiser
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from PIL import Image

from restoregrad_adapter import (LearnedPriorScheduler, PosteriorNet, PriorNet, RestoreGrad, RestoreGradLoss,
                                 RestoreGradPipeline)
from restoregrad_adapter.cli import main as cli
from restoregrad_adapter.integrations import cdiffuse, weatherdiff
from restoregrad_adapter.integrations.diffusers import wrap as wrap_diffusers
from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser, WeatherUNet
from restoregrad_adapter.scheduler import whitened_step

T = 50


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def waveform_adapter(**kwargs):
    torch.manual_seed(0)
    return RestoreGrad.with_encoders(TinyConvDenoiser(), dims=1, in_channels=1, size="tiny",
                                     scheduler=LearnedPriorScheduler(num_train_timesteps=T), **kwargs)


def pair(batch=2, length=64):
    g = seeded(1)
    x0 = torch.randn(batch, 1, length, generator=g)
    return x0, x0 + 0.1 * torch.randn(batch, 1, length, generator=g)


X0, Y = pair()
NAN = torch.full_like(X0, float("nan"))
ONES = torch.ones_like(X0)


def stepped(scheduler_class=LearnedPriorScheduler, **config):
    scheduler = scheduler_class(num_train_timesteps=T, **config)
    scheduler.set_timesteps(10)
    return scheduler


# ---------------------------------------------------------------------- tensors and the adapter
ADAPTER_CASES = [
    ("x0 not a tensor", lambda a: a.training_loss([1.0], Y), "`x0` must be a torch.Tensor"),
    ("x0 integer", lambda a: a.training_loss(X0.long(), Y), "`x0` must be a floating-point tensor"),
    ("x0 2-D", lambda a: a.training_loss(X0[:, 0], Y[:, 0]), r"`x0` must have shape \(B, C, \*spatial\)"),
    ("x0 and y shapes differ", lambda a: a.training_loss(X0, Y[..., :32]), "same shape"),
    ("empty batch", lambda a: a.training_loss(X0[:0], Y[:0]), "`x0` is empty"),
    ("zero-length signals", lambda a: a.training_loss(X0[..., :0], Y[..., :0]), "`x0` is empty"),
    ("NaN in x0", lambda a: a.training_loss(NAN, Y), "`x0` contains non-finite"),
    ("inf in y", lambda a: a.training_loss(X0, Y.masked_fill(Y > 0, math.inf)), "`y` contains non-finite"),
    ("NaN noise", lambda a: a.training_loss(X0, Y, noise=NAN), "`noise` contains non-finite"),
    ("noise of another shape", lambda a: a.training_loss(X0, Y, noise=X0[..., :8]), "`noise` must be"),
    ("integer noise", lambda a: a.training_loss(X0, Y, noise=X0.long()), "`noise` must be a floating tensor"),
    ("timesteps of T", lambda a: a.training_loss(X0, Y, timesteps=torch.tensor([0, T])), r"values in \[0, 50\)"),
    ("negative timesteps", lambda a: a.training_loss(X0, Y, timesteps=torch.tensor([-1, 3])), r"values in \[0"),
    ("float timesteps", lambda a: a.training_loss(X0, Y, timesteps=torch.tensor([1.0, 2.0])), "integer tensor"),
    ("timesteps of another batch", lambda a: a.training_loss(X0, Y, timesteps=torch.tensor([1])), r"shape \(2,\)"),
    ("float64 batch, float32 weights", lambda a: a.training_loss(X0.double(), Y.double()), "`x0` is torch.float64"),
    ("bfloat16 batch without autocast", lambda a: a.training_loss(X0.bfloat16(), Y.bfloat16()), "autocast"),
    ("y of the wrong channels", lambda a: a.restore(torch.zeros(1, 3, 64)), "3 channels"),
    ("y integer", lambda a: a.restore(torch.zeros(1, 1, 64, dtype=torch.long)), "floating-point"),
    ("y empty", lambda a: a.restore(torch.zeros(1, 1, 0)), "`y` is empty"),
    ("y NaN", lambda a: a.restore(NAN[:1]), "`y` contains non-finite"),
    ("steps 0", lambda a: a.restore(Y, num_inference_steps=0), "`num_inference_steps` must be a positive integer"),
    ("steps True", lambda a: a.restore(Y, num_inference_steps=True), "`num_inference_steps` must be a positive"),
    ("steps above T", lambda a: a.restore(Y, num_inference_steps=T + 1), "exceeds the 50 training steps"),
    ("steps and betas", lambda a: a.restore(Y, num_inference_steps=3, inference_betas=[0.1]), "only one of"),
    ("inference betas above 1", lambda a: a.restore(Y, inference_betas=[0.5, 1.5]), r"values in \(0, 1\)"),
    ("negative eta", lambda a: a.restore(Y, num_inference_steps=2, eta=-1.0), "`eta` must be a finite number"),
    ("eta for DDPM", lambda a: a.restore(Y, num_inference_steps=2, eta=0.5), "DDIM-type schedulers"),
    ("generator of another kind", lambda a: a.restore(Y, num_inference_steps=2, generator=3), "torch.Generator"),
    ("stride above patch", lambda a: RestoreGrad.with_encoders(
        lambda x_t, y, t: 0 * x_t, dims=2, in_channels=1, size="tiny", scheduler=LearnedPriorScheduler(
            num_train_timesteps=T)).restore(torch.zeros(1, 1, 8, 8), patch_size=4, stride=5), "exceeds"),
    ("an image for a waveform adapter", lambda a: a.restore(torch.zeros(1, 1, 8, 8)), r"shape \(B, C, L\)"),
    ("stride 0", lambda a: a.restore(Y, num_inference_steps=2, stride=0), "`stride` must be a positive integer"),
    ("scheduler of another schedule", lambda a: a.restore(Y, num_inference_steps=2, scheduler=DDIMScheduler(
        num_train_timesteps=T, beta_end=0.03, clip_sample=False)), "training schedule"),
    ("scheduler of another prediction", lambda a: a.restore(Y, num_inference_steps=2, scheduler=DDIMScheduler(
        num_train_timesteps=T, prediction_type="sample", clip_sample=False)), "prediction_type='sample'"),
    ("scheduler that clips", lambda a: a.restore(Y, num_inference_steps=2, scheduler=DDIMScheduler(
        num_train_timesteps=T)), "clip_sample"),
    ("scheduler that is not one", lambda a: a.restore(Y, num_inference_steps=2, scheduler=object()),
     "must be a diffusers scheduler"),
    ("mode unknown", lambda a: setattr(a, "mode", "gan"), "`mode` must be one of"),
    ("restoregrad mode without prior", lambda a: RestoreGrad(TinyConvDenoiser(), mode="restoregrad"),
     "needs a `prior_net`"),
    ("denoiser not callable", lambda a: RestoreGrad(3), "`denoiser` must be callable"),
    ("scheduler not learned-prior", lambda a: RestoreGrad(TinyConvDenoiser(), scheduler=DDPMScheduler()),
     "must be a LearnedPriorScheduler"),
    ("residual not a bool", lambda a: RestoreGrad(TinyConvDenoiser(), mode="ddpm", residual="yes"),
     "`residual` must be a bool"),
    ("input_peak zero", lambda a: RestoreGrad(TinyConvDenoiser(), mode="ddpm", input_peak=0.0), "`input_peak`"),
    ("input_peak True", lambda a: RestoreGrad(TinyConvDenoiser(), mode="ddpm", input_peak=True), "`input_peak`"),
    ("denoiser output that broadcasts", lambda a: RestoreGrad(lambda x, y, t: x[:, :1], mode="ddpm",
                                                             scheduler=LearnedPriorScheduler(num_train_timesteps=T))
     .restore(torch.zeros(1, 2, 16), num_inference_steps=1), "the denoiser returned"),
]


@pytest.mark.parametrize("case, call, message", ADAPTER_CASES, ids=[c[0] for c in ADAPTER_CASES])
def test_adapter_and_tensor_inputs(case, call, message):
    with pytest.raises(ValueError, match=message):
        call(waveform_adapter())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_restoring_in_another_precision_is_accepted(dtype):
    """Inputs diffusers accepts are accepted: the chain runs in at least float32, the model in its own dtype."""
    adapter = waveform_adapter().eval()
    out = adapter.restore(Y.to(dtype), num_inference_steps=2, generator=seeded())
    assert out.dtype == torch.promote_types(dtype, torch.float32) and torch.isfinite(out).all()


def test_numpy_integer_step_counts_are_accepted():
    adapter = waveform_adapter().eval()
    torch.testing.assert_close(adapter.restore(Y, num_inference_steps=np.int64(3), generator=seeded()),
                               adapter.restore(Y, num_inference_steps=3, generator=seeded()))


# ---------------------------------------------------------------------- schedulers
SCHEDULER_CASES = [
    ("T 0", lambda: LearnedPriorScheduler(num_train_timesteps=0), "`num_train_timesteps` must be a positive"),
    ("T fractional", lambda: LearnedPriorScheduler(num_train_timesteps=2.5), "`num_train_timesteps`"),
    ("T True", lambda: LearnedPriorScheduler(num_train_timesteps=True), "`num_train_timesteps`"),
    ("betas above 1", lambda: LearnedPriorScheduler(num_train_timesteps=3, trained_betas=[0.1, 0.5, 1.5]),
     r"`trained_betas` must be .* in \(0, 1\]"),
    ("NaN betas", lambda: LearnedPriorScheduler(num_train_timesteps=3, trained_betas=[0.1, math.nan, 0.2]),
     "`trained_betas`"),
    ("zero beta", lambda: LearnedPriorScheduler(num_train_timesteps=2, trained_betas=[0.0, 0.2]), "`trained_betas`"),
    ("empty betas", lambda: LearnedPriorScheduler(num_train_timesteps=2, trained_betas=[]), "`trained_betas`"),
    ("linear betas above 1", lambda: LearnedPriorScheduler(beta_start=0.1, beta_end=2.0), r"betas must lie in \(0, 1\]"),
    ("unknown schedule", lambda: LearnedPriorScheduler(beta_schedule="cosine"), "`beta_schedule` must be one of"),
    ("unknown prediction", lambda: LearnedPriorScheduler(prediction_type="x0"), "`prediction_type` must be one of"),
    ("unknown spacing", lambda: LearnedPriorScheduler(timestep_spacing="log"), "`timestep_spacing` must be one of"),
    ("set_timesteps(True)", lambda: LearnedPriorScheduler().set_timesteps(True), "`num_inference_steps` must be"),
    ("set_timesteps(0)", lambda: LearnedPriorScheduler().set_timesteps(0), "`num_inference_steps` must be"),
    ("set_timesteps above T", lambda: LearnedPriorScheduler(num_train_timesteps=T).set_timesteps(T + 1),
     r"\[1, 50\]"),
    ("set_timesteps of nothing", lambda: LearnedPriorScheduler().set_timesteps(), "Pass one of"),
    ("set_timesteps of two", lambda: LearnedPriorScheduler().set_timesteps(5, timesteps=[3, 1]), "only one of"),
    ("timesteps below 0", lambda: LearnedPriorScheduler(num_train_timesteps=T).set_timesteps(timesteps=[10, -1]),
     ">= 0"),
    ("timesteps ascending", lambda: LearnedPriorScheduler(num_train_timesteps=T).set_timesteps(timesteps=[1, 10]),
     "descending"),
    ("timesteps from T", lambda: LearnedPriorScheduler(num_train_timesteps=T).set_timesteps(timesteps=[T, 1]),
     "below `num_train_timesteps`"),
    ("timesteps fractional", lambda: LearnedPriorScheduler(num_train_timesteps=T).set_timesteps(timesteps=[9.5, 1]),
     "integer training steps"),
    ("timesteps empty", lambda: LearnedPriorScheduler(num_train_timesteps=T).set_timesteps(timesteps=[]),
     "non-empty"),
    ("step: prior std that broadcasts the batch up", lambda: stepped().step(
        torch.zeros(1, 1, 8), stepped().timesteps[0], torch.zeros(1, 1, 8), prior_std=torch.ones(3, 1, 8)),
     "would broadcast"),
    ("step: zero prior std", lambda: stepped().step(
        torch.zeros(1, 1, 8), stepped().timesteps[0], torch.zeros(1, 1, 8), prior_std=torch.zeros(1, 1, 8)),
     "must be > 0"),
    ("step: NaN prior std", lambda: stepped().step(
        torch.zeros(1, 1, 8), stepped().timesteps[0], torch.zeros(1, 1, 8), prior_std=torch.full((1, 1, 8), math.nan)),
     "non-finite"),
    ("step: prior std of another shape", lambda: stepped().step(
        torch.zeros(1, 1, 8), stepped().timesteps[0], torch.zeros(1, 1, 8), prior_std=torch.ones(1, 1, 5)),
     "does not broadcast"),
    ("step: fractional timestep", lambda: stepped().step(
        torch.zeros(1, 1, 8), 4.5, torch.zeros(1, 1, 8), prior_std=torch.ones(1, 1, 8)), "not a training step"),
    ("whitened: prior std that broadcasts the batch up", lambda: whitened_step(
        stepped(DDIMScheduler, clip_sample=False), torch.zeros(1, 1, 8), 900 // 20, torch.zeros(1, 1, 8),
        torch.ones(3, 1, 8)), "would broadcast"),
    ("whitened: scheduler that clips", lambda: whitened_step(
        stepped(DDIMScheduler), torch.zeros(1, 1, 8), 45, torch.zeros(1, 1, 8), torch.ones(1, 1, 8)), "clip_sample"),
]


@pytest.mark.parametrize("case, call, message", SCHEDULER_CASES, ids=[c[0] for c in SCHEDULER_CASES])
def test_scheduler_inputs(case, call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------- the loss and the encoders
LOSS_AND_ENCODER_CASES = [
    ("latent_weight True", lambda: RestoreGradLoss(latent_weight=True), "`latent_weight` must be a finite"),
    ("latent_weight negative", lambda: RestoreGradLoss(latent_weight=-0.1), "`latent_weight`"),
    ("prior_matching_weight inf", lambda: RestoreGradLoss(prior_matching_weight=math.inf), "`prior_matching_weight`"),
    ("old keyword eta", lambda: RestoreGradLoss(eta=0.1), "eta"),
    ("weighting unknown", lambda: RestoreGradLoss(weighting="l1"), "`weighting` must be one of"),
    ("snr_gamma 0 with min_snr", lambda: RestoreGradLoss(weighting="min_snr", snr_gamma=0), "`snr_gamma`"),
    ("zero posterior std", lambda: RestoreGradLoss()(X0, X0, X0, ONES, torch.zeros_like(X0), 0.1), "`posterior_std`"),
    ("negative prior std", lambda: RestoreGradLoss()(X0, X0, X0, -ONES, None, 0.1), "`prior_std`"),
    ("NaN prior std", lambda: RestoreGradLoss()(X0, X0, X0, NAN, None, 0.1), "`prior_std`"),
    ("prediction of another shape", lambda: RestoreGradLoss()(X0[..., :8], X0, X0, ONES, None, 0.1), "same shape"),
    ("missing alpha_bar_T", lambda: RestoreGradLoss()(X0, X0, X0, ONES, None, None), "`alpha_bar_T` is required"),
    ("missing snr for x0 weighting", lambda: RestoreGradLoss(weighting="x0")(X0, X0, X0, 1.0, learned_prior=False),
     "needs `snr`"),
    ("sigma_min 1", lambda: PriorNet(dims=1, in_channels=1, sigma_min=1.0), r"`sigma_min` must be a number in \[0, 1\)"),
    ("sigma_min negative", lambda: PosteriorNet(dims=1, in_channels=1, sigma_min=-0.1), "`sigma_min`"),
    ("sigma_min NaN", lambda: PriorNet(dims=2, in_channels=3, sigma_min=math.nan), "`sigma_min`"),
    ("encoder size unknown", lambda: PriorNet(dims=1, in_channels=1, size="huge"), "`size` must be one of"),
]


@pytest.mark.parametrize("case, call, message", LOSS_AND_ENCODER_CASES, ids=[c[0] for c in LOSS_AND_ENCODER_CASES])
def test_loss_and_encoder_inputs(case, call, message):
    with pytest.raises((ValueError, TypeError), match=message) as raised:
        call()
    if case != "old keyword eta":  # an unknown keyword is Python's TypeError, naming it
        assert raised.type is ValueError


# ---------------------------------------------------------------------- adapter folders
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = waveform_adapter().save_pretrained(tmp_path_factory.mktemp("adapters") / "waveform")
    return folder


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_config(**changes):
    """A ``restoregrad_config.json`` edit that changes fields of its ``"config"``."""
    return lambda c: {**c, "config": {**c["config"], **changes}}


def break_config(edit):
    def apply(folder):
        config = json.loads((folder / "restoregrad_config.json").read_text())
        (folder / "restoregrad_config.json").write_text(json.dumps(edit(config)))
    return apply


FOLDER_CASES = [
    ("no config", lambda f: (f / "restoregrad_config.json").unlink(), "restoregrad_config.json is missing"),
    ("config not JSON", lambda f: (f / "restoregrad_config.json").write_text("{oops"), "is not valid JSON"),
    ("config a JSON list", lambda f: (f / "restoregrad_config.json").write_text("[1, 2]"), "must be a JSON object"),
    ("config without format_version", break_config(lambda c: {k: v for k, v in c.items() if k != "format_version"}),
     "format_version"),
    ("config from a newer format", break_config(lambda c: {**c, "format_version": 99}), "Upgrade"),
    ("config without denoiser_format", break_config(lambda c: {k: v for k, v in c.items() if k != "denoiser_format"}),
     "`denoiser_format`"),
    ("config with an unknown integration", break_config(with_config(integration="nowhere")), "nowhere"),
    ("integration_kwargs a list", break_config(with_config(integration="weatherdiff", integration_kwargs=[64])),
     "integration_kwargs"),
    ("integration_kwargs the wrapper does not take", break_config(with_config(
        integration="cdiffuse", integration_kwargs={"hop": 128})),
     "do not fit the 'cdiffuse' integration's wrapper"),
    ("config with an unknown field", break_config(with_config(noise_level=3)), "unknown RestoreGradConfig fields"),
    ("config with a bad mode", break_config(with_config(mode="gan")), "`mode` must be one of"),
    ("prior weights missing", lambda f: (f / "prior_net" / "diffusion_pytorch_model.safetensors").unlink(),
     "missing, truncated or corrupted"),
    ("prior weights truncated", lambda f: (f / "prior_net" / "diffusion_pytorch_model.safetensors").write_bytes(
        (f / "prior_net" / "diffusion_pytorch_model.safetensors").read_bytes()[:100]), "missing, truncated or corrupted"),
    ("only a pickled .bin", lambda f: shutil.move(f / "prior_net" / "diffusion_pytorch_model.safetensors",
                                                  f / "prior_net" / "diffusion_pytorch_model.bin"),
     "missing, truncated or corrupted"),
    ("denoiser weights missing", lambda f: (f / "denoiser" / "model.safetensors").unlink(), "incomplete"),
    ("scheduler config missing", lambda f: shutil.rmtree(f / "scheduler"), "incomplete"),
    ("denoiser weights of another model", lambda f: None, "does not match|missing keys|unexpected"),
]


@pytest.mark.parametrize("case, damage, message", FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_adapter_folder_inputs(case, damage, message, saved, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(saved, folder)
    damage(folder)
    before = snapshot(folder)
    denoiser = torch.nn.Conv1d(2, 1, 3) if case == "denoiser weights of another model" else TinyConvDenoiser()
    with pytest.raises(ValueError, match=message):
        RestoreGrad.from_pretrained(folder, denoiser=denoiser)
    assert snapshot(folder) == before  # loading never writes


def test_a_pipeline_folder_holding_only_pickled_weights_is_refused(tmp_path):
    unet = UNet2DModel(sample_size=8, in_channels=6, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    folder = RestoreGrad.with_encoders(wrap_diffusers(unet), dims=2, in_channels=3, size="tiny").save_pretrained(
        tmp_path / "pipe")
    weights = folder / "prior_net" / "diffusion_pytorch_model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(weights), folder / "prior_net" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors"):
        RestoreGradPipeline.from_pretrained(folder)
    with pytest.raises(ValueError, match="`use_safetensors=False` is not supported"):
        RestoreGradPipeline.from_pretrained(folder, use_safetensors=False)


SAVE_CASES = [
    ("target is a file", lambda t: (t.write_text("mine"), t)[1], "is a file"),
    ("unsafe serialization", None, "safe_serialization=False"),
    ("unknown metadata", None, "author"),
]


@pytest.mark.parametrize("case, target, message", SAVE_CASES, ids=[c[0] for c in SAVE_CASES])
def test_save_inputs(case, target, message, tmp_path):
    adapter = waveform_adapter()
    path = tmp_path / "target"
    kwargs = {"safe_serialization": False} if case == "unsafe serialization" else (
        {"author": "me"} if case == "unknown metadata" else {})
    if target is not None:
        target(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(ValueError, match=message):
        adapter.save_pretrained(path, **kwargs)
    assert (path.read_bytes() if path.is_file() else None) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


# ---------------------------------------------------------------------- checkpoints
def cdiffuse_model():
    return DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)


def weather_model():
    return WeatherUNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16)


class Executable:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


CHECKPOINT_CASES = [
    ("cdiffuse: truncated", "cdiffuse", lambda p: (torch.save({"model": cdiffuse_model().state_dict()}, p),
                                                   p.write_bytes(p.read_bytes()[:200])), "could not be read|truncated"),
    ("cdiffuse: a pickled object", "cdiffuse", lambda p: torch.save({"model": Executable()}, p), "could not be read"),
    ("cdiffuse: not a dict", "cdiffuse", lambda p: torch.save([1, 2], p), "holds a list"),
    ("cdiffuse: no model entry", "cdiffuse", lambda p: torch.save({"step": 1}, p), "no 'model' entry"),
    ("cdiffuse: keys of another model", "cdiffuse",
     lambda p: torch.save({"model": {"x": torch.zeros(1)}}, p), "does not match the model's parameters"),
    ("cdiffuse: shapes of another model", "cdiffuse", lambda p: torch.save(
        {"model": DiffWaveDenoiser(residual_channels=4, residual_layers=2, embedding_dim=32).state_dict()}, p),
     "parameter shapes"),
    ("weatherdiff: a pickled object", "weatherdiff", lambda p: torch.save({"state_dict": Executable()}, p),
     "not unpickled"),
    ("weatherdiff: no state_dict", "weatherdiff", lambda p: torch.save({"epoch": 3}, p), "no 'state_dict' entry"),
    ("weatherdiff: no EMA", "weatherdiff", lambda p: torch.save({"state_dict": weather_model().state_dict()}, p),
     "no 'ema_helper' entry"),
    ("weatherdiff: keys of another model", "weatherdiff", lambda p: torch.save(
        {"state_dict": {"x": torch.zeros(1)}, "ema_helper": {"x": torch.zeros(1)}}, p), "does not match the model"),
    ("weatherdiff: truncated", "weatherdiff", lambda p: (torch.save({"state_dict": weather_model().state_dict()}, p),
                                                         p.write_bytes(p.read_bytes()[:200])), "truncated|could not"),
]


@pytest.mark.parametrize("case, kind, write, message", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_checkpoint_inputs(case, kind, write, message, tmp_path, capfd):
    path = tmp_path / "checkpoint.pt"
    write(path)
    with pytest.raises(ValueError, match=message):
        if kind == "cdiffuse":
            cdiffuse.load_checkpoint(cdiffuse_model(), path)
        else:
            weatherdiff.load_checkpoint(weather_model(), path)
    assert "pwned" not in capfd.readouterr().out  # nothing was unpickled


# ---------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def cli_adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    unet = WeatherUNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16)
    image = RestoreGrad.with_encoders(weatherdiff.wrap(unet, patch_size=16), dims=2, in_channels=3, size="tiny")
    speech = cdiffuse.CDiffuSERestoreGrad.from_model(cdiffuse_model(), size="tiny")
    files = root / "files"
    files.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(files / "photo.png")
    soundfile.write(files / "speech.wav", np.zeros(2000, dtype=np.float32), 16000)
    soundfile.write(files / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(files / "nan.wav", np.full(2000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    (files / "bomb.png").write_bytes(b"")
    return {"image": str(image.save_pretrained(root / "image")), "speech": str(speech.save_pretrained(root / "speech")),
            "files": files, "root": root}


def _bomb(files):
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(files / "bomb.png")
    return files / "bomb.png"


CLI_CASES = [
    ("steps 0", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{out}", "--steps", "0"], "--steps"),
    ("steps text", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{out}", "--steps", "ten"],
     "--steps"),
    ("stride 0", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{out}", "--stride", "0"], "--stride"),
    ("stride above the patch", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{out}", "--stride",
                                "100", "--quiet"], "`stride` = 100 exceeds `patch_size` = 16"),
    ("negative eta", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{out}", "--eta", "-1"], "--eta"),
    ("patch batch 0", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{out}", "--patch-batch-size",
                       "0"], "--patch-batch-size"),
    ("missing input", ["restore", "--adapter", "{image}", "{files}/none.png", "-o", "{out}"], "no such file"),
    ("missing adapter", ["restore", "--adapter", "{root}/none", "{files}/photo.png", "-o", "{out}"],
     "cannot load adapter"),
    ("unsupported file", ["restore", "--adapter", "{image}", "{files}/../cli_notes.txt", "-o", "{out}"],
     "no such file|unsupported file type"),
    ("image to a speech adapter", ["restore", "--adapter", "{speech}", "{files}/photo.png", "-o", "{out}"],
     "restores waveforms, not images"),
    ("empty WAV", ["restore", "--adapter", "{speech}", "{files}/empty.wav", "-o", "{out}", "--quiet"], "no samples"),
    ("NaN WAV", ["restore", "--adapter", "{speech}", "{files}/nan.wav", "-o", "{out}", "--quiet"],
     "NaN or infinite"),
    ("output over the input", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{files}", "--quiet"],
     "would be written over the input"),
    ("output is a file", ["restore", "--adapter", "{image}", "{files}/photo.png", "-o", "{files}/photo.png"],
     "is not a folder"),
    ("evaluate: missing folder", ["evaluate", "--pred", "{root}/none", "--ref", "{files}"], "is not a folder"),
    ("evaluate: nothing matches", ["evaluate", "--pred", "{files}", "--ref", "{root}"], "have a reference"),
    ("show-prior: missing input", ["show-prior", "--adapter", "{image}", "{files}/none.png", "-o", "{out}.png"],
     "no such file"),
    ("show-prior: empty WAV", ["show-prior", "--adapter", "{speech}", "{files}/empty.wav", "-o", "{out}.png"],
     "no samples"),
]


@pytest.mark.parametrize("case, argv, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_command_line_inputs(case, argv, message, cli_adapters, tmp_path, capsys):
    values = {**cli_adapters, "out": str(tmp_path / "out")}
    before = snapshot(cli_adapters["files"])
    try:
        status = cli([a.format(**values) for a in argv])
    except SystemExit as stop:  # argparse's own checks: exit 2 and a usage line
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert snapshot(cli_adapters["files"]) == before  # no input touched
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


def test_a_wav_shorter_than_the_models_minimum_is_padded_and_cropped_back(cli_adapters, tmp_path):
    soundfile.write(tmp_path / "click.wav", 0.1 * np.ones(100, dtype=np.float32), 16000)
    assert cli(["restore", "--adapter", cli_adapters["speech"], str(tmp_path / "click.wav"), "-o",
                str(tmp_path / "out"), "--quiet"]) == 0
    restored, rate = soundfile.read(tmp_path / "out" / "click.wav")
    assert rate == 16000 and restored.shape == (100,) and np.isfinite(restored).all()


def test_evaluate_names_the_files_it_could_not_pair(tmp_path, capsys):
    for folder in ("pred", "ref"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / folder / "both.png")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "pred" / "orphan.png")
    assert cli(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]) == 0
    captured = capsys.readouterr()
    assert "not scored" in captured.err and "orphan.png" in captured.err and "both.png" in captured.out


def test_a_decompression_bomb_is_one_line(cli_adapters, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)  # a 20 x 20 photo is then "a bomb"
    assert cli(["restore", "--adapter", cli_adapters["image"], str(cli_adapters["files"] / "photo.png"), "-o",
                str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot read the image" in err and "Traceback" not in err


def test_an_output_folder_that_cannot_be_written_fails_before_the_work(cli_adapters, tmp_path, capsys, monkeypatch):
    import restoregrad_adapter.cli as command

    calls = []
    monkeypatch.setattr(command, "restore_file", lambda *args, **kwargs: calls.append(args))  # the long work
    (tmp_path / "a_file").write_text("mine")
    assert cli(["restore", "--adapter", cli_adapters["image"], str(cli_adapters["files"] / "photo.png"), "-o",
                str(tmp_path / "a_file" / "out"), "--quiet"]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    # A folder without write permission (simulated: this suite may run as root, who may write anywhere).
    monkeypatch.setattr(command.os, "access", lambda path, mode: False)
    assert cli(["restore", "--adapter", cli_adapters["image"], str(cli_adapters["files"] / "photo.png"), "-o",
                str(tmp_path / "locked"), "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert calls == [] and (tmp_path / "a_file").read_text() == "mine"


def test_debug_shows_the_traceback(cli_adapters, tmp_path):
    with pytest.raises(ValueError, match="exceeds `patch_size`"):
        cli(["restore", "--adapter", cli_adapters["image"], str(cli_adapters["files"] / "photo.png"), "-o",
             str(tmp_path / "out"), "--stride", "100", "--quiet", "--debug"])


# ---------------------------------------------------------------------- the pipeline and restore_image
def image_adapter():
    torch.manual_seed(0)
    unet = WeatherUNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16)
    return RestoreGrad.with_encoders(weatherdiff.wrap(unet, patch_size=16), dims=2, in_channels=3, size="tiny").eval()


def diffusers_pipeline():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=6, out_channels=3, block_out_channels=(8, 8), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    adapter = RestoreGrad.with_encoders(wrap_diffusers(unet), dims=2, in_channels=3, size="tiny")
    pipe = RestoreGradPipeline(unet, adapter.prior_net, adapter.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


IMAGE = torch.zeros(1, 3, 8, 8)
PIPELINE_CASES = [
    ("restore_image: values outside [-1, 1]", lambda: weatherdiff.restore_image(
        image_adapter(), torch.full((1, 3, 16, 16), 255.0), patch_size=16), r"in \[-1, 1\]"),
    ("restore_image: another patch size", lambda: weatherdiff.restore_image(
        image_adapter(), torch.zeros(1, 3, 16, 16), patch_size=32), "differs from the denoiser's"),
    ("restore_image: 3-D image", lambda: weatherdiff.restore_image(image_adapter(), torch.zeros(3, 16, 16),
                                                                    patch_size=16), r"\(B, C, H, W\)"),
    ("restore_image: steps 0", lambda: weatherdiff.restore_image(image_adapter(), torch.zeros(1, 3, 16, 16),
                                                                  patch_size=16, num_inference_steps=0),
     "`num_inference_steps`"),
    ("restore_image: not an adapter", lambda: weatherdiff.restore_image(object(), IMAGE), "must be a RestoreGrad"),
    ("pipeline: output type", lambda: diffusers_pipeline()(IMAGE, output_type="jpg"), "`output_type` must be one of"),
    ("pipeline: steps 0", lambda: diffusers_pipeline()(IMAGE, num_inference_steps=0), "`num_inference_steps`"),
    ("pipeline: one-channel image", lambda: diffusers_pipeline()(torch.zeros(1, 1, 8, 8), output_type="pt"),
     r"must have shape \(B, 3, H, W\), got \(1, 1, 8, 8\)"),
    ("pipeline: scheduler that clips", lambda: RestoreGradPipeline(
        diffusers_pipeline().denoiser, diffusers_pipeline().prior_net, DDIMScheduler())(IMAGE), "clip_sample"),
    ("pipeline: the wrapper instead of the UNet", lambda: RestoreGradPipeline(
        wrap_diffusers(diffusers_pipeline().denoiser), diffusers_pipeline().prior_net,
        diffusers_pipeline().scheduler)(IMAGE), "not its RestoreGrad wrapper"),
]


@pytest.mark.parametrize("case, call, message", PIPELINE_CASES, ids=[c[0] for c in PIPELINE_CASES])
def test_pipeline_and_whole_image_inputs(case, call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_suite_has_at_least_a_hundred_cases():
    tables = (ADAPTER_CASES, SCHEDULER_CASES, LOSS_AND_ENCODER_CASES, FOLDER_CASES, SAVE_CASES, CHECKPOINT_CASES,
              CLI_CASES, PIPELINE_CASES)
    assert sum(len(table) for table in tables) >= 100
