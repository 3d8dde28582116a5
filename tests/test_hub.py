"""Saving and loading adapters: local folders, a seeded Hub cache offline, push_to_hub (mocked), errors."""

import json
import os
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from conftest import TinyConvDenoiser, toy_waveforms
from diffusers import DDIMScheduler, UNet2DModel

from restoregrad_adapter import LearnedPriorScheduler, PriorNet, RestoreGrad
from restoregrad_adapter.hub import CONFIG_NAME
from restoregrad_adapter.integrations import cdiffuse, weatherdiff
from restoregrad_adapter.integrations.diffusers import wrap as wrap_diffusers
from restoregrad_adapter.contrib.reference_nets import DiffWaveDenoiser, WeatherUNet


def randomise(adapter):
    for net in (adapter.prior_net, adapter.posterior_net):
        torch.nn.init.normal_(net.encoder.head.weight, std=0.05)
    return adapter


def diffusers_adapter():
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    return randomise(RestoreGrad.with_encoders(wrap_diffusers(unet), dims=2, in_channels=3, size="tiny",
                                               scheduler=LearnedPriorScheduler(num_train_timesteps=100)))


def custom_adapter(seed=0):
    torch.manual_seed(seed)
    return randomise(RestoreGrad.with_encoders(TinyConvDenoiser(), dims=1, in_channels=1, size="tiny",
                                               scheduler=LearnedPriorScheduler(num_train_timesteps=50)))


