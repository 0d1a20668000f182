"""Self-attention o = softmax(q k^T * scale) v, shapes (B, H, N, D): the plain-PyTorch reference.

A module of its own, below the dispatcher (kernels/attention.py): the xformers backend checks itself against it.
"""
import math

import torch

from ._backend import compute_dtype


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """Reference: materialises the N x N matrix; float32 math (float64 for float64 inputs), result in q's dtype."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    dtype = compute_dtype(q, k, v)
    p = torch.softmax(torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(p, v.to(dtype)).to(q.dtype)
