"""Methods against plain ambient training, side by side (docs/methods, issue 23 item 4).

    python -m ambient.study.methods --plain docs/study --method windows=docs/methods/windows \\
        --method consistency=docs/methods/consistency --method restore=docs/methods/restore --out docs/methods

Each folder holds a study's results (`python -m ambient.study --config ... --report-only` writes results.json and
keeps each point's evaluation images as samples/NAME.npz). A method's study trains noisy settings of the plain
study with the same data, regime and seeds and one method switched on. For each of its settings this sets the
method beside plain training:

- the metric, mean ± sd over seeds, and the method's difference from plain, d = mean(method) - mean(plain),
  with its Welch 95% interval and the means verdict (power.compare_means: "better" when the interval lies below
  0, "worse" above, "tie" when it holds 0); the same for Inception FID where every point of the setting was
  scored (`ambient.study --score-fid`);
- the worth of a noisy image, w = (n' - n_clean) / n_noisy, n' read off the plain study's clean-only curve
  (scaling.equivalent_clean, seed-bootstrap 95% CI);
- the background noise left in the samples (metrics.background_noise of samples/NAME.npz, mean over seeds);
- the share of samples that copy a training image (metrics.json's "memorised", mean over seeds);
- the cost: the median over seeds of a model's training seconds (restoration included), and its ratio to plain's
  median (wall clock on a shared host: the step-cost ratios measured side by side are in docs/methods/README.md).

Then Table 1 with each method's noisy settings beside the plain clean-only ones (report.table1, both verdicts),
and the methods that qualify for the combination: those whose 90% noisy + 10% clean setting is "better" at every
noise level the method ran (the plan in docs/methods/README.md). Writes OUT/table.md, OUT/comparison.json and
OUT/methods.png.
"""
import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ambient.common.atomic import write_json
from ambient.common.plotting import pyplot
from ambient.eval import metrics

from . import power, report, scaling
from .runner import StudyError, read_samples

PLAIN = "plain"
VERDICT = {"yes": "better", "no": "worse", "tie": "tie", None: "needs 2 seeds"}    # compare_means(method, plain)


def load_rows(folder: Path) -> list[dict]:
    """The point rows of a study's results.json; StudyError naming the file when it is missing or not a report."""
    path = folder / "results.json"
    try:
        rows = json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StudyError(f"{path} is not a study's results ({type(e).__name__}: {e}); write it with python -m "
                         f"ambient.study --config ... --report-only") from None
    return rows


def _background(folder: Path, names: Sequence[str]) -> float | None:
    """Mean background noise of the kept samples of points `names` (None when any has no samples file)."""
    paths = [folder / "samples" / f"{name}.npz" for name in names]
    if not all(p.exists() for p in paths):
        return None
    return float(np.mean([metrics.background_noise(read_samples(p)) for p in paths]))


def _seconds(group: Sequence[dict]) -> float | None:
    """Median over seeds of a model's training (and restoration) seconds; None when a point lacks them."""
    times = [r.get("train_seconds") for r in group]
    if None in times:
        return None
    return float(np.median([t + (r.get("restore_seconds") or 0.0) for t, r in zip(times, group)]))


def versus(values: Sequence[float], base: Sequence[float]) -> dict:
    """A method's seed values of a metric against plain's (`base`, empty for plain itself): mean, sd, and the
    difference of the means d = mean(values) - mean(base) with its Welch 95% interval and the means verdict."""
    out = {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
           "diff": None, "low": None, "high": None, "verdict": None}
    if len(base):
        out["diff"] = float(np.mean(values) - np.mean(base))
        if len(values) > 1 and len(base) > 1:
            _, out["low"], out["high"] = power.welch(base, values)
        out["verdict"] = VERDICT[power.compare_means(values, base)]
    return out


def _entry(name: str, group: Sequence[dict], plain: Sequence[dict], clean: dict[int, list[float]],
           folder: Path) -> dict:
    """One method's (or plain's) figures for one setting: module docstring, in order; "fid": `versus` on the
    Inception FID of the kept samples (None unless every point of both was scored)."""
    c, m, s = group[0]["n_clean"], group[0]["n_noisy"], group[0]["sigma_n"]
    values = [r["value"] for r in group]
    base = [] if name == PLAIN else plain
    out = {"method": name, "sigma_n": s, "n_clean": c, "n_noisy": m, "seeds": len(values),
           **versus(values, [r["value"] for r in base])}
    fid, fid_base = [r.get("fid") for r in group], [r.get("fid") for r in base]
    out["fid"] = None if None in fid + fid_base else versus(fid, fid_base)
    worth = scaling.equivalent_clean(clean, values, c, m) if len(clean) >= 2 else None
    out["worth"] = None if worth is None else {k: worth[k] for k in ("n_equiv", "worth", "bound", "ci_low", "ci_high")}
    memorised = [r.get("memorised") for r in group]
    out["copies"] = None if None in memorised else float(np.mean(memorised))
    out["background"] = _background(folder, [r["name"] for r in group])
    out["seconds"] = _seconds(group)
    return out


