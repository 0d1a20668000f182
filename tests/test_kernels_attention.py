"""Triton flash attention, forward and backward, against autograd through the float64 reference."""
import math

import pytest
import torch

import kernels
from kernels._triton_utils import INTERPRET, interpreter_problem
from kernels.attention_triton import attention_bwd_launch, attention_fwd_launch
from kernels.testing import DEVICE, Canary, relative_error

HAS_GPU = torch.cuda.is_available()
GPU_ONLY = pytest.mark.skipif(not HAS_GPU, reason="bf16 is checked on a GPU only (interpreter: see the DOT_FP32 test)")
# Relative-error bounds against float64: fp32 dots are IEEE (the interpreter is exact, and the
# kernel asks for IEEE on a GPU); fp16/bf16 round p and ds to the input dtype before their dots.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}

# (B, H, N, D, dtype, (BLOCK_M, BLOCK_N) or None for the default): N = 64, 100, 257 (masking,
# several blocks) and 1024, each head dim, few combinations each to keep the interpreter time small.
CASES = [
    (1, 2, 100, 64, torch.float32, None),
    (1, 1, 257, 32, torch.float16, None),
    (1, 1, 100, 128, torch.float32, (32, 64)),
    (1, 1, 64, 256, torch.float16, None),
    (2, 1, 257, 64, torch.float32, (64, 32)),
    (1, 1, 100, 256, torch.float32, None),
    (1, 1, 1024, 64, torch.float16, None),
    (1, 2, 64, 48, torch.float32, None),  # a head dim that is not a power of two (padded, masked)
    (1, 1, 100, 128, torch.float32, (16, 16)),  # the narrowest tile, the dK/dV fallback's
    pytest.param(2, 3, 257, 64, torch.bfloat16, None, marks=GPU_ONLY),
    pytest.param(1, 2, 100, 128, torch.bfloat16, None, marks=GPU_ONLY),
]


def _qkv(shape: tuple[int, ...], dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.randn(shape, device=DEVICE).to(dtype) for _ in range(3)]


def _reference(q, k, v, grad_out, scale):
    """float64 output, log-sum-exp and (dq, dk, dv) by autograd through the reference."""
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out = kernels.attention_ref(*leaves, scale=scale)
    out.backward(grad_out.double())
    lse = torch.logsumexp(leaves[0].detach() @ leaves[1].detach().transpose(-1, -2) * scale, dim=-1)
    return out.detach(), lse, [t.grad for t in leaves]


@pytest.mark.parametrize("batch,heads,n,d,dtype,block", CASES)
def test_forward_backward_against_float64(batch, heads, n, d, dtype, block):
    shape = (batch, heads, n, d)
    q, k, v = _qkv(shape, dtype)
    grad_out = torch.randn(shape, device=DEVICE).to(dtype)
    scale = 1 / math.sqrt(d)
    out = Canary(shape, dtype)
    o, lse = attention_fwd_launch(q, k, v, scale, out=out.view, block=block)
    grads = [Canary(shape, dtype) for _ in range(3)]
    dq, dk, dv = attention_bwd_launch(grad_out, q, k, v, o, lse, scale, grads=tuple(g.view for g in grads),
                                      block=block)
    ref_o, ref_lse, ref_grads = _reference(q, k, v, grad_out, scale)
    assert out.intact() and all(g.intact() for g in grads)
    assert relative_error(o, ref_o) < TOL[dtype]
    assert relative_error(lse, ref_lse) < 1e-6
    for got, ref in zip((dq, dk, dv), ref_grads):
        assert relative_error(got, ref) < TOL[dtype]


def test_bf16_dot_workaround_under_the_interpreter():
    """bf16 through the kernel (DOT_FP32 upcasts the dot operands when interpreting)."""
    shape = (1, 1, 64, 32)
    q, k, v = _qkv(shape, torch.bfloat16)
    grad_out = torch.randn(shape, device=DEVICE).bfloat16()
    o, lse = attention_fwd_launch(q, k, v, 0.3)
    dq, dk, dv = attention_bwd_launch(grad_out, q, k, v, o, lse, 0.3)
    ref_o, _, ref_grads = _reference(q, k, v, grad_out, 0.3)
    assert relative_error(o, ref_o) < TOL[torch.bfloat16]
    for got, ref in zip((dq, dk, dv), ref_grads):
        assert relative_error(got, ref) < TOL[torch.bfloat16]


