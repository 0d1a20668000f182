"""Backend choice shared by the ops: "auto" = Triton for CUDA tensors, plain PyTorch otherwise.

"xformers" names a set of kernels, as `--kernels` does: attention through xformers' memory-efficient attention
(kernels/attention_xformers.py), and the ops xformers has no kernel for (noise injection, ambient loss) as "auto".
"""
import torch

BACKENDS = ("auto", "triton", "torch", "xformers")


def resolve_backend(backend: str, tensor: torch.Tensor, own: tuple[str, ...] = ("triton", "torch")) -> str:
    """The backend an op runs on `tensor`: `backend` when it is one of the op's `own` backends, else as "auto"
    ("triton" for CUDA tensors, "torch" otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in own:
        return backend
    return "triton" if tensor.is_cuda else "torch"


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The references' math dtype: float32, or float64 when an input is float64 (float64 references in tests)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def per_sample(v: torch.Tensor, like: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (B,) vector in `dtype` shaped (B, 1, 1, ...) to broadcast against `like`."""
    return v.to(device=like.device, dtype=dtype).reshape(-1, *([1] * (like.ndim - 1)))
