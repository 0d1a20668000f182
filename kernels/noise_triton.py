"""Triton noise injection: x_t = y + sqrt(max(s^2 - sigma_n^2, 0)) * eps in one pass.

eps is drawn in the kernel from Philox with counter = offset + flat element index, so the same
(seed, offset) gives the same x_t whatever the block size or launch shape, on a GPU and under
the interpreter alike. Optionally the same pass also writes the network input c_in * x_t,
c_in = 1 / sqrt(s^2 + sigma_data^2) (EDM preconditioning), saving a read and a write of x_t.

seed and offset are not specialised on their values: the trainer's seed changes every step, and Triton
would otherwise compile another variant for a seed divisible by 16 and one for a seed of 1, mid-run.

The op is registered as `torch.ops.ambient.noise_injection` so torch.compile traces it;
it is differentiable with respect to y and eps (not sigma, sigma_n).
"""
import torch
import triton
import triton.language as tl

from ._triton_utils import check_launchable, elementwise_block, per_sample_vector


@triton.jit(do_not_specialize=["seed", "offset"])
def _noise_kernel(y_ptr, eps_ptr, sigma_ptr, sigma_n_ptr, out_ptr, net_in_ptr, per_sample, seed, offset,
                  sigma_data_sq, HAS_EPS: tl.constexpr, NET_INPUT: tl.constexpr, BLOCK: tl.constexpr):
    """Program (chunk, sample): BLOCK elements of one sample."""
    sample = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < per_sample
    idx = sample.to(tl.int64) * per_sample + cols
    s = tl.load(sigma_ptr + sample)
    sn = tl.load(sigma_n_ptr + sample)
    std = tl.sqrt_rn(tl.maximum(s * s - sn * sn, 0.0))
    y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_EPS:
        eps = tl.load(eps_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    else:
        eps = tl.randn(seed, offset + idx)
    x = y + std * eps
    tl.store(out_ptr + idx, x.to(out_ptr.dtype.element_ty), mask=mask)
    if NET_INPUT:
        c_in = 1.0 / tl.sqrt_rn(s * s + sigma_data_sq)
        tl.store(net_in_ptr + idx, (x * c_in).to(net_in_ptr.dtype.element_ty), mask=mask)


def noise_launch(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, *, seed: int, offset: int = 0,
                 eps: torch.Tensor | None = None, sigma_data: float | None = None, out: torch.Tensor | None = None,
                 net_in: torch.Tensor | None = None,
                 block: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the kernel; returns (x_t, c_in * x_t or None). `out`, `net_in`, `block` are for tests.

    The net input is written only when `sigma_data` is given. seed must lie in [0, 2^63).
    """
    if y.ndim < 1 or y.shape[0] == 0:
        raise ValueError(f"y must be a non-empty batch (B, ...), got shape {tuple(y.shape)}")
    if not 0 <= seed < 2**63 or offset < 0:
        raise ValueError(f"seed must lie in [0, 2^63) and offset be >= 0, got seed={seed}, offset={offset}")
    check_launchable(y)
    batch = y.shape[0]
    y = y.contiguous()
    per_sample = y.numel() // batch
    if eps is not None:
        if eps.shape != y.shape:
            raise ValueError(f"eps must have y's shape {tuple(y.shape)}, got {tuple(eps.shape)}")
        eps = eps.to(y.device).contiguous()
    out = torch.empty(y.shape, dtype=y.dtype, device=y.device) if out is None else out
    if sigma_data is not None and net_in is None:
        net_in = torch.empty_like(out)
    for name, t in (("out", out), ("net_in", net_in)):
        if t is not None and (t.shape != y.shape or t.dtype != y.dtype or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous {y.dtype} tensor of shape {tuple(y.shape)}")
    block = elementwise_block(per_sample, block)
    grid = (triton.cdiv(per_sample, block), batch)
    _noise_kernel[grid](
        y, y if eps is None else eps, per_sample_vector(sigma, batch, y, "sigma"),
        per_sample_vector(sigma_n, batch, y, "sigma_n"), out, out if net_in is None else net_in,
        per_sample, int(seed), int(offset), 0.0 if sigma_data is None else float(sigma_data) ** 2,
        HAS_EPS=eps is not None, NET_INPUT=sigma_data is not None, BLOCK=block,
        num_warps=4 if block <= 1024 else 8, enable_fp_fusion=False)  # no FMA: bit-exact with the reference
    return out, (net_in if sigma_data is not None else None)


@torch.library.custom_op("ambient::noise_injection", mutates_args=())
def _noise_op(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, eps: torch.Tensor | None, seed: int,
              offset: int, sigma_data: float, net_input: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, c_in * x_t); the second output is empty unless net_input."""
    x_t, net_in = noise_launch(y, sigma, sigma_n, seed=seed, offset=offset, eps=eps,
                               sigma_data=sigma_data if net_input else None)
    return x_t, (net_in if net_input else y.new_empty(0))


@_noise_op.register_fake
def _(y, sigma, sigma_n, eps, seed, offset, sigma_data, net_input):
    x_t = y.new_empty(y.shape)
    return x_t, (y.new_empty(y.shape) if net_input else y.new_empty(0))


def _noise_setup_context(ctx, inputs, output):
    _, sigma, sigma_n, eps, _, _, sigma_data, net_input = inputs
    ctx.sigma_data, ctx.net_input = sigma_data, net_input
    ctx.eps_dtype = None if eps is None else eps.dtype
    ctx.save_for_backward(sigma, sigma_n)


def _noise_backward(ctx, grad_x_t, grad_net_in):
    """d/dy = 1, d/deps = std on the x_t path; the net-input path adds a factor c_in."""
    sigma, sigma_n = ctx.saved_tensors
    shape = (-1,) + (1,) * (grad_x_t.ndim - 1)
    s, sn = sigma.reshape(shape).float(), sigma_n.reshape(shape).float()
    grad = grad_x_t.float()
    if ctx.net_input:
        grad = grad + grad_net_in.float() * torch.rsqrt(s * s + ctx.sigma_data**2)
    grad_eps = None
    if ctx.eps_dtype is not None:
        grad_eps = (grad * torch.sqrt(torch.clamp(s * s - sn * sn, min=0))).to(ctx.eps_dtype)
    return grad.to(grad_x_t.dtype), None, None, grad_eps, None, None, None, None


_noise_op.register_autograd(_noise_backward, setup_context=_noise_setup_context)


def _check_no_sigma_grad(sigma: torch.Tensor, sigma_n: torch.Tensor) -> None:
    if sigma.requires_grad or sigma_n.requires_grad:
        raise ValueError("the triton noise injection is not differentiable in sigma, sigma_n; use backend='torch'")


def noise_injection_triton(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, *, seed: int, offset: int = 0,
                           eps: torch.Tensor | None = None) -> torch.Tensor:
    """x_t = y + sqrt(max(s^2 - sigma_n^2, 0)) * eps, eps from Philox(seed, offset + index) unless given."""
    _check_no_sigma_grad(sigma, sigma_n)
    return torch.ops.ambient.noise_injection(y, sigma, sigma_n, eps, seed, offset, 0.0, False)[0]


def noise_injection_net_input_triton(y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor, *, seed: int,
                                     offset: int = 0, eps: torch.Tensor | None = None,
                                     sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, c_in * x_t) in one pass; the same x_t as `noise_injection_triton`."""
    _check_no_sigma_grad(sigma, sigma_n)
    return torch.ops.ambient.noise_injection(y, sigma, sigma_n, eps, seed, offset, sigma_data, True)
