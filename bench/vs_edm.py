"""Our training step against an EDM-style step of the same network, side by side in one process (issue 24).

    python -m bench.vs_edm                        # DDPM++-shaped 64-channel net at batch 32, and the default run
    python -m bench.vs_edm --rounds 5 --compile --out vs_edm.json
    python -m bench.vs_edm --grid                 # also fp32 / bf16 x contiguous / channels-last, one at a time

The EDM-style step is how NVIDIA's EDM trains (training/training_loop.py there): fp32, contiguous NCHW tensors,
eager, and torch.optim.Adam with its defaults, which on a CPU is the per-tensor loop. Our modules' eager fp32 step
was measured at 1.0x EDM's own modules' (issue 24), so the EDM-style step stands for EDM's here. Ours is
`train_step` at the trainer's defaults: `--precision auto` (bf16 where the CPU has it natively), `--memory-format
auto` (channels-last for fp32 on a CPU), fused Adam; with `--compile` also under torch.compile, whose compile time
shows in the first step's seconds (`first call s`, beside every row's).

Every configuration runs the same `ambient.train.train_step` on the same synthetic batch; rounds are interleaved
(bench.harness.measure) and timed by the wall clock with torch's threads (all cores by default): run it on an
otherwise idle machine. `speedup` is EDM-style seconds per step over ours, median over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from ambient.train import hostcpu
from bench.bench_train import TrainStep
from bench.harness import Workload, measure, pin_allocator

# (name, preset, model channels, batch): the network the issue compares, and the default run's.
NETS = (("ddpmpp64-b32", "ddpmpp", 64, 32), ("tiny-b64", "tiny", None, 64))


def edm_style(preset: str, channels: int | None, batch: int) -> TrainStep:
    """fp32, contiguous, eager, torch's default Adam (per-tensor on a CPU): EDM's training loop."""
    step = TrainStep(preset, batch, "fp32", "torch", False, torch.device("cpu"), model_channels=channels,
                     memory_format="contiguous")
    state = step.state
    state.optimizer = torch.optim.Adam(state.net.parameters(), lr=state.cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    return step


def ours(preset: str, channels: int | None, batch: int, compile: bool = False, precision: str | None = None,
         memory_format: str = "auto") -> TrainStep:
    """The trainer's step, fused Adam; by default at its defaults (precision and memory format auto)."""
    precision = precision or hostcpu.auto_precision(torch.device("cpu"))[0]
    return TrainStep(preset, batch, precision, "torch", compile, torch.device("cpu"), model_channels=channels,
                     memory_format=memory_format)


def first_call_seconds(step: TrainStep) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time our step under torch.compile")
    p.add_argument("--grid", action="store_true", help="also each precision (bf16 where native) x memory format, "
                                                       "fused Adam, eager: what the auto choices are made from")
    p.add_argument("--nets", default=",".join(n for n, *_ in NETS), help="which of " + ", ".join(n for n, *_ in NETS))
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    pin_allocator()
    device = torch.device("cpu")
    workloads, first = [], {}
    for name, preset, channels, batch in NETS:
        if name not in a.nets.split(","):
            continue
        candidates = {"edm": edm_style(preset, channels, batch), "ours": ours(preset, channels, batch)}
        if a.compile:
            candidates["ours-compile"] = ours(preset, channels, batch, compile=True)
        if a.grid:
            for precision in ("fp32", "bf16") if hostcpu.native_bf16(hostcpu.this_host_kind()) else ("fp32",):
                for layout in ("contiguous", "channels_last"):
                    candidates[f"{precision}-{layout}"] = ours(preset, channels, batch, precision=precision,
                                                               memory_format=layout)
        for kind, step in candidates.items():
            first[f"{name}/{kind}"] = first_call_seconds(step)
            workloads.append(Workload(f"{name}/{kind}", step, images=batch,
                                      info={"net": name, "kind": kind, "precision": step.state.cfg.precision}))
    timings = measure([], workloads, device, rounds=a.rounds, log=lambda s: None)
    print(f"host {hostcpu.this_host_kind()} ({hostcpu.cpu_model()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, wall clock, {a.rounds} interleaved rounds")
    print(f"{'net/step':<28} {'precision':>9} {'ms/step':>9} {'img/s':>8} {'speedup':>8} {'first call s':>13}")
    rows = []
    for w in workloads:
        t, edm = timings[w.id], timings[f"{w.info['net']}/edm"]
        if t.error is not None or not t.wall:
            rows.append({"id": w.id, **w.info, "status": "error", "reason": t.error})
            print(f"{w.id:<28} failed: {t.error}")
            continue
        ms = statistics.median(t.wall) * 1e3
        speedup = statistics.median(e / o for e, o in zip(edm.wall, t.wall))    # paired by round
        rows.append({"id": w.id, **w.info, "status": "ok", "median_ms": round(ms, 2), "img_per_s":
                     round(1e3 * w.images / ms, 2), "speedup_vs_edm": round(speedup, 3),
                     "first_call_s": round(first[w.id], 2), "rounds_ms": [round(x * 1e3, 2) for x in t.wall]})
        print(f"{w.id:<28} {w.info['precision']:>9} {ms:>9.1f} {1e3 * w.images / ms:>8.1f} {speedup:>7.2f}x "
              f"{first[w.id]:>13.1f}")
    if a.out:
        info = {"host_kind": hostcpu.this_host_kind(), "cpu": hostcpu.cpu_model(), "threads": torch.get_num_threads(),
                "torch": torch.__version__, "rounds": a.rounds}
        Path(a.out).write_text(json.dumps({**info, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
