"""Prior Net and Posterior Net: sizes, shapes, the sigma head, the two resolutions, gradients and errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from restoregrad_adapter import PosteriorNet, PriorNet, RestoreGrad, count_parameters
from restoregrad_adapter.encoders import DEFAULT_DOWNSAMPLE, downsample_of

# 1: the paper's full-resolution network; None: the default reduced one; 3: a factor that divides nothing below.
RESOLUTIONS = [1, None, 3]


@pytest.mark.parametrize("size, paper", [("tiny", 24_000), ("base", 93_000), ("large", 370_000)])
def test_1d_parameter_counts_match_the_paper(size, paper):
    count = count_parameters(PriorNet(dims=1, in_channels=1, size=size, downsample=1))
    assert abs(count - paper) / paper < 0.05, count
    # The reduced network differs only in its stem (a 16-wide instead of a 3-wide convolution).
    stem_change = SIZE_FIRST_WIDTH[size] * (16 - 3)
    assert count_parameters(PriorNet(dims=1, in_channels=1, size=size)) == count + stem_change


SIZE_FIRST_WIDTH = {"tiny": 8, "base": 16, "large": 32}


def test_2d_base_parameter_count_matches_the_paper():
    count = count_parameters(PriorNet(dims=2, in_channels=3, size="base", downsample=1))
    assert abs(count - 270_000) / 270_000 < 0.05, count
    assert count_parameters(PriorNet(dims=2, in_channels=3, size="base")) == count + 16 * 3 * (4 * 4 - 3 * 3)


def test_encoder_names_and_default_factors():
    assert downsample_of("paper", 1) == downsample_of("paper", 2) == 1
    assert downsample_of("reduced", 1) == DEFAULT_DOWNSAMPLE[1] == 16
    assert downsample_of("reduced", 2) == DEFAULT_DOWNSAMPLE[2] == 4
    assert PriorNet(dims=1, in_channels=1).config.downsample == 16  # stored as the number, not None
    assert PosteriorNet(dims=2, in_channels=3).config.downsample == 4
    adapter = RestoreGrad.with_encoders(lambda x, y, t: x, dims=2, in_channels=3, size="tiny", encoder="paper")
    assert adapter.prior_net.config.downsample == adapter.posterior_net.config.downsample == 1
    adapter = RestoreGrad.with_encoders(lambda x, y, t: x, dims=1, in_channels=1, size="tiny")
    assert adapter.prior_net.config.downsample == adapter.posterior_net.config.downsample == 16
    with pytest.raises(ValueError, match="`encoder` must be one of"):
        downsample_of("fast", 2)


@pytest.mark.parametrize("downsample", RESOLUTIONS)
@pytest.mark.parametrize("dims, shape", [(1, (2, 1, 1000)), (1, (1, 2, 37)), (1, (1, 1, 5)), (2, (2, 3, 17, 29)),
                                         (2, (1, 1, 64, 8)), (2, (1, 3, 2, 3))])
def test_output_is_a_std_map_of_the_input_shape_for_any_size(dims, shape, downsample):
    torch.manual_seed(0)
    prior = PriorNet(dims=dims, in_channels=shape[1], size="tiny", downsample=downsample)
    posterior = PosteriorNet(dims=dims, in_channels=shape[1], size="tiny", downsample=downsample)
    y, x0 = torch.randn(shape), torch.randn(shape)
    for sigma in (prior(y), posterior(x0, y)):
        assert sigma.shape == shape
        assert sigma.dtype == torch.float32


@pytest.mark.parametrize("downsample", RESOLUTIONS)
def test_untrained_nets_start_at_the_standard_prior(downsample):
    y = torch.randn(2, 1, 300)
    assert torch.allclose(PriorNet(dims=1, in_channels=1, downsample=downsample)(y), torch.ones_like(y), atol=1e-6)
    assert torch.allclose(PosteriorNet(dims=1, in_channels=1, downsample=downsample)(y, y), torch.ones_like(y),
                          atol=1e-6)
    image = torch.randn(1, 3, 13, 22)
    assert torch.allclose(PriorNet(dims=2, downsample=downsample)(image), torch.ones_like(image), atol=1e-6)


@pytest.mark.parametrize("downsample", RESOLUTIONS)
def test_sigma_is_sigma_min_plus_exp_of_the_head_and_never_overflows(downsample):
    prior = PriorNet(dims=1, in_channels=1, size="tiny", sigma_min=0.25, downsample=downsample)
    with torch.no_grad():
        prior.encoder.head.bias.fill_(-100.0)
    assert torch.allclose(prior(torch.randn(1, 1, 50)), torch.full((1, 1, 50), 0.25))
    with torch.no_grad():
        prior.encoder.head.bias.fill_(math.log(2.0))
    assert torch.allclose(prior(torch.randn(1, 1, 50)), torch.full((1, 1, 50), 2.25), atol=1e-6)
    with torch.no_grad():
        prior.encoder.head.bias.fill_(1e4)
    sigma = prior(torch.randn(1, 1, 50))
    assert torch.isfinite(sigma).all() and sigma.max() <= 0.25 + math.exp(10.0) + 1


def test_fully_convolutional_locality():
    """Stride 1 everywhere: changing y far away leaves a sample's sigma untouched (receptive field)."""
    torch.manual_seed(0)
    prior = PriorNet(dims=1, in_channels=1, size="tiny")
    torch.nn.init.normal_(prior.encoder.head.weight, std=0.1)
    y = torch.randn(1, 1, 400)
    y2 = y.clone()
    y2[..., 300:] += 5.0
    a, b = prior(y), prior(y2)
    assert torch.equal(a[..., :200], b[..., :200])
    assert not torch.equal(a[..., 300:], b[..., 300:])


