"""The paper's theory as an experiment: estimating the means of a Gaussian mixture from clean and noisy samples.

Data: k equally weighted components N(mu_j, s0^2 I) in d >= k dimensions, means on a regular simplex with
every pair `separation` s0 apart (fixed across seeds, so only the samples vary). A clean sample is drawn
from the mixture; a noisy one gets extra N(0, sigma_n^2 I) noise, so its known variance is s0^2 + sigma_n^2.

Estimator: EM for the means with the weights and every sample's own variance known (heteroscedastic EM:
responsibilities use each sample's variance, the M-step weights samples by 1 / variance), whose fixed
points are the maximum-likelihood equations. Matching the estimates to the true means (scipy's
linear_sum_assignment) removes label switching. Two regimes, differing in where EM starts:

- local (start="truth"): from the true means plus N(0, (init_scale s0)^2) noise (seeded), in d = 4. The
  clusters are given; what is measured is the statistical error of fine estimation (parametric regime).
- global (start="data"): from k distinct samples of the data set drawn at random, `restarts` times, keeping
  the fit of highest likelihood; nothing about the truth is read. In d = 64 the 3-dimensional simplex has to
  be found among 64 noise directions: with 14-80 clean samples EM from random samples ends 1.3-2 times
  farther from the truth than EM started at it on the same data, mostly because its search misses a better
  optimum (`search_failures`); from about 160 samples both reach the same fit.

For a single Gaussian one noisy sample carries s0^2 / (s0^2 + sigma_n^2) of a clean sample's information;
overlap between components makes noisy samples worth less (the paper: exponentially less for fine estimation).
`fit_decay` tests that word: it fits the worth against sigma_n with an exponential and with a power law.
"""
import argparse
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, linear_sum_assignment
from scipy.stats import norm

from ambient.common.plotting import pyplot

from .scaling import equivalent_clean, equivalent_sentence, fit_worth_by_sigma, worth_sentence

METRIC = "error"
SIGMAS = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
# run_gmm_grid arguments of each regime. Local: the clusters are given (d = 4, EM starts near the truth).
# Global: the same k and separation in d = 64, EM from random samples; clean-only sizes a factor sqrt(2) apart
# so that equivalent clean counts are read off a dense curve; noisy samples added to 10 clean ones (2.5 per
# component, too few to find the clusters alone).
REGIMES: dict[str, dict] = {
    "local": {"n_clean_list": (20, 40, 80, 160, 320, 640), "n_noisy_list": (0, 250, 1000, 4000),
              "sigma_n_list": SIGMAS, "seeds": range(16)},
    "global": {"n_clean_list": tuple(round(10 * 2 ** (i / 2)) for i in range(15)), "n_noisy_list": (0, 50, 200, 800),
               "mixed_n_clean": (10,), "sigma_n_list": SIGMAS, "seeds": range(32), "d": 64, "start": "data",
               "restarts": 4},
}
AIC_MARGIN = 2.0        # |delta AIC| below this: the data do not prefer either form of w(sigma_n)
DECAY_MIN_LEVELS = 5    # fit_decay's noise levels at least: its 2 parameters and 3 degrees of freedom


def true_means(k: int, d: int, separation: float, s0: float = 1.0) -> np.ndarray:
    """(k, d) means at the vertices of a centred regular simplex, every pair `separation * s0` apart (d >= k)."""
    if d < k:
        raise ValueError(f"the simplex layout needs d >= k, got d={d}, k={k}")
    means = np.zeros((k, d))
    means[:, :k] = separation * s0 / np.sqrt(2) * np.eye(k)
    return means - means.mean(0)


