"""Self-attention o = softmax(q k^T * scale) v, shapes (B, H, N, D), softmax statistics in float32.

The reference, `attention_ref`, is in kernels/attention_ref.py.
"""
import torch

from ._backend import BACKENDS, check_choice, resolve_backend
from .attention_ref import attention_ref

ATTENTION_BACKENDS = ("triton", "torch", "xformers")


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
    check_choice("backend", backend, BACKENDS)
    if backend != "xformers":
        return None
    from .attention_xformers import unavailable
    return unavailable(torch.device(device))
