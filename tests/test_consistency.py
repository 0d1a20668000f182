"""The consistency loss below sigma_n (ambient.model.loss.consistency_loss) where the answer is known: the exact
denoisers of a Gaussian and of a two-component Gaussian mixture are consistent, perturbed ones are not, and the
gradient is that of an independent float64 implementation; then through train.py: defaults unchanged, exact
resume, two processes as one."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ambient.io.checkpoint import latest_checkpoint
from ambient.model import ancestral_sampler, consistency_loss, sample_sigma_below
from ambient.train import train as run_training
from ambient.train.cli import parse_args

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 3, 5)           # a "pixel" grid of 15 values: not a power of two


def gaussian_denoiser(mu: torch.Tensor, var: float, offset: float = 0.0):
    """D(x; sigma) = mu + var / (var + sigma^2) (x - mu), exact for x0 ~ N(mu, var I); `offset` adds
    offset sigma^2 to every pixel (a perturbation that is the posterior mean of no distribution)."""
    def net(x, sigma, labels=None):
        s2 = sigma.to(x.dtype).view(-1, 1, 1, 1) ** 2
        return mu + var / (var + s2) * (x - mu) + offset * s2
    return net


def gmm_denoiser(means: torch.Tensor, weights: torch.Tensor, var: float, offset: float = 0.0):
    """D(x; sigma) = sum_k pi_k(x) (m_k + var / (var + sigma^2) (x - m_k)), pi_k ∝ w_k N(x; m_k, (var + sigma^2) I):
    exact for x0 ~ sum_k w_k N(m_k, var I); `offset` as in gaussian_denoiser."""
    def net(x, sigma, labels=None):
        s2 = sigma.to(x.dtype).view(-1, 1) ** 2
        flat = x.flatten(1)
        dist2 = ((flat[:, None, :] - means[None]) ** 2).sum(-1)                      # (B, K)
        pi = torch.softmax(torch.log(weights) - dist2 / (2 * (var + s2)), dim=1)
        comp = means[None] + (var / (var + s2))[:, :, None] * (flat[:, None, :] - means[None])
        return ((pi[:, :, None] * comp).sum(1) + offset * s2).view(x.shape)
    return net


def antithetic(gen: torch.Generator, batch: int, repeats: int, steps: int) -> torch.Tensor:
    """Sampler noise (B, R, K, *SHAPE) in pairs z, -z: the pair's mean of an affine function of z is exact."""
    z = torch.randn(batch, repeats // 2, steps, *SHAPE, generator=gen, dtype=torch.float64)
    return torch.stack([z, -z], dim=2).flatten(1, 2)


def noisy_batch(gen: torch.Generator, x0: torch.Tensor, sigma_n: torch.Tensor):
    """y = x0 + sigma_n z and levels s < sigma_n from EDM's log-normal."""
    y = x0 + sigma_n.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    s = sample_sigma_below(sigma_n, torch.randn(len(y), generator=gen, dtype=torch.float64)).double()
    return y, s


def test_levels_below_sigma_n_follow_the_conditioned_log_normal():
    gen = torch.Generator().manual_seed(torch.seed())
    sigma_n = torch.rand(1001, generator=gen, dtype=torch.float64) * 2 + 0.01
    normal = torch.randn(1001, generator=gen, dtype=torch.float64) * 2
    s = sample_sigma_below(sigma_n, normal).double()
    assert ((s > 0) & (s <= sigma_n.float())).all()                      # float32 rounding is monotone
    # The inverse relation: the log-normal's CDF at s, over its CDF at sigma_n, is Phi(normal). s is float32,
    # |d ln s| <= 2^-24, so the error is <= phi(z_s) / Phi(z_n) / 1.2 2^-24 <= (|z_n| + 1) / 1.2 2^-24 < 2e-7 with
    # z = (ln sigma + 1.2) / 1.2, z_n >= -2.84 for sigma_n >= 0.01 (Mills ratio; measured worst 1.2e-7).
    def cdf(v: torch.Tensor) -> torch.Tensor:           # of ln(sigma) ~ N(-1.2, 1.2^2)
        return torch.special.ndtr((torch.log(v) + 1.2) / 1.2)
    torch.testing.assert_close(cdf(s) / cdf(sigma_n), torch.special.ndtr(normal), rtol=0, atol=2.5e-7)


@pytest.mark.parametrize("steps", [1, 3, 7])
def test_exact_gaussian_denoiser_is_consistent(steps):
    """Tower property: with the exact denoiser of N(mu, v I) the ancestral sampler's E[x_s | y] is exact, and D is
    affine, so a pair z, -z averages to E[D(x_s; s) | y] = D(y; sigma_n): the loss is 0 up to float64 rounding."""
    gen = torch.Generator().manual_seed(torch.seed())
    B, R = 11, 6
    mu = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    var = float(torch.rand(1, generator=gen)) + 0.05
    sigma_n = torch.rand(B, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    x0 = mu + var ** 0.5 * torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)
    y, s = noisy_batch(gen, x0, sigma_n)
    noise = antithetic(gen, B, R, steps)
    exact = consistency_loss(gaussian_denoiser(mu, var), y, sigma_n, s, noise)
    assert exact.shape == (B,) and (exact < 1e-24).all(), exact
    # The exact denoiser of another Gaussian is just as self-consistent: the loss ties levels to each other,
    # the ambient loss above sigma_n ties them to the data.
    assert (consistency_loss(gaussian_denoiser(mu, 2 * var), y, sigma_n, s, noise) < 1e-24).all()
    # Right at sigma_n and above, another Gaussian's below: the pairs that start at sigma_n see it. One step:
    #   L = c^2 ||y - mu||^2,  c = g_n - g'_s (a + (1 - a) g_n),  g = v / (v + sigma^2), g' with 2 v; c = 0 iff v' = v.
    def split(x, sigma, labels=None):
        below = (sigma < sigma_n[0] * (1 - 1e-9)).view(-1, 1, 1, 1)      # tau_0 may round a hair below sigma_n
        return torch.where(below, gaussian_denoiser(mu, 2 * var)(x, sigma), gaussian_denoiser(mu, var)(x, sigma))
    one_level, half = sigma_n[:1].expand(B), sigma_n[:1].expand(B) / 2
    wrong_below = consistency_loss(split, y, one_level, half, noise)
    if steps == 1:
        a, g_n = 0.25, var / (var + one_level ** 2)
        c = g_n - 2 * var / (2 * var + half ** 2) * (a + (1 - a) * g_n)
        torch.testing.assert_close(wrong_below, c ** 2 * ((y - mu) ** 2).flatten(1).sum(1), rtol=1e-9, atol=0)
    assert (wrong_below > 1e-12).all()          # smallest over 2000 seeds x 11 samples: 6.5e-7
    # An offset beta sigma^2 is not a posterior mean: for one step the bracket is, per pixel,
    #   beta sigma_n^2 - beta s^2 - g_s (1 - a) beta sigma_n^2 = beta (sigma_n^2 - s^2)(1 - g_s),
    # with a = s^2 / sigma_n^2 and g_s = v / (v + s^2); more steps: > 0.
    beta = 0.3
    perturbed = consistency_loss(gaussian_denoiser(mu, var, offset=beta), y, sigma_n, s, noise)
    if steps == 1:
        g_s = var / (var + s ** 2)
        closed = math.prod(SHAPE) * (beta * (sigma_n ** 2 - s ** 2) * (1 - g_s)) ** 2
        torch.testing.assert_close(perturbed, closed, rtol=1e-9, atol=0)
    assert (perturbed > 1e6 * exact.clamp(min=1e-30)).all()


def test_exact_mixture_denoiser_is_consistent_a_perturbed_one_is_not():
    """Two-component mixture: D is not affine, so the exact denoiser's loss is Monte Carlo noise (large for the
    rare y between the components) plus the ancestral sampler's error, not 0; the offset of the Gaussian test
    adds a bias. Bound: over 1000 seeds the exact one's mean loss was at most 0.0095 of the perturbed one's
    (median 3e-6); 0.1 leaves a margin of 10x."""
    gen = torch.Generator().manual_seed(torch.seed())
    B, R, K = 24, 32, 8
    means = torch.randn(2, math.prod(SHAPE), generator=gen, dtype=torch.float64) * 0.5
    weights = torch.tensor([0.35, 0.65], dtype=torch.float64)
    var = 0.05
    comp = (torch.rand(B, generator=gen) < weights[0]).long()
    x0 = (means[comp] + var ** 0.5 * torch.randn(B, means.shape[1], generator=gen, dtype=torch.float64))
    sigma_n = torch.full((B,), 0.4, dtype=torch.float64)
    y, s = noisy_batch(gen, x0.view(B, *SHAPE), sigma_n)
    noise = antithetic(gen, B, R, K)
    exact = consistency_loss(gmm_denoiser(means, weights, var), y, sigma_n, s, noise).mean()
    perturbed = consistency_loss(gmm_denoiser(means, weights, var, offset=3.0), y, sigma_n, s, noise).mean()
    assert exact < 0.1 * perturbed, (float(exact), float(perturbed))


class TinyDenoiser(torch.nn.Module):
    """A small non-linear EDM-style denoiser D = c_skip x + c_out F(c_in x, ln sigma) with an MLP F."""

    def __init__(self, dim: int):
        super().__init__()
        self.f = torch.nn.Sequential(torch.nn.Linear(dim + 1, 13), torch.nn.SiLU(), torch.nn.Linear(13, dim))

    def forward(self, x, sigma, labels=None):
        sig = sigma.to(x.dtype).view(-1, 1)
        norm = (sig ** 2 + 0.25).sqrt()                  # sigma_data = 0.5
        c_skip, c_out, c_in = 0.25 / norm ** 2, sig * 0.5 / norm, 1 / norm
        out = c_skip * x.flatten(1) + c_out * self.f(torch.cat([c_in * x.flatten(1), sig.log()], dim=1))
        return out.view(x.shape)


def reference_loss(net, y, sigma_n, s, noise) -> torch.Tensor:
    """The consistency loss written out sample by sample, repeat by repeat, in float64 (EDM's grid with rho = 7,
    x <- a x + (1 - a) D(x; tau) + tau' sqrt(1 - a) z, a = tau'^2 / tau^2)."""
    total = []
    for b in range(len(y)):
        hi, lo, steps = float(sigma_n[b]) ** (1 / 7), float(s[b]) ** (1 / 7), noise.shape[2]
        tau = [(hi + k / steps * (lo - hi)) ** 7 for k in range(steps + 1)]
        preds = []
        for r in range(noise.shape[1]):
            x = y[b:b + 1]
            for k in range(steps):
                a = tau[k + 1] ** 2 / tau[k] ** 2
                d = net(x, torch.tensor([tau[k]], dtype=torch.float64))
                x = a * x + (1 - a) * d + tau[k + 1] * math.sqrt(1 - a) * noise[b, r, k]
            preds.append(net(x, s[b:b + 1]))
        target = torch.stack(preds).mean(0)
        total.append(((net(y[b:b + 1], sigma_n[b:b + 1]) - target) ** 2).sum())
    return torch.stack(total)


def test_gradient_matches_a_float64_reference():
    gen = torch.Generator().manual_seed(torch.seed())
    B, R, K, dim = 5, 3, 4, math.prod(SHAPE)
    net = TinyDenoiser(dim)
    ref = TinyDenoiser(dim).double()
    ref.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    y = torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64) * 0.6
    sigma_n = torch.rand(B, generator=gen, dtype=torch.float64) * 0.5 + 0.1
    s = sample_sigma_below(sigma_n, torch.randn(B, generator=gen, dtype=torch.float64)).double()
    noise = torch.randn(B, R, K, *SHAPE, generator=gen, dtype=torch.float64)

    loss = consistency_loss(net, y.float(), sigma_n.float(), s.float(), noise.float())
    loss.sum().backward()
    expected = reference_loss(ref, y, sigma_n, s, noise)
    expected.sum().backward()
    # float32 against float64 through K + 2 network calls. The loss is a squared difference of close predictions,
    # so its root is compared (absolute: the predictions are O(1)); the gradients against their largest entry.
    # Over 200 seeds the worst was 3.1e-6 and 3.4e-6: the bounds leave 10x and 30x.
    torch.testing.assert_close(loss.detach().double().sqrt(), expected.detach().sqrt(), rtol=0, atol=3e-5)
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        scale = q.grad.abs().max()
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=0, atol=1e-4 * float(scale), msg=name)


