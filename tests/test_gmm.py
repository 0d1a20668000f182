"""Tests for ambient.gmm: heteroscedastic EM for mixture means and the clean-vs-noisy worth experiment."""
from collections import defaultdict
from functools import partial
from itertools import combinations

import numpy as np
import pytest

from ambient.study import gmm


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


def hetero_data(rng, n_problems=3, n=240, k=3, d=5, separation=3.0):
    """(S, N, d) samples of an equal-weight mixture, a third clean (variance 1), the rest noisier, and the means."""
    means = gmm.true_means(k, d, separation)
    var = np.where(np.arange(n) < n // 3, 1.0, 1.0 + rng.uniform(0.2, 4.0, n))
    x = means[rng.integers(k, size=(n_problems, n))] + np.sqrt(var)[:, None] * rng.normal(size=(n_problems, n, d))
    return x, var, means


def test_log_likelihood_is_the_mixture_density():
    rng = np.random.default_rng()
    x, var, means = hetero_data(rng, n=40)
    mu = means[None] + rng.normal(size=(3,) + means.shape)
    sq = ((x[:, :, None, :] - mu[:, None, :, :]) ** 2).sum(-1)                     # (S, N, k)
    dens = np.exp(-sq / (2 * var[None, :, None])) / (2 * np.pi * var[None, :, None]) ** (x.shape[2] / 2)
    np.testing.assert_allclose(gmm.log_likelihood(x, var, mu), np.log(dens.mean(-1)).sum(1), rtol=1e-10)


def test_em_never_lowers_the_likelihood():
    rng = np.random.default_rng()
    x, var, _ = hetero_data(rng)
    init = x[:, rng.choice(x.shape[1], 3, replace=False)]
    lls = [gmm.log_likelihood(x, var, gmm.em_means(x, var, init, max_iter=m, tol=0)[0]) for m in range(1, 30)]
    assert np.all(np.diff(lls, axis=0) >= -1e-8 * np.abs(lls[0]))


def test_restarts_keep_the_fit_of_highest_likelihood():
    rng = np.random.default_rng()
    x, var, _ = hetero_data(rng, n_problems=8, n=60, separation=2.0)
    seeds = rng.integers(10**6, size=8)

    def fit(restarts):
        est, _ = gmm.em_from_data(x, var, 3, [np.random.default_rng(s) for s in seeds], restarts=restarts)
        return gmm.log_likelihood(x, var, est)

    one, five = fit(1), fit(5)         # the first start of both is the same draw
    assert np.all(five >= one - 1e-9)


def test_random_starts_read_only_the_data():
    # Rotating and shifting the data rotates and shifts the global fit: the start is drawn from the data
    # alone (a start at the truth, at fixed points or at the origin would not follow the data). Small,
    # overlapping data sets, where the start decides which optimum EM reaches (other seeds, other fits).
    rng = np.random.default_rng()
    x, var, _ = hetero_data(rng, n_problems=32, n=30, k=4, separation=2.0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    shift = rng.normal(size=5) * 5
    seeds = rng.integers(10**6, size=32)

    def fit(data, seeds):
        return gmm.em_from_data(data, var, 4, [np.random.default_rng(s) for s in seeds], restarts=2, tol=1e-12)[0]

    def distance(a, b):      # restarts that reach one optimum with permuted labels tie: compare after matching
        return np.array([gmm.matched_error(m[None], e)[0] for m, e in zip(a, b)])

    base = fit(x, seeds)
    # float64 rounding of the rotation and shift only (a fresh draw gave 7.5e-16); other seeds give > 1e-3
    assert distance(fit(x @ q + shift, seeds), base @ q + shift).max() < 1e-12
    assert distance(fit(x, seeds + 1), base).max() > 1e-3


def test_global_errors_do_not_change_when_the_truth_moves_with_the_data(monkeypatch):
    base = int(np.random.default_rng().integers(10**6))
    seeds = range(base, base + 4)
    kwargs = dict(d=8, start="data", restarts=2)
    before = gmm.run_gmm_grid((12, 40), (0, 30), (1.5,), seeds, **kwargs)
    original = gmm.true_means
    monkeypatch.setattr(gmm, "true_means", lambda *a, **kw: original(*a, **kw) + 7.0)
    after = gmm.run_gmm_grid((12, 40), (0, 30), (1.5,), seeds, **kwargs)
    np.testing.assert_allclose([r["error"] for r in after], [r["error"] for r in before], rtol=1e-6)


def test_finding_the_clusters_dominates_the_global_error_at_small_n():
    # The global regime's setting: from random samples the error at n = 20, 40 is far above that of EM
    # started at the truth on the same data; at n = 640 both find the same fit.
    base = int(np.random.default_rng().integers(10**6))
    grid = {**gmm.REGIMES["global"], "n_clean_list": (20, 40, 640), "n_noisy_list": (0,), "sigma_n_list": (),
            "mixed_n_clean": None, "seeds": range(base, base + 16)}
    random_start = mean_errors(gmm.run_gmm_grid(**grid))
    from_truth = mean_errors(gmm.run_gmm_grid(**{**grid, "start": "truth"}))
    for n in (20, 40):       # ratios over 30 runs of 16 seeds: 1.40-1.90 at n = 20, 1.70-2.13 at n = 40
        assert random_start[0.0, 0, n] > 1.25 * from_truth[0.0, 0, n], n
    assert random_start[0.0, 0, 640] == pytest.approx(from_truth[0.0, 0, 640], rel=1e-4)


def synthetic_w(form, s, exponent, rel_se=0.02):
    """w at six noise levels from `form` with log-normal noise of sd rel_se, and its 95% CI."""
    rng = np.random.default_rng()
    sigma = np.array(gmm.SIGMAS)
    w = np.exp(gmm.DECAY_FORMS[form](sigma, s, exponent) + rel_se * rng.normal(size=sigma.size))
    half = 1.96 * rel_se
    return sigma, w, w * np.exp(-half), w * np.exp(half)


@pytest.mark.parametrize("form, s, exponent", [("exponential", 1.3, 1.6), ("exponential", 0.7, 1.0),
                                               ("power", 0.8, 2.5), ("power", 1.0, 2.0)])
def test_decay_fit_recovers_the_form_and_its_parameters(form, s, exponent):
    fit = gmm.fit_decay(*synthetic_w(form, s, exponent))
    assert fit["preferred"] == form, fit
    # 2% noise: 1000 draws of each case all passed, the closest (1 / (1 + sigma_n^2)) with delta AIC >= 22.
    assert fit[form]["s"] == pytest.approx(s, rel=0.1) and fit[form]["exponent"] == pytest.approx(exponent, rel=0.1)
    assert fit[form]["chi2"] < 30           # chi2 with 4 degrees of freedom: P(> 30) < 1e-5


def test_decay_fit_of_exact_single_gaussian_worth():
    sigma, w, lo, hi = synthetic_w("power", 1.0, 2.0, rel_se=0.0)
    fit = gmm.fit_decay(sigma, w, w * 0.9, w / 0.9)
    assert fit["power"]["s"] == pytest.approx(1.0, abs=1e-6) and fit["power"]["exponent"] == pytest.approx(2, abs=1e-6)
    assert fit["power"]["chi2"] < 1e-10 and fit["delta_aic"] < -gmm.AIC_MARGIN and fit["preferred"] == "power"


def test_decay_fit_rejects_too_few_levels_and_bad_cis():
    sigma, w, lo, hi = synthetic_w("power", 1.0, 2.0)
    with pytest.raises(ValueError, match=">= 5"):
        gmm.fit_decay(sigma[:4], w[:4], lo[:4], hi[:4])
    with pytest.raises(ValueError, match="ci_low"):
        gmm.fit_decay(sigma, w, np.r_[0.0, lo[1:]], hi)


def test_decay_fit_of_4_levels_needs_min_levels_4():
    """The study's price list has 4 noise levels: fitted with min_levels=4, still refused by the default 5. The
    4 highest levels (1000 draws: delta AIC >= 170, all within 10%; levels 0.5-2 fail 3 in 1000)."""
    sigma, w, lo, hi = (a[2:] for a in synthetic_w("exponential", 1.3, 1.6))
    fit = gmm.fit_decay(sigma, w, lo, hi, min_levels=4)
    assert fit["n_levels"] == 4 and fit["preferred"] == "exponential", fit
    assert fit["exponential"]["s"] == pytest.approx(1.3, rel=0.1)
    assert fit["exponential"]["exponent"] == pytest.approx(1.6, rel=0.1)
    with pytest.raises(ValueError, match=">= 5"):
        gmm.fit_decay(sigma, w, lo, hi)
    with pytest.raises(ValueError, match=">= 4"):
        gmm.fit_decay(sigma[:3], w[:3], lo[:3], hi[:3], min_levels=4)

def test_equivalent_worth_reads_w_off_the_clean_curve():
    # error = 1 / (n_clean + w n_noisy) exactly, with a dense clean-only curve: the worth comes back.
    w_true = {0.5: 0.8, 2.0: 0.1}
    rows = [{"n_clean": n, "n_noisy": 0, "sigma_n": 0.0, "seed": s, "error": 1 / n}
            for n in range(10, 400, 5) for s in range(3)]
    rows += [{"n_clean": 10, "n_noisy": nn, "sigma_n": sg, "seed": s, "error": 1 / (10 + w * nn)}
             for sg, w in w_true.items() for nn in (50, 200) for s in range(3)]
    worth = gmm.equivalent_worth(rows, n_boot=20)
    assert sorted(worth) == [(10, 50), (10, 200)]
    for by_sigma in worth.values():
        for sg, w in w_true.items():
            assert by_sigma[sg]["bound"] == "=" and by_sigma[sg]["worth"] == pytest.approx(w, rel=0.01)


def test_decay_series_keeps_the_measured_levels_only():
    worth = {0.5: {"worth": 0.8, "ci_low": 0.7, "ci_high": 0.9, "bound": "="},
             1.0: {"worth": 0.3, "ci_low": 0.3, "ci_high": 0.3, "bound": ">"},
             2.0: {"w": 0.05, "ci_low": 0.0, "ci_high": 0.1},
             3.0: {"w": 0.01, "ci_low": 0.005, "ci_high": 0.02}}
    arrays, skipped = gmm.decay_series(worth)
    assert arrays["sigma"].tolist() == [0.5, 3.0] and arrays["w"].tolist() == [0.8, 0.01] and skipped == [1.0, 2.0]


def test_cli_runs_both_regimes_and_writes_the_figures(monkeypatch, tmp_path, capsys):
    sigmas = (0.5, 1.0, 1.5, 2.0, 3.0)
    monkeypatch.setitem(gmm.REGIMES, "local", {"n_clean_list": (20, 80), "n_noisy_list": (0, 200, 800),
                                               "sigma_n_list": sigmas, "seeds": range(4)})
    monkeypatch.setitem(gmm.REGIMES, "global", {**gmm.REGIMES["global"], "n_clean_list": (10, 20, 40, 80, 160),
                                                "n_noisy_list": (0, 60), "sigma_n_list": sigmas, "seeds": range(4),
                                                "d": 8, "restarts": 1})
    for name, n_boot in (("fit_gmm_worth", 20), ("equivalent_worth", 50)):      # fewer bootstrap refits
        monkeypatch.setattr(gmm, name, partial(getattr(gmm, name), n_boot=n_boot))
    gmm.main(["--regime", "both", "--out", str(tmp_path / "g.png"), "--seed-base", "5"])
    out = capsys.readouterr().out
    assert "local regime, seeds 5-8:" in out and "global regime, seeds 5-8:" in out
    assert "local, fit_worth:" in out and "global, 10 clean + 60 noisy:" in out
    for name in ("g.png", "g_global.png", "g_sigma.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grid_rejects_a_bad_start_or_mixed_n_clean():
    with pytest.raises(ValueError, match="start"):
        gmm.run_gmm_grid((10,), (0,), (), range(2), start="kmeans")
    with pytest.raises(ValueError, match="mixed_n_clean"):
        gmm.run_gmm_grid((10, 20), (0, 5), (1.0,), range(2), mixed_n_clean=(15,))


def test_search_failures_count_fits_below_the_reference_likelihood():
    rows = [{"n_clean": 10, "n_noisy": 0, "sigma_n": 0.0, "seed": s, "loglik": ll}
            for s, ll in enumerate([-100.0, -90.0, -80.0, -70.0])]
    reference = [{**r, "loglik": -90.0} for r in rows]
    assert gmm.search_failures(rows, reference) == {(10, 0, 0.0): 0.25}     # only -100 lies below -90 - tol
