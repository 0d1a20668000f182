"""How much is a noisy image worth, measured two ways.

1. Equivalent clean count (`equivalent_clean`, model-free): for a mixed point (n_clean, n_noisy), the
   number n' of clean images whose clean-only model reaches the same metric, read off the clean-only
   curve (metric against log n, mean over seeds, made non-increasing, linear in between);
   worth = (n' - n_clean) / n_noisy. Outside the curve's range only a bound is reported. Each mixed
   point gets its own worth, so complementary data (few clean images teaching the low noise levels,
   many noisy ones the high levels) shows as a worth that depends on n_clean.
2. The paper-style effective-sample model (`fit_worth`): metric(n_clean, n_noisy) =
   a * (n_clean + w * n_noisy)^(-b) + c with one w for all points. n_clean + w * n_noisy is the
   effective sample size. The fit is a least-squares fit of log(metric) (relative errors, so the large
   metrics of small data sets do not dominate), with c >= 0 an optional floor and w in [0, w_max]. Its
   confidence interval comes from a bootstrap over seeds: resample whole seeds, refit.
"""
import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import least_squares

_W_STARTS = (0.1, 0.5, 1.0)


def _check_rows(rows: Sequence[dict], metric: str) -> None:
    """One clear error for the first malformed row."""
    if not rows:
        raise ValueError("no rows to fit")
    for i, r in enumerate(rows):
        for key in ("n_clean", "n_noisy", metric):
            if key not in r:
                raise ValueError(f"row {i} has no {key!r}: {r}")
        if r["n_clean"] < 0 or r["n_noisy"] < 0 or r["n_clean"] + r["n_noisy"] <= 0:
            raise ValueError(f"row {i}: n_clean and n_noisy must be >= 0 and not both 0, got {r}")
        if not (math.isfinite(r[metric]) and r[metric] > 0):
            raise ValueError(f"row {i}: {metric} must be finite and > 0 for a log-space fit, got {r[metric]}")


def _select_sigma(rows: Sequence[dict], sigma_n: float | None) -> list[dict]:
    """Rows with noisy images at noise level `sigma_n`, plus the clean-only rows (shared by every sigma_n)."""
    noisy_sigmas = sorted({float(r.get("sigma_n", math.nan)) for r in rows if r["n_noisy"] > 0})
    if not noisy_sigmas:
        raise ValueError("no row has n_noisy > 0: the worth w of a noisy image cannot be identified")
    if sigma_n is None:
        if len(noisy_sigmas) > 1:
            raise ValueError(f"rows mix noise levels {noisy_sigmas}: pass sigma_n= (or use fit_worth_by_sigma)")
        return list(rows)
    chosen = [r for r in rows if r["n_noisy"] == 0 or math.isclose(float(r.get("sigma_n", math.nan)), sigma_n)]
    if not any(r["n_noisy"] > 0 for r in chosen):
        raise ValueError(f"no row with n_noisy > 0 at sigma_n = {sigma_n}; noise levels present: {noisy_sigmas}")
    return chosen


def _unpack(p: np.ndarray, fit_floor: bool) -> tuple[float, float, float, float]:
    """Parameter vector -> (a, b, c, w); the vector is (log a, b, [c,] w)."""
    return (math.exp(p[0]), p[1], p[2] if fit_floor else 0.0, p[-1])


def _predict(p: np.ndarray, n_clean: np.ndarray, n_noisy: np.ndarray, fit_floor: bool) -> np.ndarray:
    a, b, c, w = _unpack(p, fit_floor)
    n_eff = np.maximum(n_clean + w * n_noisy, 1e-12)
    return a * n_eff ** (-b) + c


