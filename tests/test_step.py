"""The training step is one function: train() is train_step in a loop (plus data, logs and snapshots), and the
benchmark and the profiler time that same step through its `timer`, never by patching torch."""
import collections
import contextlib
import dataclasses
import math

import torch
from safetensors.torch import load_file

from ambient.data import make_dataset
from ambient.train import build_state, train_step
from ambient.train import cli as train
from ambient.train import train as run_training
from ambient.train.distributed import DistInfo
from ambient.train.loop import data_loader
from ambient.train.step import ema_beta, lr_at
from bench import profile_train
from bench.bench_train import TrainStep

FAST = ["--data", "digits", "--model-channels", "8", "--batch", "12", "--batch-gpu", "4", "--n-clean", "150",
        "--sigma-n", "0.3", "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05",
        "--grid-size", "2", "--threads", "1", "--precision", "fp32"]
STEP_PHASES = ("forward", "backward", "nonfinite_check", "optimiser", "ema")


class Calls:
    """A timer that counts the phases it is asked to time."""

    def __init__(self) -> None:
        self.count: collections.Counter = collections.Counter()

    def __call__(self, phase: str) -> contextlib.AbstractContextManager:
        self.count[phase] += 1
        return contextlib.nullcontext()


def test_train_is_train_step_in_a_loop(tmp_path):
    cfg = train.parse_args(FAST + ["--run-dir", str(tmp_path / "run"), "--kimg", "0.06", "--snap-kimg", "0.036"])
    calls = Calls()
    run_training(cfg, timer=calls)
    steps = math.ceil(cfg.kimg * 1000 / cfg.batch)                      # 5 steps of 3 micro-batches, 2 snapshots
    assert calls.count == {"data": steps, "forward": 3 * steps, "backward": 3 * steps, "nonfinite_check": steps,
                           "optimiser": steps, "ema": steps, "sample_grid": 2, "checkpoint": 2}

    # The same steps by hand, from the public pieces: the same weights, bit for bit.
    ds = make_dataset(**cfg.data_options())
    state = build_state(cfg, cfg.network_kwargs(ds.resolution, ds.num_channels, ds.label_dim), torch.device("cpu"),
                        (ds.num_channels, ds.resolution, ds.resolution))
    state.distribute(rank=0, world_size=1)
    loader = data_loader(ds, cfg, DistInfo(0, 1, 0, torch.device("cpu")), 4, start=0)    # the run's own order
    for step in range(steps):
        batch = [next(loader) for _ in range(3)]
        stats = train_step(state, batch, step)
        assert stats.finite and stats.loss.shape == stats.sigma.shape == (12,)
        assert (stats.sigma >= torch.cat([b["sigma_n"] for b in batch]).float()).all()     # s >= sigma_n
    saved = tmp_path / "run" / f"checkpoint-{steps:09d}"
    for name, module in (("net", state.net), ("ema", state.ema)):
        weights = load_file(saved / f"{name}.safetensors")
        assert all(torch.equal(weights[k], v) for k, v in module.state_dict().items()), name


def test_cosine_decay_follows_its_formula_in_the_optimiser():
    cfg = train.parse_args(FAST + ["--kimg", "0.06", "--lr", "0.01", "--lr-decay", "cosine"])
    ramp, total = 50, 60                                   # images: --lr-rampup-kimg 0.05, --kimg 0.06
    for nimg in (0, 12, 30, 48, 50, 59, 60, 90):
        want = 0.01 * min(nimg / ramp, 1) * (1 + math.cos(math.pi * min(nimg / total, 1))) / 2
        assert math.isclose(lr_at(cfg, nimg), want, rel_tol=1e-12, abs_tol=1e-15), nimg
    assert lr_at(cfg, total) == 0 and lr_at(cfg, 30) < lr_at(dataclasses.replace(cfg, lr_decay="none"), 30) == 0.006
    # The rate the optimiser steps with at each step is lr_at(step * batch), the decay included.
    ds = make_dataset(**cfg.data_options())
    state = build_state(cfg, cfg.network_kwargs(ds.resolution, ds.num_channels, ds.label_dim), torch.device("cpu"),
                        (ds.num_channels, ds.resolution, ds.resolution))
    state.distribute(rank=0, world_size=1)
    loader = data_loader(ds, cfg, DistInfo(0, 1, 0, torch.device("cpu")), 12, start=0)
    for step in range(5):
        stats = train_step(state, [next(loader)], step)
        assert stats.lr == state.optimizer.param_groups[0]["lr"] == lr_at(cfg, 12 * step)
    assert 0 < stats.lr < 0.01 * (48 / 50) / 2                        # step 4: 48 images seen, past half the run


def test_the_benchmark_times_the_trainers_step():
    step = TrainStep("tiny", 6, "fp32", "torch", False, torch.device("cpu"))
    step()                                                                   # step 0: lr 0 on the ramp-up
    ema_before = [p.detach().clone() for p in step.state.ema.parameters()]
    step()
    assert step.step == 2 and step.state.optimizer.state                    # Adam has stepped
    # The EMA is the trainer's, ramp-up included: beta = ema_beta(cfg, 6 images seen), not a fixed half-life.
    beta = ema_beta(step.state.cfg, 6)
    assert beta < 0.01 < 0.5 ** (6 / (step.state.cfg.ema_halflife_kimg * 1000))
    for e, p, old in zip(step.state.ema.parameters(), step.net.parameters(), ema_before):
        assert torch.equal(e, p.detach().lerp(old, beta))


def test_the_profile_times_each_phase_of_a_real_run():
    result = profile_train.profile(FAST[:-4], kimg=0.048, full_kimg=0.48)
    phases = result["phases"]
    assert set(phases) == {*profile_train.STEP_PHASES, *profile_train.SNAP_PHASES, "setup", "other"}
    assert all(phases[p]["cpu_s"] > 0 for p in (*STEP_PHASES, "data", "sample_grid", "checkpoint"))
    assert abs(sum(r["full_run_share"] for r in phases.values()) - 1) < 0.01
    assert result["steps"] == 4 and result["full_steps"] == 40
