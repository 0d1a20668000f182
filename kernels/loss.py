"""Per-sample ambient loss (docs/design.md, "Ambient loss", steps 3-4).

    a      = sigma_n^2 / s^2
    h      = (1 - a) * D + a * x_t                      (double Tweedie)
    lambda = (s^2 + sd^2) / (s * sd)^2                  (EDM weight)
    loss_i = lambda * w_amb * sum_pixels (h - y)^2,     w_amb = 1 ("edm") or s^4 / (s^2 - sigma_n^2)^2 ("ambient")

For sigma_n = 0 this is the EDM loss. With s == sigma_n (a clamped sample) h == x_t == y, so
the loss and its gradient are exactly zero; the "ambient" weight is defined as 0 there.
"""
import torch

from ._backend import WEIGHTINGS, check_choice, compute_dtype, per_sample, resolve_backend


def loss_weight(sigma: torch.Tensor, sigma_n: torch.Tensor, sigma_data: float, weighting: str) -> torch.Tensor:
    """lambda(s) * w_amb(s, sigma_n) as float32 (B,) (float64 for float64 inputs)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    dtype = compute_dtype(sigma, sigma_n)
    s, sn = sigma.to(dtype), sigma_n.to(dtype)
    weight = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
    if weighting == "ambient":
        gap = torch.clamp(s**2 - sn**2, min=0)
        weight = torch.where(gap > 0, weight * s**4 / torch.where(gap > 0, gap, 1) ** 2, 0)
    return weight


def ambient_loss_ref(denoised: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                     sigma_n: torch.Tensor, *, sigma_data: float = 0.5, weighting: str = "edm") -> torch.Tensor:
    """Reference: the formulas in float32 through autograd; returns (B,) float32.

    With float64 inputs the math and the result are float64 (the tests' exact reference).
    """
    dtype = compute_dtype(denoised, x_t, y, sigma, sigma_n)
    s, sn = per_sample(sigma, y, dtype), per_sample(sigma_n, y, dtype)
    a = sn * sn / (s * s)
    h = (1 - a) * denoised.to(dtype) + a * x_t.to(dtype)
    sq = ((h - y.to(dtype)) ** 2).flatten(1).sum(1)
    return loss_weight(sigma.to(dtype), sigma_n.to(dtype), sigma_data, weighting).to(y.device) * sq


def ambient_loss(denoised: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                 sigma_n: torch.Tensor, *, sigma_data: float = 0.5, weighting: str = "edm",
                 backend: str = "auto") -> torch.Tensor:
    """Per-sample loss (B,) float32, differentiable with respect to `denoised`."""
    if resolve_backend(backend, denoised) == "triton":
        from .loss_triton import ambient_loss_triton
        return ambient_loss_triton(denoised, x_t, y, sigma, sigma_n, sigma_data=sigma_data, weighting=weighting)
    return ambient_loss_ref(denoised, x_t, y, sigma, sigma_n, sigma_data=sigma_data, weighting=weighting)
