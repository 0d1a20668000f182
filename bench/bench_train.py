"""Trainer throughput: img/s, peak memory and MFU of a full training step.

The step is the trainer's own, `ambient.train.train_step` on a `build_state` of a TrainConfig: noise
levels, noise injection, the preconditioned forward and the ambient loss, backward, the non-finite gradient
check, fused Adam with the learning-rate ramp-up, the EMA with its ramp-up,
torch.compile with --compile, micro-batches (gradient accumulation) when a batch does not fit. It leaves
out what is not the step: data loading (the batch stays resident on the device), the per-noise-level
loss bookkeeping, logging, checkpoints and sample grids.

MFU = model FLOPs (3 x `bench.flops.forward_flops`: forward, backward twice that) per second
over a ceiling: the large matmul measured in the same run, in the step's precision; on a GPU with a
known datasheet peak also over that.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ambient.train import TrainConfig, build_state, train_step
from ambient.train.step import TrainState
from bench.flops import forward_flops
from bench.harness import Workload, references
from bench.presets import PRESET_DATA

TRITON_NA = "--kernels triton needs CUDA (on a CPU Triton runs only under its interpreter)"
NO_BF16 = "no native bf16 on this CPU (emulated: 8-18x slower than fp32, minutes per run, not meaningful)"
# Dense bf16 peak from the vendor's datasheet, for MFU against the nominal figure.
NOMINAL_BF16_TFLOPS = {"H200": 989.4, "H100 80GB HBM3": 989.4}


class TrainStep:
    """One optimiser step of the trainer on a fixed synthetic batch (10% clean, 90% at sigma_n = 0.2)."""

    def __init__(self, preset: str, batch: int, precision: str, backend: str, compile: bool, device: torch.device,
                 tf32: bool = True, lr: float = 1e-4, ema_halflife_kimg: float = 500.0, resolution: int | None = None,
                 **options: Any):
        """`resolution`: of the images (default the preset's data, PRESET_DATA); `options`: further TrainConfig
        fields (memory_format, model_channels, attn_resolutions)."""
        channels, res = PRESET_DATA[preset]
        res = resolution or res
        cfg = TrainConfig(preset=preset, batch=batch, precision=precision, kernels=backend, compile=compile,
                          tf32=tf32, lr=lr, ema_halflife_kimg=ema_halflife_kimg, **options)
        self.state: TrainState = build_state(cfg, cfg.network_kwargs(res, channels, 0), device, (channels, res, res))
        self.state.distribute(rank=0, world_size=1)
        self.net = self.state.net
        self.device, self.tf32, self.batch = device, tf32, batch
        self.sigma_n = torch.where(torch.arange(batch) % 10 == 0, 0.0, 0.2)      # on the CPU, as from the loader
        clean = torch.rand(batch, channels, res, res) * 2 - 1
        self.y = (clean + self.sigma_n[:, None, None, None] * torch.randn_like(clean)).to(device)
        self.labels = torch.full((batch,), -1)
        self.step = 0
        self.info: dict[str, Any] = {"batch_gpu": batch}   # result-row fields; batch_gpu shrinks on out-of-memory

    def _step(self, batch_gpu: int) -> None:
        micro = [{"image": self.y[i:i + batch_gpu], "sigma_n": self.sigma_n[i:i + batch_gpu],
                  "label": self.labels[i:i + batch_gpu]} for i in range(0, self.batch, batch_gpu)]
        train_step(self.state, micro, self.step)
        self.step += 1

    def __call__(self) -> None:
        """One step; on CUDA out-of-memory, halve the micro-batch (as --batch-gpu would) and retry."""
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            while True:
                try:
                    return self._step(self.info["batch_gpu"])
                except torch.cuda.OutOfMemoryError:
                    if self.info["batch_gpu"] == 1:
                        raise
                    self.state.optimizer.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
                    self.info["batch_gpu"] //= 2
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _configs(device: torch.device) -> list[tuple[str, int, str, str, bool, bool]]:
    """(preset, batch, precision, kernels, compile, tf32), eager before compiled (a time budget cuts the end)."""
    if device.type == "cuda":
        fast = [("ddpmpp", 512, "bf16", k, c, True) for c in (False, True) for k in ("triton", "torch")]
        edm = ("ddpmpp", 512, "fp32", "torch", False, False)     # EDM-style: fp32, TF32 off, eager
        tiny = [("tiny", 64, "bf16", "triton", False, True), ("tiny", 64, "fp32", "torch", False, False)]
        return fast[:2] + [edm] + fast[2:] + tiny
    backends, precisions = ("torch", "triton"), ("fp32", "bf16")
    tiny = [("tiny", 32, prec, k, c, True) for c in (False, True) for prec in precisions for k in backends]
    return tiny + [("ddpmpp", 2, prec, k, False, True) for prec in precisions for k in backends]


def train_workloads(device: torch.device, presets: list[str], *, quick: bool, bf16: bool = True,
                    keep: Callable[[str], bool] = lambda wid: True) -> list[Workload]:
    """One workload per configuration; those that cannot or need not run here stay as "n/a" / "skipped" rows.

    --quick on a CPU times the tiny preset eagerly only (torch.compile of a U-Net step and DDPM++ take
    minutes there). A CPU without native bf16 (`bf16` False, harness.native_bf16) skips the bf16 rows.
    Only ids passing `keep` are built.
    """
    out = []
    flops: dict[str, float] = {}
    for preset, batch, precision, backend, compiled, tf32 in _configs(device):
        if preset not in presets:
            continue
        cuda = device.type == "cuda"
        wid = (f"train/{preset}/b{batch}/{precision}/{backend}/{'compile' if compiled else 'eager'}"
               + ("" if tf32 else "/no-tf32"))
        if not keep(wid):
            continue
        info: dict[str, Any] = {"section": "train", "preset": preset, "batch": batch, "precision": precision,
                                "kernels": backend, "compile": compiled, "tf32": tf32 if cuda else None}
        step = None
        if backend == "triton" and not cuda:
            info.update(status="n/a", reason=TRITON_NA)
        elif not cuda and precision == "bf16" and not bf16:
            info.update(status="skipped", reason=NO_BF16)
        elif not cuda and quick and (compiled or preset == "ddpmpp"):
            info.update(status="skipped", reason="not in --quick on a CPU (minutes of torch.compile, or DDPM++)")
        else:
            step = TrainStep(preset, batch, precision, backend, compiled, device, tf32=tf32)
            flops.setdefault(preset, forward_flops(step.net, 1))
            step.info.update(info, gflop_per_img=round(3 * flops[preset] / 1e9, 3))
            info = step.info
        calib, ceiling = references(device, "FLOP", torch.bfloat16 if precision == "bf16" else torch.float32)
        out.append(Workload(wid, step, calib=calib, ceiling=ceiling, work=3 * flops.get(preset, 0.0) * batch,
                            unit="FLOP", images=batch, info=info))
    return out


def add_speedups(rows: list[dict[str, Any]], gpu_name: str | None) -> None:
    """Speed-up over the fp32 eager torch step of the same preset and batch; MFU against a datasheet peak."""
    reference = {(r["preset"], r["batch"]): r for r in rows if r.get("section") == "train" and r.get("status") == "ok"
                 and r["precision"] == "fp32" and r["kernels"] == "torch" and not r["compile"]}
    peak = next((v for k, v in NOMINAL_BF16_TFLOPS.items() if gpu_name and k in gpu_name), None)
    for r in rows:
        if r.get("section") != "train" or r.get("status") != "ok":
            continue
        ref = reference.get((r["preset"], r["batch"]))
        if ref is not None and r is not ref:
            r["vs_fp32_eager_torch"] = round(r["norm"] / ref["norm"], 3)
        if peak and r["precision"] == "bf16" and "TFLOP/s" in r:
            r["mfu_vs_datasheet"] = round(r["TFLOP/s"] / peak, 4)
