"""The report of a data-scaling study, made from its rows alone (one dict per evaluated point, see CSV_FIELDS).

Tables in markdown (all points; the paper's Table 1 per sigma_n with its ordering verdict; the equivalent clean
count of every mixed point, and where an n_clean was run at several sigma_n the price list, 1 / worth, with the
worth's decay in sigma_n fitted; the noisy-only points under both samplers, where they were also evaluated stopped at
sigma_n; Inception FID beside the metric, Table 1 under it and where the two disagree, where the kept samples were
scored; the metric at the last snapshots), the effective-sample fit, the figures, and
results.csv / results.json. Nothing here knows the study folder or runs anything: ambient.study collects the
rows from the points it ran and calls write_results.
"""
import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from ambient.common.atomic import write_json
from ambient.common.plotting import pyplot

from . import gmm, power, scaling

TABLE1 = ("100% clean", "100% noisy", "10% clean only", "90% noisy + 10% clean")
CSV_FIELDS = ("name", "n_clean", "n_noisy", "sigma_n", "seed", "metric", "value", "sd", "floor", "kid", "memorised",
              "nn_ratio", "n", "kimg", "snapshots", "train_seconds", "restore_seconds", "eval_seconds",
              "value_stop", "sd_stop",      # a noisy-only point's metric with the sampler stopped at sigma_n
              "fid", "fid_stop")            # Inception FID of its kept samples (both samplers), study --score-fid
FID = "FID"
SIGNIFICANCE = 2.0                 # a difference counts when it exceeds 2 x the combined sd over seeds
TABLE1_COMPARISONS = (("100% clean", "90% noisy + 10% clean"),          # the ordering's "<=": not reversed
                      ("90% noisy + 10% clean", "10% clean only"),      # its two strict "<"
                      ("90% noisy + 10% clean", "100% noisy"))
PRICE_MIN_LEVELS = 4               # fit_decay's minimum in the price list (its 4 levels): 2 parameters + 2 dof


def table1_pairs(n: int) -> dict[str, tuple[int, int]]:
    """The paper's four Table 1 settings for a data set of n images, as (n_clean, n_noisy)."""
    tenth = round(n / 10)
    if tenth < 1:
        raise ValueError(f"--table1 needs a data set of at least 5 images, got {n}")
    return dict(zip(TABLE1, ((n, 0), (0, n), (tenth, 0), (tenth, n - tenth))))


def _spread(group: Sequence[dict]) -> float:
    """Error bar of one setting: sd over seeds, or with one seed the bootstrap sd of its evaluation."""
    if len(group) > 1:
        return float(np.std([r["value"] for r in group], ddof=1))
    return group[0]["sd"] or 0.0


def _mean_sd(values: Sequence[float]) -> str:
    """'mean ± sd' over seeds (the value alone for one seed)."""
    return f"{values[0]:.2f}" if len(values) == 1 else f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def _group_cells(group: Sequence[dict]) -> str:
    """'value | bootstrap sd | seeds' cells of a group of rows: mean ± sd over seeds, mean bootstrap sd."""
    value = _mean_sd([r["value"] for r in group])
    sds = [r["sd"] for r in group if r["sd"] is not None]
    return f"{value} | {f'{np.mean(sds):.2f}' if sds else ''} | {len(group)}"


def _floor_lines(rows: Sequence[dict]) -> list[str]:
    return [f"| real vs real (floor) | | | {floor:.2f} | | n = {n} |"
            for n, floor in sorted({(r["n"], r["floor"]) for r in rows if r["floor"] is not None})]


def _header(first: str, metric: str) -> list[str]:
    return [f"| {first} | n_clean | n_noisy | {metric} | bootstrap sd | seeds |", "|---|---|---|---|---|---|"]


def setting_rows(rows: Sequence[dict], n_clean: int, n_noisy: int, sigma_n: float) -> list[dict]:
    """The rows (one per seed) of one setting; clean-only settings ignore sigma_n."""
    return [r for r in rows if r["n_clean"] == n_clean and r["n_noisy"] == n_noisy
            and (n_noisy == 0 or math.isclose(r["sigma_n"], sigma_n))]


def has_fid(rows: Sequence[dict]) -> bool:
    """Whether any point's samples were scored with Inception FID (study --score-fid)."""
    return any(r.get("fid") is not None for r in rows)


def fid_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows as the study reads them under Inception FID: the points scored, their value the FID (no bootstrap
    sd, no floor), so that every table and verdict of the study's metric applies to FID unchanged."""
    return [{**r, "value": r["fid"], "sd": None, "floor": None} for r in rows if r.get("fid") is not None]


