"""Backend choice shared by the ops: "auto" = Triton for CUDA tensors, plain PyTorch otherwise."""
import torch

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    """Return "triton" or "torch" for `backend` given where `tensor` lives."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if tensor.is_cuda else "torch"
    return backend


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The references' math dtype: float32, or float64 when an input is float64 (float64 references in tests)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def per_sample(v: torch.Tensor, like: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (B,) vector in `dtype` shaped (B, 1, 1, ...) to broadcast against `like`."""
    return v.to(device=like.device, dtype=dtype).reshape(-1, *([1] * (like.ndim - 1)))
