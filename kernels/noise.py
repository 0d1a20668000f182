"""Noise injection x_t = y + sqrt(max(s^2 - sigma_n^2, 0)) * eps.

y already carries noise of std sigma_n, so adding the difference in variance brings it to the
total noise level s. The difference is taken in float32 and clamped at 0: s == sigma_n can give
a tiny negative number and a NaN from the square root.
"""
import torch

from ._backend import compute_dtype, per_sample, resolve_backend


def noise_injection_ref(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Reference: the definition, float32 math (float64 for float64 inputs), result in y's dtype."""
    dtype = compute_dtype(y, sigma, sigma_n, eps)
    s, sn = per_sample(sigma, y, dtype), per_sample(sigma_n, y, dtype)
    # The root in float64, rounded once: correctly rounded, like the Triton kernel's sqrt_rn
    # (torch's vectorised float32 sqrt on CPU can be 1 ulp off).
    std = torch.sqrt(torch.clamp(s * s - sn * sn, min=0).double()).to(dtype)
    return (y.to(dtype) + std * eps.to(dtype)).to(y.dtype)


def net_input_ref(x_t: torch.Tensor, sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """Reference network input c_in * x_t, c_in = 1 / sqrt(s^2 + sigma_data^2), result in x_t's dtype."""
    dtype = compute_dtype(x_t, sigma)
    s = per_sample(sigma, x_t, dtype)
    return (x_t.to(dtype) * torch.rsqrt(s * s + sigma_data**2)).to(x_t.dtype)


def torch_eps(y: torch.Tensor, seed: int, offset: int) -> torch.Tensor:
    """Standard normal noise for the torch backend, a pure function of (seed, offset).

    Not the same numbers as the Triton kernel's Philox stream; only the same distribution.
    """
    gen = torch.Generator(device=y.device)
    gen.manual_seed((int(seed) * 0x9E3779B1 + int(offset)) % (2**63))
    return torch.randn(y.shape, generator=gen, device=y.device, dtype=torch.float32)


def noise_injection(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, *, seed: int, offset: int = 0,
                    eps: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """x_t for a batch y (B, ...) at per-sample noise levels sigma, sigma_n (B,)."""
    if resolve_backend(backend, y) == "triton":
        from .noise_triton import noise_injection_triton
        return noise_injection_triton(y, sigma, sigma_n, seed=seed, offset=offset, eps=eps)
    if eps is None:
        eps = torch_eps(y, seed, offset)
    return noise_injection_ref(y, sigma, sigma_n, eps)


def noise_injection_net_input(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, *, seed: int,
                              offset: int = 0, eps: torch.Tensor | None = None, sigma_data: float = 0.5,
                              backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, c_in * x_t): `noise_injection` plus the EDM network input, fused in one pass on Triton.

    The network input is computed from x_t before it is rounded to y's dtype.
    """
    if resolve_backend(backend, y) == "triton":
        from .noise_triton import noise_injection_net_input_triton
        return noise_injection_net_input_triton(y, sigma, sigma_n, seed=seed, offset=offset, eps=eps,
                                                sigma_data=sigma_data)
    if eps is None:
        eps = torch_eps(y, seed, offset)
    x_t = noise_injection_ref(y.to(compute_dtype(y)), sigma, sigma_n, eps)
    return x_t.to(y.dtype), net_input_ref(x_t, sigma, sigma_data).to(y.dtype)
