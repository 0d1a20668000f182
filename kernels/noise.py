"""Noise injection x_t = y + sqrt(max(s^2 - sigma_n^2, 0)) * eps.

y already carries noise of std sigma_n, so adding the difference in variance brings it to the
total noise level s. The difference is taken in float32 and clamped at 0: s == sigma_n can give
a tiny negative number and a NaN from the square root.
"""
import torch

from ._backend import per_sample, resolve_backend


def noise_injection_ref(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Reference: the definition, float32 math, result in y's dtype."""
    s, sn = per_sample(sigma, y), per_sample(sigma_n, y)
    std = torch.sqrt(torch.clamp(s * s - sn * sn, min=0))
    return (y.float() + std * eps.float()).to(y.dtype)


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