def _problems(x: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x as float (S, N, d) and var broadcast to (S, N), both checked."""
    x = np.asarray(x, np.float64)
    if x.ndim != 3:
        raise ValueError(f"x must be (S, N, d), got {x.shape}")
    var = np.broadcast_to(np.asarray(var, np.float64), x.shape[:2])
    if not np.all(np.isfinite(var) & (var > 0)):
        raise ValueError("variances must be finite and > 0")
    return x, var


def _logits(x: np.ndarray, mu: np.ndarray, inv_var: np.ndarray) -> np.ndarray:
    """(S, N, k): -|x - mu_j|^2 / (2 v) up to the term -|x|^2 / (2 v), which is the same for every j."""
    return (x @ mu.transpose(0, 2, 1) - 0.5 * (mu**2).sum(-1)[:, None, :]) * inv_var[..., None]


def em_means(x: np.ndarray, var: np.ndarray, init: np.ndarray, *, max_iter: int = 1000,
             tol: float = 1e-6) -> tuple[np.ndarray, int]:
    """Heteroscedastic EM for the means of an equal-weight isotropic mixture, batched over problems.

    x: (S, N, d) samples of S independent problems; var: (N,) or (S, N) known per-sample variances;
    init: (S, k, d). Returns the (S, k, d) means and the number of iterations run (stops when no mean
    moves by more than `tol`).
    """
    x, var = _problems(x, var)
    init = np.asarray(init, np.float64)
    if init.ndim != 3 or init.shape[0] != x.shape[0] or init.shape[2] != x.shape[2]:
        raise ValueError(f"x must be (S, N, d) and init (S, k, d), got {x.shape} and {init.shape}")
    inv_var = 1.0 / var
    mu = init.copy()
    for it in range(1, max_iter + 1):  # noqa: B007 it is returned after the loop
        logits = _logits(x, mu, inv_var)
        r = np.exp(logits - logits.max(-1, keepdims=True))                    # (S, N, k)
        wgt = r * (inv_var / r.sum(-1))[..., None]                             # responsibility / variance
        den = wgt.sum(1)[..., None]
        new = np.where(den > 0, wgt.transpose(0, 2, 1) @ x / np.maximum(den, 1e-300), mu)
        moved = np.abs(new - mu).max()
        mu = new
        if moved <= tol:
            break
    return mu, it


def log_likelihood(x: np.ndarray, var: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """(S,) log-likelihood of each problem's samples under the equal-weight mixture with means mu (S, k, d):

    log L = sum_i log( (1/k) sum_j N(x_i; mu_j, v_i I) )
          = sum_i [ logsumexp_j (x_i . mu_j - |mu_j|^2 / 2) / v_i - |x_i|^2 / (2 v_i) - log k - d/2 log(2 pi v_i) ]
    """
    x, var = _problems(x, var)
    mu = np.asarray(mu, np.float64)
    logits = _logits(x, mu, 1.0 / var)
    top = logits.max(-1)
    lse = top + np.log(np.exp(logits - top[..., None]).sum(-1))
    k, d = mu.shape[1], x.shape[2]
    return (lse - 0.5 * (x**2).sum(-1) / var - math.log(k) - 0.5 * d * np.log(2 * np.pi * var)).sum(1)


def em_from_data(x: np.ndarray, var: np.ndarray, k: int, rngs: Sequence[np.random.Generator], *,
                 restarts: int = 4, max_iter: int = 1000, tol: float = 1e-6) -> tuple[np.ndarray, int]:
    """Global regime: EM started from k distinct samples of each problem's own data, drawn uniformly (clean
    and noisy alike) with that problem's generator, `restarts` times; keeps the restart of highest likelihood.

    Only the data and the generators are read, never the truth. rngs: one generator per problem, so a
    problem's result does not depend on the others in the batch. Returns the (S, k, d) means and the EM
    iterations run over all restarts.
    """
    x, var = _problems(x, var)
    n_problems, n, _ = x.shape
    if len(rngs) != n_problems or restarts < 1 or not 1 <= k <= n:
        raise ValueError(f"need one generator per problem ({n_problems}), restarts >= 1 and 1 <= k <= N = {n}; "
                         f"got {len(rngs)} generators, restarts = {restarts}, k = {k}")
    best, best_ll, total = np.zeros((n_problems, k, x.shape[2])), np.full(n_problems, -np.inf), 0
    for _ in range(restarts):
        picks = np.stack([rng.choice(n, k, replace=False) for rng in rngs])
        mu, iters = em_means(x, var, np.take_along_axis(x, picks[..., None], 1), max_iter=max_iter, tol=tol)
        ll = log_likelihood(x, var, mu)
        better = ll > best_ll
        best, best_ll, total = np.where(better[:, None, None], mu, best), np.where(better, ll, best_ll), total + iters
    return best, total


def matched_error(est: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean squared error per coordinate of (S, k, d) estimates against (k, d) truth, after the best matching."""
    errors = []
    for e in est:
        cost = ((e[:, None, :] - truth[None, :, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        errors.append(cost[rows, cols].sum() / truth.size)
    return np.array(errors)


def _pools(seeds: Sequence[int], means: np.ndarray, s0: float, n_clean: int, n_noisy: int, init_scale: float):
    """Per seed: clean samples, noisy samples before the extra noise, the unit extra noise, and the EM start.

    Every grid point of a seed uses prefixes of these pools (common random numbers), so curves are smooth.
    """
    k, d = means.shape
    clean, noisy_base, extra, init = [], [], [], []
    for s in seeds:
        rng = np.random.default_rng([s, 20241104])
        clean.append(means[rng.integers(k, size=n_clean)] + s0 * rng.standard_normal((n_clean, d)))
        noisy_base.append(means[rng.integers(k, size=n_noisy)] + s0 * rng.standard_normal((n_noisy, d)))
        extra.append(rng.standard_normal((n_noisy, d)))
        init.append(means + init_scale * s0 * rng.standard_normal((k, d)))
    return np.stack(clean), np.stack(noisy_base), np.stack(extra), np.stack(init)


def run_gmm_grid(n_clean_list: Iterable[int], n_noisy_list: Iterable[int], sigma_n_list: Iterable[float],
                 seeds: Iterable[int], *, d: int = 4, k: int = 4, s0: float = 1.0, separation: float = 4.0,
                 start: str = "truth", init_scale: float = 0.3, restarts: int = 4,
                 mixed_n_clean: Iterable[int] | None = None, max_iter: int = 1000, tol: float = 1e-6) -> list[dict]:
    """EM error for every (n_clean, n_noisy, sigma_n, seed); rows as fit_worth expects.

    start: "truth" (local regime: the true means + N(0, (init_scale s0)^2) noise) or "data" (global regime:
    em_from_data with `restarts`; its generator per seed is the same at every grid point). Noisy samples are
    added to every n_clean in `mixed_n_clean` (default: all of n_clean_list). Clean-only points (n_noisy = 0)
    are run once and carry sigma_n = 0. Each row: {"n_clean", "n_noisy", "sigma_n", "seed", "error", "loglik" (of
    the fit, log_likelihood), "iterations"}.
    """
    n_clean_list, n_noisy_list = sorted(set(n_clean_list)), sorted(set(n_noisy_list))
    sigma_n_list, seeds = sorted(set(sigma_n_list)), list(seeds)
    mixed = set(n_clean_list if mixed_n_clean is None else mixed_n_clean)
    if not n_clean_list or not n_noisy_list or not seeds:
        raise ValueError("n_clean_list, n_noisy_list and seeds must not be empty")
    if min(n_clean_list) < 0 or min(n_noisy_list) < 0:
        raise ValueError("sample counts must be >= 0")
    if not mixed <= set(n_clean_list):
        raise ValueError(f"mixed_n_clean {sorted(mixed)} must be among n_clean_list {n_clean_list}")
    if any(s <= 0 for s in sigma_n_list) or (max(n_noisy_list) > 0 and not sigma_n_list):
        raise ValueError(f"sigma_n_list must hold noise levels > 0, got {sigma_n_list}")
    if s0 <= 0 or k < 1 or d < 1:
        raise ValueError(f"need s0 > 0, k >= 1, d >= 1; got s0={s0}, k={k}, d={d}")
    if start not in ("truth", "data"):
        raise ValueError(f"start must be 'truth' or 'data', got {start!r}")
    means = true_means(k, d, separation, s0)
    clean, noisy_base, extra, init = _pools(seeds, means, s0, max(n_clean_list), max(n_noisy_list), init_scale)
    rows = []
    for n_noisy in n_noisy_list:
        for sigma_n in (sigma_n_list if n_noisy > 0 else [0.0]):
            for n_clean in (n_clean_list if n_noisy == 0 else sorted(mixed)):
                if n_clean + n_noisy == 0:
                    continue
                x = np.concatenate([clean[:, :n_clean], noisy_base[:, :n_noisy] + sigma_n * extra[:, :n_noisy]], 1)
                var = np.concatenate([np.full(n_clean, s0**2), np.full(n_noisy, s0**2 + sigma_n**2)])
                if start == "truth":
                    est, iters = em_means(x, var, init, max_iter=max_iter, tol=tol)
                else:
                    rngs = [np.random.default_rng([s, 20241104, 1]) for s in seeds]
                    est, iters = em_from_data(x, var, k, rngs, restarts=restarts, max_iter=max_iter, tol=tol)
                for seed, err, ll in zip(seeds, matched_error(est, means), log_likelihood(x, var, est)):
                    rows.append({"n_clean": n_clean, "n_noisy": n_noisy, "sigma_n": sigma_n, "seed": seed,
                                 METRIC: float(err), "loglik": float(ll), "iterations": iters})
    return rows


def fit_gmm_worth(rows: Sequence[dict], **kwargs) -> dict[float, dict]:
    """Worth of a noisy sample per sigma_n (scaling.fit_worth with no floor: EM's error tends to 0)."""
    return fit_worth_by_sigma(rows, METRIC, **{"fit_floor": False, **kwargs})


def search_failures(rows: Sequence[dict], reference: Sequence[dict], tol: float = 1e-3) -> dict[tuple, float]:
    """Share of seeds, per (n_clean, n_noisy, sigma_n), whose fit in `rows` has a log-likelihood more than `tol`
    below the fit in `reference` on the same data (EM from the truth): there the search missed a better optimum.
    Where the random start ends higher, the likelihood itself prefers that fit, and its error is not the search's."""
    ref = {(r["n_clean"], r["n_noisy"], r["sigma_n"], r["seed"]): r["loglik"] for r in reference}
    acc: dict[tuple, list[bool]] = {}
    for r in rows:
        key = (r["n_clean"], r["n_noisy"], r["sigma_n"])
        acc.setdefault(key, []).append(r["loglik"] < ref[key + (r["seed"],)] - tol)
    return {key: float(np.mean(v)) for key, v in acc.items()}


def equivalent_worth(rows: Sequence[dict], **kwargs) -> dict[tuple[int, int], dict[float, dict]]:
    """Model-free worth of every mixed point: scaling.equivalent_clean against the clean-only rows, keyed by
    (n_clean, n_noisy), then sigma_n. For curves that are no power law in n (the global regime's)."""
    clean: dict[int, list[float]] = {}
    mixed: dict[tuple[int, int], dict[float, list[float]]] = {}
    for r in rows:
        if r["n_noisy"] == 0:
            clean.setdefault(r["n_clean"], []).append(r[METRIC])
        else:
            mixed.setdefault((r["n_clean"], r["n_noisy"]), {}).setdefault(r["sigma_n"], []).append(r[METRIC])
    if len(clean) < 2 or not mixed:
        raise ValueError("need clean-only rows at >= 2 sizes and rows with noisy samples")
    return {point: {s: equivalent_clean(clean, values, *point, **kwargs) for s, values in sorted(by_sigma.items())}
            for point, by_sigma in sorted(mixed.items())}


# log w(sigma_n) of the two forms compared by fit_decay, parameters (s, exponent).
DECAY_FORMS: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "exponential": lambda sigma, s, p: -(sigma / s) ** p,            # w = exp(-(sigma_n / s)^p)
    "power": lambda sigma, s, q: -np.log1p((sigma / s) ** q),        # w = 1 / (1 + (sigma_n / s)^q)
}


def fit_decay(sigma: Sequence[float], w: Sequence[float], ci_low: Sequence[float], ci_high: Sequence[float],
              level: float = 0.95, min_levels: int = DECAY_MIN_LEVELS) -> dict:
    """Fit the worth against sigma_n with an exponential and a power law, and say which the data prefer.

    Forms (both 1 at sigma_n = 0, where a noisy sample is a clean one; both two parameters):
        exponential  w = exp(-(sigma_n / s)^p)
        power law    w = 1 / (1 + (sigma_n / s)^q)        (a single Gaussian: s = s0, q = 2)
    Weighted least squares in log w, each level's standard error read off its CI:
        se = (log ci_high - log ci_low) / (2 z),  z = the normal quantile of (1 + level) / 2
        chi2 = sum ((log w - log w_form(sigma_n)) / se)^2,  AIC = chi2 + 2 * 2
    delta_aic = AIC(power) - AIC(exponential); "preferred" is the exponential when delta_aic >= AIC_MARGIN,
    the power law when <= -AIC_MARGIN, otherwise "neither". Needs >= min_levels levels (DECAY_MIN_LEVELS; a study
    with 4 noise levels passes 4), all with 0 < ci_low < ci_high.
    Returns {"exponential": {"s", "exponent", "chi2", "aic"}, "power": {...}, "delta_aic", "preferred", "n_levels"}.
    """
    sigma, w, lo, hi = (np.asarray(a, np.float64) for a in (sigma, w, ci_low, ci_high))
    if not sigma.shape == w.shape == lo.shape == hi.shape or len(sigma) < min_levels or len(set(sigma)) < len(sigma):
        raise ValueError(f"need >= {min_levels} distinct noise levels with one w and CI each, "
                         f"got sigma_n = {sigma.tolist()}")
    if not (np.all(sigma > 0) and np.all(w > 0) and np.all(0 < lo) and np.all(lo < hi)):
        raise ValueError("need sigma_n > 0, w > 0 and 0 < ci_low < ci_high at every level (fits are in log w)")
    se = (np.log(hi) - np.log(lo)) / (2 * norm.ppf((1 + level) / 2))
    out: dict = {"n_levels": len(sigma)}
    for name, form in DECAY_FORMS.items():
        def residuals(p: np.ndarray) -> np.ndarray:
            return (np.log(w) - form(sigma, math.exp(p[0]), math.exp(p[1]))) / se  # noqa: B023 used in this iteration
        fits = [least_squares(residuals, np.log([s, e])) for s in (0.5, 1.0, 2.0) for e in (0.5, 1.0, 2.0, 4.0)]
        best = min(fits, key=lambda f: f.cost)
        chi2 = float(2 * best.cost)
        out[name] = {"s": math.exp(best.x[0]), "exponent": math.exp(best.x[1]), "chi2": chi2, "aic": chi2 + 4}
    out["delta_aic"] = out["power"]["aic"] - out["exponential"]["aic"]
    out["preferred"] = ("exponential" if out["delta_aic"] >= AIC_MARGIN else
                        "power" if out["delta_aic"] <= -AIC_MARGIN else "neither")
    return out


def decay_series(worth: dict[float, dict]) -> tuple[dict[str, np.ndarray], list[float]]:
    """Arrays (sigma, w, ci_low, ci_high) for fit_decay from fit_worth or equivalent_clean results keyed by
    sigma_n, and the levels left out: a worth that is only a bound, or whose CI does not lie above 0."""
    keep, skipped = [], []
    for s, r in sorted(worth.items()):
        value = r["w"] if "w" in r else r["worth"]
        ok = r.get("bound", "=") == "=" and r["ci_low"] is not None and 0 < r["ci_low"] < r["ci_high"]
        (keep if ok and value > 0 else skipped).append((s, value, r["ci_low"], r["ci_high"]))
    cols = np.array(keep, np.float64).reshape(-1, 4).T
    return dict(zip(("sigma", "w", "ci_low", "ci_high"), cols)), [s for s, *_ in skipped]


def _save(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (parents created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def _seed_means(rows: Sequence[dict]) -> dict[tuple[int, int, float], float]:
    """(n_clean, n_noisy, sigma_n) -> error averaged over seeds (clean-only points have sigma_n = 0)."""
    acc: dict[tuple[int, int, float], list[float]] = {}
    for r in rows:
        acc.setdefault((r["n_clean"], r["n_noisy"], r["sigma_n"]), []).append(r[METRIC])
    return {key: float(np.mean(v)) for key, v in acc.items()}


def plot_gmm_grid(rows: Sequence[dict], path: str | Path, fits: dict[float, dict] | None = None) -> Path:
    """PNG: mean error over seeds vs n_clean, one line per n_noisy, one panel per sigma_n (fits dashed)."""
    plt = pyplot()
    means = _seed_means(rows)
    sigmas = sorted({s for _, nn, s in means if nn > 0})
    if not sigmas:
        raise ValueError("no rows with noisy samples to plot")
    noisy_counts = sorted({nn for _, nn, _ in means})
    n_cols = min(3, len(sigmas))
    n_rows = -(-len(sigmas) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.5 * n_cols, 4 * n_rows), squeeze=False, sharey=True)
    for ax, sigma_n in zip(axes.flat, sigmas):
        for i, n_noisy in enumerate(noisy_counts):
            s = sigma_n if n_noisy else 0.0
            ncs = sorted(nc for nc, nn, sg in means if nn == n_noisy and sg == s)
            ax.loglog(ncs, [means[nc, n_noisy, s] for nc in ncs], "o-", color=f"C{i}", label=f"n_noisy = {n_noisy}")
            if fits and sigma_n in fits:
                f = fits[sigma_n]
                grid = np.geomspace(min(ncs), max(ncs), 50)
                ax.loglog(grid, f["a"] * (grid + f["w"] * n_noisy) ** (-f["b"]) + f["c"], "--", color=f"C{i}")
        title = f"sigma_n = {sigma_n:g}"
        if fits and sigma_n in fits:
            title += f": w = {fits[sigma_n]['w']:.3f}"
        ax.set(title=title, xlabel="n_clean")
        ax.minorticks_off()
        ax.set_xticks(ncs, labels=[str(n) for n in ncs])
    for ax in axes.flat[len(sigmas):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean squared error of the means")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_global_curves(rows: Sequence[dict], reference: Sequence[dict], path: str | Path) -> Path:
    """PNG: the global regime's mean error over seeds against the total sample count n_clean + n_noisy.

    Solid: EM from random samples; dashed: on the same data, EM from the truth (the local regime's start: the
    gap is the cost of finding the clusters). Black: clean only; colours: a fixed n_clean plus n_noisy noisy
    samples, one colour per sigma_n. A point on the black curve of its style is worth 1 clean sample each.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for data, style, start in ((rows, "-", "random starts"), (reference, "--", "from the truth")):
        means = _seed_means(data)
        ax.loglog(*zip(*sorted((nc, e) for (nc, nn, _), e in means.items() if nn == 0)), "k." + style,
                  label=f"clean only, {start}")
        for j, n_clean in enumerate(sorted({nc for nc, nn, _ in means if nn > 0})):
            for i, sigma_n in enumerate(sorted({sg for _, nn, sg in means if nn > 0})):
                pts = sorted((nc + nn, e) for (nc, nn, sg), e in means.items()
                             if nc == n_clean and (nn == 0 or sg == sigma_n))
                ax.loglog(*zip(*pts), "os^vD"[j % 5] + style, color=f"C{i}", ms=4,
                          label=f"{n_clean} clean + noisy, sigma_n = {sigma_n:g}" if style == "-" else None)
    ax.set(xlabel="n_clean + n_noisy", ylabel="mean squared error of the means",
           title="global regime (d = 64): EM from random samples (solid) or from the truth (dashed)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_worth_by_sigma(series: dict[str, dict[str, tuple[dict, dict | None]]], path: str | Path) -> Path:
    """PNG: worth against sigma_n with its CIs and both fitted forms, one panel per regime (or start).

    series: {regime: {label: (decay_series arrays, fit_decay result or None)}}. Solid: exponential,
    dashed: power law; dotted black: the single-Gaussian worth 1 / (1 + sigma_n^2).
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(5.5 * len(series), 4.5), squeeze=False)
    for ax, (regime, by_label) in zip(axes[0], series.items()):
        top = max((a["sigma"].max() for a, _ in by_label.values() if len(a["sigma"])), default=3.0)
        grid = np.linspace(0.05, top * 1.05, 200)
        ax.semilogy(grid, 1 / (1 + grid**2), "k:", label="single Gaussian 1 / (1 + sigma_n^2)")
        for i, (label, (a, fit)) in enumerate(by_label.items()):
            ax.errorbar(a["sigma"], a["w"], yerr=[a["w"] - a["ci_low"], a["ci_high"] - a["w"]], fmt="o",
                        color=f"C{i}", capsize=3, label=label)
            for name, style in (("exponential", "-"), ("power", "--")) if fit else ():
                f = fit[name]
                ax.semilogy(grid, np.exp(DECAY_FORMS[name](grid, f["s"], f["exponent"])), style, color=f"C{i}",
                            lw=1, label=f"{name}: s = {f['s']:.2f}, exponent {f['exponent']:.2f}, chi2 {f['chi2']:.1f}")
        ax.set(title=regime, xlabel="sigma_n (units of s0)", ylabel="worth of a noisy sample, w")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def decay_line(fit: dict) -> str:
    """fit_decay's result in one line (the gmm CLI's and the study report's price list)."""
    e, p = fit["exponential"], fit["power"]
    return (f"exponential w = exp(-(sigma_n/{e['s']:.3f})^{e['exponent']:.2f}), chi2 = {e['chi2']:.2f}; "
            f"power law w = 1/(1 + (sigma_n/{p['s']:.3f})^{p['exponent']:.2f}), chi2 = {p['chi2']:.2f}; "
            f"delta AIC (power - exponential) = {fit['delta_aic']:.2f} over {fit['n_levels']} levels: "
            f"preferred {fit['preferred']}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the regimes' grids, print the worth of a noisy sample per sigma_n and the fits of w(sigma_n),
    write the figures."""
    parser = argparse.ArgumentParser(prog="python -m ambient.gmm", description=__doc__.split("\n")[0])
    parser.add_argument("--regime", choices=("local", "global", "both"), default="local")
    parser.add_argument("--out", default="gmm_worth.png",
                        help="the local regime's figure (PNG); beside it <stem>_global.png (the global regime's "
                             "error curves) and <stem>_sigma.png (w against sigma_n with both fits)")
    parser.add_argument("--seed-base", type=int, default=0,
                        help="first seed of each regime's range (a replicate: a range disjoint from 0-31, e.g. 1000)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    grids = {name: {**grid, "seeds": range(args.seed_base, args.seed_base + len(grid["seeds"]))}
             for name, grid in REGIMES.items()}
    worths: dict[str, dict[str, dict[float, dict]]] = {}        # regime -> series label -> sigma_n -> worth
    if args.regime in ("local", "both"):
        start = time.perf_counter()
        rows = run_gmm_grid(**grids["local"])
        fits = fit_gmm_worth(rows)
        seeds = grids["local"]["seeds"]
        print(f"local regime, seeds {seeds[0]}-{seeds[-1]}: {len(rows)} EM runs in {time.perf_counter() - start:.1f} s")
        for sigma_n, fit in fits.items():
            print(worth_sentence(fit, sigma_n), f"[b = {fit['b']:.2f}; a single Gaussian would give "
                                                f"1 / (1 + sigma_n^2) = {1 / (1 + sigma_n**2):.2f}]")
        print("figure:", plot_gmm_grid(rows, out, fits))
        worths["local"] = {"fit_worth": fits}
    if args.regime in ("global", "both"):
        start = time.perf_counter()
        grid = grids["global"]
        rows = run_gmm_grid(**grid)
        reference = run_gmm_grid(**{**grid, "start": "truth"})
        print(f"global regime, seeds {grid['seeds'][0]}-{grid['seeds'][-1]}: {len(rows)} EM fits "
              f"({grid['restarts']} random starts each), and on the same data {len(reference)} from the truth, "
              f"in {time.perf_counter() - start:.1f} s")
        random_start, from_truth, failed = _seed_means(rows), _seed_means(reference), search_failures(rows, reference)
        print("mean error from random starts / from the truth [share of seeds where the search missed a better "
              "optimum]:")
        for key in sorted(random_start, key=lambda key: (key[1], key[2], key[0])):
            print(f"  n_clean = {key[0]}, n_noisy = {key[1]}, sigma_n = {key[2]:g}: {random_start[key]:.4f} / "
                  f"{from_truth[key]:.4f} [{failed[key]:.2f}]")
        for regime, data in (("global", rows), ("global, from the truth", reference)):
            worths[regime] = {}
            for (n_clean, n_noisy), by_sigma in equivalent_worth(data).items():
                for sigma_n, e in by_sigma.items():
                    print(f"[{regime}]", equivalent_sentence(e, sigma_n))
                worths[regime][f"{n_clean} clean + {n_noisy} noisy"] = by_sigma
        print("figure:", plot_global_curves(rows, reference, out.with_name(f"{out.stem}_global{out.suffix}")))
    print("w(sigma_n), two forms, weighted least squares in log w:")
    series: dict[str, dict[str, tuple[dict, dict | None]]] = {}
    for regime, by_label in worths.items():
        series[regime] = {}
        for label, worth in by_label.items():
            arrays, skipped = decay_series(worth)
            fit = fit_decay(**arrays) if len(arrays["sigma"]) >= DECAY_MIN_LEVELS else None
            left_out = f"; left out (a bound, or a CI not above 0): sigma_n = {skipped}" if skipped else ""
            levels = ", ".join(f"{sg:g}: {w:.3g} ({lo:.3g}-{hi:.3g})" for sg, w, lo, hi in zip(*arrays.values()))
            print(f"  {regime}, {label}: w (CI) at sigma_n {levels}{left_out}\n    " +
                  (decay_line(fit) if fit else f"not fitted, {len(arrays['sigma'])} levels < {DECAY_MIN_LEVELS}"))
            series[regime][label] = (arrays, fit)
    print("figure:", plot_worth_by_sigma(series, out.with_name(f"{out.stem}_sigma{out.suffix}")))


if __name__ == "__main__":
    main()
