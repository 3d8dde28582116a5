"""RestoreGradLoss: each term against its closed form, the modes, float32 under autocast, errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from restoregrad_adapter import RestoreGradLoss


def data(seed=0, shape=(2, 1, 50)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps_pred = torch.randn(shape, generator=g, dtype=torch.float64)
    prior = torch.rand(shape, generator=g, dtype=torch.float64) + 0.1
    post = torch.rand(shape, generator=g, dtype=torch.float64) + 0.1
    eps = post * torch.randn(shape, generator=g, dtype=torch.float64)
    return x0, eps_pred, eps, prior, post


def test_terms_equal_the_paper_sums_divided_by_the_element_count():
    x0, eps_pred, eps, prior, post = data()
    abar_T = 0.0064
    out = RestoreGradLoss(latent_weight=0.1, prior_matching_weight=0.5)(eps_pred, eps, x0, prior, post, abar_T)
    n = x0.numel()
    # Written element by element from eq. 10.
    lr = sum(abar_T * x0.flatten()[i] ** 2 / post.flatten()[i] ** 2 + math.log(post.flatten()[i] ** 2)
             for i in range(n)) / n
    dm = sum((eps.flatten()[i] - eps_pred.flatten()[i]) ** 2 / post.flatten()[i] ** 2 for i in range(n)) / n
    pm = sum(math.log(prior.flatten()[i] ** 2) - math.log(post.flatten()[i] ** 2)
             + post.flatten()[i] ** 2 / prior.flatten()[i] ** 2 for i in range(n)) / n
    assert out.latent_reg.item() == pytest.approx(float(lr), rel=1e-5)
    assert out.denoise.item() == pytest.approx(float(dm), rel=1e-5)
    assert out.prior_match.item() == pytest.approx(float(pm), rel=1e-5)
    assert out.loss.item() == pytest.approx(0.1 * float(lr) + float(dm) + 0.5 * float(pm), rel=1e-5)
    assert all(v.dtype == torch.float32 for v in (out.loss, out.latent_reg, out.denoise, out.prior_match))


def test_prior_match_is_the_kl_up_to_constants_and_minimal_at_equality():
    x0, eps_pred, eps, prior, post = data(1)
    loss = RestoreGradLoss()
    equal = loss(eps_pred, eps, x0, prior, prior.clone(), 0.01).prior_match
    assert equal.item() == pytest.approx(1.0, abs=1e-6)  # log s - log s + 1
    other = loss(eps_pred, eps, x0, prior, post, 0.01).prior_match
    kl = 0.5 * (post**2 / prior**2 - 1 - torch.log(post**2 / prior**2)).mean()
    assert other.item() == pytest.approx(2 * kl.item() + 1, rel=1e-5)
    assert other > equal


def test_no_posterior_variant_is_eq_11():
    x0, eps_pred, eps, prior, _ = data(2)
    loss = RestoreGradLoss(latent_weight=0.3, prior_matching_weight=7.0)
    out = loss(eps_pred, eps, x0, prior, None, 0.02)
    assert out.prior_match.item() == 0.0
    with_itself = loss(eps_pred, eps, x0, prior, prior, 0.02)
    assert out.latent_reg.item() == pytest.approx(with_itself.latent_reg.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(0.3 * with_itself.latent_reg.item() + with_itself.denoise.item(), rel=1e-6)


def test_standard_ddpm_equals_mse_loss_exactly():
    g = torch.Generator().manual_seed(3)
    x0, eps_pred, eps = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
    out = RestoreGradLoss()(eps_pred, eps, x0, 1.0, learned_prior=False)
    assert torch.equal(out.loss, F.mse_loss(eps_pred, eps))
    assert out.latent_reg.item() == 0.0 and out.prior_match.item() == 0.0


def test_priorgrad_is_the_sigma_weighted_mse():
    x0, eps_pred, eps, prior, _ = data(4)
    out = RestoreGradLoss()(eps_pred, eps, x0, prior, learned_prior=False)
    assert out.loss.item() == pytest.approx((((eps - eps_pred) / prior) ** 2).mean().item(), rel=1e-6)


def test_float32_under_bf16_autocast():
    x0, eps_pred, eps, prior, post = (t.float() for t in data(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = RestoreGradLoss()(eps_pred.bfloat16(), eps, x0, prior, post, 0.01)
    reference = RestoreGradLoss()(eps_pred.bfloat16().float(), eps, x0, prior, post, 0.01)
    assert out.loss.dtype == torch.float32
    assert torch.equal(out.loss, reference.loss)


def test_gradients_flow_to_both_stds_and_the_prediction():
    x0, eps_pred, _, prior, post = (t.float() for t in data(6))
    prior.requires_grad_(True), post.requires_grad_(True), eps_pred.requires_grad_(True)
    eps = post * torch.randn_like(post)
    RestoreGradLoss()(eps_pred, eps, x0, prior, post, 0.01).loss.backward()
    for t in (prior, post, eps_pred):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_errors_name_the_argument():
    x0, eps_pred, eps, prior, post = data()
    loss = RestoreGradLoss()
    with pytest.raises(ValueError, match="latent_weight"):
        RestoreGradLoss(latent_weight=-1)
    with pytest.raises(ValueError, match="prior_matching_weight"):
        RestoreGradLoss(prior_matching_weight=float("nan"))
    with pytest.raises(ValueError, match="eps_pred"):
        loss(eps_pred[..., :10], eps, x0, prior, post, 0.1)
    with pytest.raises(ValueError, match="x0"):
        loss(eps_pred, eps, x0[..., :10], prior, post, 0.1)
    with pytest.raises(ValueError, match="posterior_std"):
        loss(eps_pred, eps, x0, prior, post[..., :7], 0.1)
    with pytest.raises(ValueError, match="alpha_bar_T"):
        loss(eps_pred, eps, x0, prior, post)
    with pytest.raises(ValueError, match="x0"):
        loss(eps_pred, eps, x0.long(), prior, post, 0.1)
