"""Tests for restoregrad_adapter.contrib.reference_nets (CPU, a few seconds)."""

from __future__ import annotations

import time

import pytest
import torch

from restoregrad_adapter.contrib.reference_nets import (
    DiffWaveDenoiser,
    WeatherUNet,
    sinusoidal_embedding,
)

N_FREQ = 33  # small spectrograms keep the tests fast


def small_diffwave(**kwargs) -> DiffWaveDenoiser:
    params = dict(residual_channels=16, residual_layers=3, dilation_cycle_length=2,
                  n_freq=N_FREQ, embedding_dim=64)
    params.update(kwargs)
    return DiffWaveDenoiser(**params)


def small_unet(**kwargs) -> WeatherUNet:
    params = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, image_size=16, attn_resolutions=())
    params.update(kwargs)
    return WeatherUNet(**params)


def diffwave_inputs(batch: int, frames: int, n_freq: int = N_FREQ, hop: int = 256):
    audio = torch.randn(batch, hop * frames)
    spec = torch.randn(batch, n_freq, frames)
    step = torch.rand(batch) * 49
    return audio, spec, step


def perturb_output(model: DiffWaveDenoiser) -> None:
    """Give the zero-initialised output conv non-zero weights."""
    with torch.no_grad():
        model.output_projection.weight.normal_()
        model.output_projection.bias.normal_()


# ---------------------------------------------------------------------------
# sinusoidal embedding
# ---------------------------------------------------------------------------


def test_sinusoidal_embedding_shapes_and_fractional():
    t = torch.tensor([0.0, 12.0, 12.37])
    for dim in (2, 7, 16):
        emb = sinusoidal_embedding(t, dim)
        assert emb.shape == (3, dim)
    emb = sinusoidal_embedding(t, 16)
    assert not torch.allclose(emb[1], emb[2])
    assert torch.allclose(sinusoidal_embedding(torch.tensor([3]), 8),
                          sinusoidal_embedding(torch.tensor([3.0]), 8))


# ---------------------------------------------------------------------------
# DiffWaveDenoiser
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("batch,frames,layers,channels", [(1, 1, 2, 16), (2, 3, 3, 16), (3, 2, 4, 8)])
def test_diffwave_output_shape(batch, frames, layers, channels):
    torch.manual_seed(0)
    model = small_diffwave(residual_layers=layers, residual_channels=channels)
    perturb_output(model)
    out = model(*diffwave_inputs(batch, frames))
    assert out.shape == (batch, 1, 256 * frames)
    assert torch.isfinite(out).all()


def test_diffwave_default_n_freq_and_fresh_output_is_zero():
    torch.manual_seed(0)
    model = DiffWaveDenoiser(residual_channels=16, residual_layers=2, embedding_dim=64)
    out = model(*diffwave_inputs(2, 2, n_freq=513))
    assert out.shape == (2, 1, 512)
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv


@pytest.mark.parametrize("hop", [64, 100, 7])
def test_diffwave_other_hop_lengths(hop):
    torch.manual_seed(0)
    model = small_diffwave(hop_length=hop)
    out = model(*diffwave_inputs(2, 3, hop=hop))
    assert out.shape == (2, 1, 3 * hop)
    assert model.spectrogram_upsampler(torch.randn(2, N_FREQ, 3)).shape == (2, N_FREQ, 3 * hop)


def test_diffwave_dilation_cycle():
    model = DiffWaveDenoiser(residual_channels=4, residual_layers=7, dilation_cycle_length=3,
                             n_freq=5, embedding_dim=8)
    dilations = [b.dilated_conv.dilation[0] for b in model.residual_blocks]
    assert dilations == [1, 2, 4, 1, 2, 4, 1]


def test_diffwave_fractional_step():
    torch.manual_seed(0)
    model = small_diffwave()
    perturb_output(model)
    audio, spec, _ = diffwave_inputs(1, 2)
    out_int = model(audio, spec, torch.tensor([12.0]))
    out_frac = model(audio, spec, torch.tensor([12.37]))
    out_int_again = model(audio, spec, torch.tensor([12]))  # integer dtype accepted
    assert not torch.allclose(out_int, out_frac)
    assert torch.allclose(out_int, out_int_again)
    # a 0-d step is broadcast over the batch
    audio2, spec2, _ = diffwave_inputs(2, 2)
    assert model(audio2, spec2, torch.tensor(3.5)).shape == (2, 1, 512)


