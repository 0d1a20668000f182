"""Triton ambient loss: per-sample loss and its gradient with respect to `denoised` in one read.

For each sample (see kernels/loss.py for the formulas):
    a = sigma_n^2 / s^2,  r = (1 - a) * D + a * x_t - y,  w = lambda(s) * w_amb(s, sigma_n)
    loss_i = w * sum r^2,  dloss_i/dD = 2 * w * (1 - a) * r
The forward writes the gradient unscaled (float32); the backward only multiplies it by the
incoming per-sample gradient. Programs cover (chunk, sample); each writes its chunk's partial
sum to a (B, chunks) float32 buffer that a second tiny pass (a torch sum) reduces: no atomics,
so the result is deterministic and the same under the interpreter and on a GPU.

Registered as `torch.ops.ambient.ambient_loss` so torch.compile traces it.
"""
import torch
import triton
import triton.language as tl

from ._backend import WEIGHTINGS, check_choice
from ._triton_utils import check_launchable, elementwise_block, per_sample_vector


@triton.jit
def _loss_kernel(d_ptr, x_ptr, y_ptr, sigma_ptr, sigma_n_ptr, partial_ptr, grad_ptr, per_sample, n_chunks,
                 sigma_data_sq, AMBIENT: tl.constexpr, GRAD: tl.constexpr, BLOCK: tl.constexpr):
    """Program (chunk, sample): partial weighted sum of squares and the gradient of BLOCK elements."""
    chunk = tl.program_id(0)
    sample = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < per_sample
    idx = sample.to(tl.int64) * per_sample + cols
    s = tl.load(sigma_ptr + sample)
    sn = tl.load(sigma_n_ptr + sample)
    s2 = s * s
    a = sn * sn / s2
    weight = (s2 + sigma_data_sq) / (s2 * sigma_data_sq)
    if AMBIENT:
        gap = tl.maximum(s2 - sn * sn, 0.0)
        weight = tl.where(gap > 0.0, weight * (s2 * s2) / tl.where(gap > 0.0, gap * gap, 1.0), 0.0)
    d = tl.load(d_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    r = (1.0 - a) * d + a * x - y
    tl.store(partial_ptr + sample * n_chunks + chunk, weight * tl.sum(r * r, axis=0))
    if GRAD:
        tl.store(grad_ptr + idx, (2.0 * weight * (1.0 - a)) * r, mask=mask)


def loss_launch(denoised: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                sigma_n: torch.Tensor, *, sigma_data: float = 0.5, weighting: str = "edm", compute_grad: bool = True,
                grad_out: torch.Tensor | None = None,
                block: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the kernel; returns (loss (B,) float32, unscaled float32 gradient or None).

    `grad_out` (a contiguous float32 buffer shaped like denoised) and `block` are for tests.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    if not (denoised.shape == x_t.shape == y.shape) or denoised.ndim < 1 or denoised.shape[0] == 0:
        raise ValueError(f"denoised, x_t, y must share a non-empty (B, ...) shape, got "
                         f"{tuple(denoised.shape)}, {tuple(x_t.shape)}, {tuple(y.shape)}")
    check_launchable(denoised)
    batch = denoised.shape[0]
    per_sample = denoised.numel() // batch
    denoised, x_t, y = (t.to(denoised.device).contiguous() for t in (denoised, x_t, y))
    if compute_grad and grad_out is None:
        grad_out = torch.empty(denoised.shape, dtype=torch.float32, device=denoised.device)
    if grad_out is not None and (grad_out.shape != denoised.shape or grad_out.dtype != torch.float32
                                 or not grad_out.is_contiguous()):
        raise ValueError(f"grad_out must be a contiguous float32 tensor of shape {tuple(denoised.shape)}")
    block = elementwise_block(per_sample, block)
    n_chunks = triton.cdiv(per_sample, block)
    partial = torch.empty((batch, n_chunks), dtype=torch.float32, device=denoised.device)
    _loss_kernel[(n_chunks, batch)](
        denoised, x_t, y, per_sample_vector(sigma, batch, denoised, "sigma"),
        per_sample_vector(sigma_n, batch, denoised, "sigma_n"), partial, partial if grad_out is None else grad_out,
        per_sample, n_chunks, float(sigma_data) ** 2, AMBIENT=weighting == "ambient", GRAD=compute_grad,
        BLOCK=block, num_warps=4 if block <= 1024 else 8)
    return partial.sum(dim=1), (grad_out if compute_grad else None)


@torch.library.custom_op("ambient::ambient_loss", mutates_args=())
def _loss_op(denoised: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, sigma_n: torch.Tensor,
             sigma_data: float, weighting: str, compute_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss (B,) float32, unscaled float32 gradient; empty unless compute_grad)."""
    loss, grad = loss_launch(denoised, x_t, y, sigma, sigma_n, sigma_data=sigma_data, weighting=weighting,
                             compute_grad=compute_grad)
    return loss, (grad if compute_grad else denoised.new_empty(0, dtype=torch.float32))


@_loss_op.register_fake
def _(denoised, x_t, y, sigma, sigma_n, sigma_data, weighting, compute_grad):
    loss = denoised.new_empty(denoised.shape[0], dtype=torch.float32)
    return loss, denoised.new_empty(denoised.shape if compute_grad else (0,), dtype=torch.float32)


def _loss_setup_context(ctx, inputs, output):
    ctx.denoised_dtype = inputs[0].dtype
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _loss_backward(ctx, grad_loss, _grad_of_grad):
    """d(sum_i g_i * loss_i)/dD = g_i * (stored gradient of sample i)."""
    (grad,) = ctx.saved_tensors
    if grad.numel() == 0:
        raise RuntimeError("ambient_loss was called with compute_grad=False; it has no gradient")
    scale = grad_loss.float().reshape((-1,) + (1,) * (grad.ndim - 1))
    return (grad * scale).to(ctx.denoised_dtype), None, None, None, None, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup_context)


def ambient_loss_triton(denoised: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor,
                        sigma_n: torch.Tensor, *, sigma_data: float = 0.5, weighting: str = "edm") -> torch.Tensor:
    """Per-sample loss (B,) float32, differentiable with respect to `denoised` only."""
    if any(t.requires_grad for t in (x_t, y, sigma, sigma_n)):
        raise ValueError("the triton ambient loss is differentiable only in `denoised`; detach x_t, y, sigma, "
                         "sigma_n or use backend='torch'")
    compute_grad = torch.is_grad_enabled() and denoised.requires_grad
    return torch.ops.ambient.ambient_loss(denoised, x_t, y, sigma, sigma_n, sigma_data, weighting, compute_grad)[0]
