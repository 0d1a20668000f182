"""Tests for ambient.gmm: heteroscedastic EM for mixture means and the clean-vs-noisy worth experiment."""
from collections import defaultdict
from itertools import combinations

import numpy as np
import pytest

from ambient import gmm


def mean_errors(rows):
    """(sigma_n, n_noisy, n_clean) -> error averaged over seeds."""
    acc = defaultdict(list)
    for r in rows:
        acc[(r["sigma_n"], r["n_noisy"], r["n_clean"])].append(r["error"])
    return {key: float(np.mean(v)) for key, v in acc.items()}


def test_true_means_form_a_centred_regular_simplex():
    means = gmm.true_means(k=5, d=7, separation=2.5, s0=1.3)
    assert means.shape == (5, 7)
    np.testing.assert_allclose(means.mean(0), 0, atol=1e-12)
    for i, j in combinations(range(5), 2):
        assert np.linalg.norm(means[i] - means[j]) == pytest.approx(2.5 * 1.3, rel=1e-12)
    with pytest.raises(ValueError, match="d >= k"):
        gmm.true_means(k=4, d=3, separation=1.0)


def test_em_with_one_component_is_the_inverse_variance_weighted_mean():
    rng = np.random.default_rng()
    x = rng.normal(size=(3, 53, 5))
    var = rng.uniform(0.5, 4.0, size=(3, 53))
    est, iters = gmm.em_means(x, var, rng.normal(size=(3, 1, 5)))
    expected = (x / var[..., None]).sum(1) / (1 / var).sum(1)[:, None]
    np.testing.assert_allclose(est[:, 0], expected, rtol=1e-12, atol=1e-12)
    assert iters <= 3


def test_em_converges_to_the_heteroscedastic_fixed_point():
    rng = np.random.default_rng()
    means = gmm.true_means(3, 3, separation=3.0)
    n = 301
    z = rng.integers(3, size=n)
    var = np.where(np.arange(n) < 100, 1.0, 1.0 + rng.uniform(0.2, 3.0, n))
    x = means[z] + np.sqrt(var)[:, None] * rng.normal(size=(n, 3))
    est, _ = gmm.em_means(x[None], var, means[None] + 0.2, tol=1e-12, max_iter=5000)
    # Independent statement of one EM step with the full Gaussian densities (normalisers included).
    dens = np.exp(-((x[:, None, :] - est[0][None]) ** 2).sum(-1) / (2 * var[:, None])) / var[:, None] ** 1.5
    resp = dens / dens.sum(1, keepdims=True)
    w = resp / var[:, None]
    np.testing.assert_allclose(est[0], (w.T @ x) / w.sum(0)[:, None], atol=1e-9)


def test_em_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(S, N, d\)"):
        gmm.em_means(np.zeros((5, 2)), np.ones(5), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="variances"):
        gmm.em_means(np.zeros((1, 5, 2)), np.r_[np.ones(4), 0.0], np.zeros((1, 2, 2)))


def test_matched_error_ignores_label_order():
    rng = np.random.default_rng()
    truth = rng.normal(size=(4, 3)) * 10
    est = truth + 0.1 * rng.normal(size=(4, 3))
    perm = rng.permutation(4)
    e1, e2 = gmm.matched_error(est[None], truth), gmm.matched_error(est[perm][None], truth)
    assert e1[0] == pytest.approx(((est - truth) ** 2).mean()) and e2[0] == pytest.approx(e1[0])


def test_single_component_error_matches_the_closed_form():
    # k = 1: the estimate is the weighted mean, whose squared error per coordinate has expectation
    # s0^2 / (n_clean + n_noisy s0^2 / (s0^2 + sigma_n^2)). 160 seeds x 4 coordinates: ~6% standard error.
    s0 = 0.7
    rows = gmm.run_gmm_grid((13, 50), (0, 200), (0.9,), range(160), d=4, k=1, s0=s0)
    for (sigma_n, n_noisy, n_clean), err in mean_errors(rows).items():
        expected = s0**2 / (n_clean + n_noisy * s0**2 / (s0**2 + sigma_n**2))
        assert err == pytest.approx(expected, rel=0.25), (sigma_n, n_noisy, n_clean)


@pytest.fixture(scope="module")
def grid_rows():
    base = int(np.random.default_rng().integers(10**6))     # fresh seeds every run
    return gmm.run_gmm_grid((20, 40, 80, 160, 320), (0, 250, 1000, 3000), (1.0, 2.0), range(base, base + 10))


def test_error_falls_with_clean_samples_and_noisy_samples_help(grid_rows):
    errs = mean_errors(grid_rows)
    clean = [errs[(0.0, 0, nc)] for nc in (20, 40, 80, 160, 320)]
    assert all(b < a for a, b in zip(clean, clean[1:])), clean
    for sigma_n in (1.0, 2.0):
        with_noisy = [errs[(sigma_n, nn, 20)] for nn in (250, 1000, 3000)]
        assert all(b < a for a, b in zip([clean[0]] + with_noisy, with_noisy)), (sigma_n, with_noisy)
        # ...but a noisy sample is worth less than a clean one: 250 noisy + 20 clean lose to 270 clean.
        assert errs[(sigma_n, 250, 20)] > errs[(0.0, 0, 320)]


def test_fitted_worth_is_below_one_and_falls_with_noise(grid_rows):
    fits = gmm.fit_gmm_worth(grid_rows, n_boot=50)
    assert sorted(fits) == [1.0, 2.0]
    low, high = fits[1.0], fits[2.0]
    assert 0 < high["w"] < low["w"] < 1
    assert high["ci_high"] < low["ci_low"]
    assert high["w"] < 0.2     # below the separated-component limit s0^2 / (s0^2 + sigma_n^2) = 0.2
    assert low["b"] == pytest.approx(1.0, abs=0.2)   # error ~ 1 / n_eff, as for any regular estimator


def test_plot_writes_a_png(grid_rows, tmp_path):
    path = gmm.plot_gmm_grid(grid_rows, tmp_path / "sub" / "gmm.png", gmm.fit_gmm_worth(grid_rows, n_boot=5))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="sigma_n_list"):
        gmm.run_gmm_grid((10,), (0, 5), (0.0,), range(2))
    with pytest.raises(ValueError, match=">= 0"):
        gmm.run_gmm_grid((-1,), (0,), (), range(2))
    with pytest.raises(ValueError, match="must not be empty"):
        gmm.run_gmm_grid((10,), (0,), (1.0,), [])
