"""The paper's theory as an experiment: estimating the means of a Gaussian mixture from clean and noisy samples.

Data: k equally weighted components N(mu_j, s0^2 I) in d >= k dimensions, means on a regular simplex with
every pair `separation` s0 apart (fixed across seeds, so only the samples vary). A clean sample is drawn
from the mixture; a noisy one gets extra N(0, sigma_n^2 I) noise, so its known variance is s0^2 + sigma_n^2.

Estimator: EM for the means with the weights and every sample's own variance known (heteroscedastic EM:
responsibilities use each sample's variance, the M-step weights samples by 1 / variance), whose fixed
points are the maximum-likelihood equations. It starts from the true means plus N(0, (init_scale s0)^2)
noise (seeded): the experiment measures the statistical error of fine estimation, not EM's global search;
matching the estimates to the true means (scipy's linear_sum_assignment) removes label switching.

For a single Gaussian one noisy sample carries s0^2 / (s0^2 + sigma_n^2) of a clean sample's information;
overlap between components makes noisy samples worth less (the paper: exponentially less for fine estimation).
"""
import argparse
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from ambient.scaling import fit_worth_by_sigma, worth_sentence

METRIC = "error"
DEMO_GRID = {"n_clean_list": (20, 40, 80, 160, 320, 640), "n_noisy_list": (0, 250, 1000, 4000),
             "sigma_n_list": (0.5, 1.0, 2.0), "seeds": range(16)}


def true_means(k: int, d: int, separation: float, s0: float = 1.0) -> np.ndarray:
    """(k, d) means at the vertices of a centred regular simplex, every pair `separation * s0` apart (d >= k)."""
    if d < k:
        raise ValueError(f"the simplex layout needs d >= k, got d={d}, k={k}")
    means = np.zeros((k, d))
    means[:, :k] = separation * s0 / np.sqrt(2) * np.eye(k)
    return means - means.mean(0)


def em_means(x: np.ndarray, var: np.ndarray, init: np.ndarray, *, max_iter: int = 1000,
             tol: float = 1e-6) -> tuple[np.ndarray, int]:
    """Heteroscedastic EM for the means of an equal-weight isotropic mixture, batched over problems.

    x: (S, N, d) samples of S independent problems; var: (N,) or (S, N) known per-sample variances;
    init: (S, k, d). Returns the (S, k, d) means and the number of iterations run (stops when no mean
    moves by more than `tol`).
    """
    x, init = np.asarray(x, np.float64), np.asarray(init, np.float64)
    if x.ndim != 3 or init.ndim != 3 or init.shape[0] != x.shape[0] or init.shape[2] != x.shape[2]:
        raise ValueError(f"x must be (S, N, d) and init (S, k, d), got {x.shape} and {init.shape}")
    var = np.broadcast_to(np.asarray(var, np.float64), x.shape[:2])
    if not np.all(np.isfinite(var) & (var > 0)):
        raise ValueError("variances must be finite and > 0")
    inv_var = 1.0 / var
    mu = init.copy()
    for it in range(1, max_iter + 1):
        # -|x - mu_j|^2 / (2 v) up to the term -|x|^2 / (2 v), which is the same for every j.
        logits = (x @ mu.transpose(0, 2, 1) - 0.5 * (mu**2).sum(-1)[:, None, :]) * inv_var[..., None]
        r = np.exp(logits - logits.max(-1, keepdims=True))                    # (S, N, k)
        wgt = r * (inv_var / r.sum(-1))[..., None]                             # responsibility / variance
        den = wgt.sum(1)[..., None]
        new = np.where(den > 0, wgt.transpose(0, 2, 1) @ x / np.maximum(den, 1e-300), mu)
        moved = np.abs(new - mu).max()
        mu = new
        if moved <= tol:
            break
    return mu, it


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
                 init_scale: float = 0.3, max_iter: int = 1000, tol: float = 1e-6) -> list[dict]:
    """EM error for every (n_clean, n_noisy, sigma_n, seed); rows as fit_worth expects.

    Clean-only points (n_noisy = 0) are run once and carry sigma_n = 0. Each row:
    {"n_clean", "n_noisy", "sigma_n", "seed", "error", "iterations"}.
    """
    n_clean_list, n_noisy_list = sorted(set(n_clean_list)), sorted(set(n_noisy_list))
    sigma_n_list, seeds = sorted(set(sigma_n_list)), list(seeds)
    if not n_clean_list or not n_noisy_list or not seeds:
        raise ValueError("n_clean_list, n_noisy_list and seeds must not be empty")
    if min(n_clean_list) < 0 or min(n_noisy_list) < 0:
        raise ValueError("sample counts must be >= 0")
    if any(s <= 0 for s in sigma_n_list) or (max(n_noisy_list) > 0 and not sigma_n_list):
        raise ValueError(f"sigma_n_list must hold noise levels > 0, got {sigma_n_list}")
    if s0 <= 0 or k < 1 or d < 1:
        raise ValueError(f"need s0 > 0, k >= 1, d >= 1; got s0={s0}, k={k}, d={d}")
    means = true_means(k, d, separation, s0)
    clean, noisy_base, extra, init = _pools(seeds, means, s0, max(n_clean_list), max(n_noisy_list), init_scale)
    rows = []
    for n_noisy in n_noisy_list:
        for sigma_n in (sigma_n_list if n_noisy > 0 else [0.0]):
            for n_clean in n_clean_list:
                if n_clean + n_noisy == 0:
                    continue
                x = np.concatenate([clean[:, :n_clean], noisy_base[:, :n_noisy] + sigma_n * extra[:, :n_noisy]], 1)
                var = np.concatenate([np.full(n_clean, s0**2), np.full(n_noisy, s0**2 + sigma_n**2)])
                est, iters = em_means(x, var, init, max_iter=max_iter, tol=tol)
                for seed, err in zip(seeds, matched_error(est, means)):
                    rows.append({"n_clean": n_clean, "n_noisy": n_noisy, "sigma_n": sigma_n, "seed": seed,
                                 METRIC: float(err), "iterations": iters})
    return rows