def _fid_cell(group: Sequence[dict]) -> str:
    """FID of a setting's rows: mean ± sd over the seeds scored ("of K seeds" when not all were), "-" if none."""
    scored = [r["fid"] for r in group if r.get("fid") is not None]
    seeds = "" if len(scored) == len(group) else f" ({len(scored)} of {len(group)} seeds)"
    return f"{_mean_sd(scored)}{seeds}" if scored else "-"


def summary_table(rows: Sequence[dict], metric: str, data: str) -> str:
    """Markdown: one line per (n_clean, n_noisy, sigma_n) with the metric over seeds (and FID beside it, where any
    point was scored), and the floor."""
    keys = sorted({(r["n_clean"], r["n_noisy"], r["sigma_n"]) for r in rows})
    fid = has_fid(rows)
    lines = _header(f"{data}: sigma_n", metric)
    if fid:
        lines = [lines[0] + f" {FID} |", lines[1] + "---|"]
    for c, m, s in keys:
        group = setting_rows(rows, c, m, s)
        lines.append(f"| {f'{s:g}' if m else '-'} | {c} | {m} | {_group_cells(group)} |"
                     + (f" {_fid_cell(group)} |" if fid else ""))
    return "\n".join(lines + [line + (" |" if fid else "") for line in _floor_lines(rows)])


def compare(better: Sequence[dict], worse: Sequence[dict]) -> str:
    """Whether setting `better` has the lower metric than `worse`, counted only beyond SIGNIFICANCE x the
    combined spread sqrt(sd1^2 + sd2^2) (sd over seeds; bootstrap sd for a single seed):
    "yes", "no" (significantly the other way) or "tie" (within the noise)."""
    diff = float(np.mean([r["value"] for r in worse]) - np.mean([r["value"] for r in better]))
    margin = SIGNIFICANCE * math.hypot(_spread(better), _spread(worse))
    return "yes" if diff > margin else "no" if diff < -margin else "tie"


def _verdict(first: str | None, strict: Sequence[str | None]) -> str | None:
    """The ordering from the verdicts of TABLE1_COMPARISONS: "holds" (both strict relations significant, the
    first not reversed), "does NOT hold" (a relation significantly reversed), "unresolved" (otherwise), None
    (a verdict missing)."""
    if first is None or None in strict:
        return None
    return ("does NOT hold" if first == "no" or "no" in strict else
            "holds" if list(strict) == ["yes", "yes"] else "unresolved")


def _comparison(better: Sequence[dict], worse: Sequence[dict]) -> tuple[str, tuple[str, str | None]]:
    """'mean difference | Welch 95% interval | per-run verdict | means verdict' cells of two settings' rows, and
    the two verdicts (`compare`; power.compare_means, None with one seed)."""
    b, w = [r["value"] for r in better], [r["value"] for r in worse]
    runs, means = compare(better, worse), power.compare_means(b, w)
    interval = "" if means is None else "{1:.2f} to {2:.2f}".format(*power.welch(b, w))
    return f"{np.mean(w) - np.mean(b):.2f} | {interval} | {runs} | {means or 'needs 2 seeds'}", (runs, means)


def _table1_groups(rows: Sequence[dict], sigma_n: float) -> dict[str, list[dict]]:
    """The rows of each of the paper's Table 1 settings at `sigma_n` that has any, in TABLE1 order."""
    size = max(r["n_clean"] + r["n_noisy"] for r in rows)
    return {label: group for label, (c, m) in table1_pairs(size).items()
            if (group := setting_rows(rows, c, m, sigma_n))}


def table1_comparisons(rows: Sequence[dict],
                       sigma_n: float) -> dict[tuple[str, str], tuple[str, tuple[str, str | None]]] | None:
    """`_comparison` (its cells and its per-run and means verdicts) of each of TABLE1_COMPARISONS at `sigma_n`;
    None unless all four settings were run."""
    groups = _table1_groups(rows, sigma_n)
    if len(groups) < len(TABLE1):
        return None
    return {(better, worse): _comparison(groups[better], groups[worse]) for better, worse in TABLE1_COMPARISONS}