def test_diffusers_adapter_round_trip_is_bit_identical(tmp_path):
    adapter = diffusers_adapter()
    folder = adapter.save_pretrained(tmp_path / "adapter", base_model="org/unconditional", base_model_revision="abc123",
                                     training_data="synthetic rain", metrics={"psnr_y": 25.5})
    expected = {CONFIG_NAME, "README.md", "model_index.json", "prior_net", "posterior_net", "scheduler", "denoiser"}
    assert {p.name for p in folder.iterdir()} == expected
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    assert (folder / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["format_version"] == 2 and config["config"] == adapter.config.to_dict()
    assert config["config"]["integration"] == "diffusers" and config["config"]["encoder"]["dims"] == 2
    assert config["config"]["encoder"]["in_channels"] == 3
    assert config["metadata"]["base_model"] == "org/unconditional"
    assert config["metadata"]["base_model_revision"] == "abc123"
    card = (folder / "README.md").read_text()
    assert "library_name: restoregrad_adapter" in card and "base_model: org/unconditional" in card
    assert "psnr_y" in card and "from_pretrained" in card

    loaded = RestoreGrad.from_pretrained(folder)  # the UNet is rebuilt from its diffusers config
    y = torch.rand(2, 3, 16, 16) * 2 - 1
    for kwargs in ({}, {"scheduler": DDIMScheduler.from_config(adapter.scheduler.config, clip_sample=False)}):
        a = adapter.restore(y, num_inference_steps=4, generator=torch.Generator().manual_seed(0), **kwargs)
        kwargs = {k: DDIMScheduler.from_config(v.config) for k, v in kwargs.items()}
        b = loaded.restore(y, num_inference_steps=4, generator=torch.Generator().manual_seed(0), **kwargs)
        assert torch.equal(a, b)
    assert loaded.mode == "restoregrad" and loaded.loss_fn.latent_weight == adapter.loss_fn.latent_weight


def test_state_dict_denoiser_needs_the_users_model_and_loads_strictly(tmp_path):
    adapter = custom_adapter()
    folder = adapter.save_pretrained(tmp_path / "a")
    assert (folder / "denoiser" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="pass the model object"):
        RestoreGrad.from_pretrained(folder)
    loaded = RestoreGrad.from_pretrained(folder, denoiser=TinyConvDenoiser())
    _, y = toy_waveforms(2, generator=torch.Generator().manual_seed(0))
    a = adapter.restore(y, num_inference_steps=5, generator=torch.Generator().manual_seed(1))
    b = loaded.restore(y, num_inference_steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        RestoreGrad.from_pretrained(folder, denoiser=TinyConvDenoiser(width=16))


def test_encoders_saved_before_the_resolution_setting_load_as_the_full_resolution_network(tmp_path):
    """Encoder configs without `downsample` were written when every encoder was the paper's full-resolution
    one: they load as such (downsample 1), not as today's default, and restore exactly as saved."""
    torch.manual_seed(0)
    adapter = randomise(RestoreGrad.with_encoders(TinyConvDenoiser(), dims=1, in_channels=1, size="tiny",
                                                  encoder="paper",
                                                  scheduler=LearnedPriorScheduler(num_train_timesteps=50)))
    folder = adapter.save_pretrained(tmp_path / "old")
    for net in ("prior_net", "posterior_net"):
        config_file = folder / net / "config.json"
        config = json.loads(config_file.read_text())
        assert config.pop("downsample") == 1
        config_file.write_text(json.dumps(config))
    loaded = RestoreGrad.from_pretrained(folder, denoiser=TinyConvDenoiser())
    assert loaded.prior_net.config.downsample == loaded.posterior_net.config.downsample == 1
    assert PriorNet.from_pretrained(folder / "prior_net").config.downsample == 1  # the class itself (pipelines)
    _, y = toy_waveforms(2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adapter.prior_std(y), loaded.prior_std(y))
    # Today's default saved and loaded keeps its own factor.
    default = custom_adapter()
    again = RestoreGrad.from_pretrained(default.save_pretrained(tmp_path / "new"), denoiser=TinyConvDenoiser())
    assert again.prior_net.config.downsample == default.prior_net.config.downsample == 16
    assert torch.equal(default.prior_std(y), again.prior_std(y))


def test_weatherdiff_and_cdiffuse_adapters_round_trip(tmp_path):
    torch.manual_seed(0)
    unet = WeatherUNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=16)
    adapter = randomise(RestoreGrad.with_encoders(weatherdiff.wrap(unet, patch_size=16), dims=2, in_channels=3,
                                                  size="tiny"))
    loaded = RestoreGrad.from_pretrained(adapter.save_pretrained(tmp_path / "w"))
    assert isinstance(loaded.denoiser, weatherdiff.WeatherDiffDenoiser) and loaded.denoiser.patch_size == 16
    y = torch.rand(1, 3, 20, 27) * 2 - 1
    run = lambda a: weatherdiff.restore_image(a, y, patch_size=16, stride=8, num_inference_steps=3,  # noqa: E731
                                              generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(run(adapter), run(loaded))

    model = DiffWaveDenoiser(residual_channels=8, residual_layers=2, embedding_dim=32)
    speech = randomise(cdiffuse.CDiffuSERestoreGrad.from_model(model, size="tiny"))
    folder = speech.save_pretrained(tmp_path / "s", sample_rate=16000)
    loaded = RestoreGrad.from_pretrained(folder)
    assert type(loaded) is cdiffuse.CDiffuSERestoreGrad and loaded.config.sample_rate == 16000
    noisy = torch.randn(1, 1, 1024) * 0.1
    a = speech.restore(noisy, generator=torch.Generator().manual_seed(0))
    b = loaded.restore(noisy, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_saving_into_a_folder_keeps_everything_that_is_not_the_adapters(tmp_path):
    import stat

    project = tmp_path / "project"
    (project / "checkpoint-500").mkdir(parents=True)
    (project / "checkpoint-500" / "optimizer.bin").write_bytes(b"state")
    (project / "train.py").write_text("print('mine')\n")
    (project / "data").mkdir()
    (project / "data" / "clip.wav").write_bytes(b"RIFF")
    custom_adapter().save_pretrained(project)
    first = json.loads((project / "restoregrad_config.json").read_text())
    # Saved again without the Posterior Net: the old adapter's posterior_net/ goes, the user's files stay.
    custom_adapter().save_pretrained(project, include_posterior=False)
    assert (project / "train.py").read_text() == "print('mine')\n"
    assert (project / "checkpoint-500" / "optimizer.bin").read_bytes() == b"state"
    assert (project / "data" / "clip.wav").read_bytes() == b"RIFF"
    assert not (project / "posterior_net").exists() and first["has_posterior_net"]
    assert not [p.name for p in project.iterdir() if p.name.startswith(".")]  # no staging left behind
    assert RestoreGrad.from_pretrained(project, denoiser=TinyConvDenoiser()).posterior_net is None
    # The usual permissions (umask 022): folders 0755, files 0644.
    old_umask = os.umask(0o022)
    try:
        folder = custom_adapter().save_pretrained(tmp_path / "fresh")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "prior_net").stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "restoregrad_config.json").stat().st_mode) == 0o644
    # A file is not turned into a folder.
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="`save_directory` .* is a file"):
        custom_adapter().save_pretrained(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_save_without_posterior_and_keep_a_users_readme(tmp_path):
    adapter = custom_adapter()
    target = tmp_path / "a"
    target.mkdir()
    (target / "README.md").write_text("# my own card\n")
    adapter.save_pretrained(target, include_posterior=False)
    assert (target / "README.md").read_text() == "# my own card\n"
    assert not (target / "posterior_net").exists()
    loaded = RestoreGrad.from_pretrained(target, denoiser=TinyConvDenoiser())
    assert loaded.posterior_net is None and loaded.mode == "restoregrad"
    x0, y = toy_waveforms(1, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="posterior_net"):
        loaded.training_loss(x0, y)


def seed_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "a" * 40) -> None:
    """Lay out a Hugging Face cache entry for ``repo_id`` at ``main`` holding ``folder``'s files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_loading_from_a_seeded_hub_cache_offline(tmp_path, monkeypatch):
    adapter = diffusers_adapter()
    folder = adapter.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "hub"
    seed_hub_cache(cache, "org/restoregrad-test", folder)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    loaded = RestoreGrad.from_pretrained("org/restoregrad-test", cache_dir=cache)
    y = torch.rand(1, 3, 16, 16) * 2 - 1
    a = adapter.restore(y, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    b = loaded.restore(y, num_inference_steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        RestoreGrad.from_pretrained("org/not-cached", cache_dir=cache)


def test_offline_environment_fails_at_once_without_network(tmp_path):
    """HF_HUB_OFFLINE=1 set before huggingface_hub is imported: a clear error, no connection attempt."""
    import subprocess
    import sys
    import time

    code = ("import socket\n"
            "def refuse(*a, **k): raise AssertionError('network used')\n"
            "socket.socket.connect = refuse\n"
            "from restoregrad_adapter import RestoreGrad\n"
            "try:\n"
            f"    RestoreGrad.from_pretrained('org/missing', cache_dir={str(tmp_path)!r})\n"
            "except OSError as e:\n"
            "    print('ERROR:', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "ERROR:" in out.stdout and "HF_HUB_OFFLINE" in out.stdout, out.stdout + out.stderr
    assert "network used" not in out.stdout + out.stderr
    assert time.time() - start < 60


def test_push_to_hub_uploads_exactly_the_adapter_files(tmp_path):
    adapter = diffusers_adapter()
    uploaded = {}

    def fake_upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, ignore_patterns=None, **_):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        if ignore_patterns:
            files = [f for f in files if f not in ignore_patterns]
        uploaded.update(repo_id=repo_id, files=files, message=commit_message)
        return mock.Mock(commit_url=f"https://hub.example/{repo_id}/commit/1")

    with mock.patch("huggingface_hub.HfApi.create_repo") as create_repo, \
            mock.patch("huggingface_hub.HfApi.file_exists", return_value=False), \
            mock.patch("huggingface_hub.HfApi.upload_folder", fake_upload_folder):
        url = adapter.push_to_hub("me/restoregrad-rain", private=True)
    create_repo.assert_called_once()
    assert create_repo.call_args.kwargs["private"] is True
    assert url.endswith("/commit/1") and uploaded["repo_id"] == "me/restoregrad-rain"
    assert uploaded["files"] == sorted([
        "README.md", CONFIG_NAME, "model_index.json",
        "denoiser/config.json", "denoiser/diffusion_pytorch_model.safetensors",
        "posterior_net/config.json", "posterior_net/diffusion_pytorch_model.safetensors",
        "prior_net/config.json", "prior_net/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    ])
    with mock.patch("huggingface_hub.HfApi.create_repo"), \
            mock.patch("huggingface_hub.HfApi.file_exists", return_value=True), \
            mock.patch("huggingface_hub.HfApi.upload_folder", fake_upload_folder):
        adapter.push_to_hub("me/restoregrad-rain")
    assert "README.md" not in uploaded["files"]  # the repository's own card is kept


def test_errors(tmp_path):
    adapter = diffusers_adapter()
    folder = adapter.save_pretrained(tmp_path / "a")
    # Channels that do not fit the given denoiser.
    wrong = UNet2DModel(sample_size=16, in_channels=2, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                        norm_num_groups=4)
    with pytest.raises(ValueError, match="6 input channels"):
        RestoreGrad.from_pretrained(folder, denoiser=wrong)
    # A config from a newer, incompatible version.
    newer = tmp_path / "newer"
    shutil.copytree(folder, newer)
    config = json.loads((newer / CONFIG_NAME).read_text())
    config.update(format_version=99, library_version="9.0.0")
    (newer / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format 99.*Upgrade"):
        RestoreGrad.from_pretrained(newer)
    # Missing files.
    incomplete = tmp_path / "incomplete"
    shutil.copytree(folder, incomplete)
    shutil.rmtree(incomplete / "prior_net")
    with pytest.raises(ValueError, match="missing prior_net/config.json"):
        RestoreGrad.from_pretrained(incomplete)
    with pytest.raises(ValueError, match="restoregrad_config.json is missing"):
        RestoreGrad.from_pretrained(incomplete / "scheduler")
    # A truncated safetensors file.
    truncated = tmp_path / "truncated"
    shutil.copytree(folder, truncated)
    weights = truncated / "prior_net" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        RestoreGrad.from_pretrained(truncated)
    custom = custom_adapter().save_pretrained(tmp_path / "custom")
    state = custom / "denoiser" / "model.safetensors"
    state.write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        RestoreGrad.from_pretrained(custom, denoiser=TinyConvDenoiser())
    # Unknown metadata and pickle serialisation are refused.
    with pytest.raises(ValueError, match="metadata"):
        adapter.save_pretrained(tmp_path / "b", author="me")
    with pytest.raises(ValueError, match="safetensors"):
        adapter.save_pretrained(tmp_path / "c", safe_serialization=False)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
