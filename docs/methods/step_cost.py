"""The training step's cost with each method against plain ambient training, on the study's model (tiny preset at 16
channels, 16x16, batch 64, fp32, one thread; one fixed batch, 10% clean + 90% at sigma_n 0.2), interleaved step by
step so that the machine's load falls on both alike; prints the medians and their ratio.

    python docs/methods/step_cost.py [--steps 15]
"""
import argparse
import statistics
import time

import torch

from ambient.train import TrainConfig, build_state, train_step

METHODS = {"plain": {}, "consistency 1": {"consistency": 1.0}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    sigma_n = torch.where(torch.arange(64) % 10 == 0, 0.0, 0.2)
    y = torch.rand(64, 1, 16, 16, generator=g) * 2 - 1 + sigma_n[:, None, None, None] * torch.randn(64, 1, 16, 16,
                                                                                                   generator=g)
    batch = [{"image": y, "sigma_n": sigma_n, "label": torch.full((64,), -1)}]
    states = {}
    for name, kw in METHODS.items():
        cfg = TrainConfig(preset="tiny", model_channels=16, batch=64, precision="fp32", kernels="torch", **kw)
        states[name] = build_state(cfg, cfg.network_kwargs(16, 1, 0), torch.device("cpu"), (1, 16, 16))
        states[name].distribute(0, 1)
        train_step(states[name], batch, 0)                       # warm-up
    times = {name: [] for name in states}
    for step in range(1, a.steps + 1):
        for name, state in states.items():
            start = time.perf_counter()
            train_step(state, batch, step)
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, m in med.items():
        print(f"{name}: {1000 * m:.0f} ms per step, {m / med['plain']:.2f}x plain")


if __name__ == "__main__":
    main()