def _randomised(net, std: float = 0.3):
    """``net`` with every weight drawn at random (the zero-initialised head and branches included)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, std)
    return net


def test_reduced_map_is_the_interpolated_low_resolution_log_std():
    """Closed form of the reduced network: the head's output on the blocks, interpolated in log-std
    (linear, half-pixel centres), then sigma_min + exp; the floor holds exactly."""
    prior = _randomised(PriorNet(dims=1, in_channels=1, size="tiny", sigma_min=0.1, downsample=4), std=0.05)
    encoder = prior.encoder
    y = torch.randn(1, 1, 32)
    with torch.no_grad():
        low = encoder.head(encoder.blocks(encoder.stem(y)))  # 8 blocks of 4 samples
        sigma = prior(y)
    assert low.shape == (1, 1, 8) and low.abs().max() < 5  # inside the clamp of the log-std
    h = torch.log(sigma - 0.1)
    # Sample i sits at block coordinate (i + 0.5) / 4 - 0.5: samples 4k + 2 ... 4k + 5 lie between the
    # centres of blocks k and k + 1, at 1/8, 3/8, 5/8, 7/8 of the way; the first two and the last two
    # samples repeat the edge blocks.
    for k in range(7):
        for offset, w in zip(range(2, 6), (0.125, 0.375, 0.625, 0.875)):
            expected = (1 - w) * low[0, 0, k] + w * low[0, 0, k + 1]
            assert torch.allclose(h[0, 0, 4 * k + offset], expected, atol=1e-4)
    assert torch.allclose(h[0, 0, :2], low[0, 0, 0].expand(2), atol=1e-4)
    assert torch.allclose(h[0, 0, -2:], low[0, 0, -1].expand(2), atol=1e-4)
    with torch.no_grad():
        encoder.head.bias.fill_(-100.0)  # exp underflows to 0: sigma is the floor itself, never below
    assert torch.equal(prior(y), torch.full_like(y, 0.1))


@pytest.mark.parametrize("dims", [1, 2])
def test_reduced_network_commutes_with_shifts_by_its_block(dims):
    """Fully convolutional at the block grid: shifting y by one block shifts sigma by one block (away
    from the borders, which the convolutions' zero padding sees)."""
    factor = DEFAULT_DOWNSAMPLE[dims]
    # Weights large enough for a map that varies (from about 0.6 to 4), small enough not to hit the clamp.
    prior = _randomised(PriorNet(dims=dims, in_channels=1, size="tiny"), std=0.15 if dims == 1 else 0.1)
    shape = (1, 1, 4096) if dims == 1 else (1, 1, 32, 256)  # shifted along the last axis
    y = torch.randn(shape)
    shifted = torch.roll(y, shifts=factor, dims=-1)
    with torch.no_grad():
        a, b = prior(y), prior(shifted)
    margin = 24 * factor  # beyond the receptive field of the 19 3-wide convolutions at the block grid
    inner = slice(margin, shape[-1] - margin)
    assert torch.allclose(torch.roll(a, shifts=factor, dims=-1)[..., inner], b[..., inner], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a[..., inner], b[..., inner], rtol=1e-2)  # the map is not flat: the check has teeth


@pytest.mark.parametrize("dims, shape", [(1, (2, 1, 16128)), (2, (2, 3, 64, 64))])
def test_reduced_network_costs_a_fraction_of_the_papers(dims, shape):
    """Floating-point operations of a forward pass (counted, not timed): the reduced body sees
    1 / downsample**dims of the positions."""
    def flops(net):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            net(torch.randn(shape))
        return counter.get_total_flops()

    paper = flops(PriorNet(dims=dims, in_channels=shape[1], size="base", downsample=1))
    reduced = flops(PriorNet(dims=dims, in_channels=shape[1], size="base"))
    assert reduced < paper / DEFAULT_DOWNSAMPLE[dims] ** dims * 1.2, (reduced, paper)


@pytest.mark.parametrize("downsample", [1, None])
@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_gradients_reach_every_layer_within_three_steps(norm, downsample):
    # The head starts at zero (sigma = 1) and, without normalisation, so does each block's second
    # convolution: the first step trains the head, the second those convolutions, the third all.
    torch.manual_seed(0)
    prior = PriorNet(dims=2, in_channels=3, size="tiny", norm=norm, downsample=downsample)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-3)
    y = torch.randn(2, 3, 12, 12)
    for _ in range(3):
        optimizer.zero_grad()
        (prior(y) - 2.0).pow(2).mean().backward()
        optimizer.step()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("downsample", [1, None])