def table1(rows: Sequence[dict], sigma_n: float, metric: str, data: str) -> tuple[str, str | None, str | None] | None:
    """Markdown of the paper's Table 1 layout at `sigma_n` (None if none of its points were run: mean ± sd over
    seeds, and the mean bootstrap sd of a single evaluation), then each of its three comparisons with both
    verdicts, and the verdicts on the paper's ordering
    metric(100% clean) <= metric(90% noisy + 10% clean) < min(metric(10% clean only), metric(100% noisy)):
    per run (`compare`, beyond SIGNIFICANCE x the combined seed sd) and on the means (power.compare_means,
    Welch 95% interval excluding 0); see _verdict. A verdict is None when a setting is missing (or, for the
    means, has one seed)."""
    groups = _table1_groups(rows, sigma_n)
    if not groups:
        return None
    size = max(r["n_clean"] + r["n_noisy"] for r in rows)
    pairs = table1_pairs(size)
    lines = _header(f"{data}, sigma_n = {sigma_n:g}", metric)
    lines += [f"| {label} | {pairs[label][0]} | {pairs[label][1]} | {_group_cells(group)} |"
              for label, group in groups.items()]
    lines += _floor_lines(rows)
    comparisons = table1_comparisons(rows, sigma_n)
    if comparisons is None:
        return "\n".join(lines), None, None
    lines += ["", "| comparison | mean difference | Welch 95% interval | per-run verdict | means verdict |",
              "|---|---|---|---|---|"]
    lines += [f"| {better} < {worse} | {cells} |" for (better, worse), (cells, _) in comparisons.items()]
    verdicts = {pair: v for pair, (_, v) in comparisons.items()}
    first, *strict = TABLE1_COMPARISONS
    return ("\n".join(lines), _verdict(verdicts[first][0], [verdicts[c][0] for c in strict]),
            _verdict(verdicts[first][1], [verdicts[c][1] for c in strict]))


def stopped_rows(rows: Sequence[dict]) -> list[dict]:
    """The rows as the study reads with its noisy-only points (n_clean = 0) sampled stopped at sigma_n: their
    value and bootstrap sd are the stopped ones, their seeds not evaluated that way are left out, every other row
    is unchanged."""
    return [r if r["n_clean"] or not r["n_noisy"] else {**r, "value": r["value_stop"], "sd": r.get("sd_stop")}
            for r in rows if r["n_clean"] or not r["n_noisy"] or r.get("value_stop") is not None]


def samplers_table(rows: Sequence[dict], metric: str, data: str) -> tuple[str, dict[str, tuple[str | None, ...]]]:
    """Markdown: every noisy-only setting under the full sampler (down to 0.002) and stopped at its sigma_n (mean ±
    sd over seeds, "-" where no seed was evaluated that way); then, per sigma_n, Table 1's comparison with the
    100%-noisy setting and the two ordering verdicts under each choice (the other settings keep the full
    sampler). Also {sigma_n: (per-run, means verdict)} with the stopped sampler."""
    stopped = stopped_rows(rows)
    lines = [f"| sigma_n | n_noisy | full sampler: {metric} | bootstrap sd | seeds | stopped at sigma_n: {metric} | "
             "bootstrap sd | seeds |", "|---|---|---|---|---|---|---|---|"]
    for _, m, s in sorted({(r["n_clean"], r["n_noisy"], r["sigma_n"]) for r in rows if not r["n_clean"]}):
        group = setting_rows(stopped, 0, m, s)
        lines.append(f"| {s:g} | {m} | {_group_cells(setting_rows(rows, 0, m, s))} | "
                     f"{_group_cells(group) if group else '- | - | 0'} |")
    size = max(r["n_clean"] + r["n_noisy"] for r in rows)
    pairs = table1_pairs(size)
    mixed, noisy = "90% noisy + 10% clean", "100% noisy"
    lines += ["", f"| sigma_n | 100% noisy sampled | {noisy}: {metric} | {mixed} < {noisy}: mean difference | "
              "Welch 95% interval | per-run verdict | means verdict | ordering per run | ordering on the means |",
              "|---|---|---|---|---|---|---|---|---|"]
    verdicts = {}
    for s in sorted({r["sigma_n"] for r in rows if not r["n_clean"] and r["n_noisy"] == size}):
        for how, variant in (("full (to 0.002)", rows), ("stopped at sigma_n", stopped)):
            better, worse = setting_rows(variant, *pairs[mixed], s), setting_rows(variant, *pairs[noisy], s)
            result = table1(variant, s, metric, data) if worse else None
            cells = _comparison(better, worse)[0] if better and worse else "- | - | - | -"
            said = [v or "-" for v in result[1:]] if result else ["-", "-"]
            value = f"{_mean_sd([r['value'] for r in worse])} ({len(worse)} seeds)" if worse else "-"
            lines.append(f"| {s:g} | {how} | {value} | {cells} | {' | '.join(said)} |")
            if variant is stopped:
                verdicts[f"{s:g}"] = tuple(result[1:]) if result else (None, None)
    return "\n".join(lines), verdicts


def _setting_label(c: int, m: int, s: float) -> str:
    return f"{c} clean + {m} noisy at sigma_n {s:g}" if m else f"{c} clean"