def fit_gmm_worth(rows: Sequence[dict], **kwargs) -> dict[float, dict]:
    """Worth of a noisy sample per sigma_n (scaling.fit_worth with no floor: EM's error tends to 0)."""
    return fit_worth_by_sigma(rows, METRIC, **{"fit_floor": False, **kwargs})


def plot_gmm_grid(rows: Sequence[dict], path: str | Path, fits: dict[float, dict] | None = None) -> Path:
    """PNG: mean error over seeds vs n_clean, one line per n_noisy, one panel per sigma_n (fits dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_curve(n_noisy: int, sigma_n: float) -> tuple[list[int], list[float]]:
        sel = [r for r in rows if r["n_noisy"] == n_noisy and (n_noisy == 0 or r["sigma_n"] == sigma_n)]
        ncs = sorted({r["n_clean"] for r in sel})
        return ncs, [np.mean([r[METRIC] for r in sel if r["n_clean"] == nc]) for nc in ncs]

    sigmas = sorted({r["sigma_n"] for r in rows if r["n_noisy"] > 0})
    if not sigmas:
        raise ValueError("no rows with noisy samples to plot")
    noisy_counts = sorted({r["n_noisy"] for r in rows})
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.5 * len(sigmas), 4), squeeze=False, sharey=True)
    for ax, sigma_n in zip(axes[0], sigmas):
        for i, n_noisy in enumerate(noisy_counts):
            ncs, errs = mean_curve(n_noisy, sigma_n)
            ax.loglog(ncs, errs, "o-", color=f"C{i}", label=f"n_noisy = {n_noisy}")
            if fits and sigma_n in fits:
                f = fits[sigma_n]
                grid = np.geomspace(min(ncs), max(ncs), 50)
                ax.loglog(grid, f["a"] * (grid + f["w"] * n_noisy) ** (-f["b"]) + f["c"], "--", color=f"C{i}")
        title = f"sigma_n = {sigma_n:g}"
        if fits and sigma_n in fits:
            title += f": w = {fits[sigma_n]['w']:.2f}"
        ax.set(title=title, xlabel="n_clean")
        ax.minorticks_off()
        ax.set_xticks(ncs, labels=[str(n) for n in ncs])
    axes[0][0].set_ylabel("mean squared error of the means")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo grid, print the worth of a noisy sample per sigma_n, write the figure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gmm_worth.png", help="where to write the figure (PNG)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run_gmm_grid(**DEMO_GRID)
    fits = fit_gmm_worth(rows)
    print(f"{len(rows)} EM runs in {time.perf_counter() - start:.1f} s")
    for sigma_n, fit in fits.items():
        print(worth_sentence(fit, sigma_n), f"[b = {fit['b']:.2f}; a single Gaussian would give "
                                            f"1 / (1 + sigma_n^2) = {1 / (1 + sigma_n**2):.2f}]")
    print("figure:", plot_gmm_grid(rows, args.out, fits))


if __name__ == "__main__":
    main()