# The dK/dV kernel leaves inf/NaN in the rows of keys past N, which are never stored; numpy warns.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_very_negative_scores_stay_finite(dtype):
    """Every score near -150 (log-sum-exp << 0): masked keys past N must not overflow exp(0 - lse)."""
    shape = (1, 1, 100, 32)
    direction = torch.randn(32, device=DEVICE)
    direction = direction / direction.norm()
    k = (direction * 5 + 0.1 * torch.randn(shape, device=DEVICE)).to(dtype)
    q = (-direction * 30 + 0.1 * torch.randn(shape, device=DEVICE)).to(dtype)
    v = torch.randn(shape, device=DEVICE).to(dtype)
    grad_out = torch.randn(shape, device=DEVICE).to(dtype)
    o, lse = attention_fwd_launch(q, k, v, 1.0, block=(64, 64))
    grads = attention_bwd_launch(grad_out, q, k, v, o, lse, 1.0, block=(64, 64))
    ref_o, ref_lse, (ref_dq, ref_dk, ref_dv) = _reference(q, k, v, grad_out, 1.0)
    assert ref_lse.max() < -100
    tol = 10 * TOL[dtype]  # scores of size 150 amplify their own rounding error 150-fold
    assert relative_error(o, ref_o) < tol and relative_error(lse, ref_lse) < 1e-6
    assert relative_error(grads[2], ref_dv) < tol
    # dq = dS k with dS = P (dP - D) summing to 0 per row: with every key near one direction, dq is the small
    # remainder of terms |dS| |k| that cancel, so its own norm is no scale for the rounding (fresh draws gave
    # ||dq - ref|| / ||ref|| up to 0.087 in fp16). The error is measured against the terms' size,
    # P (|dP| + |D|) |k| (and for dk, transposed, |q|): 60 draws, at most 1.3e-4 (dq) and 3.4e-5 (dk) in fp16.
    qd, kd, vd, gd = (t.double() for t in (q, k, v, grad_out))
    p = torch.softmax(qd @ kd.transpose(-1, -2), -1)
    dp = gd @ vd.transpose(-1, -2)
    terms = p * (dp.abs() + (dp * p).sum(-1, keepdim=True).abs())
    sizes = (terms @ kd.abs(), terms.transpose(-1, -2) @ qd.abs())
    for got, ref, size in zip(grads[:2], (ref_dq, ref_dk), sizes):
        assert ((got.double() - ref).norm() / size.norm()).item() < tol


def test_public_op_autograd_with_strided_inputs_and_scale():
    """q, k, v as views of one (B, N, 3, H, D) projection (not contiguous), a custom scale, loss.backward()."""
    batch, n, heads, d = 2, 100, 2, 32
    qkv = torch.randn(batch, n, 3, heads, d, device=DEVICE, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    weights = torch.randn(batch, heads, n, d, device=DEVICE)
    out = kernels.attention(q, k, v, scale=0.2, backend="triton")
    (out * weights).sum().backward()
    ref = qkv.detach().double().requires_grad_()
    ref_out = kernels.attention_ref(*ref.permute(2, 0, 3, 1, 4), scale=0.2)
    (ref_out * weights.double()).sum().backward()
    assert relative_error(out, ref_out) < 1e-5 and relative_error(qkv.grad, ref.grad) < 1e-5


def test_bad_inputs_raise():
    q, k, v = _qkv((1, 1, 16, 8), torch.float32)
    with pytest.raises(ValueError, match="shape"):
        attention_fwd_launch(q, k[:, :, :8], v, 1.0)
    with pytest.raises(ValueError, match="dtype"):
        attention_fwd_launch(q, k.half(), v, 1.0)


@pytest.mark.parametrize("triton_version, numpy_version, refused", [
    ("3.6.0", "2.4.6", True),         # the pair that fails: int() of a one-element array, refused since NumPy 2.4
    ("3.5.1", "2.4.0rc1", True),
    ("3.6.0", "2.3.5", False),        # NumPy 2.3 only warns
    ("3.7.0", "2.4.6", False),        # Triton 3.7 squeezes the array first
    ("3.10.0+git1a2b3c", "2.10.1", False),   # compared as numbers, not strings
])
def test_the_interpreter_problem_is_named_for_triton_before_3_7_with_numpy_2_4(triton_version, numpy_version, refused):
    why = interpreter_problem(triton_version, numpy_version)
    assert (why is not None) == refused
    if refused:
        assert triton_version in why and numpy_version in why and "NumPy < 2.4" in why


def test_this_interpreter_runs_the_kernels_or_says_why():
    """Where interpreter_problem names a problem the launch refuses with it; elsewhere the kernel runs."""
    q, k, v = _qkv((1, 1, 16, 16), torch.float32)
    why = interpreter_problem() if INTERPRET else None
    if why is None:
        o, _ = attention_fwd_launch(q, k, v, 0.25)
        assert relative_error(o, kernels.attention_ref(q.double(), k.double(), v.double(), scale=0.25)) < TOL[q.dtype]
    else:
        with pytest.raises(RuntimeError, match="NumPy < 2.4"):
            attention_fwd_launch(q, k, v, 0.25)
