"""The ambient loss: formulas, EDM special case, clamped samples, sigma sampling."""
import math

import pytest
import torch
from scipy import stats

import kernels
from ambient.model.loss import AmbientLoss, sample_sigma

SD = 0.5


def formula_loss64(D, x_t, y, s, sn, weighting):
    """docs/design.md steps 3-4 written out in float64, independently of kernels/."""
    D, x_t, y, s, sn = (t.double() for t in (D, x_t, y, s, sn))
    out = []
    for i in range(len(y)):
        a = sn[i] ** 2 / s[i] ** 2
        h = (1 - a) * D[i] + a * x_t[i]
        lam = (s[i] ** 2 + SD ** 2) / (s[i] * SD) ** 2
        if weighting == "ambient":
            gap = s[i] ** 2 - sn[i] ** 2
            lam = lam * s[i] ** 4 / gap ** 2 if gap > 0 else lam * 0
        out.append(lam * ((h - y[i]) ** 2).sum())
    return torch.stack(out)


@pytest.mark.parametrize("weighting", ["edm", "ambient"])
def test_loss_matches_float64_formulas(weighting):
    B, shape = 7, (3, 5, 9)
    y, D, eps = (torch.randn(B, *shape) for _ in range(3))
    sn = torch.tensor([0.0, 0.2, 0.2, 0.5, 0.0, 1.3, 0.05])
    s = torch.maximum(torch.exp(torch.randn(B) * 1.2 - 1.2), sn)
    s[2] = sn[2]                                              # one clamped sample
    x_t = kernels.noise_injection(y, s, sn, seed=0, eps=eps, backend="torch")
    ref_x = y.double() + torch.sqrt((s.double() ** 2 - sn.double() ** 2).clamp(min=0)).view(-1, 1, 1, 1) * eps.double()
    assert torch.allclose(x_t.double(), ref_x, rtol=1e-6, atol=1e-6)
    got = kernels.ambient_loss(D, x_t, y, s, sn, weighting=weighting, backend="torch")
    want = formula_loss64(D, x_t, y, s, sn, weighting)
    assert got.dtype == torch.float32 and got.shape == (B,)
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-6)


def test_equals_edm_loss_for_clean_data():
    """sigma_n = 0: lambda(s) * ||D(y + s eps; s) - y||^2 exactly (EDM's loss)."""
    B = 6
    y, eps = torch.randn(B, 1, 11, 13), torch.randn(B, 1, 11, 13)
    def net(x, s, labels):  # any deterministic denoiser
        return 0.7 * x + s.view(-1, 1, 1, 1) * 0.1
    normal = torch.randn(B)
    loss, s = AmbientLoss()(net, y, torch.zeros(B), normal, seed=0, eps=eps)
    s_edm = torch.exp(normal * 1.2 - 1.2)
    assert torch.allclose(s, s_edm)
    x = y + s_edm.view(-1, 1, 1, 1) * eps
    lam = (s_edm ** 2 + SD ** 2) / (s_edm * SD) ** 2
    edm = lam * ((net(x, s_edm, None) - y) ** 2).flatten(1).sum(1)
    assert torch.allclose(loss, edm, rtol=1e-5)


@pytest.mark.parametrize("weighting", ["edm", "ambient"])
def test_clamped_samples_have_zero_loss_and_gradient(weighting):
    sn = torch.tensor([0.2, 0.1 + 0.2, 0.7, 1e-3], dtype=torch.float32)
    y, eps = torch.randn(4, 2, 7, 7), torch.randn(4, 2, 7, 7)
    below = sn * (1 - 1e-7)                                   # a hair below sigma_n in float32: no NaN
    assert torch.equal(kernels.noise_injection(y, below, sn, seed=0, eps=eps, backend="torch"), y)
    for s in (sn.clone(), torch.maximum(below, sn)):          # what the sampler's clamp produces
        x_t = kernels.noise_injection(y, s, sn, seed=0, eps=eps, backend="torch")
        assert torch.isfinite(x_t).all() and torch.equal(x_t, y)
        D = torch.randn_like(y, requires_grad=True)
        loss = kernels.ambient_loss(D, x_t, y, s, sn, weighting=weighting, backend="torch")
        loss.sum().backward()
        assert torch.isfinite(loss).all() and (loss == 0).all()
        assert (D.grad == 0).all()


def test_sigma_sampling_clamp_and_truncate():
    n, sn = 200_000, 0.2
    normal = torch.randn(n)
    clamp = sample_sigma(torch.full((n,), sn), normal, mode="clamp")
    frac = (clamp == torch.tensor(sn)).double().mean().item()
    expected = stats.norm.cdf((math.log(sn) + 1.2) / 1.2)            # 37% at sigma_n = 0.2
    assert abs(frac - expected) < 4 * math.sqrt(expected * (1 - expected) / n)
    trunc = sample_sigma(torch.full((n,), sn), normal, mode="truncate")
    assert (trunc >= torch.tensor(sn)).all() and (trunc == torch.tensor(sn)).double().mean() < 1e-3
    a = (math.log(sn) + 1.2) / 1.2
    ks = stats.kstest(torch.log(trunc.double()).numpy(), stats.truncnorm(a, math.inf, loc=-1.2, scale=1.2).cdf)
    assert ks.pvalue > 1e-4
    # clean samples: both modes are the plain log-normal
    zero = torch.zeros(n)
    assert torch.allclose(sample_sigma(zero, normal, mode="truncate"), sample_sigma(zero, normal, mode="clamp"),
                          rtol=1e-5)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="sigma sampling"):
        AmbientLoss(sigma_sampling="uniform")
    with pytest.raises(ValueError, match="weighting"):
        AmbientLoss(weighting="vp")