def test_sampler_gradient_flows_through_the_trajectory():
    """The target depends on the network through every sampler step, not only its last prediction."""
    net = TinyDenoiser(math.prod(SHAPE)).double()
    y = torch.randn(2, *SHAPE, dtype=torch.float64)
    x = ancestral_sampler(net, y, torch.tensor([0.5, 0.3]), torch.tensor([0.1, 0.05]),
                          torch.randn(2, 3, *SHAPE, dtype=torch.float64))
    x.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


FAST = ["--data", "digits", "--model-channels", "8", "--batch", "16", "--tick-kimg", "0.016", "--grid-size", "4",
        "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05", "--snap-kimg", "0.032",
        "--precision", "fp32", "--threads", "1", "--n-clean", "100", "--sigma-n", "0.2,0.4",
        "--lr-decay", "none"]    # runs extended by --kimg on resume: a rate that does not follow --kimg
CONSISTENCY = ["--consistency", "2", "--consistency-batch", "5", "--consistency-steps", "2",
               "--consistency-repeats", "3"]


def train(args: list[str], nproc: int = 1) -> None:
    """`python train.py FAST ARGS`, or under torchrun with `nproc` processes."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.run(launcher + ["train.py", *FAST, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def train_here(args: list[str]) -> Path:
    """The same run in this process (no interpreter start-up)."""
    return run_training(parse_args(FAST + args))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    return {f"{name}.{k}": v for name in ("net", "ema") for k, v in load_file(ckpt / f"{name}.safetensors").items()}


def test_default_runs_are_unchanged(tmp_path):
    """Off, the option draws nothing and changes nothing: bit-identical weights with it absent and at 0 (the
    sampler settings given too), and no consistency record in the log."""
    absent = train_here(["--run-dir", str(tmp_path / "absent"), "--kimg", "0.048"])
    zero = train_here(["--run-dir", str(tmp_path / "zero"), "--kimg", "0.048", "--consistency", "0",
                       *CONSISTENCY[2:]])
    a, b = weights(absent), weights(zero)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all("consistency" not in json.loads(line) for line in (zero / "log.jsonl").read_text().splitlines())


def test_resume_through_train_py_is_exact_and_the_term_is_logged(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_here(["--run-dir", str(straight), "--kimg", "0.064", "--batch-gpu", "8", *CONSISTENCY])
    train(["--run-dir", str(split), "--kimg", "0.032", "--batch-gpu", "8", *CONSISTENCY])
    train(["--resume", str(split), "--kimg", "0.064", "--batch-gpu", "8", *CONSISTENCY])
    assert latest_checkpoint(split).name == latest_checkpoint(straight).name == "checkpoint-000000004"
    a, b = weights(straight), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(r["consistency"] > 0 for r in records)


def test_two_processes_with_micro_batches_match_one(tmp_path):
    """DDP: each rank's consistency samples (positions 0, 3, 6, 9, 12 of 16: both ranks, several micro-batches)
    draw the same numbers as in one process, and their gradients join the step's reduction. After 2 steps the
    runs differ by 1.5e-8 (fp32 reduction order); dropping rank 1's terms makes it 7e-5. (Later steps amplify
    rounding through Adam's normalisation: 1e-5 after 5.)"""
    one = train_here(["--run-dir", str(tmp_path / "one"), "--kimg", "0.032", *CONSISTENCY])
    train(["--run-dir", str(tmp_path / "two"), "--kimg", "0.032", "--batch-gpu", "4", *CONSISTENCY], nproc=2)
    a, b = weights(one), weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("args, message", [
    (["--consistency", "1", "--batch", "8", "--consistency-batch", "9"],
     "--consistency-batch 9 is more than --batch 8"),
    (["--consistency", "-1"], "argument --consistency: must be >= 0"),
    (["--consistency", "1", "--consistency-steps", "0"], "argument --consistency-steps: must be a positive integer"),
])
def test_bad_settings_are_one_usage_error(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        parse_args(args)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert parse_args(["--batch", "2"]).consistency_batch == 4     # off, the default batch of 4 is never checked
