"""Kernel microbenchmarks: each op, each backend, at the shapes the presets train with.

Ops (as the trainer calls them):
  noise_injection     y -> x_t, noise drawn inside (Philox in the Triton kernel, torch.randn otherwise);
                      must move: read y, write x_t (2 x the batch's bytes)
  ambient_loss        per-sample loss and its gradient with respect to the denoiser output;
                      must move: read denoised, x_t, y, write the gradient (4 x the batch's bytes)
  attention           forward + backward, (B, H, N, D) at every self-attention layer shape of the U-Net;
                      FLOPs: 4 B H N^2 D forward, twice that backward (no recomputation counted)
Backends: triton (CUDA only: on CPU Triton runs only under its interpreter, far too slow to time, so
those rows are "n/a"), torch (the reference ops), compile (torch.compile of the reference) and, for
attention, sdpa (torch.nn.functional.scaled_dot_product_attention, PyTorch's fastest backend) and xformers
(xformers.ops.memory_efficient_attention through kernels.attention; "n/a" with the reason where it cannot run).

Run through bench/run.py: `python -m bench.run --sections kernels`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

import kernels
from bench.harness import Workload, references
from bench.presets import PRESET_DATA, attention_layers

# Batch of the image ops and of attention: the presets' training batches, except attention on a CPU.
BATCHES = {("cuda", "ddpmpp"): (512, 512), ("cuda", "tiny"): (64, 64),
           ("cpu", "ddpmpp"): (512, 8), ("cpu", "tiny"): (64, 64)}
SMOKE_BATCHES = (4, 2)
TRITON_NA = "Triton runs on a CPU only under its interpreter (far too slow to benchmark)"


def attention_shapes(preset: str, batch: int) -> list[tuple[int, int, int, int]]:
    """Distinct (B, H, N, D) of the preset's self-attention layers, read off the network itself."""
    return sorted({(batch, block.num_heads, res * res, block.out_channels // block.num_heads)
                   for res, block in attention_layers(preset)}, reverse=True)


def _tag(shape: tuple[int, ...]) -> str:
    return "B" + "x".join(map(str, shape))


def _grad_of(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], grad: torch.Tensor,
             wrt: tuple[torch.Tensor, ...]) -> Callable[[], object]:
    """Forward fn(*inputs) and its backward against `grad`, gradients with respect to `wrt`."""
    return lambda: torch.autograd.grad(fn(*inputs), wrt, grad)


def _noise_ref_fresh_eps(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor) -> torch.Tensor:
    """The reference with its noise drawn by torch.randn_like, a form torch.compile can trace."""
    return kernels.noise_injection_ref(y, sigma, sigma_n, torch.randn_like(y))


