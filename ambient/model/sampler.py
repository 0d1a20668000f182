"""EDM's deterministic / stochastic Heun sampler (Karras et al. 2022, Algorithm 2); the same sampler run as the
reverse SDE from a noisy image down to 0, a sample of its posterior (docs/design.md, "Restoration"); and the
ancestral sampler between two per-sample noise levels that the consistency loss runs with gradients."""
import math
from collections.abc import Callable

import torch

SIGMA_MAX = 80.0            # EDM's first noise level, the default of the samplers below
SIGMA_MAX_LIMIT = 1000.0     # the largest accepted: a float32 net sees x ~ sigma_max at the first step


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


def check_sigma_stop(sigma_stop: float, sigma_min: float = 0.002, sigma_max: float = SIGMA_MAX) -> None:
    """ValueError naming the rule unless the sampler on [sigma_min, sigma_max] can stop at `sigma_stop`: finite and
    sigma_min <= sigma_stop < sigma_max (below sigma_min no level is reached, at sigma_max it would return the first
    step's estimate)."""
    if not (math.isfinite(sigma_stop) and sigma_min <= sigma_stop < sigma_max):
        raise ValueError(f"sigma_stop must be a finite level in [sigma_min, sigma_max) = [{sigma_min:g}, "
                         f"{sigma_max:g}) of the sampler's schedule, got {sigma_stop:g}")


def edm_time_steps(num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = SIGMA_MAX, rho: float = 7,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """t_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < N, and t_N = 0 (float64)."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    i = torch.arange(num_steps, dtype=torch.float64, device=device)
    t = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros_like(t[:1])])


def _per_image(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A noise level (0-d, or one per image) shaped to broadcast against the batch `x`."""
    return t.reshape(-1, *[1] * (x.ndim - 1))


def _heun_step(net: Callable, x_hat: torch.Tensor, t_hat: torch.Tensor, t_next: torch.Tensor,
               denoised: torch.Tensor, class_labels: torch.Tensor | None, correct: bool) -> torch.Tensor:
    """One step of the probability-flow ODE from t_hat to t_next given D(x_hat; t_hat): Euler, then Heun's 2nd-order
    correction when `correct` (every step but one that ends at 0). t_hat, t_next: 0-d or one per image."""
    th, tn = _per_image(t_hat, x_hat), _per_image(t_next, x_hat)
    d_cur = (x_hat - denoised) / th
    x_next = x_hat + (tn - th) * d_cur
    if correct:
        denoised = net(x_next.float(), t_next.float().expand(len(x_next)), class_labels).double()
        d_prime = (x_next - denoised) / tn
        x_next = x_hat + (tn - th) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


@torch.inference_mode()
def edm_sampler(net: Callable, latents: torch.Tensor, class_labels: torch.Tensor | None = None, *,
                num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = SIGMA_MAX, rho: float = 7,
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
        x_next = _heun_step(net, x_hat, t_hat, t_next, denoised, class_labels, correct=i < num_steps - 1)
    return x_next


@torch.inference_mode()
def posterior_sampler(net: Callable, y: torch.Tensor, sigma_n: torch.Tensor, class_labels: torch.Tensor | None = None,
                      *, num_steps: int = 18, sigma_min: float = 0.002, rho: float = 7,
                      randn_like: Callable = torch.randn_like) -> torch.Tensor:
    """A sample of p(x0 | y) for each noisy image y = x0 + sigma_n z of the batch `y` (float64 (B, C, H, W)).

    Algorithm 2 of EDM started at x = y on EDM's schedule restricted to [0, sigma_n] (edm_time_steps with
    sigma_max = sigma_n, one schedule per image), its churn at each step the noise the reverse SDE of the forward
    noising injects over it:

        t_hat^2 = t_i^2 + (t_i^2 - t_{i+1}^2)
        x_hat = x_i + sqrt(t_hat^2 - t_i^2) eps,   eps ~ N(0, I)
        x_{i+1} = Heun step of dx/dt = (x - D(x; t)) / t from t_hat to t_{i+1}

    which discretises dx = -2 t grad log p(x; t) dt + sqrt(2 t) dw, the time reversal of x(t) = x0 + t z: run from
    x(sigma_n) = y it ends in p(x0 | y) when D is the model of the data (docs/design.md, "Restoration"). `sigma_n`:
    one level > 0 per image; `randn_like` supplies eps (per-image generators make image i independent of its batch).
    """
    if not bool((sigma_n > 0).all()):
        raise ValueError("every image to restore needs a noise level sigma_n > 0")
    t_steps = torch.stack([edm_time_steps(num_steps, min(sigma_min, s), s, rho, y.device)
                           for s in sigma_n.double().tolist()])          # (B, N + 1)
    x_next = y.double()
    for i in range(num_steps):
        t_cur, t_next = t_steps[:, i], t_steps[:, i + 1]
        t_hat = (2 * t_cur ** 2 - t_next ** 2).sqrt()
        x_hat = x_next + _per_image((t_cur ** 2 - t_next ** 2).sqrt(), x_next) * randn_like(x_next)
        denoised = net(x_hat.float(), t_hat.float(), class_labels).double()
        x_next = _heun_step(net, x_hat, t_hat, t_next, denoised, class_labels, correct=i < num_steps - 1)
    return x_next


def ancestral_sampler(net: Callable, x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor,
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
