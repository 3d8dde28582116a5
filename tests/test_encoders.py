"""Prior Net and Posterior Net: sizes, shapes, the sigma head, gradients and errors."""

import math

import pytest
import torch

from restoregrad_adapter import PosteriorNet, PriorNet, count_parameters


@pytest.mark.parametrize("size, paper", [("tiny", 24_000), ("base", 93_000), ("large", 370_000)])
def test_1d_parameter_counts_match_the_paper(size, paper):
    count = count_parameters(PriorNet(dims=1, in_channels=1, size=size))
    assert abs(count - paper) / paper < 0.05, count


def test_2d_base_parameter_count_matches_the_paper():
    count = count_parameters(PriorNet(dims=2, in_channels=3, size="base"))
    assert abs(count - 270_000) / 270_000 < 0.05, count


@pytest.mark.parametrize("dims, shape", [(1, (2, 1, 1000)), (1, (1, 2, 37)), (2, (2, 3, 17, 29)), (2, (1, 1, 64, 8))])
def test_output_is_a_std_map_of_the_input_shape_for_any_size(dims, shape):
    torch.manual_seed(0)
    prior = PriorNet(dims=dims, in_channels=shape[1], size="tiny")
    posterior = PosteriorNet(dims=dims, in_channels=shape[1], size="tiny")
    y, x0 = torch.randn(shape), torch.randn(shape)
    for sigma in (prior(y), posterior(x0, y)):
        assert sigma.shape == shape
        assert sigma.dtype == torch.float32


def test_untrained_nets_start_at_the_standard_prior():
    y = torch.randn(2, 1, 300)
    assert torch.allclose(PriorNet(dims=1, in_channels=1)(y), torch.ones_like(y), atol=1e-6)
    assert torch.allclose(PosteriorNet(dims=1, in_channels=1)(y, y), torch.ones_like(y), atol=1e-6)


def test_sigma_is_sigma_min_plus_exp_of_the_head_and_never_overflows():
    prior = PriorNet(dims=1, in_channels=1, size="tiny", sigma_min=0.25)
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


@pytest.mark.parametrize("norm", ["none", "batch", "group"])
def test_gradients_reach_every_layer_within_three_steps(norm):
    # The head starts at zero (sigma = 1) and, without normalisation, so does each block's second
    # convolution: the first step trains the head, the second those convolutions, the third all.
    torch.manual_seed(0)
    prior = PriorNet(dims=2, in_channels=3, size="tiny", norm=norm)
    optimizer = torch.optim.Adam(prior.parameters(), lr=1e-3)
    y = torch.randn(2, 3, 12, 12)
    for _ in range(3):
        optimizer.zero_grad()
        (prior(y) - 2.0).pow(2).mean().backward()
        optimizer.step()
    for name, p in prior.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_and_load_pretrained_strictly(tmp_path):
    prior = PriorNet(dims=1, in_channels=2, size="tiny", sigma_min=0.05)
    torch.nn.init.normal_(prior.encoder.head.weight)
    prior.save_pretrained(tmp_path)
    loaded = PriorNet.from_pretrained(tmp_path)
    assert loaded.config.sigma_min == 0.05 and loaded.config.in_channels == 2
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
