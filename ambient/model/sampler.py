"""EDM's deterministic / stochastic Heun sampler (Karras et al. 2022, Algorithm 2), and the ancestral (posterior)
sampler between two per-sample noise levels that the consistency loss runs with gradients."""
from collections.abc import Callable

import torch


def edm_time_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80, rho: float = 7,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < N, and t_N = 0 (float64)."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


@torch.inference_mode()
def edm_sampler(net: Callable, latents: torch.Tensor, class_labels: torch.Tensor | None = None, *,
                num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80, rho: float = 7,
                S_churn: float = 0, S_min: float = 0, S_max: float = float("inf"), S_noise: float = 1,
                sigma_stop: float | None = None, randn_like: Callable = torch.randn_like) -> torch.Tensor:
    """Samples from standard normal `latents` (scaled by sigma_max here); `net(x, sigma, labels)` returns D.

    With `sigma_stop`, stops at the first step whose noise level is <= sigma_stop and returns
    the denoised estimate there. `randn_like` supplies the churn noise (per-image generators make
    image i independent of the batch it is in); at S_churn = 0 none is drawn. Runs in inference mode
    (no autograd bookkeeping at all).
    """
    t_steps = edm_time_steps(num_steps, sigma_min, sigma_max, rho, latents.device)
    x_next = latents.double() * t_steps[0]
    gamma_max = min(S_churn / num_steps, 2 ** 0.5 - 1)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Churn: raise the noise level from t_cur to t_hat by adding fresh noise.
        gamma = gamma_max if S_min <= t_cur <= S_max else 0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur) if gamma_max > 0 else x_cur
        denoised = net(x_hat.float(), t_hat.float().expand(len(x_hat)), class_labels).double()
        if sigma_stop is not None and t_hat <= sigma_stop:
            return denoised
        # Euler step, then Heun's 2nd-order correction unless this is the last step.
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            denoised = net(x_next.float(), t_next.float().expand(len(x_next)), class_labels).double()
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def posterior_sampler(net: Callable, x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                      noise: torch.Tensor, class_labels: torch.Tensor | None = None, *, rho: float = 7) -> torch.Tensor:
    """Ancestral steps from noise level `sigma_from` down to `sigma_to` (both (B,), per sample) on EDM's grid,
    one step per noise image: `noise` is (B, K, *x.shape[1:]) standard normal, K >= 1 steps:

        tau_k   = (sigma_from^(1/rho) + k/K (sigma_to^(1/rho) - sigma_from^(1/rho)))^rho,   k = 0..K
        a       = tau_{k+1}^2 / tau_k^2
        x_{k+1} = a x_k + (1 - a) D(x_k; tau_k) + tau_{k+1} sqrt(1 - a) z_k

    Each step draws x_{k+1} from p(x_{k+1} | x_k, x0 = D(x_k; tau_k)), the Brownian bridge of the VE process, so
    with the exact denoiser E[x_{k+1} | x_k] is exact for any step size. Autograd runs through it (no
    inference mode); the state keeps x's dtype.
    """
    steps = noise.shape[1]
    k = torch.arange(steps + 1, dtype=x.dtype, device=x.device).unsqueeze(1) / steps       # (K + 1, 1)
    lo, hi = sigma_to.to(x.dtype) ** (1 / rho), sigma_from.to(x.dtype) ** (1 / rho)
    tau = (hi + k * (lo - hi)) ** rho                                                     # (K + 1, B)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for i in range(steps):
        a = (tau[i + 1] / tau[i]) ** 2
        denoised = net(x, tau[i], class_labels).to(x.dtype)
        x = (a.view(shape) * x + (1 - a).view(shape) * denoised
             + (tau[i + 1] * (1 - a).sqrt()).view(shape) * noise[:, i].to(x.dtype))
    return x