def _least_squares(x0: np.ndarray, nc: np.ndarray, nn: np.ndarray, y: np.ndarray, fit_floor: bool,
                   w_max: float):
    lower = [-np.inf, 1e-6] + ([0.0] if fit_floor else []) + [0.0]
    upper = [np.inf, 10.0] + ([np.inf] if fit_floor else []) + [w_max]
    x0 = np.clip(x0, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
    log_y = np.log(y)
    return least_squares(lambda p: np.log(_predict(p, nc, nn, fit_floor)) - log_y, x0,
                         bounds=(lower, upper), x_scale="jac", max_nfev=2000)


def _start(nc: np.ndarray, nn: np.ndarray, y: np.ndarray, w0: float, fit_floor: bool) -> np.ndarray:
    """Starting point: c0 = half the smallest metric, then a straight line through log(y - c0) vs log n_eff."""
    c0 = 0.5 * y.min() if fit_floor else 0.0
    slope, intercept = np.polyfit(np.log(nc + w0 * nn + 1e-12), np.log(y - c0), 1)
    return np.array([intercept, max(-slope, 0.05)] + ([c0] if fit_floor else []) + [w0])


def _arrays(rows: Sequence[dict], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.array([float(r[k]) for r in rows]) for k in ("n_clean", "n_noisy", metric))


def fit_worth(rows: Sequence[dict], metric: str = "fd", *, sigma_n: float | None = None, fit_floor: bool = True,
              w_max: float = 1.5, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """Fit a, b, c, w of metric = a * (n_clean + w * n_noisy)^(-b) + c to result rows.

    Each row is a dict with "n_clean", "n_noisy", `metric`, and optionally "seed" and "sigma_n". Clean-only
    rows (n_noisy = 0) are shared by all noise levels; noisy rows must all have one sigma_n, or pass
    `sigma_n` to pick one. The CI is a percentile bootstrap over seeds (`n_boot` resamples of whole seeds);
    with a single seed ci_low and ci_high are None.
    Returns dict(w, ci_low, ci_high, level, a, b, c, n_points, n_seeds, sigma_n).
    """
    _check_rows(rows, metric)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rows = _select_sigma(rows, sigma_n)
    n_params = 4 if fit_floor else 3
    if len(rows) <= n_params:
        raise ValueError(f"need more than {n_params} rows to fit {n_params} parameters, got {len(rows)}")
    nc, nn, y = _arrays(rows, metric)
    best = min((_least_squares(_start(nc, nn, y, w0, fit_floor), nc, nn, y, fit_floor, w_max)
                for w0 in _W_STARTS), key=lambda r: r.cost)
    a, b, c, w = _unpack(best.x, fit_floor)

    by_seed: dict = {}
    for r in rows:
        by_seed.setdefault(r.get("seed", 0), []).append(r)
    ci_low = ci_high = None
    if len(by_seed) > 1:
        rng = np.random.default_rng(seed)
        seeds = list(by_seed)
        boot = []
        for _ in range(n_boot):
            sample = [r for s in rng.choice(len(seeds), len(seeds)) for r in by_seed[seeds[s]]]
            bc, bn, by = _arrays(sample, metric)
            boot.append(_unpack(_least_squares(best.x, bc, bn, by, fit_floor, w_max).x, fit_floor)[3])
        ci_low, ci_high = (float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    noisy_sigma = next((r.get("sigma_n") for r in rows if r["n_noisy"] > 0), None)
    return {"w": float(w), "ci_low": ci_low, "ci_high": ci_high, "level": level, "a": a, "b": float(b),
            "c": float(c), "n_points": len(rows), "n_seeds": len(by_seed),
            "sigma_n": sigma_n if sigma_n is not None else noisy_sigma}


def fit_worth_by_sigma(rows: Sequence[dict], metric: str = "fd", **kwargs) -> dict[float, dict]:
    """fit_worth for every noise level present in the noisy rows, keyed by sigma_n."""
    _check_rows(rows, metric)
    sigmas = sorted({float(r["sigma_n"]) for r in rows if r["n_noisy"] > 0 and "sigma_n" in r})
    if not sigmas:
        raise ValueError("no row with n_noisy > 0 has a 'sigma_n'")
    return {s: fit_worth(rows, metric, sigma_n=s, **kwargs) for s in sigmas}


def worth_sentence(fit: dict, sigma_n: float | None = None) -> str:
    """One sentence answering the question, e.g. 'At sigma_n = 0.2 one noisy image is worth 0.31 clean
    images (95% CI 0.22-0.40, 3 seeds).'"""
    sigma_n = fit.get("sigma_n") if sigma_n is None else sigma_n
    seeds = f"{fit['n_seeds']} seed{'s' if fit['n_seeds'] != 1 else ''}"
    if fit["ci_low"] is None:
        ci = f"CI unavailable with {seeds}"
    else:
        ci = f"{round(100 * fit['level'])}% CI {fit['ci_low']:.2f}-{fit['ci_high']:.2f}, {seeds}"
    return f"At sigma_n = {sigma_n:g} one noisy image is worth {fit['w']:.2f} clean images ({ci})."


def _non_increasing(y: np.ndarray) -> np.ndarray:
    """Least-squares non-increasing fit of y (pool adjacent violators, equal weights)."""
    blocks: list[list[float]] = []                  # [mean, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return np.concatenate([np.full(int(c), m) for m, c in blocks])


def clean_count_for(sizes: Sequence[int], curve: Sequence[float], value: float) -> tuple[float, str]:
    """n' at which the clean-only curve reaches `value`, and "=" (inside its range), ">" (better than the
    largest size: n' > max size, which is returned) or "<" (worse than the smallest: n' < min size).

    The curve (metric at each size, lower is better) is made non-increasing (pool adjacent violators),
    then interpolated linearly in log n; on a flat stretch the smallest n that reaches `value` is taken.
    """
    n = np.asarray(sizes, dtype=float)
    if len(n) < 2 or np.any(np.diff(n) <= 0) or n[0] <= 0:
        raise ValueError(f"clean-only sizes must be >= 2 increasing positive counts, got {list(sizes)}")
    y = _non_increasing(np.asarray(curve, dtype=float))
    if value >= y[0]:
        return float(n[0]), "=" if value == y[0] else "<"
    if value < y[-1]:
        return float(n[-1]), ">"
    k = int(np.flatnonzero(y <= value)[0])          # first size at or below value; y[k - 1] > value
    t = (y[k - 1] - value) / (y[k - 1] - y[k])
    return float(np.exp(np.log(n[k - 1]) + t * (np.log(n[k]) - np.log(n[k - 1])))), "="


def equivalent_clean(clean: dict[int, Sequence[float]], values: Sequence[float], n_clean: int, n_noisy: int, *,
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Equivalent clean count and worth of one mixed point.

    clean: {size: metric of each seed} of the clean-only models (>= 2 sizes); values: the mixed point's metric
    of each seed. n' comes from the seed means (`clean_count_for`), worth = (n' - n_clean) / n_noisy.
    The CI resamples seeds with replacement, independently for every size and for the mixed point
    (percentile bootstrap; None with one seed everywhere). "bound" is "=" for an interpolated value, ">" when
    the point beats the largest clean size (n' and worth are lower bounds), "<" when it is worse than the
    smallest (upper bounds); "boot_inside" is the share of resamples that landed inside the curve's range.
    """
    if n_noisy <= 0:
        raise ValueError(f"a worth needs noisy images, got n_noisy = {n_noisy}")
    sizes = sorted(clean)
    means = [float(np.mean(clean[s])) for s in sizes]
    n_eq, bound = clean_count_for(sizes, means, float(np.mean(values)))
    out = {"n_clean": n_clean, "n_noisy": n_noisy, "n_equiv": n_eq, "bound": bound,
           "worth": (n_eq - n_clean) / n_noisy, "ci_low": None, "ci_high": None, "level": level,
           "boot_inside": None, "n_seeds": len(values)}
    if max(len(values), *(len(clean[s]) for s in sizes)) < 2:
        return out
    rng = np.random.default_rng(seed)
    boot, inside = [], 0
    for _ in range(n_boot):
        curve = [float(np.mean(rng.choice(clean[s], len(clean[s])))) for s in sizes]
        n_b, b = clean_count_for(sizes, curve, float(np.mean(rng.choice(values, len(values)))))
        boot.append((n_b - n_clean) / n_noisy)
        inside += b == "="
    out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
    out["boot_inside"] = inside / n_boot
    return out


def equivalent_sentence(e: dict, sigma_n: float) -> str:
    """E.g. 'At sigma_n = 0.2, 100 clean + 900 noisy images match 640 clean ones: a noisy image is worth 0.60
    clean images (95% CI 0.41-0.77, 3 seeds).'"""
    rel = {"=": "match", ">": "beat the largest clean-only set,", "<": "do worse than the smallest clean-only set,"}
    n_eq = {"=": f"{e['n_equiv']:.0f}", ">": f"more than {e['n_equiv']:.0f}", "<": f"fewer than {e['n_equiv']:.0f}"}
    worth = {"=": f"{e['worth']:.2f}", ">": f"more than {e['worth']:.2f}", "<": f"less than {e['worth']:.2f}"}
    b = e["bound"]
    ci = "" if e["ci_low"] is None or b != "=" else \
        f" ({round(100 * e['level'])}% CI {e['ci_low']:.2f}-{e['ci_high']:.2f}, {e['n_seeds']} seeds)"
    return (f"At sigma_n = {sigma_n:g}, {e['n_clean']} clean + {e['n_noisy']} noisy images {rel[b]} "
            f"{n_eq[b]} clean ones: a noisy image is worth {worth[b]} clean images{ci}.")
