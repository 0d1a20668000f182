"""xformers' memory-efficient attention behind `kernels.attention(..., backend="xformers")`.

    o = xformers.ops.memory_efficient_attention(q, k, v, scale=scale)      on (B, N, H, D) ("BMHK") tensors

The same op as attention_ref, softmax(q k^T * scale) v for (B, H, N, D): q, k, v are transposed to xformers'
(B, N, H, D) and made contiguous along D where they are not (xformers needs a unit stride there; the UNet hands
over views of its qkv map that are strided along D, see ambient.networks.UNetBlock._attend), and the result comes
back as a (B, H, N, D) view. Autograd is xformers' own.

It is used only where it works. `unavailable(device)` checks that xformers is installed, imports, declares the
installed torch compatible, and then, once per device, that memory_efficient_attention runs there forward and
backward (fp32 and bf16) and matches attention_ref; otherwise it returns the reason, naming the versions, and
`attention_xformers` raises it. (xformers 0.0.35, the newest release on PyPI at the time of writing, is built for
torch 2.10.0+cu128: with torch 2.14.1+cu130 its own C++/CUDA extension does not load, and memory_efficient_attention
dispatches to PyTorch's own flash and cutlass kernels, on CUDA only.)
"""
import functools
import importlib.metadata
import importlib.util
import json
import math
from pathlib import Path

import torch

from .attention_ref import attention_ref


def _built_for() -> str | None:
    """The torch version xformers' C++/CUDA extension was built for (its cpp_lib.json), if it says."""
    import xformers
    try:
        return json.loads((Path(xformers.__file__).parent / "cpp_lib.json").read_text())["version"]["torch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _distribution() -> tuple[str, list[str]] | None:
    """(version, declared requirements) of the installed xformers; None when it is not installed."""
    if importlib.util.find_spec("xformers") is None:
        return None
    return importlib.metadata.version("xformers"), importlib.metadata.requires("xformers") or []


def _torch_requirement(version: str, requires: list[str]) -> str | None:
    """The reason when xformers' declared torch requirement excludes the installed torch."""
    from packaging.requirements import Requirement  # installed with matplotlib and scikit-image (setup.py)
    for line in requires:
        requirement = Requirement(line)
        if requirement.name == "torch" and not requirement.specifier.contains(torch.__version__, prereleases=True):
            return f"xformers {version} requires torch{requirement.specifier}, this is torch {torch.__version__}"
    return None


def _bmhk(t: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> xformers' (B, N, H, D), contiguous along D."""
    t = t.transpose(1, 2)
    return t if t.stride(-1) == 1 else t.contiguous()


def _memory_efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    import xformers.ops
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return xformers.ops.memory_efficient_attention(_bmhk(q), _bmhk(k), _bmhk(v), scale=scale).transpose(1, 2)


def _error_summary(exc: Exception) -> str:
    """xformers' "no operator found" message is a page long; keep what names the device, else its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    device_lines = sorted({line for line in lines if line.startswith("device=")})
    return "; ".join(device_lines) if device_lines else f"{type(exc).__name__}: {lines[0] if lines else ''}"


# (dtype, bound on the relative error against the float64 reference): loose, to catch a broken build, not rounding.
_PROBES = ((torch.float32, 1e-2), (torch.bfloat16, 5e-2))


def _probe(device: torch.device) -> str | None:
    """Forward and backward on small inputs on `device` against attention_ref; the reason when it fails."""
    gen = torch.Generator().manual_seed(0)
    for dtype, bound in _PROBES:
        q, k, v, grad = (torch.randn(2, 2, 100, 64, generator=gen) for _ in range(4))
        try:      # moving the inputs fails too where the device is missing (CUDA without a driver)
            leaves = [t.to(device, dtype).requires_grad_() for t in (q, k, v)]
            out = _memory_efficient(*leaves, 0.125)
            grads = torch.autograd.grad(out, leaves, grad.to(device, dtype))
        except Exception as exc:  # noqa: BLE001 - any failure makes the backend unavailable, with its reason
            return _error_summary(exc)
        ref = [t.double().requires_grad_() for t in (q, k, v)]
        ref_out = attention_ref(*ref, scale=0.125)
        ref_grads = torch.autograd.grad(ref_out, ref, grad.double())
        for name, got, want in zip(("output", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
            error = ((got.detach().double().cpu() - want).norm() / want.norm()).item()
            if not error < bound:
                return f"{str(dtype)[6:]} {name} is off the reference by {error:.2g} (relative)"
    return None


@functools.cache
def unavailable(device: torch.device) -> str | None:
    """Why the xformers backend cannot run on `device` with this installation (None: it can); cached per device."""
    installed = _distribution()
    if installed is None:
        return "xformers is not installed (pip install --no-deps xformers, a release built for this torch)"
    version, requires = installed
    try:
        import xformers.ops  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"xformers {version} does not import with torch {torch.__version__}: {type(exc).__name__}: {exc}"
    reason = _torch_requirement(version, requires)
    if reason is None and (failure := _probe(device)) is not None:
        import xformers
        built = _built_for()
        extension = "" if getattr(xformers, "_has_cpp_library", True) else ", its C++/CUDA extension does not load here"
        reason = (f"xformers {version}" + (f" (built for torch {built}{extension})" if built else "")
                  + f" cannot run memory_efficient_attention on {device} with torch {torch.__version__}: {failure}")
    return reason


def attention_xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None
                       ) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, H, N, D) inputs through xformers; raises RuntimeError with the reason where
    xformers cannot run."""
    reason = unavailable(q.device)
    if reason is not None:
        raise RuntimeError(f"attention backend 'xformers' is unavailable: {reason}")
    return _memory_efficient(q, k, v, scale)