def test_diffwave_gradients():
    torch.manual_seed(0)
    model = small_diffwave()
    audio, spec, step = diffwave_inputs(2, 2)

    # the fresh output is zero, so regress onto a random target
    target = torch.randn(2, 1, 512)
    loss = (model(audio, spec, step) - target).pow(2).mean()
    loss.backward()
    assert model.output_projection.weight.grad is not None
    assert model.output_projection.weight.grad.abs().sum() > 0
    assert model.output_projection.bias.grad.abs().sum() > 0

    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    loss = (model(audio, spec, step) - target).pow(2).mean()
    loss.backward()
    assert model.input_projection.weight.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_diffwave_deterministic():
    torch.manual_seed(123)
    a = small_diffwave()
    torch.manual_seed(123)
    b = small_diffwave()
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    perturb_output(a)
    b.load_state_dict(a.state_dict())
    inputs = diffwave_inputs(2, 2)
    assert torch.equal(a(*inputs), b(*inputs))


@pytest.mark.parametrize(
    "audio_shape,spec_shape,step_shape,argument",
    [
        ((2, 1, 512), (2, N_FREQ, 2), (2,), "audio"),  # audio not 2-D
        ((2, 500), (2, N_FREQ, 2), (2,), "audio"),  # L != 256 * frames
        ((2, 512), (2, N_FREQ + 1, 2), (2,), "spectrogram"),  # wrong n_freq
        ((2, 512), (N_FREQ, 2), (2,), "spectrogram"),  # not 3-D
        ((2, 512), (3, N_FREQ, 2), (2,), "spectrogram"),  # batch mismatch
        ((2, 512), (2, N_FREQ, 2), (3,), "diffusion_step"),  # batch mismatch
        ((2, 512), (2, N_FREQ, 2), (2, 1), "diffusion_step"),  # not 1-D
    ],
)
def test_diffwave_wrong_shapes(audio_shape, spec_shape, step_shape, argument):
    model = small_diffwave()
    with pytest.raises(ValueError, match=argument):
        model(torch.randn(audio_shape), torch.randn(spec_shape), torch.rand(step_shape))


def test_diffwave_error_message_is_explicit():
    model = small_diffwave()
    with pytest.raises(ValueError) as info:
        model(torch.randn(1, 500), torch.randn(1, N_FREQ, 2), torch.tensor([1.0]))
    message = str(info.value)
    assert "audio" in message and "512" in message and "500" in message


def test_diffwave_step_out_of_range():
    model = small_diffwave(max_steps=50)
    audio, spec, _ = diffwave_inputs(1, 1)
    model(audio, spec, torch.tensor([50.0]))
    for bad in (-0.5, 50.5, float("nan")):
        with pytest.raises(ValueError, match="diffusion_step"):
            model(audio, spec, torch.tensor([bad]))


def test_diffwave_bad_constructor_arguments():
    with pytest.raises(ValueError, match="residual_layers"):
        DiffWaveDenoiser(residual_layers=0)
    with pytest.raises(ValueError, match="hop_length"):
        DiffWaveDenoiser(hop_length=0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="conditioner_channels: expected None or a positive integer"):
            DiffWaveDenoiser(conditioner_channels=bad)


def test_diffwave_compressed_conditioner():
    torch.manual_seed(0)
    model = small_diffwave(conditioner_channels=5)
    perturb_output(model)
    audio, spec, step = diffwave_inputs(2, 3)
    out = model(audio, spec, step)
    assert out.shape == (2, 1, 768)
    # The spectrogram is mapped once, at the frame rate, to 5 learned rows that every layer reads.
    assert model.conditioner_compression.weight.shape == (5, N_FREQ, 1)
    assert all(block.conditioner_projection.in_channels == 5 for block in model.residual_blocks)
    # Its output is the plain network's on the compressed spectrogram.
    plain = small_diffwave(n_freq=5)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("conditioner_compression")})
    torch.testing.assert_close(out, plain(audio, model.conditioner_compression(spec), step))
    out.square().mean().backward()
    assert model.conditioner_compression.weight.grad.abs().sum() > 0
    # The option is part of the config; without it the parameter names are CDiffuSE's.
    assert DiffWaveDenoiser.from_config(model.config).conditioner_compression is not None
    assert not any(k.startswith("conditioner_compression") for k in small_diffwave().state_dict())


