"""EDM's Heun sampler driven by the exact denoiser of a Gaussian reproduces that Gaussian."""
import pytest
import torch

from ambient.sampler import edm_sampler, edm_time_steps


def gaussian_denoiser(mean: torch.Tensor, cov: torch.Tensor):
    """Exact D(x; s) = E[x0 | x0 + s eps = x] for x0 ~ N(mean, cov) in float64."""
    eye = torch.eye(len(mean), dtype=torch.float64)

    def net(x, sigma, labels=None):
        out = []
        for s in sigma.double().unique():
            idx = sigma.double() == s
            gain = cov @ torch.linalg.inv(cov + s ** 2 * eye)
            out.append((idx, mean + (x[idx].double() - mean) @ gain.T))
        res = torch.empty(x.shape, dtype=torch.float64)
        for idx, val in out:
            res[idx] = val
        return res.float()
    return net


def test_time_steps_formula():
    t = edm_time_steps(18)
    assert len(t) == 19 and t[-1] == 0
    assert torch.isclose(t[0], torch.tensor(80.0, dtype=torch.float64))
    assert torch.isclose(t[17], torch.tensor(0.002, dtype=torch.float64))
    assert (t[:-1][1:] < t[:-1][:-1]).all()


@pytest.mark.parametrize("churn", [0.0, 30.0])
def test_sampler_reproduces_gaussian(churn):
    torch.manual_seed(0)
    d = 3
    mean = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)
    A = torch.randn(d, d, dtype=torch.float64) * 0.3
    cov = A @ A.T + 0.05 * torch.eye(d, dtype=torch.float64)
    n, net = 20_000, gaussian_denoiser(mean, cov)
    latents = torch.randn(n, d)
    x = edm_sampler(net, latents, num_steps=64, S_churn=churn, S_min=0.01, S_max=50)
    emp_mean, emp_cov = x.mean(0), torch.cov(x.T)
    assert (emp_mean - mean).abs().max() < 0.02
    assert (emp_cov - cov).abs().max() < 0.04 * cov.abs().max()
    # Heun's discretisation error shrinks with more steps (18 steps is tuned for images, not this toy)
    if churn == 0:
        err18 = (torch.cov(edm_sampler(net, latents, num_steps=18).T) - cov).abs().max()
        assert (emp_cov - cov).abs().max() < err18


def test_sigma_stop_returns_denoised_estimate():
    mean, cov = torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64) * 0.25
    net = gaussian_denoiser(mean, cov)
    steps = edm_time_steps(100)
    t = steps[steps <= 1.0][0].item()                          # the first noise level at or below sigma_stop
    out = edm_sampler(net, torch.randn(8_000, 2), num_steps=100, sigma_stop=1.0)
    # the denoised estimate at t: E[x0 | x] = 0.25/(0.25 + t^2) x, variance 0.25^2/(0.25 + t^2)
    # (it would be 0.25 had the sampler run to the end)
    assert abs(out.var().item() - 0.25 ** 2 / (0.25 + t ** 2)) < 0.004
