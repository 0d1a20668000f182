"""Run the benchmarks; write one JSON result and print a summary table (see bench/README.md).

    python -m bench.run --quick --out /tmp/bench.json       # the CI variant: CPU, under two minutes
    python -m bench.run --out result.json                   # everything this machine can run
    python -m bench.run --device cuda --sections train --budget-s 200 --out train.json

Sections: `kernels` (bench/bench_kernels.py) and `train` (bench/bench_train.py). Each section is
timed together with the calibration workloads (bench/harness.py); compare results with
bench/check.py.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from ambient.common.atomic import write_json
from bench import bench_kernels, bench_train
from bench.harness import Timing, Workload, calibrations, cpu_clock_ok, machine_info, measure, pin_allocator, summarise
from bench.report import SCHEMA, summary_table

# Rounds of the CPU loop per section: (quick, full).
ROUNDS = {"kernels": (9, 15), "train": (6, 10)}
TOLERANCE = {
    "max_slowdown": {"train": 0.25, "kernels": 0.45},
    "why": "measured on shared 2-core CPUs. AMD EPYC: six --quick runs, idle or beside a 2-thread matmul or "
           "memory-copy job, with other engineers' trainings running (load 6-8), moved the train rows' norm by at "
           "most 11% between runs (their wall-clock img/s by 5.8x) and the kernel rows' by up to 1.53x (sub-ms and "
           "memory-bound ops). Intel Xeon with AMX: seven --quick and eight train-only runs beside two trainings "
           "and an evaluation (load 2.4-4.8) put the train rows between -23% and +32% of the stored median, the "
           "kernel rows between -31% and +29%. 25% and 45% stay clear of that (narrowly for the AMX bf16 step) "
           "and catch a training step more than 4/3 (1.33x) slower or a kernel more than 1.82x slower",
}


def _slowed(fn: Callable[[], object], k: int) -> Callable[[], object]:
    """fn done k times per call: a real, measured slowdown (for testing the regression check)."""
    def slowed() -> None:
        for _ in range(k):
            fn()
    return slowed


def _inject(workloads: list[Workload], slowdown: dict[str, int]) -> None:
    """Make rows whose id contains a key of `slowdown` do their work that many times per call."""
    for w in workloads:
        for pattern, k in slowdown.items():
            if pattern in w.id and w.fn is not None:
                w.fn = _slowed(w.fn, k)
                w.info["injected_slowdown"] = k


def _save(result: dict[str, Any], path: str | None) -> None:
    """Write atomically, so a run cut short by a timeout leaves what it had measured."""
    if not path:
        return
    write_json(result, path, indent=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the CI variant (CPU: tiny-preset steps, fewer rounds)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny kernel shapes; checks the script (Triton interpreted when TRITON_INTERPRET=1)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--sections", default="kernels,train", help="comma-separated: kernels, train")
    parser.add_argument("--presets", default="ddpmpp,tiny", help="comma-separated: ddpmpp, tiny")
    parser.add_argument("--only", action="append", help="keep only rows whose id contains this (repeatable)")
    parser.add_argument("--rounds", type=int, help="rounds per section (CPU) or timed calls per training "
                                                             "step (CUDA); default by section and --quick")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: thread CPU clock, robust to load)")
    parser.add_argument("--budget-s", type=float, help="skip workloads not started after this many seconds")
    parser.add_argument("--inject-slowdown", action="append", default=[], metavar="SUBSTR:K",
                        help="test hook: rows whose id contains SUBSTR do their work K times per call")
    parser.add_argument("--out", "--json", dest="out", help="write the result JSON here")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure the requested sections; the result as written to --out."""
    args = parse_args(argv)
    start = time.monotonic()
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    allocator_pinned = device.type == "cpu" and pin_allocator()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True   # the trainer's default
    slowdown = {p.rpartition(":")[0]: int(p.rpartition(":")[2]) for p in args.inject_slowdown}
    presets = args.presets.split(",")
    clock = "cpu" if cpu_clock_ok(device) else "wall"
    result: dict[str, Any] = {
        "schema": SCHEMA, "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(device),
        "settings": {"quick": args.quick, "smoke": args.smoke, "sections": args.sections, "presets": presets,
                     "only": args.only, "clock": clock, "allocator_pinned": allocator_pinned, "out": args.out,
                     "argv": sys.argv[1:] if argv is None else argv},
        "tolerance": TOLERANCE, "calibration": {}, "rows": [],
    }
    deadline = start + args.budget_s if args.budget_s else None
    bf16 = result["machine"]["native_bf16"]   # without it, no bf16 rows and no bf16 matmul (harness.host_kind)

    def keep(wid: str) -> bool:
        return not args.only or any(s in wid for s in args.only)

    builders: dict[str, Callable[[], list[Workload]]] = {
        "kernels": lambda: bench_kernels.kernel_workloads(device, presets, smoke=args.smoke),
        "train": lambda: bench_train.train_workloads(device, presets, quick=args.quick, bf16=bf16, keep=keep),
    }
    for section in args.sections.split(","):
        if section not in builders:
            raise SystemExit(f"unknown section {section!r}; choose from {sorted(builders)}")
        workloads = [w for w in builders[section]() if keep(w.id)]
        _inject(workloads, slowdown)
        calib = calibrations(device, bf16) if any(w.fn is not None for w in workloads) else []
        work = {w.id: w.work for w in calib + workloads}
        done = list(result["rows"])

        def record(timings: dict[str, Timing]) -> None:
            """Rows of this section so far (on CUDA after each workload, so a timeout keeps them)."""
            # B023 below is a false positive: record is only called within this iteration
            result["calibration"][section] = [summarise(w, timings, clock, work) for w in calib]  # noqa: B023
            result["rows"] = done + [summarise(w, timings, clock, work) for w in workloads]  # noqa: B023
            bench_kernels.add_speedups(result["rows"])
            bench_train.add_speedups(result["rows"], result["machine"]["gpu"])
            result["elapsed_s"] = round(time.monotonic() - start, 1)
            _save(result, args.out)

        rounds = args.rounds or ROUNDS[section][0 if args.quick or args.smoke else 1]
        log(f"[{section}] {sum(w.fn is not None for w in workloads)} workloads, {rounds} rounds, clock {clock}")
        record(measure(calib, workloads, device, rounds=rounds, deadline=deadline, progress=record, log=log)
               if calib else {})
    result["machine"]["load_avg_end"] = list(os.getloadavg())
    result["elapsed_s"] = round(time.monotonic() - start, 1)
    _save(result, args.out)
    return result


def main(argv: list[str] | None = None) -> None:
    result = run(argv)
    print(summary_table([result]))
    out = result["settings"]["out"]
    print(f"{result['machine']['gpu'] or result['machine']['cpu_model']}, clock {result['settings']['clock']}, "
          f"{result['elapsed_s']} s" + (f"; written to {out}" if out else ""))


if __name__ == "__main__":
    main()
