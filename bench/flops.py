"""Model FLOPs of a forward pass, counted on the meta device: the work of the MFU figures (bench/bench_train.py)."""
from __future__ import annotations

import itertools

import torch

from ambient.model.networks import Conv2d, EDMPrecond, Linear, UNetBlock


def _conv_macs(m: Conv2d, x: torch.Tensor, y: torch.Tensor) -> int:
    """Multiply-adds of one Conv2d call: the weight conv plus the depthwise resampling filter."""
    b, cin, h, w = x.shape
    cout, ho, wo = y.shape[1:]
    fused = m.fused_resample and m.weight is not None
    macs = 0
    if m.resample_filter is not None:
        taps = m.resample_filter.numel()
        if m.up:  # transposed depthwise conv: every input pixel meets every tap
            macs += b * cin * h * w * taps
        else:  # strided depthwise conv on the input (plain) or on the weight conv's output (fused)
            macs += b * (cout if fused else cin) * ho * wo * taps
    if m.weight is not None:
        spatial = ho * wo
        if fused and m.down:  # the weight conv runs before downsampling, padded by the filter's reach
            pad = 2 * ((m.resample_filter.shape[-1] - 1) // 2)
            spatial = (h + pad) * (w + pad)
        macs += b * spatial * m.weight[0].numel() * cout
    return macs


def forward_flops(net: EDMPrecond, batch: int = 1) -> float:
    """FLOPs (2 x multiply-adds) of one forward pass at `batch` images: convs, linears, attention matmuls.

    Counted by forward hooks during a dry run on the meta device (no memory, no compute, the
    network itself is left untouched); norms and pointwise ops are not counted. Used for MFU.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    total = 0

    def on_conv(m: Conv2d, args: tuple, y: torch.Tensor) -> None:
        nonlocal total
        total += _conv_macs(m, args[0], y)

    def on_linear(m: Linear, args: tuple, y: torch.Tensor) -> None:
        nonlocal total
        total += y.numel() * m.in_features

    def on_block(m: UNetBlock, args: tuple, y: torch.Tensor) -> None:
        nonlocal total
        if m.num_heads:  # q k^T and p v: 2 * B * N^2 * C
            b, c, h, w = y.shape
            total += 2 * b * (h * w) ** 2 * c

    hooks = {Conv2d: on_conv, Linear: on_linear, UNetBlock: on_block}
    handles = [m.register_forward_hook(hooks[type(m)]) for m in net.modules() if type(m) in hooks]
    modes = {m: m.training for m in net.modules()}
    backends = {m: m.attn_backend for m in net.modules() if isinstance(m, UNetBlock)}
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in itertools.chain(net.named_parameters(), net.named_buffers())}
    try:
        net.eval()
        for m in backends:
            m.attn_backend = "torch"  # meta tensors cannot enter a Triton kernel
        x = torch.zeros(batch, net.img_channels, net.img_resolution, net.img_resolution, device="meta")
        sigma = torch.ones(batch, device="meta")
        labels = torch.zeros(batch, net.label_dim, device="meta") if net.label_dim else None
        with torch.no_grad():
            torch.func.functional_call(net, meta, (x, sigma), {"class_labels": labels})
    finally:
        for handle in handles:
            handle.remove()
        for m, backend in backends.items():
            m.attn_backend = backend
        for m, mode in modes.items():
            m.training = mode
    return 2.0 * total