def _compiled(ref: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """torch.compile(ref), made at the first call: importing the compiler alone takes seconds."""
    compiled: Callable[..., torch.Tensor] | None = None

    def call(*args: torch.Tensor) -> torch.Tensor:
        nonlocal compiled
        if compiled is None:
            compiled = torch.compile(ref, dynamic=False)
        return compiled(*args)
    return call


def _backends(op: Callable[..., torch.Tensor], ref: Callable[..., torch.Tensor], has_triton: bool
              ) -> dict[str, Callable[..., torch.Tensor] | str]:
    """triton / torch / compile variants of a kernels op (a string: why it cannot run here)."""
    return {"triton": functools.partial(op, backend="triton") if has_triton else TRITON_NA,
            "torch": functools.partial(op, backend="torch"),
            "compile": _compiled(ref)}


def _bind(fn: Callable[..., object] | str, bind: Callable[[Callable[..., object]], Callable[[], object]]
          ) -> Callable[[], object] | str:
    """`bind(fn)`, the timed call; a reason why the backend cannot run stays as it is."""
    return fn if isinstance(fn, str) else bind(fn)


Case = tuple[str, tuple[int, ...], torch.dtype, dict[str, Callable[[], object] | str], float, str]


def _preset_cases(preset: str, device: torch.device, img_batch: int, attn_batch: int, has_triton: bool) -> list[Case]:
    """(op, shape, dtype, {backend: timed callable}, work per call, unit) for one preset's shapes."""
    channels, res = PRESET_DATA[preset]
    gen = torch.Generator(device).manual_seed(0)
    y = torch.randn(img_batch, channels, res, res, device=device, generator=gen)
    sigma_n = torch.where(torch.arange(img_batch, device=device) % 10 == 0, 0.0, 0.2)
    sigma = torch.maximum(torch.exp(torch.randn(img_batch, device=device, generator=gen) * 1.2 - 1.2), sigma_n)
    noise = _backends(functools.partial(kernels.noise_injection, seed=1), _noise_ref_fresh_eps, has_triton)
    cases = [("noise_injection", tuple(y.shape), y.dtype,
              {b: _bind(fn, lambda f: functools.partial(f, y, sigma, sigma_n)) for b, fn in noise.items()},
              2 * y.nbytes, "B")]

    x_t = kernels.noise_injection(y, sigma, sigma_n, seed=1, backend="torch")
    denoised = (y + 0.1 * torch.randn(y.shape, device=device, generator=gen)).requires_grad_()
    per_sample_grad = torch.full((img_batch,), 1 / img_batch, device=device)
    loss = _backends(kernels.ambient_loss, kernels.ambient_loss_ref, has_triton)
    cases.append(("ambient_loss_fwd_bwd", tuple(y.shape), y.dtype,
                  {b: _bind(fn, lambda f: _grad_of(f, (denoised, x_t, y, sigma, sigma_n), per_sample_grad, (denoised,)))
                   for b, fn in loss.items()},
                  4 * y.nbytes, "B"))

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    xformers_na = kernels.attention_unavailable("xformers", device)
    xformers = functools.partial(kernels.attention, backend="xformers") if xformers_na is None else xformers_na
    attn = {**_backends(kernels.attention, kernels.attention_ref, has_triton), "sdpa": F.scaled_dot_product_attention,
            "xformers": xformers}
    for b, h, n, d in attention_shapes(preset, attn_batch):
        q, k, v = (torch.randn(b, h, n, d, device=device, generator=gen).to(dtype).requires_grad_() for _ in range(3))
        grad_o = torch.randn(q.shape, device=device, generator=gen).to(dtype)
        cases.append(("attention_fwd_bwd", (b, h, n, d), dtype,
                      {name: _bind(fn, lambda f: _grad_of(f, (q, k, v), grad_o, (q, k, v)))  # noqa: B023 called at once
                       for name, fn in attn.items()},
                      12 * b * h * n * n * d, "FLOP"))
    return cases


def kernel_workloads(device: torch.device, presets: list[str], *, smoke: bool = False) -> list[Workload]:
    """The microbenchmark workloads; backends that cannot run here become rows with status "n/a"."""
    has_triton = device.type == "cuda"
    if smoke and not has_triton:
        from kernels._triton_utils import INTERPRET  # imports Triton: only when it may be used
        has_triton = INTERPRET
    out: list[Workload] = []
    for preset in presets:
        img_batch, attn_batch = SMOKE_BATCHES if smoke else BATCHES[(device.type, preset)]
        for op, shape, dtype, fns, work, unit in _preset_cases(preset, device, img_batch, attn_batch, has_triton):
            calib, ceiling = references(device, unit, dtype)
            for backend, fn in fns.items():
                info = {"section": "kernels", "op": op, "preset": preset, "shape": list(shape),
                        "dtype": str(dtype)[6:], "backend": backend}
                if isinstance(fn, str):
                    info.update(status="n/a", reason=fn)
                    fn = None
                out.append(Workload(f"kernels/{op}/{preset}/{_tag(shape)}/{info['dtype']}/{backend}", fn,
                                    calib=calib, ceiling=ceiling, work=work, unit=unit, info=info))
    return out


def add_speedups(rows: list[dict]) -> None:
    """Speed-up of each backend over the torch reference at the same op, preset and shape."""
    reference = {r["id"].rsplit("/", 1)[0]: r for r in rows
                 if r.get("section") == "kernels" and r.get("backend") == "torch" and r.get("status") == "ok"}
    for r in rows:
        ref = reference.get(r["id"].rsplit("/", 1)[0])
        if r.get("section") == "kernels" and r.get("status") == "ok" and ref is not None and r is not ref:
            r["vs_torch"] = round(r["norm"] / ref["norm"], 3)
