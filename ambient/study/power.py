"""The means test and the seed count it needs: is one setting's mean metric below another's, over training seeds?

The per-run rule of report.compare asks whether a single run of one setting beats a single run of the other
(difference beyond 2 x the combined seed sd); more seeds never make that true when a setting scatters. The
means test asks about the means, which more seeds do pin down. With the seed values a (n_a of them) and
b (n_b), Welch's interval for the difference of the means d = mean(b) - mean(a) is

    SE = sqrt(s_a^2 / n_a + s_b^2 / n_b)
    nu = SE^4 / ((s_a^2 / n_a)^2 / (n_a - 1) + (s_b^2 / n_b)^2 / (n_b - 1))      (Welch-Satterthwaite)
    d +- t_{1 - alpha/2, nu} * SE

and the difference counts when that interval excludes 0. Its power against a true gap D is
P(|T| > t_{1 - alpha/2, nu}) with T noncentral t(nu, D / SE). `seed_plan` fixes the seeds of every setting
before training: the fewest added seeds (one at a time, to the setting whose extra seed shrinks the weakest
comparison's SE most) that give every comparison the stated power at the gap and sds measured so far.
"""
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import integrate, stats

ALPHA = 0.05               # two-sided level of the means test (95% interval)
POWER = 0.8                # power the seed plan asks for at the measured gap
MAX_SEEDS = 40             # a plan asking for more seeds per setting than this is reported as not reachable


def welch(a: Sequence[float], b: Sequence[float], alpha: float = ALPHA) -> tuple[float, float, float]:
    """(d, low, high): mean(b) - mean(a) and its Welch (1 - alpha) interval; needs >= 2 values on each side."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"the means test needs at least 2 seeds per setting, got {len(a)} and {len(b)}")
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    d, se = float(np.mean(b) - np.mean(a)), math.sqrt(va + vb)
    if se == 0:
        return d, d, d
    nu = se**4 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(1 - alpha / 2, nu)) * se
    return d, d - half, d + half


def compare_means(better: Sequence[float], worse: Sequence[float]) -> str | None:
    """Whether `better` has the lower mean than `worse` by the means test: "yes", "no" (significantly the other
    way), "tie" (the interval holds 0), None (a setting has fewer than 2 seeds)."""
    if len(better) < 2 or len(worse) < 2:
        return None
    _, low, high = welch(better, worse)
    return "yes" if low > 0 else "no" if high < 0 else "tie"


def welch_power(gap: float, sd_a: float, sd_b: float, n_a: int, n_b: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided Welch test at level alpha against a true difference `gap` of the means."""
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    if se == 0:
        return 1.0 if gap != 0 else 0.0
    nu = se**4 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    crit, nc = stats.t.ppf(1 - alpha / 2, nu), abs(gap) / se
    # T = (Z + nc) / sqrt(V / nu), V ~ chi2(nu): P(|T| > crit) = E_V[Phi(nc - c) + Phi(-c - nc)], c = crit sqrt(V / nu).
    # Integrated directly: scipy's noncentral t returns NaN for some large nc (e.g. nc 20, nu 2.03).
    def tails(v: float) -> float:
        c = crit * math.sqrt(v / nu)
        return float(stats.norm.cdf(nc - c) + stats.norm.cdf(-c - nc)) * float(stats.chi2.pdf(v, nu))
    mode = max(nu - 2, 0.0)
    value = sum(integrate.quad(tails, low, high, limit=200)[0] for low, high in ((0, mode), (mode, math.inf)))
    return min(max(value, 0.0), 1.0)


def seed_plan(settings: Mapping[str, Sequence[float]], comparisons: Sequence[tuple[str, str]],
              power: float = POWER, alpha: float = ALPHA) -> tuple[dict[str, int], list[dict]]:
    """Seeds per setting so that every comparison (a, b) reaches `power` at its measured gap and sds.

    `settings` maps a setting's name to its measured seed values (>= 2 each; they are never removed, so a
    plan's count is at least what was run). Returns the counts and, per comparison, the measured gap, the
    sds, the seeds planned and the power they give. A comparison that even MAX_SEEDS seeds on both sides cannot
    power is marked reachable False and adds no seeds (its gap is below what this study can resolve)."""
    sd = {k: float(np.std(v, ddof=1)) for k, v in settings.items()}
    gap = {(a, b): float(np.mean(settings[b]) - np.mean(settings[a])) for a, b in comparisons}
    n = {k: len(v) for k, v in settings.items()}

    def pw(c: tuple[str, str]) -> float:
        return welch_power(gap[c], sd[c[0]], sd[c[1]], n[c[0]], n[c[1]], alpha)

    reachable = {c: welch_power(gap[c], sd[c[0]], sd[c[1]], MAX_SEEDS, MAX_SEEDS, alpha) >= power
                 for c in comparisons}
    while open_ := [c for c in comparisons if reachable[c] and pw(c) < power]:
        a, b = min(open_, key=pw)                         # the seed that lowers SE^2 most: argmax s^2/(n(n+1))
        n[max((k for k in (a, b) if n[k] < MAX_SEEDS), key=lambda k: sd[k]**2 / (n[k] * (n[k] + 1)))] += 1
    rows = [{"better": a, "worse": b, "gap": gap[(a, b)], "sd_better": sd[a], "sd_worse": sd[b],
             "seeds_better": n[a], "seeds_worse": n[b], "power": pw((a, b)), "reachable": reachable[(a, b)]}
            for a, b in comparisons]
    return n, rows


def curve_value(sizes: Sequence[int], curve: Sequence[float], n: float) -> float:
    """The clean-only curve's metric at count n (sizes[0] <= n <= sizes[-1]): the inverse of
    scaling.clean_count_for, linear in log n between the sizes."""
    return float(np.interp(math.log(n), np.log(sizes), curve))


def worth_halfwidth(curve: Mapping[int, tuple[float, float]], point_sd: float, n_clean: int, n_noisy: int,
                    worth: float, seeds: int, curve_seeds: int, sims: int = 200, n_boot: int = 200,
                    seed: int = 0) -> float:
    """Median half-width of the 95% bootstrap CI of a mixed point's worth (scaling.equivalent_clean) with `seeds`
    seeds at the point and `curve_seeds` at every clean-only size, by simulation: the true curve is
    {size: (mean, sd)} (decreasing), the point's true metric the curve's at n' = n_clean + worth n_noisy, and every
    seed value normal around its mean with its sd. Deterministic in `seed`."""
    from .scaling import equivalent_clean
    sizes = sorted(curve)
    means = [curve[s][0] for s in sizes]
    truth = curve_value(sizes, means, n_clean + worth * n_noisy)
    rng = np.random.default_rng(seed)
    half = []
    for i in range(sims):
        runs = {s: rng.normal(curve[s][0], curve[s][1], curve_seeds) for s in sizes}
        e = equivalent_clean(runs, rng.normal(truth, point_sd, seeds), n_clean, n_noisy, n_boot=n_boot, seed=i)
        half.append((e["ci_high"] - e["ci_low"]) / 2)
    return float(np.median(half))
