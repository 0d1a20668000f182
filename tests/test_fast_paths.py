"""The speed-ups of issue 13 keep what they must: smaller grids only before the last snapshot, no churn noise
drawn at S_churn = 0, the same Adam numbers with foreach on a CPU."""
import torch
from PIL import Image

import train
from ambient.networks import build_network
from ambient.sampler import edm_sampler
from ambient.train import train as run_training
from ambient.train.step import make_optimizer


def test_intermediate_grids_are_small_and_the_last_is_full(tmp_path):
    run = tmp_path / "run"
    run_training(train.parse_args(["--data", "digits", "--model-channels", "8", "--batch", "16", "--kimg", "0.096",
                                   "--snap-kimg", "0.048", "--grid-size", "9", "--snap-grid-size", "4",
                                   "--no-progress", "--threads", "1", "--run-dir", str(run)]))
    sizes = {p.name: Image.open(p).size for p in run.glob("samples-*.png")}
    assert sizes == {"samples-000000003.png": (16, 16), "samples-000000006.png": (24, 24)}   # 2x2, then 3x3 of 8x8


def test_no_churn_noise_is_drawn_at_churn_zero():
    calls = []

    def randn_like(x):
        calls.append(1)
        return torch.randn_like(x)
    net = lambda x, sigma, labels: x / (1 + sigma.reshape(-1, 1) ** 2)      # noqa: E731 - a toy denoiser
    latents = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    out = edm_sampler(net, latents, num_steps=6, randn_like=randn_like)
    assert not calls and torch.isfinite(out).all()
    edm_sampler(net, latents, num_steps=6, S_churn=5, randn_like=randn_like)
    assert len(calls) == 6


def test_foreach_adam_on_cpu_gives_the_per_tensor_numbers():
    weights = []
    for foreach in (False, True):
        torch.manual_seed(0)
        net = build_network("tiny", 8, 1, model_channels=8)
        opt = make_optimizer(net, 2e-3, torch.device("cpu")) if foreach else \
            torch.optim.Adam(net.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8, foreach=False)
        assert opt.defaults["foreach"] is foreach
        for step in range(3):
            x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(step))
            opt.zero_grad()
            net(x, torch.ones(4)).square().mean().backward()
            opt.step()
        weights.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
