"""Self-attention o = softmax(q k^T * scale) v, shapes (B, H, N, D), softmax statistics in float32."""
import math

import torch

from ._backend import BACKENDS, compute_dtype, resolve_backend

ATTENTION_BACKENDS = ("triton", "torch", "xformers")


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Reference: materialises the N x N matrix; float32 math (float64 for float64 inputs), result in q's dtype."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    dtype = compute_dtype(q, k, v)
    p = torch.softmax(torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(p, v.to(dtype)).to(q.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              backend: str = "auto") -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, H, N, D) inputs; scale defaults to 1/sqrt(D).

    backend: "auto" (Triton for CUDA tensors, else torch), "triton", "torch" (the reference) or "xformers"
    (xformers.ops.memory_efficient_attention, where it runs: see `attention_unavailable`).
    """
    backend = resolve_backend(backend, q, ATTENTION_BACKENDS)
    if backend == "triton":
        from .attention_triton import attention_triton
        return attention_triton(q, k, v, scale=scale)
    if backend == "xformers":
        from .attention_xformers import attention_xformers
        return attention_xformers(q, k, v, scale=scale)
    return attention_ref(q, k, v, scale=scale)


def attention_unavailable(backend: str, device: torch.device | str) -> str | None:
    """Why `attention(..., backend=backend)` cannot run on `device` here (None: it can).

    Only "xformers" depends on what is installed; the others are checked where they run (Triton needs CUDA
    tensors or its interpreter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "xformers":
        return None
    from .attention_xformers import unavailable
    return unavailable(torch.device(device))