def disagreement(rows: Sequence[dict], metric: str) -> str:
    """Markdown: where the study's metric and Inception FID disagree. The Table-1 comparisons (at every sigma_n)
    whose per-run or means verdict differs between the two (`table1_comparisons` on the rows and on `fid_rows`),
    then every setting scored under both, by its mean under each metric and its rank (1 = best), with the Spearman
    rank correlation of the two orders."""
    under_fid = fid_rows(rows)
    lines = [f"| sigma_n | comparison | {metric}: per-run | {metric}: means | {FID}: per-run | {FID}: means |",
             "|---|---|---|---|---|---|"]
    for s in sorted({r["sigma_n"] for r in rows if r["n_noisy"]}):
        ours, theirs = table1_comparisons(rows, s), table1_comparisons(under_fid, s) if under_fid else None
        for pair in (TABLE1_COMPARISONS if ours and theirs else ()):
            if ours[pair][1] != theirs[pair][1]:
                said = [v or "-" for v in (*ours[pair][1], *theirs[pair][1])]
                lines.append(f"| {s:g} | {pair[0]} < {pair[1]} | {' | '.join(said)} |")
    if len(lines) == 2:
        lines = [f"No Table-1 comparison's verdict differs between {metric} and {FID} (among those both can make)."]
    keys = sorted({(r["n_clean"], r["n_noisy"], r["sigma_n"]) for r in under_fid})
    means = np.array([[np.mean([r["value"] for r in setting_rows(which, *k)]) for which in (rows, under_fid)]
                      for k in keys])
    ranks = means.argsort(0).argsort(0) + 1
    lines += ["", f"| setting | {metric} (mean) | rank | {FID} (mean) | rank |", "|---|---|---|---|---|"]
    lines += [f"| {_setting_label(*keys[i])} | {means[i, 0]:.2f} | {ranks[i, 0]} | {means[i, 1]:.2f} | {ranks[i, 1]} |"
              for i in np.argsort(means[:, 0], kind="stable")]
    if len(keys) >= 3:
        rho = stats.spearmanr(means[:, 0], means[:, 1]).statistic
        lines += ["", f"Spearman rank correlation of the settings' means under {metric} and {FID}: {rho:.2f} "
                  f"({len(keys)} settings; {metric} over all their seeds, {FID} over those scored)."]
    return "\n".join(lines)


def table1_seed_plan(rows: Sequence[dict]) -> tuple[dict[tuple[int, int, float], int], str]:
    """power.seed_plan over the Table-1 comparisons at every sigma_n (a clean-only setting shared by the levels
    counted once): seeds per (n_clean, n_noisy, sigma_n), and a markdown table of the plan."""
    size = max(r["n_clean"] + r["n_noisy"] for r in rows)
    settings, comparisons = {}, []
    for s in sorted({r["sigma_n"] for r in rows if r["n_noisy"]}):
        keys = {label: (c, m, s if m else 0.0) for label, (c, m) in table1_pairs(size).items()}
        for key in keys.values():
            settings.setdefault(key, [r["value"] for r in setting_rows(rows, *key)])
        comparisons += [(keys[a], keys[b]) for a, b in TABLE1_COMPARISONS]
    counts, plan = power.seed_plan(settings, comparisons)
    label = {(c, m): name for name, (c, m) in table1_pairs(size).items()}
    lines = [f"| sigma_n | comparison | measured gap | sds | seeds | power at the gap (alpha {power.ALPHA:g}) |",
             "|---|---|---|---|---|---|"]
    for r, (a, b) in zip(plan, comparisons):
        note = "" if r["reachable"] else f" (not reachable with {power.MAX_SEEDS} seeds)"
        lines.append(f"| {max(a[2], b[2]):g} | {label[a[:2]]} < {label[b[:2]]} | {r['gap']:.2f} | "
                     f"{r['sd_better']:.2f}, {r['sd_worse']:.2f} | {r['seeds_better']}, {r['seeds_worse']} | "
                     f"{r['power']:.2f}{note} |")
    return counts, "\n".join(lines)


def ordering_sentence(verdict: str | None, metric: str, means: bool = False) -> str:
    """States the paper's ordering and whether it holds, by the per-run rule or (means=True) the means test."""
    rule = (f"{metric}(100% clean) <= {metric}(90% noisy + 10% clean) < "
            f"min({metric}(10% clean only), {metric}(100% noisy))")
    how = ("on the means (each difference counted when its Welch 95% interval excludes 0)" if means else
           f"per run (each difference counted beyond {SIGNIFICANCE:g} x the combined seed sd)")
    said = {"holds": "holds", "does NOT hold": "does NOT hold", "unresolved": "is unresolved",
            None: "cannot be checked (a setting is missing" + (" or has one seed)" if means else ")")}[verdict]
    return f"{'Means' if means else 'Per-run'} verdict: the paper's ordering {rule} {said} {how}."


