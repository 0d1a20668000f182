"""Where the default run's time goes: per-phase thread CPU time of `python train.py`, shortened.

    python -m bench.profile_train                          # default run, 50 steps and one snapshot, one thread
    python -m bench.profile_train --kimg 1.6 --out p.json  # shorter; any train.py option after `--`
    python -m bench.profile_train -- --precision bf16

Runs ambient.train.train itself (no copy of the loop) with one torch thread and its `timer` argument, which
times the phases the loop and its step name: setup (until the first batch), data loading, forward (noise levels,
noise injection, network, loss), backward, optimiser (Adam.step), EMA, non-finite check, sample grid (generation
+ PNG) and checkpoint. Each phase is timed by the main thread's CPU time, which other processes on a loaded
machine do not inflate (wall time beside it). "other" is the rest of train(): loss bookkeeping, logging, lr, the
host loop. The table projects the full run (80 kimg by default) from the per-step and per-snapshot figures.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ambient.train import cli as train_cli
from ambient.train import hostcpu, train
from ambient.train.loop import snapshot_due

STEP_PHASES = ("data", "forward", "backward", "optimiser", "ema", "nonfinite_check")
SNAP_PHASES = ("sample_grid", "checkpoint")


class Phases:
    """The timer train() takes: accumulates (thread CPU, wall) seconds and calls per phase."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.first: tuple[float, float] | None = None     # (thread CPU, wall) when the first phase began

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        cpu, wall = time.thread_time(), time.perf_counter()
        self.first = self.first or (cpu, wall)
        try:
            yield
        finally:
            self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - cpu
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.calls[name] = self.calls.get(name, 0) + 1


def snapshots(total_steps: int, steps_per_snap: int) -> int:
    """How many snapshots train() writes in a run of total_steps (ambient.train.loop.snapshot_due)."""
    return sum(snapshot_due(step, total_steps, steps_per_snap) for step in range(1, total_steps + 1))


def profile(train_args: list[str], kimg: float, full_kimg: float | None = None) -> dict[str, Any]:
    """Run train.py's config from `train_args` for `kimg` with one snapshot at the end; per-phase figures."""
    full = train_cli.parse_args(train_args)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = train_cli.parse_args(train_args + ["--kimg", str(kimg), "--snap-kimg", str(kimg), "--tick-kimg",
                                                 str(kimg), "--threads", "1", "--no-progress",
                                                 "--run-dir", str(Path(tmp) / "run")])
        phases = Phases()
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        train(cfg, timer=phases)
        cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
        config = json.loads((Path(tmp) / "run" / "config.json").read_text())
    steps = math.ceil(kimg * 1000 / cfg.batch)
    full_kimg = full_kimg or full.kimg
    full_steps = math.ceil(full_kimg * 1000 / full.batch)
    full_snaps = snapshots(full_steps, max(1, round(full.snap_kimg * 1000 / full.batch)))
    rows = {}
    phases.cpu["setup"], phases.wall["setup"] = phases.first[0] - cpu0, phases.first[1] - wall0
    phases.cpu["other"] = cpu - sum(phases.cpu.values())
    phases.wall["other"] = wall - sum(phases.wall.values())
    # Per step, per checkpoint, per grid image: the profiled run's one snapshot has the full grid.
    grid_images = (full_snaps - 1) * min(full.snap_grid_size, full.grid_size) + full.grid_size
    count = {"sample_grid": ("grid image", cfg.grid_size, grid_images), "checkpoint": ("snapshot", 1, full_snaps),
             "setup": ("run", 1, 1)}
    for name in STEP_PHASES + SNAP_PHASES + ("setup", "other"):
        c = phases.cpu.get(name, 0.0)
        unit, per, runs = count.get(name, ("step", steps, full_steps))
        rows[name] = {"cpu_s": round(c, 3), "wall_s": round(phases.wall.get(name, 0.0), 3),
                      "per": unit, "cpu_ms_per": round(1e3 * c / per, 1),
                      "full_run_cpu_min": round(c / per * runs / 60, 2)}
    total = sum(r["full_run_cpu_min"] for r in rows.values())
    for r in rows.values():
        r["full_run_share"] = round(r["full_run_cpu_min"] / total, 3)
    return {"host_kind": hostcpu.this_host_kind(), "cpu_model": hostcpu.cpu_model(), "threads": 1,
            "precision": config["precision"], "train_args": train_args, "profiled_kimg": kimg, "steps": steps,
            "full_kimg": full_kimg, "full_steps": full_steps, "full_snapshots": full_snaps,
            "train_cpu_s": round(cpu, 2), "train_wall_s": round(wall, 2),
            "full_run_cpu_min_one_thread": round(total, 1),
            "step_img_per_cpu_s": round(
                cfg.batch / sum(rows[n]["cpu_ms_per"] / 1e3 for n in STEP_PHASES + ("other",)), 1),
            "full_grid_images": grid_images, "phases": rows}


def table(p: dict[str, Any]) -> str:
    lines = [f"host {p['host_kind']} ({p['cpu_model']}), 1 thread, {p['precision']}: {p['steps']} steps profiled; "
             f"projected {p['full_kimg']:g} kimg = {p['full_steps']} steps + {p['full_snapshots']} snapshots "
             f"({p['full_grid_images']} grid images)",
             f"{'phase':<16} {'CPU ms':>9} {'per':>11} {'full run min':>13} {'share':>7}"]
    for name, r in p["phases"].items():
        lines.append(f"{name:<16} {r['cpu_ms_per']:>9.1f} {r['per']:>11} {r['full_run_cpu_min']:>13.2f} "
                     f"{r['full_run_share']:>7.1%}")
    lines.append(f"{'total':<16} {'':>9} {'':>11} {p['full_run_cpu_min_one_thread']:>13.1f}   (one thread's CPU time)")
    lines.append(f"training steps alone: {p['step_img_per_cpu_s']:.1f} img per CPU-second")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kimg", type=float, default=3.2, help="images profiled, in thousands (default 50 steps)")
    p.add_argument("--full-kimg", type=float, help="the run to project to (default: train.py's --kimg)")
    p.add_argument("--out", help="write the figures as JSON here")
    a = p.parse_args(argv[:split])
    result = profile(argv[split + 1:], a.kimg, a.full_kimg)
    print(table(result))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
