"""Timing harness shared by the benchmarks: calibrated, interleaved, median-based.

CUDA: one workload after the other; `triton.testing.do_bench` (median over many launches, L2
flushed between them) for short ones, call by call for long ones (training steps).

CPU: a repeated-median loop built for a shared, loaded machine. Each *round* times every workload
once, the calibration workloads included, in a rotating order; a workload's figure is the median
over rounds of (calibration time / workload time) taken within the same round, so a change in
machine load between rounds cancels. With one torch thread the clock is the calling thread's CPU
time, which time-slicing by other processes does not inflate (wall time is recorded beside it).
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ambient.train.hostcpu import cpu_flags, cpu_model, host_kind, native_bf16  # noqa: F401 - re-exported for bench/


@dataclass
class Workload:
    """One timed callable and what it does per call."""

    id: str                          # stable row id, e.g. "kernels/noise_injection/tiny/B64x1x32x32/float32/torch"
    fn: Callable[[], object] | None  # None: cannot run here (info says why; the row is kept, status "n/a")
    calib: str = "calib/copy"        # calibration workload it is normalised by
    ceiling: str | None = None       # workload whose rate is the ceiling (default: `calib`)
    work: float = 0.0                # bytes moved or FLOPs per call (0: not counted)
    unit: str = ""                   # "B" or "FLOP"
    images: int = 0                  # images per call (training steps)
    info: dict[str, Any] = field(default_factory=dict)   # descriptive fields copied into the result row


@dataclass
class Timing:
    """Per-round seconds per call of one workload, on both clocks."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    peak: dict[str, float] = field(default_factory=dict)   # {"peak_mem_mb" (CUDA) or "peak_rss_mb" (CPU): MiB}
    error: str | None = None


