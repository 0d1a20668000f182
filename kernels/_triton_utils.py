"""What the Triton kernels share: interpreter detection, device checks, launch sizes.

TRITON_INTERPRET is read by Triton when `@triton.jit` decorates, so it is read here once, at
import, with the same meaning ("1", "true", "yes", "on" switch the CPU interpreter on).
"""
import os
import re

import numpy as np
import torch
import triton

INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _major_minor(version: str) -> tuple[int, int]:
    """(3, 10) of '3.10.0+git1234'."""
    found = re.match(r"(\d+)\.(\d+)", version)
    if found is None:
        raise ValueError(f"not a version: {version!r}")
    return int(found[1]), int(found[2])


def interpreter_problem(triton_version: str = triton.__version__, numpy_version: str = np.__version__) -> str | None:
    """Why Triton's interpreter cannot run a kernel whose loop bound is an integer argument here (None: it can).

    Triton before 3.7 hands integer arguments to an interpreted kernel as one-element arrays and makes `range()`
    bounds of them with int(array), which NumPy 2.4 refuses (docs/bench/triton-versions.md). Compiled kernels are
    not affected.
    """
    if _major_minor(triton_version) < (3, 7) and _major_minor(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter cannot run loops bounded by kernel arguments with NumPy "
                f"{numpy_version} (it needs NumPy < 2.4, or Triton >= 3.7; docs/bench/triton-versions.md)")
    return None


def check_launchable(*tensors: torch.Tensor) -> None:
    """Fail clearly, instead of with "0 active drivers", when a kernel cannot run on these tensors."""
    for t in tensors:
        if not t.is_cuda and not INTERPRET:
            raise RuntimeError(
                "the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before `kernels` is imported "
                "(CPU interpreter); use backend='torch' on CPU")


def per_sample_vector(v: torch.Tensor, batch: int, like: torch.Tensor, name: str) -> torch.Tensor:
    """A per-sample value (B elements, any shape) as a contiguous float32 (B,) on `like`'s device."""
    if v.numel() != batch:
        raise ValueError(f"{name} must have one value per sample ({batch}), got shape {tuple(v.shape)}")
    return v.detach().reshape(-1).to(device=like.device, dtype=torch.float32).contiguous()


def elementwise_block(per_sample: int, block: int | None) -> int:
    """Elements per program for the per-sample kernels (noise, loss).

    A program covers a chunk of one sample. The interpreter pays per program, so it gets
    whole samples up to 64Ki elements; a GPU gets at most 2Ki (8 per thread of 8 warps), enough to
    stream at full bandwidth (at 4Ki the noise kernel's in-kernel normals spill registers on sm_90:
    bench/aot_check.py).
    """
    if block is not None:
        if block < 16 or block & (block - 1):
            raise ValueError(f"block must be a power of two >= 16, got {block}")
        return block
    cap = 65536 if INTERPRET else 2048
    return min(cap, max(16, triton.next_power_of_2(per_sample)))
