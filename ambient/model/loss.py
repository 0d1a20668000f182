"""The ambient diffusion loss (docs/design.md, "Ambient loss").

Each stored sample is y = x0 + sigma_n * z (sigma_n = 0 for clean images). Per sample:
    1. ln s ~ N(P_mean, P_std^2), then s = max(s, sigma_n)            ("clamp", paper-faithful)
       or s drawn from that log-normal conditioned on s >= sigma_n    ("truncate")
    2. x_t = y + sqrt(max(s^2 - sigma_n^2, 0)) * eps                  (kernels.noise_injection)
    3. h = (1 - sigma_n^2/s^2) * D(x_t; s) + (sigma_n^2/s^2) * x_t     (kernels.ambient_loss)
    4. loss = lambda(s) * sum_pixels (h - y)^2
For sigma_n = 0 this is the EDM loss.

Below sigma_n a noisy image gives no such signal; `consistency_loss` (docs/design.md, "Consistency loss") asks the
model to agree with its own predictions there instead.
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch

import kernels

from .sampler import ancestral_sampler

SIGMA_SAMPLINGS = ("clamp", "truncate")


def sample_sigma(sigma_n: torch.Tensor, normal: torch.Tensor, *, P_mean: float = -1.2, P_std: float = 1.2,
                 mode: str = "clamp") -> torch.Tensor:
    """Training noise levels s >= sigma_n from standard normal draws `normal` (both (B,)), float32.

    "truncate" maps the draw through the log-normal's CDF restricted to [sigma_n, inf), so no
    sample is wasted; with "clamp", a fraction Phi((ln sigma_n - P_mean)/P_std) of noisy samples
    lands exactly on sigma_n and gets zero loss.
    """
    if mode not in SIGMA_SAMPLINGS:
        raise ValueError(f"sigma sampling must be one of {SIGMA_SAMPLINGS}, got {mode!r}")
    sigma_n = sigma_n.double()
    if mode == "clamp":
        sigma = torch.exp(normal.double() * P_std + P_mean)
    else:
        lower = torch.special.ndtr((torch.log(sigma_n) - P_mean) / P_std)   # P(s < sigma_n); 0 for sigma_n = 0
        u = lower + (1 - lower) * torch.special.ndtr(normal.double())       # uniform on [lower, 1)
        sigma = torch.exp(torch.special.ndtri(u.clamp(max=1 - 1e-16)) * P_std + P_mean)
    return torch.maximum(sigma, sigma_n).float()


@dataclass
class AmbientLoss:
    """Draws noise levels, corrupts the batch further and scores the denoiser."""

    P_mean: float = -1.2            # mean of ln(sigma)
    P_std: float = 1.2              # std of ln(sigma)
    sigma_data: float = 0.5         # expected std of the clean data
    sigma_sampling: str = "clamp"   # "clamp" (paper) or "truncate"
    weighting: str = "edm"          # "edm": lambda(s); "ambient": also s^4/(s^2 - sigma_n^2)^2
    backend: str = "auto"           # kernels backend, one of kernels.BACKENDS

    def __post_init__(self) -> None:
        if self.sigma_sampling not in SIGMA_SAMPLINGS:
            raise ValueError(f"sigma sampling must be one of {SIGMA_SAMPLINGS}, got {self.sigma_sampling!r}")
        if self.weighting not in kernels.WEIGHTINGS:
            raise ValueError(f"weighting must be one of {kernels.WEIGHTINGS}, got {self.weighting!r}")

    def __call__(self, net: torch.nn.Module, y: torch.Tensor, sigma_n: torch.Tensor, normal: torch.Tensor,
                 labels: torch.Tensor | None = None, *, seed: int, offset: int = 0,
                 eps: torch.Tensor | None = None,
                 sigma: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample losses (B,) and the noise levels used (B,).

        `normal` holds one standard normal draw per sample for its noise level, unless `sigma` gives the levels
        (B,) >= sigma_n already drawn (the sigma-first sampler's, ambient.train.windows), used as they are;
        `seed`/`offset` (or an explicit `eps`) fix the injected noise, so the step is a pure function of them.
        """
        if sigma is None:
            sigma = sample_sigma(sigma_n, normal.cpu(), P_mean=self.P_mean, P_std=self.P_std, mode=self.sigma_sampling)
        sigma = sigma.to(device=y.device, dtype=torch.float32)
        sigma_n = sigma_n.to(device=y.device, dtype=torch.float32)
        x_t = kernels.noise_injection(y, sigma, sigma_n, seed=seed, offset=offset, eps=eps, backend=self.backend)
        denoised = net(x_t, sigma, labels)
        loss = kernels.ambient_loss(denoised, x_t, y, sigma, sigma_n, sigma_data=self.sigma_data,
                                    weighting=self.weighting, backend=self.backend)
        return loss, sigma


def sample_sigma_below(sigma_n: torch.Tensor, normal: torch.Tensor, *, P_mean: float = -1.2,
                       P_std: float = 1.2) -> torch.Tensor:
    """Noise levels s < sigma_n (sigma_n > 0) from standard normal draws `normal` (both (B,)), float32: EDM's
    log-normal conditioned on s < sigma_n, by its inverse CDF (float64 math):

        u = Phi(normal) Phi((ln sigma_n - P_mean) / P_std),   s = exp(P_mean + P_std Phi^-1(u))
    """
    upper = torch.special.ndtr((torch.log(sigma_n.double()) - P_mean) / P_std)      # P(s < sigma_n)
    u = (upper * torch.special.ndtr(normal.double())).clamp(min=1e-300)
    return torch.exp(torch.special.ndtri(u) * P_std + P_mean).float()


def consistency_loss(net: Callable, y: torch.Tensor, sigma_n: torch.Tensor, s: torch.Tensor, noise: torch.Tensor,
                     labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample consistency loss (B,) of noisy samples y (B, C, H, W) at their noise level sigma_n (B,) against
    levels s < sigma_n (B,) (Daras, Dimakis, Daskalakis 2024, "Consistent Diffusion Meets Tweedie"):

        x_s^r = A(y; sigma_n -> s; z^r),   r = 1..R            (ancestral_sampler, K steps, noise z^r)
        L     = || D(y; sigma_n) - (1/R) sum_r D(x_s^r; s) ||^2   (summed over pixels)

    By the tower property E[x0 | y] = E[ E[x0 | x_s] | y ], so the exact denoiser has E[L-bracket] = 0; D at
    sigma_n is what the ambient loss trains, and the term carries it below sigma_n. `noise` is (B, R, K, C, H, W).
    Gradients flow through both predictions and through the sampler run, as in the paper's code (its default
    with_grad): the target depends on the network through the whole trajectory.
    """
    B, R = noise.shape[:2]

    def repeat(v: torch.Tensor | None) -> torch.Tensor | None:          # each sample R times, in a row
        return v.repeat_interleave(R, dim=0) if v is not None else None

    x_s = ancestral_sampler(net, repeat(y), repeat(sigma_n), repeat(s), noise.flatten(0, 1), repeat(labels))
    target = net(x_s, repeat(s), repeat(labels)).unflatten(0, (B, R)).mean(dim=1)
    return ((net(y, sigma_n, labels) - target) ** 2).flatten(1).sum(1)
