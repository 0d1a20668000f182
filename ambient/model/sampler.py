"""EDM's deterministic / stochastic Heun sampler (Karras et al. 2022, Algorithm 2)."""
import math
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


SIGMA_MAX_LIMIT = 1000.0     # EDM's sigma_max is 80; a float32 net sees x ~ sigma_max at the first step


def check_schedule(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> None:
    """ValueError, naming the flag to change (--sigma-min, --sigma-max, --rho), unless 0 < sigma_min < sigma_max <=
    SIGMA_MAX_LIMIT and rho > 0 give a finite, strictly decreasing noise schedule (edm_time_steps)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"--sigma-min {sigma_min:g} must be > 0 and below --sigma-max {sigma_max:g}")
    if sigma_max > SIGMA_MAX_LIMIT:
        raise ValueError(f"--sigma-max {sigma_max:g} is above {SIGMA_MAX_LIMIT:g} (EDM uses 80)")
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"--rho {rho:g} must be a finite number > 0 (EDM uses 7)")
    try:
        t = edm_time_steps(num_steps, sigma_min, sigma_max, rho)[:-1]
    except OverflowError:                       # sigma_max ** (1 / rho) beyond a float
        t = torch.tensor([math.inf])
    if not (torch.isfinite(t).all() and (t > 0).all() and (t[1:] < t[:-1]).all()):
        raise ValueError(f"--rho {rho:g} gives a noise schedule from --sigma-max {sigma_max:g} to --sigma-min "
                         f"{sigma_min:g} that is not finite and strictly decreasing; choose --rho in [1, 100]")


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
