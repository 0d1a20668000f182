"""Triton flash attention, forward and backward, for UNet self-attention shapes (B, H, N, D).

Forward: each program holds a block of queries and streams the keys/values in blocks with an
online softmax in float32 (running max m and sum l, exp2 of log2-scaled scores); it writes
O and the natural log-sum-exp of each query row's scaled scores. No N x N matrix is stored.
Backward (p = exp(q.k * scale - lse) recomputed from the saved lse):
    delta = rowsum(dO * O)                                   (_attn_bwd_delta_kernel)
    dV = sum_q p^T dO,  dK = scale * sum_q (p * (dO V^T - delta))^T Q   (_attn_bwd_dkdv_kernel, per key block)
    dQ = scale * sum_k (p * (dO V^T - delta)) K                         (_attn_bwd_dq_kernel, per query block)
Two separate kernels for dK/dV and dQ: no atomics, deterministic.

Precision: inputs fp32/fp16/bf16, dots accumulate in fp32; p and ds are rounded to the input
dtype before their dots (as in FlashAttention). fp32 dots use IEEE precision unless
torch.backends.cuda.matmul.allow_tf32 is set (then TF32, about 3e-4 relative error).
Under the interpreter bf16 dots are wrong (triton issue 11584), so bf16 operands are upcast to
fp32 there (DOT_FP32). N need not be a multiple of the block sizes (masking); D any size
(padded to a power of two >= 16).

On a GPU the block sizes are autotuned over a few configs, pruned per GPU generation by what
bench/aot_check.py measured under each supported Triton (DENIED); under the interpreter, which pays
per program and loop iteration, one large-block config is used (Triton < 3.7: NumPy < 2.4 needed).
"""
import functools
import math

import torch
import triton
import triton.language as tl
from triton.runtime import driver

from ._triton_utils import INTERPRET, check_launchable, interpreter_problem

_LOG2E = 1.4426950408889634


@triton.jit
def _block_ptrs(base, rows, offs_d, stride_n, stride_d):
    """Pointers of a (rows, D) tile."""
    return base + rows[:, None] * stride_n + offs_d[None, :] * stride_d


