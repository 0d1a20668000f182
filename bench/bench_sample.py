"""Sampling throughput: img/s of `sample.py` and of `ambient.eval`'s generation, at their default settings.

    python -m bench.bench_sample                         # tiny 32x32 MNIST net, 18 Heun steps, about 3 minutes
    python -m bench.bench_sample --threads 2 --out s.json

Times `ambient.model.generate` exactly as the two CLIs call it: sample.py with --batch 64, ambient.eval with
--batch 100 (then the 8-bit quantisation every metric sees), 18 Heun steps, EMA network in eval mode, on
the CPU. Image i is a function of seed i whatever the batch (tests/test_training.py checks that). One thread
(the default) is timed by the thread's CPU clock in bench/harness.py's rounds, robust to load; with more
threads the figures are wall-clock img/s and move with the machine's load.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ambient.common.images import quantise
from ambient.model import generate
from ambient.networks import build_network
from ambient.train import hostcpu
from bench.harness import Workload, calibrations, cpu_clock_ok, measure, pin_allocator, summarise

# (row id, images, batch, quantised as eval does): the CLIs' defaults.
CONFIGS = (("sample/sample.py/tiny/b64/18steps", 64, 64, False), ("sample/eval/tiny/b100/18steps", 100, 100, True))


def workloads(net: torch.nn.Module) -> list[Workload]:
    """One workload per CLI: generate `images` seeds in batches of `batch` (then quantise, for eval)."""
    out = []
    for wid, images, batch, quantised in CONFIGS:
        def run(images: int = images, batch: int = batch, quantised: bool = quantised) -> None:
            for _, x in generate(net, range(images), (1, 32, 32), batch=batch, num_steps=18):
                if quantised:
                    quantise(x)
        out.append(Workload(wid, run, calib="calib/matmul_fp32", images=images,
                            info={"batch": batch, "steps": 18, "preset": "tiny"}))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: thread CPU clock, robust to load)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    pin_allocator()
    device = torch.device("cpu")
    torch.manual_seed(0)
    net = build_network("tiny", 32, 1).eval().requires_grad_(False)
    calib = [w for w in calibrations(device, bf16=False) if w.id == "calib/matmul_fp32"]
    todo = workloads(net)
    clock = "cpu" if cpu_clock_ok(device) else "wall"
    timings = measure(calib, todo, device, rounds=a.rounds, warmup=1, log=lambda s: None)
    rows = [summarise(w, timings, clock, {}) for w in todo]
    kind = hostcpu.this_host_kind()
    print(f"host {kind} ({hostcpu.cpu_model()}), {a.threads} thread(s), {clock} clock, {a.rounds} rounds")
    for r in rows:
        print(f"{r['id']:<36} {r['img_per_s']:>7.2f} img/s"
              + (f"  (wall {r['img_per_s_wall']:.2f})" if clock == "cpu" else ""))
    if a.out:
        Path(a.out).write_text(json.dumps({"host_kind": kind, "threads": a.threads, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
