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



def _heun_until(net, x, t, stop):
    """EDM's Algorithm 2 without churn, written out in float64 (the network sees float32): the denoised estimate
    D(x_i; t_i) at the first level t_i <= stop, and the number of network calls made."""
    calls = 0
    for i in range(len(t) - 1):
        denoised = net(x.float(), t[i].float().expand(len(x))).double()
        calls += 1
        if t[i] <= stop:
            return denoised, calls
        d_i = (x - denoised) / t[i]
        x_next = x + (t[i + 1] - t[i]) * d_i
        if t[i + 1] > 0:
            d_prime = (x_next - net(x_next.float(), t[i + 1].float().expand(len(x))).double()) / t[i + 1]
            calls += 1
            x_next = x + (t[i + 1] - t[i]) * (0.5 * d_i + 0.5 * d_prime)
        x = x_next
    raise AssertionError("the schedule never reached the stop level")


def test_sigma_stop_is_exactly_the_denoised_estimate_at_the_first_level_at_or_below_it():
    d, steps = int(torch.randint(2, 6, ())), 13                          # fresh draws: no seed
    a = torch.randn(d, d, dtype=torch.float64) * 0.5
    gauss = gaussian_denoiser(torch.randn(d, dtype=torch.float64), a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64))
    calls = []

    def net(x, sigma, labels=None):
        calls.append(sigma[0].item())
        return gauss(x, sigma)

    t = edm_time_steps(steps)
    k = int(torch.randint(2, steps - 2, ()))           # levels 28 to 0.05: the next level's estimate differs
    for stop in (t[k].item(), (t[k] * t[k - 1]).sqrt().item()):        # at a level, and between two
        latents = torch.randn(37, d)
        calls.clear()
        out = edm_sampler(net, latents, num_steps=steps, sigma_stop=stop)
        expected, n_calls = _heun_until(gauss, latents.double() * t[0], t, stop)
        assert torch.equal(out, expected)
        assert len(calls) == n_calls == 2 * k + 1 and calls[-1] == pytest.approx(t[k].item(), rel=1e-6)
        # one level later (a stop one level too low) the estimate differs: over 300 draws at least 3e-3 for
        # these k (at the last level, 0.012 against 0.002, it can be below 2e-4)
        later, _ = _heun_until(gauss, latents.double() * t[0], t, t[k + 1].item())
        assert (later - out).abs().max() > 1e-4
