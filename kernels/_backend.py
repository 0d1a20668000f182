"""What the ops share: the backend choice, the choices of their string arguments, the references' dtypes.

Backends: "auto" = Triton for CUDA tensors, plain PyTorch otherwise. "xformers" names a set of kernels, as
`--kernels` does: attention through xformers' memory-efficient attention (kernels/attention_xformers.py), and the
ops xformers has no kernel for (noise injection, ambient loss) as "auto".
"""
import torch

BACKENDS = ("auto", "triton", "torch", "xformers")
WEIGHTINGS = ("edm", "ambient")     # the ambient loss's per-sample weights (kernels/loss.py)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """ValueError naming `name` and its choices unless `value` is one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def resolve_backend(backend: str, where: torch.Tensor | torch.device | str,
                    own: tuple[str, ...] = ("triton", "torch")) -> str:
    """The backend an op runs on `where` (a tensor or a device): `backend` when it is one of the op's `own`
    backends, else as "auto" ("triton" on CUDA, "torch" otherwise)."""
    check_choice("backend", backend, BACKENDS)
    if backend in own:
        return backend
    cuda = where.is_cuda if isinstance(where, torch.Tensor) else torch.device(where).type == "cuda"
    return "triton" if cuda else "torch"


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The references' math dtype: float32, or float64 when an input is float64 (float64 references in tests)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def per_sample(v: torch.Tensor, like: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A (B,) vector in `dtype` shaped (B, 1, 1, ...) to broadcast against `like`."""
    return v.to(device=like.device, dtype=dtype).reshape(-1, *([1] * (like.ndim - 1)))
