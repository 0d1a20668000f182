"""What kind of CPU host this is, and the precision and thread count a run should use on it.

Shared by the trainer (precision "auto", threads) and bench/ (which baseline a result is compared with):
the same host kind names both.
"""
import os
import platform

import torch

# Host kinds where a bf16-autocast training step of the tiny preset was measured faster than fp32, side by side in
# one process (bench/bench_train.py's step; the figures: docs/default-run/README.md and bench/baselines/). Without
# native bf16 (cpu-avx2, cpu-avx512) bf16 autocast is emulated and several times slower than fp32.
BF16_FASTER = frozenset({"cpu-avx512-bf16", "cpu-avx512-amx"})


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo; an empty set where there is none (then no bf16 is native)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_kind(capability: str, flags: set[str]) -> str:
    """The kind of CPU host: "cpu-avx2", "cpu-avx512", "cpu-avx512-bf16", "cpu-avx512-amx", ...

    `capability` is torch.backends.cpu.get_cpu_capability(), which says "AVX512" with or without native
    bf16, so the CPU flags add it: AMX (`amx_bf16`) and AVX512_BF16 differ several-fold in bf16 speed, and
    without either bf16 is emulated, 8-18x slower than fp32. bf16 counts as native only with AVX-512 kernels
    (so ATEN_CPU_CAPABILITY=avx2 on an AMX host reads as cpu-avx2).
    """
    kind = "cpu-" + capability.lower().replace(" ", "-")
    if capability == "AVX512" and "amx_bf16" in flags:
        return kind + "-amx"
    if capability == "AVX512" and "avx512_bf16" in flags:
        return kind + "-bf16"
    return kind


def this_host_kind() -> str:
    """host_kind of the CPU this process runs on, as torch sees it."""
    return host_kind(torch.backends.cpu.get_cpu_capability(), cpu_flags())


def native_bf16(kind: str) -> bool:
    """Whether bf16 runs natively on a host of this kind."""
    return kind == "cuda" or kind.endswith(("-amx", "-bf16"))


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(precision, why) for --precision auto: bf16 on CUDA; on a CPU bf16 only where it is native and was
    measured faster than fp32 (BF16_FASTER), else fp32."""
    if device.type == "cuda":
        return "bf16", "cuda"
    kind = this_host_kind()
    if kind in BF16_FASTER:
        return "bf16", f"{kind}: native bf16, measured faster"
    return "fp32", f"{kind}: " + ("bf16 not measured faster" if native_bf16(kind) else "no native bf16")


def auto_memory_format(device: torch.device, precision: str) -> str:
    """--memory-format auto: channels-last for fp32 on a CPU (1.09x and 1.07x on the tiny and DDPM++-64 steps),
    contiguous for bf16 there (channels-last measured 0.84x and 1.02x) and on CUDA (not measured; the layout it
    had). Figures: bench/README.md, "The step against EDM's"."""
    return "channels_last" if device.type == "cpu" and precision == "fp32" else "contiguous"


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads(world_size: int) -> int:
    """Torch CPU threads for a run: OMP_NUM_THREADS when set (study jobs and torchrun set it), one per process
    when several share the machine, else every available core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return 1 if world_size > 1 else available_cores()