def compare(plain: Sequence[dict], methods: dict[str, Sequence[dict]], folders: dict[str, Path]) -> list[dict]:
    """`_entry` of plain and of every method for each noisy setting a method ran, setting by setting."""
    clean: dict[int, list[float]] = {}
    for r in plain:
        if r["n_noisy"] == 0:
            clean.setdefault(r["n_clean"], []).append(r["value"])
    settings = sorted({(r["n_clean"], r["n_noisy"], r["sigma_n"]) for rows in methods.values() for r in rows
                       if r["n_noisy"]}, key=lambda k: (k[2], -k[0]))
    out = []
    for c, m, s in settings:
        base = report.setting_rows(plain, c, m, s)
        for name, rows in ({PLAIN: plain} | dict(methods)).items():
            group = report.setting_rows(rows, c, m, s)
            if group:
                out.append(_entry(name, group, base, clean, folders[name]))
    plain_cost = {(e["n_clean"], e["n_noisy"], e["sigma_n"]): e["seconds"] for e in out if e["method"] == PLAIN}
    for e in out:
        base = plain_cost.get((e["n_clean"], e["n_noisy"], e["sigma_n"]))
        e["cost_ratio"] = None if base is None or e["seconds"] is None else e["seconds"] / base
    return out


def _num(v: float | None, fmt: str = ".2f") -> str:
    return "" if v is None else format(v, fmt)


def _worth_cell(w: dict | None) -> str:
    if w is None:
        return ""
    b = "" if w["bound"] == "=" else w["bound"] + " "
    ci = f" ({w['ci_low']:.2f} - {w['ci_high']:.2f})" if w["ci_low"] is not None and w["bound"] == "=" else ""
    return f"{b}{w['worth']:.2f}{ci}"


def _versus_cells(v: dict | None) -> str:
    """'mean ± sd | difference (Welch 95%) | means verdict' cells of `versus` (empty without)."""
    if v is None:
        return " | | "
    value = f"{v['mean']:.2f}" + ("" if v["sd"] is None else f" ± {v['sd']:.2f}")
    diff = "" if v["diff"] is None else f"{v['diff']:+.2f}" + (
        "" if v["low"] is None else f" ({v['low']:+.2f} to {v['high']:+.2f})")
    return f"{value} | {diff} | {v['verdict'] or ''}"


def side_by_side_table(entries: Sequence[dict], metric: str) -> str:
    """Markdown: one row per setting and method (plain first); FID columns where any setting was scored."""
    fid = any(e["fid"] is not None for e in entries)
    head = [f"{metric} | difference from plain (Welch 95%) | means verdict"]
    head += ["FID | FID difference (Welch 95%) | FID verdict"] if fid else []
    lines = [f"| sigma_n | n_clean | n_noisy | method | seeds | {' | '.join(head)} | worth of a noisy image (95% CI) | "
             "background noise | copies | s per model | cost / plain |", "|" + "---|" * (13 + 3 * fid)]
    for e in entries:
        cells = [_versus_cells(e)] + ([_versus_cells(e["fid"])] if fid else [])
        copies = "" if e["copies"] is None else f"{100 * e['copies']:.1f}%"
        lines.append(f"| {e['sigma_n']:g} | {e['n_clean']} | {e['n_noisy']} | {e['method']} | {e['seeds']} | "
                     f"{' | '.join(cells)} | {_worth_cell(e['worth'])} | {_num(e['background'], '.3f')} | {copies} | "
                     f"{_num(e['seconds'], '.0f')} | {_num(e['cost_ratio'])} |")
    return "\n".join(lines)