def cpu_clock_ok(device: torch.device) -> bool:
    """Thread CPU time is a faithful clock only when one CPU thread does all the work."""
    return device.type == "cpu" and torch.get_num_threads() == 1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sample(fn: Callable[[], object], n: int, device: torch.device) -> tuple[float, float]:
    """Seconds per call of fn over n back-to-back calls: (wall, thread CPU)."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - wall) / n, (time.thread_time() - cpu) / n


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window: CUDA allocator peak, or the process's RSS high-water mark on Linux."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak since `reset_peak_memory` in MiB, named for what it is.

    CUDA: `peak_mem_mb`, the tensors allocated. CPU: `peak_rss_mb`, the whole process's resident
    set (VmHWM), everything else resident included: an upper bound, not the workload's own footprint.
    """
    if device.type == "cuda":
        return {"peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return {"peak_rss_mb": round(int(line.split()[1]) / 1024, 1)}
    except OSError:
        pass
    return {}


def _cuda_samples(fn: Callable[[], object], once: float, rounds: int, device: torch.device) -> list[float]:
    """Seconds per call on CUDA: do_bench for short workloads (L2 flushed between launches), else `rounds` calls."""
    if once >= LONG_CALL_S:
        return [_sample(fn, 1, device)[0] for _ in range(rounds)]
    import triton.testing
    return [triton.testing.do_bench(fn, warmup=max(25, 3e3 * once), rep=max(100, 2e4 * once), return_mode="median")
            / 1e3]


LONG_CALL_S = 0.05   # on CUDA, workloads at least this long (training steps) are timed call by call


def measure(calibration: list[Workload], workloads: list[Workload], device: torch.device, *, rounds: int,
            min_sample_s: float = 0.02, warmup: int = 2, deadline: float | None = None,
            progress: Callable[[dict[str, Timing]], None] | None = None,
            log: Callable[[str], None] = print) -> dict[str, Timing]:
    """Time the calibration and the workloads (see the module docstring); one that raises gets `error` set.

    `deadline` (time.monotonic()) skips workloads, never calibrations, not yet started when it has
    passed. On CUDA each is finished before the next starts, and `progress` sees the timings after each.
    """
    required = {w.id for w in calibration}
    workloads = calibration + workloads
    timings = {w.id: Timing() for w in workloads}
    repeat: dict[str, int] = {}
    for w in workloads:
        t = timings[w.id]
        if w.fn is None:
            continue
        if deadline is not None and time.monotonic() > deadline and w.id not in required:
            t.error = "skipped: time budget spent"
            continue
        log(f"  warm-up {w.id}")
        reset_peak_memory(device)
        try:
            for _ in range(warmup):
                once = _sample(w.fn, 1, device)[0]
            repeat[w.id] = max(1, math.ceil(min_sample_s / once))
            if device.type == "cuda":
                t.wall = _cuda_samples(w.fn, once, rounds, device)
        except Exception as exc:  # noqa: BLE001 - a failing workload is recorded, the others still run
            t.error = f"{type(exc).__name__}: {exc}"[:300]
            log(f"  FAILED {w.id}: {t.error}")
        t.peak = peak_memory(device)
        if device.type == "cuda" and progress is not None:
            progress(timings)
    live = [w for w in workloads if w.id in repeat and timings[w.id].error is None]
    if device.type == "cuda" or not live:
        return timings
    for r in range(rounds):
        for w in live[r % len(live):] + live[:r % len(live)]:     # rotate: no workload always runs first
            t = timings[w.id]
            if t.error is not None:
                continue
            try:
                wall, cpu = _sample(w.fn, repeat[w.id], device)
            except Exception as exc:  # noqa: BLE001
                t.error = f"{type(exc).__name__}: {exc}"[:300]
                continue
            t.wall.append(wall)
            t.cpu.append(cpu)
    return timings


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarise(w: Workload, timings: dict[str, Timing], clock: str, work: dict[str, float]) -> dict[str, Any]:
    """The result row of one workload: medians, rate, fraction of ceiling, normalised figure.

    `norm` (higher is faster) is the figure the regression check compares: the median over rounds
    of (calibration time / workload time) when both ran in the same rounds (CPU), else the ratio of
    their medians (CUDA). `work` maps workload ids to their work per call (for the ceilings).
    """
    row: dict[str, Any] = {"id": w.id, **w.info}
    t = timings.get(w.id)
    if w.fn is None:
        return row
    if t is None or (t.error is None and not getattr(t, clock)):
        return {**row, "status": "pending"}
    if t.error is not None:
        return {**row, "status": "skipped" if t.error.startswith("skipped") else "error", "reason": t.error}
    mine, calib = getattr(t, clock), getattr(timings[w.calib], clock)
    if not calib:
        return {**row, "status": "error", "reason": f"calibration {w.calib} failed"}
    median_s = _median(mine)
    ratios = [c / m for c, m in zip(calib, mine)] if len(calib) == len(mine) else [_median(calib) / median_s]
    row.update(status="ok", median_ms=round(median_s * 1e3, 4), clock=clock, calib=w.calib,
               norm=round(_median(ratios), 5), rounds=len(mine))
    if len(ratios) >= 4:
        q = statistics.quantiles(ratios, n=4)
        row["norm_iqr_rel"] = round((q[2] - q[0]) / _median(ratios), 4)
    if clock == "cpu":
        row["wall_ms"] = round(_median(t.wall) * 1e3, 4)
    if w.work:
        rate = w.work / median_s
        row["GB/s" if w.unit == "B" else "TFLOP/s"] = round(rate / (1e9 if w.unit == "B" else 1e12), 4)
        ceiling = w.ceiling or w.calib
        if getattr(timings[ceiling], clock):
            ceiling_rate = work[ceiling] / _median(getattr(timings[ceiling], clock))
            row.update(of_ceiling=round(rate / ceiling_rate, 4), ceiling=ceiling)
    if w.images:
        row["img_per_s"] = round(w.images / median_s, 2)
        if clock == "cpu":
            row["img_per_s_wall"] = round(w.images / _median(t.wall), 2)
    row.update(t.peak)
    return row


def calibrations(device: torch.device, bf16: bool = True) -> list[Workload]:
    """The machine's ceilings, measured in the same run: a large copy and large fp32 / bf16 matmuls.

    They double as the calibration workloads: fixed work whose time tracks the machine's speed.
    On CPU the copy (64 MiB each way) is larger than the last-level cache. Without native bf16
    (`bf16` False) the bf16 matmul is left out: no row needs it as a ceiling, and emulated it is slow.
    """
    cuda = device.type == "cuda"
    numel = (1 << 28) if cuda else (1 << 24)
    side = 8192 if cuda else 1024
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    out = [Workload("calib/copy", lambda: dst.copy_(src), work=2 * src.nbytes, unit="B",
                    info={"what": f"copy of {src.nbytes >> 20} MiB float32"})]
    for dtype in (torch.float32, torch.bfloat16) if bf16 else (torch.float32,):
        a = torch.randn(side, side, device=device).to(dtype)
        b = torch.randn(side, side, device=device).to(dtype)
        name = f"calib/matmul_{'fp32' if dtype == torch.float32 else 'bf16'}"
        out.append(Workload(name, lambda a=a, b=b: torch.mm(a, b), calib=name, work=2 * side**3, unit="FLOP",
                            info={"what": f"{side}x{side} @ {side}x{side} {str(dtype)[6:]}"}))
    return out


def references(device: torch.device, unit: str, dtype: torch.dtype = torch.float32) -> tuple[str, str]:
    """(calibration, ceiling) workload ids for a row counting `unit` ("B" or "FLOP") in `dtype`.

    The ceiling is the copy for bytes and the matmul in the row's precision for FLOPs. The
    calibration on a CPU is the fp32 matmul for every row: repeated runs under load showed it
    tracks single-thread speed (cache-resident kernels included) better than the DRAM copy,
    whose time swings with other processes' memory traffic. On CUDA it is the ceiling's kind.
    """
    bf16 = dtype in (torch.bfloat16, torch.float16)
    ceiling = "calib/copy" if unit == "B" else "calib/matmul_bf16" if bf16 else "calib/matmul_fp32"
    if device.type == "cpu":
        return "calib/matmul_fp32", ceiling
    return ("calib/copy" if unit == "B" else "calib/matmul_bf16"), ceiling


def pin_allocator() -> bool:
    """Fix glibc malloc's mmap (32 MiB) and trim (1 GiB) thresholds for this process; False if not glibc.

    By default glibc returns freed large blocks to the OS and the next step faults them in again:
    a memory-bound CPU op then swung 5-35 ms from call to call with the page faults. Pinned, large
    temporaries are reused, as a caching allocator would (tcmalloc / jemalloc are the usual advice
    for PyTorch on CPUs).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on; `host_kind` picks the baseline they are compared with."""
    try:
        triton_version = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton_version = None
    capability = torch.backends.cpu.get_cpu_capability()
    kind = "cuda" if device.type == "cuda" else host_kind(capability, cpu_flags())
    info: dict[str, Any] = {
        "cpu_model": cpu_model(), "cpu_cores": os.cpu_count(), "cpu_capability": capability,
        "host_kind": kind, "native_bf16": native_bf16(kind),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
        "triton": triton_version, "device": device.type, "gpu": None, "load_avg_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=torch.cuda.get_device_name(device), gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info