def worth_fits(rows: Sequence[dict]) -> tuple[dict[float, dict], list[str]]:
    """The paper-style effective-sample fit (scaling.fit_worth) per sigma_n, on the points with n_clean > 0
    only (a 100% noisy point cannot share one w with them, see equivalent_counts), and one sentence each."""
    fits, sentences = {}, []
    with_clean = [r for r in rows if r["n_clean"] > 0]
    for s in sorted({r["sigma_n"] for r in rows if r["n_noisy"]}):
        try:
            fits[s] = scaling.fit_worth(with_clean, "value", sigma_n=s)
            sentences.append("Effective-sample model (points with n_clean > 0): "
                             + scaling.worth_sentence(fits[s], s))
        except ValueError as e:
            sentences.append(f"At sigma_n = {s:g} the effective-sample model cannot be fitted: {e}.")
    return fits, sentences


def equivalent_counts(rows: Sequence[dict]) -> list[dict]:
    """scaling.equivalent_clean of every mixed setting (n_noisy > 0), against the clean-only settings."""
    clean: dict[int, list[float]] = {}
    for r in rows:
        if r["n_noisy"] == 0:
            clean.setdefault(r["n_clean"], []).append(r["value"])
    if len(clean) < 2:
        return []
    out = []
    for c, m, s in sorted({(r["n_clean"], r["n_noisy"], r["sigma_n"]) for r in rows if r["n_noisy"]}):
        values = [r["value"] for r in setting_rows(rows, c, m, s)]
        out.append({"sigma_n": s, **scaling.equivalent_clean(clean, values, c, m)})
    return out


def equivalent_table(eqs: Sequence[dict]) -> str:
    """Markdown: the equivalent clean count and worth of each mixed setting; bounds marked > or <."""
    lines = ["| sigma_n | n_clean | n_noisy | equivalent clean count | worth of a noisy image | 95% CI | seeds |",
             "|---|---|---|---|---|---|---|"]
    for e in eqs:
        b = "" if e["bound"] == "=" else e["bound"] + " "
        ci = f"{e['ci_low']:.2f} - {e['ci_high']:.2f}" if e["ci_low"] is not None and e["bound"] == "=" else ""
        lines.append(f"| {e['sigma_n']:g} | {e['n_clean']} | {e['n_noisy']} | {b}{e['n_equiv']:.0f} | "
                     f"{b}{e['worth']:.3f} | {ci} | {e['n_seeds']} |")
    return "\n".join(lines)


def _worth_series(eqs: Sequence[dict]) -> dict[int, dict[float, dict]]:
    """The mixed settings' worths as one series per n_clean, keyed by sigma_n (the price plan has one n_noisy
    per n_clean)."""
    series: dict[int, dict[float, dict]] = {}
    for e in eqs:
        series.setdefault(e["n_clean"], {})[e["sigma_n"]] = e
    return series


def has_price_list(eqs: Sequence[dict]) -> bool:
    """Whether the study prices noisy images against sigma_n: some n_clean has mixed settings at >= 2 sigma_n."""
    return any(len(by_sigma) > 1 for by_sigma in _worth_series(eqs).values())


def _price(worth: float | None) -> float | None:
    """Noisy images that buy one clean image at this worth: 1 / worth, None (unbounded) where worth <= 0."""
    return 1 / worth if worth is not None and worth > 0 else None


def price_list(eqs: Sequence[dict]) -> list[dict]:
    """The price list: each mixed setting's worth w (equivalent_counts) with its price ratio 1 / w, how many
    noisy images buy one clean image, and the price's CI [1 / ci_high, 1 / ci_low]; None stands for an unbounded
    price or end (w or the CI end <= 0), both ends are None without a CI. A bound on w bounds the price the
    other way ("price_bound"), except that a worth below a bound <= 0 has no price at all (None, "=")."""
    out = []
    for e in eqs:
        price = _price(e["worth"])
        exact = e["bound"] == "=" or (e["bound"] == "<" and price is None)
        out.append({k: e[k] for k in ("sigma_n", "n_clean", "n_noisy", "worth", "bound", "ci_low", "ci_high")}
                   | {"price": price, "price_bound": "=" if exact else {">": "<", "<": ">"}[e["bound"]],
                      "price_low": _price(e["ci_high"]), "price_high": _price(e["ci_low"]),
                      "n_seeds": e["n_seeds"]})
    return out


