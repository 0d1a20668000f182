"""The speed-ups of issue 13 keep what they must: smaller grids only before the last snapshot, no churn noise
drawn at S_churn = 0, Adam's numbers from its fused form on a CPU, the same training in either memory layout."""
import torch
from PIL import Image

import train
from ambient.networks import build_network
from ambient.sampler import edm_sampler
from ambient.train import TrainConfig, build_state, train_step
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


def test_fused_adam_on_cpu_follows_adams_formula_in_float64():
    torch.manual_seed(int(torch.randint(2**31, ())))
    net = build_network("tiny", 8, 1, model_channels=8)
    opt = make_optimizer(net, 2e-3)
    assert opt.defaults["fused"] and not opt.defaults["foreach"]
    params = [p.detach().double().clone() for p in net.parameters()]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2, lr, eps = 0.9, 0.999, 2e-3, 1e-8
    for t in range(1, 4):
        x = torch.randn(5, 1, 8, 8)
        opt.zero_grad()
        net(x, torch.rand(5) + 0.1).square().mean().backward()
        for i, p in enumerate(net.parameters()):           # Adam (Kingma and Ba), bias-corrected
            g = p.grad.double()
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] = params[i] - lr * (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps)
        opt.step()
    for p, ref in zip(net.parameters(), params):
        assert torch.allclose(p.double(), ref, rtol=1e-5, atol=1e-6)


def test_channels_last_changes_the_rounding_only():
    gen = torch.Generator().manual_seed(int(torch.randint(2**31, ())))
    sigma_n = torch.where(torch.arange(24) % 10 == 0, 0.0, 0.2)
    batch = [{"image": torch.rand(24, 1, 12, 12, generator=gen) * 2 - 1, "sigma_n": sigma_n,
              "label": torch.full((24,), -1)}]
    losses, grads = {}, {}
    for layout in ("contiguous", "channels_last", "channels_last"):
        cfg = TrainConfig(preset="tiny", model_channels=8, batch=24, precision="fp32", kernels="torch",
                          memory_format=layout, seed=3)
        state = build_state(cfg, cfg.network_kwargs(12, 1, 0), torch.device("cpu"), (1, 12, 12))
        state.distribute(0, 1)
        conv = next(p for p in state.net.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
        run = [train_step(state, batch, 0).loss]
        first = [p.grad.clone() for p in state.net.parameters()]         # the first step's gradients
        run += [train_step(state, batch, step).loss for step in (1, 2)]
        if layout in losses:                      # the same configuration: the same numbers, bit for bit
            assert all(torch.equal(a, b) for a, b in zip(losses[layout], run))
            assert all(torch.equal(a, b) for a, b in zip(grads[layout], first))
        losses[layout], grads[layout] = run, first
    # From the same weights, the layouts differ in the convolutions' rounding only. (Later steps are not
    # compared: Adam turns a gradient that is rounding noise into a step of up to lr either way.)
    assert torch.allclose(losses["contiguous"][0], losses["channels_last"][0], rtol=1e-4, atol=1e-5)
    scale = max(g.abs().max() for g in grads["contiguous"])
    for a, b in zip(grads["contiguous"], grads["channels_last"]):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale)