@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d, sv_b, sv_h, sv_n, sv_d,
                     H, N, HEAD_D, qk_scale_log2, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Program (query block, batch*head): O and lse of BLOCK_M query rows. O and LSE are contiguous."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < HEAD_D
    q = tl.load(_block_ptrs(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_n, sq_d),
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(_block_ptrs(k_base, cols, offs_d, sk_n, sk_d), mask=kv_mask, other=0.0)
        v = tl.load(_block_ptrs(v_base, cols, offs_d, sv_n, sv_d), mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale_log2
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    row = bh.to(tl.int64) * N + offs_m
    tl.store(O + row[:, None] * HEAD_D + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + row, (m_i + tl.log2(l_i)) / 1.4426950408889634, mask=mask_m)


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, sdo_b, sdo_h, sdo_n, sdo_d, H, N, HEAD_D,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program (query block, batch*head): delta = rowsum(dO * O) in float32. O is contiguous."""
    bh = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < N)[:, None] & (offs_d < HEAD_D)[None, :]
    row = bh.to(tl.int64) * N + offs_m
    o = tl.load(O + row[:, None] * HEAD_D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
    do_base = DO + (bh // H).to(tl.int64) * sdo_b + (bh % H).to(tl.int64) * sdo_h
    do = tl.load(_block_ptrs(do_base, offs_m, offs_d, sdo_n, sdo_d), mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + row, tl.sum(o * do, axis=1), mask=offs_m < N)


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d,
                          sv_b, sv_h, sv_n, sv_d, sdo_b, sdo_h, sdo_n, sdo_d, H, N, HEAD_D, scale,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Program (key block, batch*head): dK, dV of BLOCK_N keys, streaming all query blocks."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_D
    kv_mask = (offs_n < N)[:, None] & mask_d[None, :]
    k = tl.load(_block_ptrs(K + b * sk_b + h * sk_h, offs_n, offs_d, sk_n, sk_d), mask=kv_mask, other=0.0)
    v = tl.load(_block_ptrs(V + b * sv_b + h * sv_h, offs_n, offs_d, sv_n, sv_d), mask=kv_mask, other=0.0)
    if DOT_FP32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    row_base = bh.to(tl.int64) * N
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        rows = start_m + offs_m
        mask_m = rows < N
        q_mask = mask_m[:, None] & mask_d[None, :]
        q = tl.load(_block_ptrs(q_base, rows, offs_d, sq_n, sq_d), mask=q_mask, other=0.0)
        do = tl.load(_block_ptrs(do_base, rows, offs_d, sdo_n, sdo_d), mask=q_mask, other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + row_base + rows, mask=mask_m, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + rows, mask=mask_m, other=0.0)
        # Transposed scores (keys x queries), so dK and dV accumulate without transposing them.
        # No masks: query rows past N load q, dO, lse, delta as 0, so p = 1, ds = 0 and they add
        # nothing; key rows past N may overflow (exp(0 - lse)) but each stays in its own row of
        # dK, dV, which is never stored.
        s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * (scale * 1.4426950408889634)
        p_t = tl.exp2(s_t - lse[None, :])
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    out = (row_base + offs_n)[:, None] * HEAD_D + offs_d[None, :]
    tl.store(DK + out, (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_n, sk_d,
                        sv_b, sv_h, sv_n, sv_d, sdo_b, sdo_h, sdo_n, sdo_d, H, N, HEAD_D, scale,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                        DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Program (query block, batch*head): dQ of BLOCK_M queries, streaming all key blocks."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < N
    mask_d = offs_d < HEAD_D
    q_mask = mask_m[:, None] & mask_d[None, :]
    q = tl.load(_block_ptrs(Q + b * sq_b + h * sq_h, offs_m, offs_d, sq_n, sq_d), mask=q_mask, other=0.0)
    do = tl.load(_block_ptrs(DO + b * sdo_b + h * sdo_h, offs_m, offs_d, sdo_n, sdo_d), mask=q_mask, other=0.0)
    if DOT_FP32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    row = bh.to(tl.int64) * N + offs_m
    lse = tl.load(LSE + row, mask=mask_m, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row, mask=mask_m, other=0.0)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        cols = start_n + offs_n
        mask_n = cols < N
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(_block_ptrs(k_base, cols, offs_d, sk_n, sk_d), mask=kv_mask, other=0.0)
        v = tl.load(_block_ptrs(v_base, cols, offs_d, sv_n, sv_d), mask=kv_mask, other=0.0)
        if DOT_FP32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        # Keys past N load as 0 but still need the mask: exp(0 - lse) overflows when lse << 0.
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (scale * 1.4426950408889634)
        p = tl.exp2(tl.where(mask_n[None, :], s - lse[:, None], float("-inf")))
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + row[:, None] * HEAD_D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


def _configs(tiles: list[tuple[int, int, int]]) -> list[triton.Config]:
    """(BLOCK_M, BLOCK_N, warps) candidates, two pipeline stages each."""
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=2) for bm, bn, warps in tiles]


# Tiles measured to spill registers or to overflow shared memory, per Triton release (major.minor), kernel, GPU
# generation (compute capability major: 8 = A100, 9 = H100/H200), operands ("16": fp16/bf16; fp32 with "tf32" or
# "ieee" dots) and head-dim block: ptxas's verdicts on every candidate the trainer's launches keep, printed by
# `python -m bench.aot_check --denylist` under that Triton (sm_80 and sm_90 compiles on a CPU). The tables differ
# (Triton's code generation does), and the pruning drops the union of all of them, so that what it keeps holds for
# every supported Triton (README "Tested versions"), not only for the one that recorded a table. CI runs that check
# under Triton 3.6 and the pinned Triton: a kept tile that spills or overflows fails it, and these tables are how the
# pruning learns of it. Other GPU generations get the generic bound of _prune only (the autotuner still skips a tile
# that does not fit their shared memory).
_DENIED = {
    "3.6": """
_attn_bwd_dkdv_kernel 8 16 32: 32x64w8
_attn_bwd_dkdv_kernel 8 16 64: 64x64w8
_attn_bwd_dkdv_kernel 8 16 256: 128x32w8
_attn_bwd_dkdv_kernel 8 ieee 32: 128x32w8 64x64w8
_attn_bwd_dkdv_kernel 8 ieee 64: 128x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 8 ieee 128: 128x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 8 ieee 256: 32x32w8 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 8 tf32 32: 128x32w8
_attn_bwd_dkdv_kernel 8 tf32 64: 32x64w8 64x64w8
_attn_bwd_dkdv_kernel 8 tf32 128: 128x32w8
_attn_bwd_dkdv_kernel 8 tf32 256: 32x32w8 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 9 16 256: 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 32: 128x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 64: 128x32w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 128: 128x32w8 32x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 256: 32x32w8 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 9 tf32 32: 128x32w8
_attn_bwd_dkdv_kernel 9 tf32 128: 64x64w8
_attn_bwd_dkdv_kernel 9 tf32 256: 32x64w8 64x32w8
_attn_bwd_dq_kernel 8 16 256: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 64: 128x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 128: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 8 tf32 64: 64x64w8
_attn_bwd_dq_kernel 8 tf32 128: 128x32w8
_attn_bwd_dq_kernel 8 tf32 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 9 16 256: 32x32w4
_attn_bwd_dq_kernel 9 ieee 32: 32x32w4
_attn_bwd_dq_kernel 9 ieee 64: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 9 ieee 128: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 9 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 9 tf32 128: 32x64w8
_attn_bwd_dq_kernel 9 tf32 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 8 16 128: 128x64w8 64x64w4
_attn_fwd_kernel 8 16 256: 32x32w4 64x32w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 64: 128x64w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 128: 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 8 tf32 128: 64x64w4
_attn_fwd_kernel 8 tf32 256: 32x32w4 32x64w8
_attn_fwd_kernel 9 16 256: 64x64w4
_attn_fwd_kernel 9 ieee 64: 128x64w8 64x64w4 64x64w8
_attn_fwd_kernel 9 ieee 128: 32x32w4 64x64w4 64x64w8
_attn_fwd_kernel 9 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 9 tf32 64: 32x64w8
_attn_fwd_kernel 9 tf32 256: 32x32w4
""",
    "3.8": """
_attn_bwd_dkdv_kernel 8 16 32: 128x32w8
_attn_bwd_dkdv_kernel 8 16 256: 128x32w8
_attn_bwd_dkdv_kernel 8 ieee 32: 32x64w8
_attn_bwd_dkdv_kernel 8 ieee 64: 128x32w8 32x32w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 8 ieee 128: 128x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 8 ieee 256: 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 8 tf32 32: 128x32w8
_attn_bwd_dkdv_kernel 8 tf32 64: 64x64w8
_attn_bwd_dkdv_kernel 8 tf32 128: 128x32w8
_attn_bwd_dkdv_kernel 8 tf32 256: 32x32w8 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 9 16 256: 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 32: 128x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 64: 128x32w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 128: 128x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 256: 32x32w8 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 9 tf32 32: 128x32w8
_attn_bwd_dkdv_kernel 9 tf32 128: 64x64w8
_attn_bwd_dkdv_kernel 9 tf32 256: 32x64w8 64x32w8
_attn_bwd_dq_kernel 8 16 256: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 64: 128x32w8 32x64w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 128: 128x32w8 32x64w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 8 tf32 64: 64x64w8
_attn_bwd_dq_kernel 8 tf32 128: 128x32w8
_attn_bwd_dq_kernel 8 tf32 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 9 16 256: 32x32w4
_attn_bwd_dq_kernel 9 ieee 32: 32x32w4
_attn_bwd_dq_kernel 9 ieee 64: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 9 ieee 128: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 9 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 9 tf32 128: 32x64w8
_attn_bwd_dq_kernel 9 tf32 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 8 16 128: 128x64w8 64x64w4
_attn_fwd_kernel 8 16 256: 64x32w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 32: 64x64w4
_attn_fwd_kernel 8 ieee 64: 128x64w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 128: 32x64w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 8 tf32 128: 64x64w4
_attn_fwd_kernel 8 tf32 256: 32x32w4 32x64w8
_attn_fwd_kernel 9 16 256: 64x64w4
_attn_fwd_kernel 9 ieee 64: 128x64w8 64x64w4 64x64w8
_attn_fwd_kernel 9 ieee 128: 32x32w4 64x64w4 64x64w8
_attn_fwd_kernel 9 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 9 tf32 256: 32x32w4
""",
    "3.9": """
_attn_bwd_dkdv_kernel 8 16 32: 128x32w8
_attn_bwd_dkdv_kernel 8 16 256: 128x32w8
_attn_bwd_dkdv_kernel 8 ieee 32: 32x64w8
_attn_bwd_dkdv_kernel 8 ieee 64: 128x32w8 32x32w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 8 ieee 128: 128x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 8 ieee 256: 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 8 tf32 32: 128x32w8
_attn_bwd_dkdv_kernel 8 tf32 64: 64x64w8
_attn_bwd_dkdv_kernel 8 tf32 128: 128x32w8
_attn_bwd_dkdv_kernel 8 tf32 256: 32x32w8 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 9 16 128: 64x32w8
_attn_bwd_dkdv_kernel 9 16 256: 128x32w8 32x64w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 32: 128x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 64: 128x32w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 128: 128x32w8 32x32w8 32x64w8 64x32w8 64x64w8
_attn_bwd_dkdv_kernel 9 ieee 256: 32x32w8 32x64w8 64x32w8
_attn_bwd_dkdv_kernel 9 tf32 32: 128x32w8
_attn_bwd_dkdv_kernel 9 tf32 64: 64x32w8
_attn_bwd_dkdv_kernel 9 tf32 128: 32x64w8 64x64w8
_attn_bwd_dkdv_kernel 9 tf32 256: 32x64w8 64x32w8
_attn_bwd_dq_kernel 8 16 256: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 64: 128x32w8 32x64w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 128: 128x32w8 32x64w8 64x64w8
_attn_bwd_dq_kernel 8 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 8 tf32 64: 64x64w8
_attn_bwd_dq_kernel 8 tf32 128: 128x32w8
_attn_bwd_dq_kernel 8 tf32 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 9 16 256: 32x32w4 64x64w8
_attn_bwd_dq_kernel 9 ieee 32: 32x32w4
_attn_bwd_dq_kernel 9 ieee 64: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 9 ieee 128: 128x32w8 32x32w4 64x32w8 64x64w8
_attn_bwd_dq_kernel 9 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_bwd_dq_kernel 9 tf32 128: 32x32w4 32x64w8 64x64w8
_attn_bwd_dq_kernel 9 tf32 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 8 16 128: 128x64w8 64x64w4
_attn_fwd_kernel 8 16 256: 64x32w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 32: 64x64w4
_attn_fwd_kernel 8 ieee 64: 128x64w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 128: 32x64w8 64x64w4 64x64w8
_attn_fwd_kernel 8 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 8 tf32 128: 64x64w4
_attn_fwd_kernel 8 tf32 256: 32x32w4 32x64w8
_attn_fwd_kernel 9 16 256: 32x32w4 64x64w4
_attn_fwd_kernel 9 ieee 64: 128x64w8 64x64w4 64x64w8
_attn_fwd_kernel 9 ieee 128: 32x32w4 64x64w4 64x64w8
_attn_fwd_kernel 9 ieee 256: 32x32w4 32x64w8 64x32w8
_attn_fwd_kernel 9 tf32 128: 32x32w4
_attn_fwd_kernel 9 tf32 256: 32x32w4 32x64w8 64x32w8
""",
}


def _denied(*tables: str) -> dict[tuple[str, int, str, int], set[tuple[int, int, int]]]:
    """{(kernel, major, operands, BLOCK_D): {(BLOCK_M, BLOCK_N, warps)}}, the union of tables of lines like
    '_attn_fwd_kernel 8 16 256: 64x32w8 64x64w4'."""
    out: dict[tuple[str, int, str, int], set[tuple[int, int, int]]] = {}
    for table in tables:
        for line in table.strip().splitlines():
            group, _, tiles = line.partition(":")
            kernel, major, operands, block_d = group.split()
            out.setdefault((kernel, int(major), operands, int(block_d)), set()).update(
                tuple(int(x) for x in tile.replace("w", "x").split("x")) for tile in tiles.split())
    return out


DENIED = _denied(*_DENIED.values())
DENIED_TRITONS = tuple(_DENIED)      # the Triton releases whose verdicts DENIED holds


def _prune(kernel: str, fallback: triton.Config, configs: list[triton.Config], named_args: dict, **kwargs
           ) -> list[triton.Config]:
    """The candidates worth timing for this launch on this GPU generation; `fallback` only when no other is left.

    A generic bound first (tiles of BLOCK_M x BLOCK_N x BLOCK_D over 2 MiB of operands spill and overflow shared
    memory everywhere), then DENIED.
    """
    element = named_args["Q"].element_size()
    operands = "16" if element == 2 else kwargs["PRECISION"]
    major = driver.active.get_current_target().arch // 10
    denied = DENIED.get((kernel, major, operands, kwargs["BLOCK_D"]), set())
    kept = [c for c in configs if c is not fallback
            and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * kwargs["BLOCK_D"] * element <= 2 << 20
            and (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps) not in denied]
    return kept or [fallback]


# Candidates (BLOCK_M, BLOCK_N, warps): the tuner times those _prune keeps and runs the fastest. The last, a narrow
# tile, is the fallback where DENIED leaves none: it compiles without spills wherever the AOT check uses it, on sm_80
# and sm_90 under every Triton of _DENIED (dK/dV's was 32 x 16 / 8 warps until it spilled at D = 128, fp32 IEEE, on
# sm_90 under Triton 3.9: docs/bench/triton-versions.md).
_KEY = ["N", "HEAD_D", "DOT_FP32", "PRECISION"]
if INTERPRET:
    _fwd, _dkdv, _dq = _attn_fwd_kernel, _attn_bwd_dkdv_kernel, _attn_bwd_dq_kernel
else:
    def _tuned(kernel, tiles: list[tuple[int, int, int]]):
        configs = _configs(tiles)
        prune = functools.partial(_prune, kernel.fn.__name__, configs[-1])
        return triton.autotune(configs, key=_KEY, prune_configs_by={"early_config_prune": prune})(kernel)

    _fwd = _tuned(_attn_fwd_kernel, [(128, 64, 8), (64, 64, 4), (64, 64, 8), (64, 32, 8), (32, 64, 8), (32, 32, 4),
                                     (16, 16, 4)])
    _dkdv = _tuned(_attn_bwd_dkdv_kernel, [(64, 64, 8), (128, 32, 8), (32, 64, 8), (64, 32, 8), (32, 32, 8),
                                           (16, 16, 4)])
    _dq = _tuned(_attn_bwd_dq_kernel, [(64, 64, 8), (128, 32, 8), (64, 32, 8), (32, 64, 8), (32, 32, 4), (16, 32, 8)])


def _flags(dtype: torch.dtype) -> dict:
    """DOT_FP32: upcast bf16 dot operands under the interpreter; PRECISION: IEEE fp32 dots unless TF32 is allowed."""
    tf32 = dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32
    return {"DOT_FP32": INTERPRET and dtype == torch.bfloat16, "PRECISION": "tf32" if tf32 else "ieee"}


def _launch(tuned, kernel, along: str, n: int, bh: int, args: tuple, block: tuple[int, int] | None,
            block_d: int, flags: dict) -> None:
    """Launch over (cdiv(n, block `along`), bh) programs: `tuned` (autotuned on a GPU) or `kernel` with
    explicit (BLOCK_M, BLOCK_N).

    Explicit blocks come from the tests; under the interpreter, which pays per program and
    iteration, the default is one large square block.
    """
    if block is None and INTERPRET:
        side = min(256, max(16, triton.next_power_of_2(n)))
        block = (side, side)
    if block is None:
        tuned[lambda meta: (triton.cdiv(n, meta[along]), bh)](*args, BLOCK_D=block_d, **flags)
    else:
        sizes = {"BLOCK_M": block[0], "BLOCK_N": block[1]}
        kernel[(triton.cdiv(n, sizes[along]), bh)](*args, **sizes, BLOCK_D=block_d, **flags)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share a (B, H, N, D) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"q, k, v must share a dtype among fp32, fp16, bf16, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_launchable(q)
    if INTERPRET and (why := interpreter_problem()) is not None:
        raise RuntimeError(why)


def attention_fwd_launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *,
                         out: torch.Tensor | None = None, block: tuple[int, int] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, lse): O contiguous in q's dtype, lse (B, H, N) float32. `out` and `block` are for tests."""
    _check_qkv(q, k, v)
    batch, heads, n, d = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if out is None else out
    if out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {q.dtype} tensor of shape {tuple(q.shape)}")
    lse = torch.empty((batch, heads, n), dtype=torch.float32, device=q.device)
    args = (q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), heads, n, d, scale * _LOG2E)
    block_d = max(16, triton.next_power_of_2(d))
    _launch(_fwd, _attn_fwd_kernel, "BLOCK_M", n, batch * heads, args, block, block_d, _flags(q.dtype))
    return out, lse


def attention_bwd_launch(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                         lse: torch.Tensor, scale: float, *, grads: tuple[torch.Tensor, ...] | None = None,
                         block: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV), contiguous in q's dtype. `grads` (output buffers) and `block` are for tests."""
    _check_qkv(q, k, v)
    batch, heads, n, d = q.shape
    o, lse = o.contiguous(), lse.contiguous()
    grad_out = grad_out.to(q.dtype)
    if grads is None:
        grads = tuple(torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    if any(g.shape != q.shape or g.dtype != q.dtype or not g.is_contiguous() for g in grads):
        raise ValueError(f"grads must be contiguous {q.dtype} tensors of shape {tuple(q.shape)}")
    dq, dk, dv = grads
    block_d = max(16, triton.next_power_of_2(d))
    delta = torch.empty((batch, heads, n), dtype=torch.float32, device=q.device)
    # Rows per delta program: on a GPU at most 64 and 8Ki elements per tile (64 x 256 fp32 tiles of O and dO, 256
    # values per thread of 4 warps, spill on sm_90 with Triton 3.6: docs/bench/triton-versions.md).
    delta_rows = min(triton.next_power_of_2(n), max(16, 16384 // block_d) if INTERPRET else min(64, 8192 // block_d))
    _attn_bwd_delta_kernel[(triton.cdiv(n, delta_rows), batch * heads)](
        o, grad_out, delta, *grad_out.stride(), heads, n, d, BLOCK_M=delta_rows, BLOCK_D=block_d)
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    flags = _flags(q.dtype)
    _launch(_dkdv, _attn_bwd_dkdv_kernel, "BLOCK_N", n, batch * heads,
            (q, k, v, grad_out, lse, delta, dk, dv, *strides, heads, n, d, scale), block, block_d, flags)
    _launch(_dq, _attn_bwd_dq_kernel, "BLOCK_M", n, batch * heads,
            (q, k, v, grad_out, lse, delta, dq, *strides, heads, n, d, scale), block, block_d, flags)
    return dq, dk, dv


@torch.library.custom_op("ambient::attention_fwd", mutates_args=())
def _attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, lse) of softmax(q k^T * scale) v."""
    return attention_fwd_launch(q, k, v, scale)


@_attention_fwd_op.register_fake
def _(q, k, v, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("ambient::attention_bwd", mutates_args=())
def _attention_bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                      lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV) from the forward's O and lse."""
    return attention_bwd_launch(grad_out, q, k, v, o, lse, scale)


@_attention_bwd_op.register_fake
def _(grad_out, q, k, v, o, lse, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _attention_setup_context(ctx, inputs, output):
    q, k, v, ctx.scale = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse)


def _attention_backward(ctx, grad_o, _grad_lse):
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.ambient.attention_bwd(grad_o, q, k, v, o, lse, ctx.scale)
    return dq, dk, dv, None


_attention_fwd_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v for (B, H, N, D) inputs, flash-style; scale defaults to 1/sqrt(D)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.ambient.attention_fwd(q, k, v, scale)[0]
