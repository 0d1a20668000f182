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


def per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B,) vector as float32 shaped (B, 1, 1, ...) to broadcast against `like`."""
    return v.to(device=like.device, dtype=torch.float32).reshape(-1, *([1] * (like.ndim - 1)))