def price_table(prices: Sequence[dict]) -> str:
    """Markdown of price_list: one line per (n_clean, sigma_n), "inf" for an unbounded price; bounds marked > or <
    and shown without a CI, as in equivalent_table."""
    def number(x: float | None) -> str:
        return "inf" if x is None else f"{x:.2f}"
    lines = ["| sigma_n | n_clean | n_noisy | worth w of a noisy image | 95% CI | price 1/w: noisy images per clean "
             "image | 95% CI | seeds |", "|---|---|---|---|---|---|---|---|"]
    for p in sorted(prices, key=lambda p: (p["n_clean"], p["n_noisy"], p["sigma_n"])):
        b, pb = ("" if x == "=" else x + " " for x in (p["bound"], p["price_bound"]))
        cis = ("", "")
        if p["bound"] == "=" and p["ci_low"] is not None:
            cis = (f"{p['ci_low']:.3f} - {p['ci_high']:.3f}", f"{number(p['price_low'])} - {number(p['price_high'])}")
        lines.append(f"| {p['sigma_n']:g} | {p['n_clean'] or '0 (noisy only)'} | {p['n_noisy']} | {b}{p['worth']:.3f} "
                     f"| {cis[0]} | {pb}{number(p['price'])} | {cis[1]} | {p['n_seeds']} |")
    return "\n".join(lines)


def worth_decay_fits(eqs: Sequence[dict]) -> tuple[dict[int, dict], list[str]]:
    """gmm.fit_decay of the worth against sigma_n per n_clean (exponential and power law), on the levels
    gmm.decay_series keeps (no bound, CI above 0), with at least PRICE_MIN_LEVELS of them; one sentence per fit
    and one naming the n_clean that could not be fitted."""
    fits, sentences, unfitted = {}, [], []
    for c, by_sigma in sorted(_worth_series(eqs).items()):
        arrays, skipped = gmm.decay_series(by_sigma)
        if len(arrays["sigma"]) < PRICE_MIN_LEVELS:
            left_out = f", left out sigma_n {', '.join(f'{s:g}' for s in skipped)}" if skipped else ""
            unfitted.append(f"n_clean = {c} ({len(arrays['sigma'])} of {len(by_sigma)} levels usable{left_out})")
            continue
        fits[c] = gmm.fit_decay(**arrays, min_levels=PRICE_MIN_LEVELS)
        sentences.append(f"n_clean = {c}: {gmm.decay_line(fits[c])}.")
    if unfitted:
        sentences.append(f"Not fitted, fewer than {PRICE_MIN_LEVELS} usable noise levels (a worth that is only a "
                         f"bound, or whose CI does not lie above 0, is left out): {'; '.join(unfitted)}.")
    return fits, sentences


def snapshot_table(rows: Sequence[dict], metric: str) -> str:
    """Markdown: the metric (mean ± sd over seeds) at each evaluated snapshot, and the share of copies."""
    keys = sorted({(r["n_clean"], r["n_noisy"], r["sigma_n"]) for r in rows})
    kimgs = sorted({k for r in rows for k in json.loads(r["snapshots"])}, key=float)
    lines = [f"| n_clean | n_noisy | sigma_n | {' | '.join(f'{metric} @ {k} kimg' for k in kimgs)} | copies |",
             "|---" * (len(kimgs) + 4) + "|"]
    for c, m, s in keys:
        group = setting_rows(rows, c, m, s)
        cells = []
        for k in kimgs:
            v = [json.loads(r["snapshots"])[k] for r in group if k in json.loads(r["snapshots"])]
            cells.append("" if not v else f"{v[0]:.2f}" if len(v) == 1
                         else f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}")
        copies = [r["memorised"] for r in group if r["memorised"] is not None]
        lines.append(f"| {c} | {m} | {f'{s:g}' if m else '-'} | {' | '.join(cells)} | "
                     f"{f'{np.mean(copies):.1%}' if copies else ''} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: Path, metric: str) -> Path:
    """PNG: the metric against n_clean, one line per n_noisy (mean over seeds; bars: sd over seeds, or the
    bootstrap sd with one seed), one panel per sigma_n; the real-vs-real floor dashed."""
    plt = pyplot()
    sigmas = sorted({r["sigma_n"] for r in rows if r["n_noisy"]}) or [0.0]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(5 * len(sigmas), 4), squeeze=False, sharey=True)
    for ax, s in zip(axes[0], sigmas):
        sel = [r for r in rows if r["n_noisy"] == 0 or math.isclose(r["sigma_n"], s)]
        for i, m in enumerate(sorted({r["n_noisy"] for r in sel})):
            ncs = sorted({r["n_clean"] for r in sel if r["n_noisy"] == m})
            groups = [setting_rows(sel, c, m, s) for c in ncs]
            ax.errorbar(ncs, [np.mean([r["value"] for r in g]) for g in groups], yerr=[_spread(g) for g in groups],
                        fmt="o-", color=f"C{i}", capsize=3, label=f"n_noisy = {m}")
        for n, floor in sorted({(r["n"], r["floor"]) for r in sel if r["floor"] is not None}):
            ax.axhline(floor, color="gray", ls="--", label=f"floor (real vs real, n = {n})")
        positive = [r["n_clean"] for r in sel if r["n_clean"] > 0]
        ax.set_xscale("symlog", linthresh=min(positive, default=1))
        ax.set_yscale("log")
        ax.set(xlabel="n_clean", title=f"sigma_n = {s:g}" if s else "clean only")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"{metric} (bars: sd over seeds, or bootstrap sd)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mark(ax, x: float, y: float, bound: str, low: float | None, high: float | None, color: str) -> None:
    """One estimate at (x, y): a dot with its CI bar from `low` to `high` (none when low is None), or for a bound
    (">" or "<") an open triangle pointing the way the true value lies."""
    if bound == "=":
        err = None if low is None else [[y - low], [high - y]]
        ax.errorbar([x], [y], yerr=err, fmt="o", color=color, capsize=3)
    else:
        ax.plot([x], [y], "^" if bound == ">" else "v", mfc="none", ms=9, color=color)


