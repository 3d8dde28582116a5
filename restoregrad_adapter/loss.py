"""RestoreGrad's training objective: the modified ELBO of paper eq. 10 (and eq. 11).

All terms are means over elements (the paper's sums divided by the element count, so the weights
keep the paper's meaning), and they are computed in float32 even under autocast:

- latent regulariser  ``L_LR = mean(abar_T * x0**2 / sigma_post**2 + log sigma_post**2)``
- denoising           ``L_DM = mean((eps - eps_hat)**2 / sigma_post**2)``
- prior matching      ``L_PM = mean(log sigma_prior**2 - log sigma_post**2 + sigma_post**2 / sigma_prior**2)``
- total               ``L = latent_weight * L_LR + L_DM + prior_matching_weight * L_PM``
  (the paper's ``eta`` and ``lambda``)

The denoising term is always eq. 10's noise-space error. A denoiser that predicts ``x0`` or ``v``
instead of the noise is compared through the noise estimate its prediction implies (the adapter
converts it; docs/design.md, "Parameterizations and targets"), so for the same ``eps_hat`` the loss is
the same in every parameterization.

``weighting`` is the one named deviation from the ELBO: it multiplies the denoising term of each
example by a function of its signal-to-noise ratio ``SNR_t = abar_t / (1 - abar_t)``:

- ``"elbo"`` (default): weight 1, the paper's eq. 10.
- ``"min_snr"``: ``min(SNR_t, gamma) / SNR_t``, Min-SNR-gamma (Hang et al., ICCV 2023), which stops
  the low-noise steps from dominating the gradient.
- ``"x0"``: ``1 / SNR_t``, a plain mean squared error of the ``x0`` estimate (as in x0-predicting
  restoration models such as SR3's successors, SRDiff and ResShift).

One loss serves every mode:

- RestoreGrad (eq. 10): ``posterior_std`` given; all three terms.
- RestoreGrad without the Posterior Net (eq. 11): ``posterior_std=None``, so ``sigma_post := sigma_prior``
  and the prior-matching term vanishes.
- PriorGrad (fixed handcrafted sigma) and standard DDPM (sigma = 1): ``learned_prior=False``; only the
  weighted denoising term remains (for sigma = 1 it is exactly ``F.mse_loss(eps_hat, eps)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_finite_and_positive

#: The denoising term's weightings: the paper's ELBO and two named deviations from it.
WEIGHTINGS = ("elbo", "min_snr", "x0")


@dataclass
class RestoreGradLossOutput:
    """The total loss and its terms (float32 scalars). ``latent_reg`` and ``prior_match`` are zero
    when they do not enter the total (fixed prior; no Posterior Net)."""

    loss: torch.Tensor
    latent_reg: torch.Tensor
    denoise: torch.Tensor
    prior_match: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        """Plain floats, for logging."""
        return {k: float(v.detach()) for k, v in vars(self).items()}


def _check_float(name: str, tensor: torch.Tensor) -> None:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"`{name}` must be a floating-point tensor, got {got}.")


class RestoreGradLoss:
    """RestoreGrad's loss (paper eq. 10/11). See the module docstring for the terms.

    Args:
        weighting: ``"elbo"``, ``"min_snr"`` or ``"x0"`` (module docstring); not the paper's unless "elbo".
        snr_gamma: gamma of ``"min_snr"``.
        latent_weight: the paper's eta, weight of the latent regulariser (paper: 0.1 for speech,
            0.005-0.05 for images).
        prior_matching_weight: the paper's lambda, weight of the prior-matching term (paper: 0.5 for
            speech, 0.1-10 for images).
    """

    def __init__(self, latent_weight: float = 0.1, prior_matching_weight: float = 0.5, weighting: str = "elbo",
                 snr_gamma: float = 5.0):
        for name, value in (("latent_weight", latent_weight), ("prior_matching_weight", prior_matching_weight),
                            ("snr_gamma", snr_gamma)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"`weighting` must be one of {WEIGHTINGS}, got {weighting!r}.")
        if weighting == "min_snr" and snr_gamma <= 0:
            raise ValueError(f"`snr_gamma` must be > 0 for weighting 'min_snr', got {snr_gamma!r}.")
        self.latent_weight = float(latent_weight)
        self.prior_matching_weight = float(prior_matching_weight)
        self.weighting = weighting
        self.snr_gamma = float(snr_gamma)

    def __repr__(self) -> str:
        return (f"RestoreGradLoss(latent_weight={self.latent_weight}, prior_matching_weight="
                f"{self.prior_matching_weight}, weighting={self.weighting!r}, snr_gamma={self.snr_gamma})")

    def snr_weights(self, snr: torch.Tensor) -> torch.Tensor:
        """The denoising term's per-example weights for signal-to-noise ratios ``snr`` ``(B,)``."""
        snr = snr.float()
        if self.weighting == "min_snr":
            return snr.clamp(max=self.snr_gamma) / snr
        if self.weighting == "x0":
            return 1.0 / snr
        return torch.ones_like(snr)

    def __call__(
        self,
        eps_pred: torch.Tensor,
        eps: torch.Tensor,
        x0: torch.Tensor,
        prior_std: torch.Tensor,
        posterior_std: torch.Tensor | None = None,
        alpha_bar_T: float | torch.Tensor | None = None,
        *,
        learned_prior: bool = True,
        snr: torch.Tensor | None = None,
    ) -> RestoreGradLossOutput:
        """Compute the loss.

        Args:
            eps_pred: the denoiser's output ``eps_hat``, ``(B, C, *spatial)``.
            eps: the noise that was added, ``sigma_post * z`` (or ``sigma_prior * z``), same shape.
            x0: the clean signal, same shape.
            prior_std: ``sigma_prior``, broadcastable to the signal's shape (a tensor, or 1.0 for DDPM).
            posterior_std: ``sigma_post``; None for the no-posterior variant or a fixed prior.
            alpha_bar_T: ``abar_T`` of the training schedule (needed when ``learned_prior``).
            learned_prior: False for PriorGrad / standard DDPM, whose sigma is fixed: the loss is then
                the sigma-weighted denoising term alone.
            snr: ``(B,)`` signal-to-noise ratios of the examples' steps; needed unless ``weighting="elbo"``.

        The inputs are checked here (standard deviations finite and > 0: one host synchronisation);
        :meth:`compute` is the same loss of inputs already checked (``RestoreGrad.training_loss``
        checks a step's inputs once, together).
        """
        _check_float("eps_pred", eps_pred)
        _check_float("eps", eps)
        _check_float("x0", x0)
        if eps_pred.shape != eps.shape:
            raise ValueError(f"`eps_pred` has shape {tuple(eps_pred.shape)} but `eps` has {tuple(eps.shape)}; "
                             "expected the same shape.")
        if x0.shape != eps.shape:
            raise ValueError(f"`x0` has shape {tuple(x0.shape)} but `eps` has {tuple(eps.shape)}; expected the same.")
        if not isinstance(prior_std, torch.Tensor):
            prior_std = torch.tensor(float(prior_std), device=x0.device)
        for name, std in (("prior_std", prior_std), ("posterior_std", posterior_std)):
            if std is None:
                continue
            _check_float(name, std)
            try:
                torch.broadcast_shapes(std.shape, x0.shape)
            except RuntimeError:
                raise ValueError(f"`{name}` of shape {tuple(std.shape)} does not broadcast to the signal's shape "
                                 f"{tuple(x0.shape)}.") from None
        if self.weighting != "elbo" and (not isinstance(snr, torch.Tensor) or snr.shape != x0.shape[:1]):
            raise ValueError(f"weighting {self.weighting!r} needs `snr`, a tensor of shape ({x0.shape[0]},); got "
                             f"{tuple(snr.shape) if isinstance(snr, torch.Tensor) else snr!r}.")
        if learned_prior and alpha_bar_T is None:
            raise ValueError("`alpha_bar_T` is required when `learned_prior=True` (it weights the latent regulariser).")
        # They divide the denoising and prior-matching terms.
        check_finite_and_positive(positive={name: std for name, std in (("prior_std", prior_std),
                                                                         ("posterior_std", posterior_std))
                                            if std is not None})
        return self.compute(eps_pred, eps, x0, prior_std, posterior_std, alpha_bar_T, learned_prior, snr)

    def compute(
        self,
        eps_pred: torch.Tensor,
        eps: torch.Tensor,
        x0: torch.Tensor,
        prior_std: torch.Tensor,
        posterior_std: torch.Tensor | None = None,
        alpha_bar_T: torch.Tensor | float | None = None,
        learned_prior: bool = True,
        snr: torch.Tensor | None = None,
    ) -> RestoreGradLossOutput:
        """The loss of inputs already checked (the arguments of ``__call__``; ``prior_std`` a tensor)."""
        device_type = x0.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            eps_pred, eps, x0 = eps_pred.float(), eps.float(), x0.float()
            prior_var = prior_std.float() ** 2
            post_var = prior_var if posterior_std is None else posterior_std.float() ** 2
            zero = torch.zeros((), device=x0.device)

            # L_DM: the noise-prediction error in the Mahalanobis norm of Sigma_post (eq. 10, 2nd term).
            error = (eps - eps_pred) ** 2 / post_var
            if self.weighting != "elbo":  # a named deviation from eq. 10 (module docstring)
                error = error * self.snr_weights(snr).to(x0.device).view(-1, *([1] * (x0.ndim - 1)))
            denoise = error.mean()
            if not learned_prior:
                return RestoreGradLossOutput(loss=denoise, latent_reg=zero, denoise=denoise, prior_match=zero)

            # L_LR: abar_T x0^T Sigma^-1 x0 + log|Sigma| (eq. 10, 1st term; keeps x_T close to the prior).
            abar_T = torch.as_tensor(alpha_bar_T, dtype=torch.float32, device=x0.device)
            latent_reg = (abar_T * x0**2 / post_var + torch.log(post_var)).expand_as(x0).mean()
            if posterior_std is None:  # eq. 11: Sigma_post := Sigma_prior, no prior-matching term
                prior_match = zero
            else:
                # L_PM: KL(N(0, Sigma_post) || N(0, Sigma_prior)) up to constants (eq. 10, 3rd term).
                prior_match = (torch.log(prior_var) - torch.log(post_var) + post_var / prior_var).expand_as(x0).mean()
            loss = self.latent_weight * latent_reg + denoise + self.prior_matching_weight * prior_match
        return RestoreGradLossOutput(loss=loss, latent_reg=latent_reg, denoise=denoise, prior_match=prior_match)


__all__ = ["RestoreGradLoss", "RestoreGradLossOutput", "WEIGHTINGS"]
