"""The kernel microbenchmarks and the trainer step as pytest-benchmark tests, on bench's own workloads.

    python -m pytest bench/ --benchmark-only                                   # pytest-benchmark's tables
    python -m pytest bench/ --benchmark-only -k "attention_fwd_bwd and tiny"   # a subset (ids: bench/run.py's rows)
    python -m pytest bench/ --benchmark-only --benchmark-autosave               # store the run under .benchmarks/
    python -m pytest bench/ --benchmark-only --benchmark-compare                # and compare with the last stored
    python -m pytest bench/ --benchmark-only --benchmark-histogram --benchmark-json result.json

Each test times one Workload of bench/bench_kernels.py or bench/bench_train.py, the callables bench/run.py times
(options `--bench-device`, `--bench-presets`, `--bench-full`: bench/conftest.py). A workload that cannot run here
(Triton or xformers on a CPU, bf16 without native support, what bench/run.py --quick leaves out on a CPU) is
skipped with its reason. Kernel rows of one op and shape form one group, so their backends sit side by side.
The clock is pytest-benchmark's (wall time, torch's default threads); the calibrated regression check CI gates
on stays `python -m bench.run --quick` + `python -m bench.check` (bench/README.md).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch

from bench.bench_kernels import kernel_workloads
from bench.bench_train import train_workloads
from bench.harness import Workload, machine_info, pin_allocator


def settings(config: pytest.Config) -> tuple[torch.device, tuple[str, ...], bool]:
    """(device, presets, quick): quick, bench/run.py's --quick, on a CPU unless --bench-full."""
    choice = config.getoption("--bench-device")
    device = torch.device(choice if choice != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    quick = device.type == "cpu" and not config.getoption("--bench-full")
    return device, tuple(config.getoption("--bench-presets").split(",")), quick


@functools.cache
def kernels_by_id(device: torch.device, presets: tuple[str, ...]) -> dict[str, Workload]:
    """bench/bench_kernels.py's workloads (tensors only: cheap to build all at once)."""
    if device.type == "cpu":
        pin_allocator()          # as bench/run.py does: large temporaries are reused, not faulted in per call
    return {w.id: w for w in kernel_workloads(device, list(presets))}


def train_ids(device: torch.device, presets: tuple[str, ...], quick: bool) -> list[str]:
    """The ids of bench/bench_train.py's workloads, without building any (each test builds its own)."""
    ids: list[str] = []

    def note(wid: str) -> bool:
        ids.append(wid)
        return False
    train_workloads(device, list(presets), quick=quick, keep=note)
    return ids


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    device, presets, quick = settings(metafunc.config)
    if "kernel_id" in metafunc.fixturenames:
        metafunc.parametrize("kernel_id", list(kernels_by_id(device, presets)))
    if "train_id" in metafunc.fixturenames:
        metafunc.parametrize("train_id", train_ids(device, presets, quick))


@pytest.fixture
def timed(benchmark: Any, pytestconfig: pytest.Config) -> Callable[[Workload], None]:
    """Time a Workload with pytest-benchmark: skipped with its reason where it cannot run; one untimed warm-up call
    first (torch.compile, autotuning, allocator); CUDA synchronised after each call."""
    device = settings(pytestconfig)[0]

    def run(workload: Workload) -> None:
        if workload.fn is None:
            pytest.skip(f"{workload.info.get('status')}: {workload.info.get('reason')}")
        fn = workload.fn

        def call() -> None:
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        call()
        benchmark.group = workload.id.rsplit("/", 1)[0] if workload.info.get("section") == "kernels" else "train"
        benchmark.extra_info.update({k: v for k, v in workload.info.items() if k != "status"},
                                    work=workload.work, unit=workload.unit, images=workload.images)
        benchmark(call)
    return run


def test_kernel(kernel_id: str, timed: Callable[[Workload], None], pytestconfig: pytest.Config) -> None:
    device, presets, _ = settings(pytestconfig)
    timed(kernels_by_id(device, presets)[kernel_id])


def test_train_step(train_id: str, timed: Callable[[Workload], None], pytestconfig: pytest.Config) -> None:
    device, presets, quick = settings(pytestconfig)
    bf16 = machine_info(device)["native_bf16"]
    [workload] = train_workloads(device, list(presets), quick=quick, bf16=bf16, keep=lambda wid: wid == train_id)
    timed(workload)