def qualifying(entries: Sequence[dict], size: int) -> list[str]:
    """Methods whose 90% noisy + 10% clean setting is "better" than plain at every noise level they ran."""
    c, m = report.table1_pairs(size)["90% noisy + 10% clean"]
    by_method: dict[str, list[str | None]] = {}
    for e in entries:
        if e["method"] != PLAIN and (e["n_clean"], e["n_noisy"]) == (c, m):
            by_method.setdefault(e["method"], []).append(e["verdict"])
    return [name for name, verdicts in by_method.items() if verdicts and all(v == "better" for v in verdicts)]


def plot_methods(entries: Sequence[dict], path: Path, metric: str, clean: float | None = None) -> Path:
    """PNG: per setting (x), each method's mean metric with its seed sd, offset side by side, and the 100%-clean
    mean `clean` dashed (the level a noisy setting is compared with); log y."""
    plt = pyplot()
    settings = list(dict.fromkeys((e["sigma_n"], e["n_clean"], e["n_noisy"]) for e in entries))
    names = list(dict.fromkeys(e["method"] for e in entries))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(settings)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        sel = [(settings.index((e["sigma_n"], e["n_clean"], e["n_noisy"])), e) for e in entries if e["method"] == name]
        ax.errorbar([x - 0.4 + width * (i + 0.5) for x, _ in sel], [e["mean"] for _, e in sel],
                    yerr=[e["sd"] or 0.0 for _, e in sel], fmt="o", color=f"C{i}", capsize=3, label=name)
    if clean is not None:
        ax.axhline(clean, color="gray", ls="--", label="100% clean (plain)")
    ax.set_xticks(range(len(settings)), [f"{c} clean + {m} noisy\nsigma_n {s:g}" for s, c, m in settings],
                  fontsize=8)
    ax.set_yscale("log")
    ax.set(ylabel=f"{metric} (mean ± sd over seeds)", title="each method against plain ambient training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_comparison(plain_dir: Path, method_dirs: dict[str, Path], out: Path) -> str:
    """table.md, comparison.json and methods.png in `out`; returns table.md's text."""
    plain = load_rows(plain_dir)
    methods = {name: load_rows(folder) for name, folder in method_dirs.items()}
    metric = plain[0]["metric"] if plain else "metric"
    entries = compare(plain, methods, {PLAIN: plain_dir, **method_dirs})
    size = max(r["n_clean"] + r["n_noisy"] for r in plain)
    parts = [f"Each method against plain ambient training ({metric}; made by python -m ambient.study.methods):", "",
             side_by_side_table(entries, metric), ""]
    tables = {}
    for name, rows in methods.items():
        combined = [r for r in plain if r["n_noisy"] == 0] + [r for r in rows if r["n_noisy"]]
        for s in sorted({r["sigma_n"] for r in rows if r["n_noisy"]}):
            result = report.table1(combined, s, metric, name)
            if result is not None:
                parts += [f"Table 1 with {name} (its noisy settings, the plain clean-only ones):", "", result[0], "",
                          report.ordering_sentence(result[1], metric),
                          report.ordering_sentence(result[2], metric, means=True), ""]
                tables[f"{name} {s:g}"] = {"per_run": result[1], "means": result[2]}
    chosen = qualifying(entries, size)
    parts.append("Methods that qualify for the combination (90% noisy + 10% clean better than plain by the means "
                 "test at every noise level): " + (", ".join(chosen) if chosen else "none, so no combination runs")
                 + ".")
    text = "\n".join(parts)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text + "\n")
    write_json({"plain": str(plain_dir), "methods": {k: str(v) for k, v in method_dirs.items()}, "entries": entries,
                "table1": tables, "qualifying": chosen}, out / "comparison.json")
    full = [r["value"] for r in report.setting_rows(plain, size, 0, 0.0)]
    plot_methods(entries, out / "methods.png", metric, float(np.mean(full)) if full else None)
    return text


def _method(text: str) -> tuple[str, Path]:
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder or name == PLAIN:
        raise argparse.ArgumentTypeError(f"a method is NAME=FOLDER (NAME not {PLAIN!r}), got {text!r}")
    return name, Path(folder)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ambient.study.methods", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plain", type=Path, required=True, help="the plain study's results folder (e.g. docs/study)")
    p.add_argument("--method", type=_method, action="append", required=True, metavar="NAME=FOLDER",
                   help="a method's study results folder; repeat for each method")
    p.add_argument("--out", type=Path, required=True, help="where table.md, comparison.json and methods.png go")
    a = p.parse_args(argv)
    methods = dict(a.method)
    if len(methods) < len(a.method):
        p.error("each --method NAME must be different")
    try:
        print(write_comparison(a.plain, methods, a.out))
    except (StudyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