# ---------------------------------------------------------------------------
# WeatherUNet
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,batch",
    [
        (dict(), 2),
        (dict(image_size=32), 1),
        (dict(image_size=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,)), 2),
        (dict(ch=24, ch_mult=(1, 3), attn_resolutions=(8,)), 1),
        (dict(in_channels=2, out_channels=1, image_size=8), 3),
    ],
)
def test_unet_output_shape(kwargs, batch):
    torch.manual_seed(0)
    model = small_unet(**kwargs)
    size = model.image_size
    x = torch.randn(batch, model.in_channels, size, size)
    eps = model(x, torch.rand(batch) * 1000)
    assert eps.shape == (batch, model.out_channels, size, size)
    assert torch.isfinite(eps).all()


def test_unet_call_signature_with_concatenated_condition():
    torch.manual_seed(0)
    model = small_unet()
    y = torch.randn(2, 3, 16, 16)
    x_t = torch.randn(2, 3, 16, 16)
    eps = model(torch.cat([y, x_t], 1), torch.tensor([10.0, 500.0]))
    assert eps.shape == x_t.shape


def test_unet_fractional_timestep():
    torch.manual_seed(0)
    model = small_unet().eval()
    x = torch.randn(1, 6, 16, 16)
    a = model(x, torch.tensor([12.0]))
    b = model(x, torch.tensor([12.37]))
    c = model(x, torch.tensor([12]))
    assert not torch.allclose(a, b)
    assert torch.allclose(a, c)
    assert model(torch.randn(2, 6, 16, 16), torch.tensor(5.5)).shape == (2, 3, 16, 16)


def test_unet_gradients_reach_all_parameters():
    torch.manual_seed(0)
    model = small_unet(attn_resolutions=(8,))
    x = torch.randn(2, 6, 16, 16)
    model(x, torch.tensor([3.0, 700.0])).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_unet_wrong_spatial_size():
    model = small_unet(image_size=16)
    for shape in [(1, 6, 32, 32), (1, 6, 16, 8), (1, 6, 8, 16)]:
        with pytest.raises(ValueError, match="image_size"):
            model(torch.randn(shape), torch.tensor([1.0]))


@pytest.mark.parametrize(
    "x_shape,t_shape,argument",
    [
        ((1, 3, 16, 16), (1,), "x"),  # wrong channel count
        ((6, 16, 16), (1,), "x"),  # not 4-D
        ((2, 6, 16, 16), (3,), "t"),  # batch mismatch
        ((2, 6, 16, 16), (2, 1), "t"),  # not 1-D
    ],
)
def test_unet_wrong_shapes(x_shape, t_shape, argument):
    model = small_unet()
    with pytest.raises(ValueError, match=rf"^{argument}:"):
        model(torch.randn(x_shape), torch.rand(t_shape))


def test_unet_bad_image_size_for_depth():
    with pytest.raises(ValueError, match="image_size"):
        small_unet(image_size=18, ch_mult=(1, 2, 2))


def test_unet_group_norm_divides_small_channels():
    model = small_unet(ch=24, ch_mult=(1, 3))
    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            assert module.num_channels % module.num_groups == 0
            assert module.num_groups <= 32


def test_unet_state_dict_names_stable_and_deterministic():
    torch.manual_seed(7)
    a = small_unet(attn_resolutions=(8,))
    torch.manual_seed(7)
    b = small_unet(attn_resolutions=(8,))
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa.keys()) == list(sb.keys())
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    for key in ("temb.dense.0.weight", "conv_in.weight", "down.0.block.0.conv1.weight",
                "down.0.resample.conv.weight", "down.1.attn.0.q.weight",
                "mid.block_1.conv1.weight", "mid.attn_1.proj_out.weight",
                "up.1.block.0.shortcut.weight", "up.1.resample.conv.weight",
                "norm_out.weight", "conv_out.weight"):
        assert key in sa, key
    x = torch.randn(1, 6, 16, 16)
    t = torch.tensor([42.0])
    assert torch.equal(a(x, t), b(x, t))


# ---------------------------------------------------------------------------
# default sizes
# ---------------------------------------------------------------------------


def test_default_parameter_counts():
    start = time.perf_counter()
    diffwave = DiffWaveDenoiser()
    unet = WeatherUNet()
    elapsed = time.perf_counter() - start
    n_diffwave = sum(p.numel() for p in diffwave.parameters())
    n_unet = sum(p.numel() for p in unet.parameters())
    print(f"\nDiffWaveDenoiser() [30 layers x 64 channels, n_freq=513]: {n_diffwave:,} parameters")
    print(f"WeatherUNet() [WeatherDiff64 size]: {n_unet:,} parameters "
          f"(built in {elapsed:.2f} s)")
    assert 2_000_000 < n_diffwave < 5_000_000
    assert 70_000_000 < n_unet < 120_000_000
    assert len(diffwave.residual_blocks) == 30
