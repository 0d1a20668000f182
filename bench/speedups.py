"""The CPU speed-ups of issue 13, each beside what it replaced, in one process (bench/harness.py's rounds).

    python -m bench.speedups                    # one thread, thread CPU time, about 5 minutes on a loaded 2-core host
    python -m bench.speedups --rounds 3 --out speedups.json

Pairs (the first of each is the old way; `speedup` is its time over the new one's, median over rounds):
- EMA of the tiny preset: training.update_ema (a per-tensor lerp loop) vs foreach lerp + copy (the same numbers;
  measured slower on a CPU, so the trainer keeps the loop).
- Adam of the tiny preset on a CPU: torch's default there (per-tensor loop) vs foreach (the same numbers).
- training step of the default run (tiny, batch 64, fp32): contiguous vs channels-last activations and weights.
- sampler, batch 64, 18 Heun steps: autograd-tracking no_grad vs inference_mode; and one batch of churn noise
  drawn per step (what the sampler did at churn 0) vs none.
- sampler, batch 64, 18 steps: contiguous vs channels-last network and latents (measured, not applied).
- a snapshot's sample grid: 64 images (every snapshot before) vs 16 (intermediate snapshots now).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ambient.model.generation import SeededNormals, generate
from ambient.networks import build_network
from ambient.sampler import edm_sampler
from ambient.train import hostcpu
from ambient.train.step import update_ema
from bench.bench_train import TrainStep
from bench.harness import Workload, calibrations, measure, pin_allocator, summarise


def _net(grad: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("tiny", 32, 1).requires_grad_(grad)


def pairs() -> list[tuple[str, Workload, Workload]]:
    """(what, old, new) workloads."""
    out = []
    net, ema = _net(), _net(False)

    def ema_foreach() -> None:
        with torch.no_grad():
            ema_params = list(ema.parameters())
            torch._foreach_copy_(ema_params,
                                 torch._foreach_lerp([p.detach() for p in net.parameters()], ema_params, 0.99))
    out.append(("ema", Workload("ema/loop", lambda: update_ema(ema, net, 0.99)), Workload("ema/foreach", ema_foreach)))

    opts = {}
    for name, foreach in (("default", None), ("foreach", True)):
        model = _net()
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opts[name] = torch.optim.Adam(model.parameters(), lr=1e-6, foreach=foreach)
    out.append(("adam", Workload("adam/cpu-default", opts["default"].step),
                Workload("adam/foreach", opts["foreach"].step)))

    steps = {}
    for fmt in ("contiguous", "channels_last"):
        step = TrainStep("tiny", 64, "fp32", "torch", False, torch.device("cpu"))
        if fmt == "channels_last":
            step.net.to(memory_format=torch.channels_last)
            step.y = step.y.contiguous(memory_format=torch.channels_last)
        steps[fmt] = step
    out.append(("train step b64", Workload("step/contiguous", steps["contiguous"], images=64),
                Workload("step/channels_last", steps["channels_last"], images=64)))

    sampler_net = _net(False).eval()
    latents = torch.randn(64, 1, 32, 32)

    def sample(mode: Any) -> None:
        with mode():
            edm_sampler(sampler_net, latents, num_steps=18)
    out.append(("sampler b64", Workload("sample/no_grad", lambda: sample(torch.no_grad), images=64),
                Workload("sample/inference_mode", lambda: sample(torch.inference_mode), images=64)))
    cl_net = copy.deepcopy(sampler_net).to(memory_format=torch.channels_last)
    cl_latents = latents.contiguous(memory_format=torch.channels_last)
    out.append(("sampler channels-last", Workload("sample/contiguous", lambda: sample(torch.inference_mode), images=64),
                Workload("sample/channels_last", lambda: edm_sampler(cl_net, cl_latents, num_steps=18), images=64)))
    rnd = SeededNormals(range(64), "cpu")
    x = torch.randn(64, 1, 32, 32, dtype=torch.float64)

    def churn_draws() -> None:      # 18 steps, one batch of per-seed noise each, then sampling as now
        for _ in range(18):
            rnd.randn_like(x)
        sample(torch.inference_mode)
    out.append(("churn-0 noise draws", Workload("sample/with_draws", churn_draws, images=64),
                Workload("sample/without_draws", lambda: sample(torch.inference_mode), images=64)))

    def grid(n: int) -> None:
        for _ in generate(sampler_net, range(n), (1, 32, 32), num_steps=18):
            pass
    out.append(("snapshot grid", Workload("grid/64", lambda: grid(64), images=64),
                Workload("grid/16", lambda: grid(16), images=16)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="write the rows as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    pin_allocator()
    device = torch.device("cpu")
    calib = [w for w in calibrations(device, bf16=False) if w.id == "calib/matmul_fp32"]
    todo = pairs()
    for _, old, new in todo:
        old.calib = new.calib = "calib/matmul_fp32"
    timings = measure(calib, [w for _, old, new in todo for w in (old, new)], device, rounds=a.rounds,
                      log=lambda s: None)
    rows = []
    print(f"host {hostcpu.this_host_kind()} ({hostcpu.cpu_model()}), 1 thread, thread CPU time, {a.rounds} rounds")
    print(f"{'change':<22} {'old ms':>9} {'new ms':>9} {'speedup':>8}")
    for what, old, new in todo:
        r_old, r_new = (summarise(w, timings, "cpu", {}) for w in (old, new))
        speedup = round(r_new["norm"] / r_old["norm"], 3)
        rows.append({"change": what, "old": r_old, "new": r_new, "speedup": speedup})
        print(f"{what:<22} {r_old['median_ms']:>9.2f} {r_new['median_ms']:>9.2f} {speedup:>7.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps({"host_kind": hostcpu.this_host_kind(), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