def test_save_and_load_pretrained_strictly(tmp_path, downsample):
    prior = PriorNet(dims=1, in_channels=2, size="tiny", sigma_min=0.05, downsample=downsample)
    torch.nn.init.normal_(prior.encoder.head.weight)
    prior.save_pretrained(tmp_path)
    loaded = PriorNet.from_pretrained(tmp_path)
    assert loaded.config.sigma_min == 0.05 and loaded.config.in_channels == 2
    assert loaded.config.downsample == prior.config.downsample
    y = torch.randn(1, 2, 64)
    assert torch.equal(prior(y), loaded(y))


def test_bad_arguments_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="dims"):
        PriorNet(dims=3)
    with pytest.raises(ValueError, match="size"):
        PriorNet(size="huge")
    with pytest.raises(ValueError, match="norm"):
        PriorNet(norm="layer")
    with pytest.raises(ValueError, match="sigma_min"):
        PriorNet(sigma_min=-0.1)
    with pytest.raises(ValueError, match="in_channels"):
        PriorNet(in_channels=0)
    for bad in (0, -4, 2.0, True, "4"):
        with pytest.raises(ValueError, match="`downsample` must be a positive integer"):
            PriorNet(downsample=bad)
    prior = PriorNet(dims=2, in_channels=3, size="tiny")
    with pytest.raises(ValueError, match="`y` must have 3 channels"):
        prior(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"`y` must have shape \(B, C, H, W\)"):
        prior(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        prior(torch.ones(1, 3, 8, 8, dtype=torch.long))
    posterior = PosteriorNet(dims=1, in_channels=1, size="tiny")
    with pytest.raises(ValueError, match="same shape"):
        posterior(torch.randn(1, 1, 10), torch.randn(1, 1, 12))


def test_an_upper_bound_squashes_sigma_and_still_starts_at_one(tmp_path):
    """``sigma_max``: sigma = sigma_min + (sigma_max - sigma_min) sigmoid(h), 1 at initialisation, never above
    the bound; without it the encoders are unchanged (exp(h))."""
    from restoregrad_adapter import EncoderConfig, RestoreGrad, RestoreGradConfig

    torch.manual_seed(0)
    bounded = PriorNet(dims=2, in_channels=3, size="tiny", sigma_min=0.1, sigma_max=2.0)
    y = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(bounded(y), torch.ones_like(y), rtol=0, atol=1e-6)
    with torch.no_grad():
        bounded.encoder.head.bias.fill_(50.0)  # far beyond what exp(h) would allow to stay small
    sigma = bounded(y)
    assert sigma.max() <= 2.0 and sigma.min() > 1.99
    with torch.no_grad():
        bounded.encoder.head.bias.fill_(-50.0)
    assert bounded(y).min() >= 0.1
    bounded.save_pretrained(tmp_path / "prior")
    loaded = PriorNet.from_pretrained(tmp_path / "prior")
    assert loaded.config.sigma_max == 2.0 and torch.equal(loaded(y), bounded(y))
    for bad in (1.0, 0.5, float("inf")):
        with pytest.raises(ValueError, match="`sigma_max`"):
            PriorNet(dims=1, in_channels=1, sigma_max=bad)
    spec = EncoderConfig(dims=2, in_channels=3, size="tiny", sigma_max=2.0)
    adapter = RestoreGrad(lambda x_t, y, t: x_t, RestoreGradConfig(encoder=spec))
    assert adapter.prior_net.config.sigma_max == adapter.posterior_net.config.sigma_max == 2.0
    assert EncoderConfig.of(adapter.prior_net) == spec
    unbounded = PriorNet(dims=2, in_channels=3, size="tiny")
    assert unbounded.config.sigma_max is None and EncoderConfig.of(unbounded).sigma_max is None