def plot_worth(eqs: Sequence[dict], path: Path) -> Path:
    """PNG: the worth of a noisy image (equivalent clean count) against n_clean, one line per sigma_n, with
    the seed-bootstrap CI; bounds drawn as open triangles pointing the way the true value lies."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, s in enumerate(sorted({e["sigma_n"] for e in eqs})):
        sel = sorted((e for e in eqs if e["sigma_n"] == s), key=lambda e: e["n_clean"])
        x = [e["n_clean"] for e in sel]
        ax.plot(x, [e["worth"] for e in sel], "-", color=f"C{i}", alpha=0.5)
        for e in sel:
            _mark(ax, e["n_clean"], e["worth"], e["bound"], e["ci_low"], e["ci_high"], f"C{i}")
        ax.plot([], [], "o-", color=f"C{i}", label=f"sigma_n = {s:g}")
    ax.plot([], [], "v", mfc="none", color="gray", label="bound (outside the clean-only range)")
    ax.axhline(1, color="gray", ls=":", lw=1)
    ax.set_xscale("symlog", linthresh=max(1, min((e["n_clean"] for e in eqs if e["n_clean"]), default=1)))
    ax.set(xlabel="n_clean of the mixed point", ylabel="worth of a noisy image (clean images)",
           title="equivalent clean count: (n' - n_clean) / n_noisy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_price(prices: Sequence[dict], fits: dict[int, dict], path: Path) -> Path:
    """PNG of price_list, one curve per n_clean: left, the worth against sigma_n with its CI and the fitted forms
    of worth_decay_fits (exponential solid, power law dashed); right, the price 1 / w (log scale), an unbounded
    price drawn as an open triangle at the panel's top, an unbounded CI end as a bar running out of the panel."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    sigmas = sorted({p["sigma_n"] for p in prices})
    grid = np.geomspace(sigmas[0] / 1.2, sigmas[-1] * 1.2, 100)
    top = 3 * max((x for p in prices for x in (p["price"], p["price_low"], p["price_high"]) if x is not None),
                  default=1.0)
    for i, c in enumerate(sorted({p["n_clean"] for p in prices})):
        sel = sorted((p for p in prices if p["n_clean"] == c), key=lambda p: p["sigma_n"])
        color, priced = f"C{i}", [p for p in sel if p["price"] is not None]
        left.plot([p["sigma_n"] for p in sel], [p["worth"] for p in sel], "-", color=color, alpha=0.5)
        right.plot([p["sigma_n"] for p in priced], [p["price"] for p in priced], "-", color=color, alpha=0.5)
        for ax in (left, right):
            ax.plot([], [], "o-", color=color, label=f"n_clean = {c}" if c else "noisy only (n_clean = 0)")
        for p in sel:
            ci = p["bound"] == "=" and p["ci_low"] is not None
            _mark(left, p["sigma_n"], p["worth"], p["bound"], *((p["ci_low"], p["ci_high"]) if ci else (None, None)),
                  color)
            if p["price"] is not None:
                ends = (p["price_low"] or 10 * top, p["price_high"] or 10 * top) if ci else (None, None)
                _mark(right, p["sigma_n"], p["price"], p["price_bound"], *ends, color)
            elif p["price_bound"] != "<":     # unbounded ("< inf" says nothing)
                _mark(right, p["sigma_n"], top, ">", None, None, color)
        for name, style in (("exponential", "-"), ("power", "--")) if c in fits else ():
            f = fits[c][name]
            left.plot(grid, np.exp(gmm.DECAY_FORMS[name](grid, f["s"], f["exponent"])), style, color=color, lw=1)
    for name, style in (("exponential", "-"), ("power law", "--")) if fits else ():
        left.plot([], [], "k" + style, lw=1, label=f"fit: {name}")
    left.plot([], [], "v", mfc="none", color="gray", label="bound (outside the clean-only range)")
    left.axhline(1, color="gray", ls=":", lw=1)
    left.set(xscale="log", xlabel="sigma_n", ylabel="worth w of a noisy image (clean images)",
             title="worth against noise level (bars: 95% CI)")
    right.set(xscale="log", yscale="log", ylim=(None, top * 1.5), xlabel="sigma_n",
              ylabel="price 1/w: noisy images per clean image", title="price list (unbounded: at or past the top)")
    for ax in (left, right):
        ax.set_xticks(sigmas, [f"{s:g}" for s in sigmas])
        ax.set_xticks([], minor=True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(rows: Sequence[dict], out: Path, metric: str, data: str, config: dict) -> str:
    """results.csv, results.json, the figures and table.md under `out`; returns the text summary."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    parts, orderings, means = ["All points:", "", summary_table(rows, metric, data), ""], {}, {}
    for s in sorted({r["sigma_n"] for r in rows if r["n_noisy"]}):
        result = table1(rows, s, metric, data)
        if result is not None:
            parts += ["Table 1 layout:", "", result[0], "", ordering_sentence(result[1], metric),
                      ordering_sentence(result[2], metric, means=True), ""]
            orderings[f"{s:g}"] = result[1]
            means[f"{s:g}"] = result[2]
    fid = {"table1_ordering_fid": {}, "table1_ordering_means_fid": {}} if has_fid(rows) else {}
    for s in sorted({r["sigma_n"] for r in fid_rows(rows) if r["n_noisy"]}):
        result = table1(fid_rows(rows), s, FID, data)
        if result is not None:
            parts += [f"Table 1 layout under {FID} (the same points' kept samples):", "", result[0], "",
                      ordering_sentence(result[1], FID), ordering_sentence(result[2], FID, means=True), ""]
            fid["table1_ordering_fid"][f"{s:g}"], fid["table1_ordering_means_fid"][f"{s:g}"] = result[1:]
    if fid:
        parts += [f"Where the two metrics disagree ({metric} and {FID}):", "", disagreement(rows, metric), ""]
    stopped = {}
    if any(r.get("value_stop") is not None for r in rows):
        text, stopped = samplers_table(rows, metric, data)
        parts += ["Noisy-only points under both samplers: the full sampler (down to 0.002) and stopped at sigma_n "
                  "(the denoised estimate there), and Table 1 under each choice:", "", text, ""]
    eqs = equivalent_counts(rows)
    if eqs:
        parts += ["Worth of a noisy image, equivalent clean count:", "", equivalent_table(eqs), "",
                  *(scaling.equivalent_sentence(e, e["sigma_n"]) for e in eqs), ""]
        plot_worth(eqs, out / "worth.png")
    prices, decay_fits = [], {}
    if has_price_list(eqs):
        prices, (decay_fits, decay_sentences) = price_list(eqs), worth_decay_fits(eqs)
        parts += ["The price list: how many noisy images buy one clean image (1 / worth) at each sigma_n, per n_clean "
                  "(figure price.png):", "", price_table(prices), "",
                  f"Worth against sigma_n per n_clean, fitted with gmm.fit_decay (weighted least squares in log w) as "
                  f"an exponential w = exp(-(sigma_n/s)^p) and a power law w = 1/(1 + (sigma_n/s)^q), with at least "
                  f"{PRICE_MIN_LEVELS} usable noise levels instead of its default 5 (2 parameters + 2 degrees of "
                  f"freedom: the price plan has 4 levels):", *decay_sentences, ""]
        plot_price(prices, decay_fits, out / "price.png")
    fits, sentences = worth_fits(rows)
    parts += [*sentences, "", "Metric at the last snapshots (convergence) and share of copied training images:", "",
              snapshot_table(rows, metric)]
    text = "\n".join(parts)
    (out / "table.md").write_text(text + "\n")
    write_json({"config": config, "rows": list(rows), "table1_ordering": orderings,
                "table1_ordering_means": means,
                "table1_ordering_stopped": {s: v[0] for s, v in stopped.items()},
                "table1_ordering_means_stopped": {s: v[1] for s, v in stopped.items()}, **fid, "equivalent_clean": eqs,
                "worth_fit": {f"{s:g}": f for s, f in fits.items()}, "worth_sentences": sentences,
                **({"price_list": prices, "worth_decay_fits": {str(c): f for c, f in decay_fits.items()}}
                   if prices else {})},
               out / "results.json")
    plot(rows, out / f"{metric}_vs_n_clean.png", metric)
    return text
