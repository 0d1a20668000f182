"""Microbenchmarks of the Triton kernels against their PyTorch counterparts, measured side by side.

    python bench/bench_kernels.py                  # CUDA: medians (triton.testing.do_bench), ratios, bandwidth
    python bench/bench_kernels.py --json out.json  # also write the rows as JSON
    TRITON_INTERPRET=1 python bench/bench_kernels.py --smoke   # CPU: tiny shapes, checks the script only

Memory-bound kernels (noise, loss) are reported as a fraction of the measured device copy
bandwidth for the bytes they must move; attention forward+backward against torch SDPA
(PyTorch picks its fastest backend) at UNet self-attention shapes.
"""
import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import kernels


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of fn in ms: do_bench on CUDA (flushes L2), a plain timer elsewhere."""
    if torch.cuda.is_available():
        import triton.testing
        return triton.testing.do_bench(fn, rep=reps, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, reps: int, numel: int) -> float:
    """Device copy bandwidth in GB/s (bytes read + written)."""
    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / median_ms(lambda: dst.copy_(src), reps) / 1e6


def _fwd_bwd(attn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> Callable:
    """Forward and backward of attn(q, k, v) against `grad`."""
    return lambda: torch.autograd.grad(attn(q, k, v), (q, k, v), grad)


def bench(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    batch, res = (4, 8) if args.smoke else (args.batch, args.resolution)
    bandwidth = copy_bandwidth(device, args.reps, 1 << (10 if args.smoke else 28))
    rows = [{"op": "copy", "GB/s": round(bandwidth, 1)}]

    def add(op: str, triton_fn, torch_fn, nbytes: int | None = None) -> None:
        t_triton, t_torch = median_ms(triton_fn, args.reps), median_ms(torch_fn, args.reps)
        row = {"op": op, "triton_ms": round(t_triton, 4), "torch_ms": round(t_torch, 4),
               "speedup": round(t_torch / t_triton, 2)}
        if nbytes is not None:
            row["triton_GB/s"] = round(nbytes / t_triton / 1e6, 1)
            row["of_copy_bw"] = round(nbytes / t_triton / 1e6 / bandwidth, 3)
        rows.append(row)
        print(row, flush=True)

    y = torch.randn(batch, 3, res, res, device=device).to(dtype)
    sigma = torch.exp(torch.randn(batch, device=device) * 1.2 - 1.2)
    sigma_n = torch.full((batch,), 0.2, device=device)
    sigma = torch.maximum(sigma, sigma_n)
    add("noise_injection (y -> x_t, c_in x_t)",
        lambda: kernels.noise_injection_net_input(y, sigma, sigma_n, seed=1, backend="triton"),
        lambda: kernels.noise_injection_net_input(y, sigma, sigma_n, seed=1, backend="torch"),
        3 * y.nbytes)

    x_t = kernels.noise_injection(y, sigma, sigma_n, seed=1, backend="triton")
    denoised = (y.float() + 0.1 * torch.randn_like(y, dtype=torch.float32)).to(dtype).requires_grad_()

    def loss_grad(backend: str) -> Callable[[], object]:
        return lambda: torch.autograd.grad(
            kernels.ambient_loss(denoised, x_t, y, sigma, sigma_n, backend=backend).mean(), denoised)

    # Bytes it must move: read denoised, x_t, y; write the gradient.
    add("ambient_loss loss + d/d denoised", loss_grad("triton"), loss_grad("torch"), 4 * y.nbytes)

    shapes = [(2, 1, 64, 32)] if args.smoke else [(args.batch, 1, 256, 256), (args.batch // 8, 4, 1024, 64)]
    for b, h, n, d in shapes:
        q, k, v = (torch.randn(b, h, n, d, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn_like(q)
        add(f"attention fwd+bwd B={b} H={h} N={n} D={d}",
            _fwd_bwd(lambda *qkv: kernels.attention(*qkv, backend="triton"), q, k, v, grad),
            _fwd_bwd(F.scaled_dot_product_attention, q, k, v, grad))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--reps", type=int, default=200, help="do_bench repetition time in ms")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (CPU interpreter): checks the script")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        parser.error("needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1 on CPU)")
    rows = bench(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                       "dtype": args.dtype, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
