"""Compare a benchmark result with a stored baseline; exit 1 when something regressed.

    python -m bench.check RESULT.json                                 # with bench/baselines/<its host kind>.json
    python -m bench.check RESULT.json BASELINE.json                   # with this baseline
    python -m bench.check R1.json R2.json R3.json BASELINE.json       # the runs' median with this baseline
    python -m bench.check R1.json R2.json R3.json BASELINE.json --update      # then store it as the baseline

Baselines are kept per host kind (`machine.host_kind`, bench/harness.host_kind: "cpu-avx2",
"cpu-avx512-amx", ..., "cuda"): normalised figures transfer only between hosts of one kind, so a
baseline of another kind is refused (exit 2). Given one path, the baseline is the one of the
result's kind; when there is none yet, the check warns, writes the result as the baseline it
would store (RESULT's name + ".baseline-<kind>.json") and passes.

Only normalised figures are compared: each row's `norm`, the median over rounds of (calibration
time / row time) measured side by side in one run (bench/harness.py), so the machine's load and
speed cancel to first order. A row regressed when result norm < baseline norm x (1 - tolerance);
the tolerance is the baseline's own (`tolerance.max_slowdown`, one per section — the first part of
a row id — with the reason beside it) unless --tolerance is given. A row the baseline measured
that the result lacks, or that failed in the result, also fails the check. The calibrations
themselves (machine figures) are not compared. Several results are combined row by row into the
run with the median norm (`combine`): a baseline made so sits in the middle of the run-to-run
spread rather than at whichever edge one run landed on.
Exit codes: 0 pass (or no baseline of this kind yet), 1 regression, 2 the files cannot be compared.

Pure standard library (no torch import), so it runs in well under a second.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from bench.report import SCHEMA, format_table

REPO = Path(__file__).resolve().parents[1]
BASELINES = REPO / "bench" / "baselines"


def host_kind_of(doc: dict[str, Any]) -> str:
    """The host kind a result or baseline was measured on; ValueError for one made before kinds existed."""
    kind = doc["machine"].get("host_kind")
    if not kind:
        raise ValueError("no machine.host_kind in it (measured before baselines were kept per host kind): "
                         "measure it again with python -m bench.run")
    return kind


def baseline_path(kind: str) -> Path:
    """Where the baseline of a host kind is kept: bench/baselines/<kind>.json."""
    return BASELINES / f"{kind}.json"


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs of the same benchmark: each row from the run with its median norm.

    The row keeps that run's figures (all consistent with each other) and lists every run's norm.
    """
    kinds = sorted({host_kind_of(res) for res in results})
    if len(kinds) > 1:
        raise ValueError(f"runs of different host kinds ({', '.join(kinds)}) cannot be combined")
    if len(results) == 1:
        return results[0]
    out = copy.deepcopy(results[0])
    runs = [{r["id"]: r for r in res["rows"]} for res in results]
    for i, row in enumerate(out["rows"]):
        measured = sorted((run[row["id"]] for run in runs if "norm" in run.get(row["id"], {})), key=lambda r: r["norm"])
        if measured:
            out["rows"][i] = {**measured[(len(measured) - 1) // 2], "norm_runs": [r["norm"] for r in measured]}
    out["settings"]["combined_runs"] = [res["created"] for res in results]
    return out


def compare(result: dict[str, Any], baseline: dict[str, Any], tolerance: float | None = None
            ) -> tuple[list[list[Any]], list[str]]:
    """(table rows, ids that fail). Raises ValueError when the files cannot be compared."""
    for name, doc in (("result", result), ("baseline", baseline)):
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"{name} is not a benchmark result of schema {SCHEMA!r} (got {doc.get('schema')!r})")
    kinds = host_kind_of(result), host_kind_of(baseline)
    if kinds[0] != kinds[1]:
        raise ValueError(f"result measured on a {kinds[0]} host, baseline on a {kinds[1]} host: compare it with "
                         f"{baseline_path(kinds[0]).relative_to(REPO)}")
    by_section = baseline["tolerance"]["max_slowdown"]
    got = {r["id"]: r for r in result["rows"]}
    table, failed = [], []
    for base in baseline["rows"]:
        if "norm" not in base:
            continue
        new = got.get(base["id"])
        if new is None or "norm" not in new:
            status = "MISSING" if new is None else f"{new.get('status', '?').upper()}: {new.get('reason', '')}"[:60]
            table.append([base["id"], base["norm"], None, None, None, status])
            failed.append(base["id"])
            continue
        tol = by_section[base["id"].split("/")[0]] if tolerance is None else tolerance
        change = new["norm"] / base["norm"] - 1
        if change < -tol:
            status = "REGRESSED"
            failed.append(base["id"])
        else:
            status = "faster (refresh the baseline?)" if change > tol else "ok"
        table.append([base["id"], base["norm"], new["norm"], f"{change:+.1%}", f"-{tol:.0%}", status])
    return table, failed


def _load(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _write(doc: dict[str, Any], path: str | Path) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def _no_baseline(result: dict[str, Any], kind: str, first_result: str) -> int:
    """No baseline of this host kind yet: warn, write the baseline this run would make beside it, and pass.

    Failing instead would stop every session on a new kind of host, though nothing regressed.
    """
    first = Path(first_result)
    candidate = first.with_name(f"{first.stem}.baseline-{kind}.json")
    _write(result, candidate)
    stored = baseline_path(kind).relative_to(REPO)
    print(f"WARNING: no baseline for host kind {kind} ({stored} does not exist): nothing was compared.\n"
          f"  This run as that baseline: {candidate}\n"
          f"  To record one (median of three quick runs), on an idle {kind} host:\n"
          f"    for i in 1 2 3; do python -m bench.run --quick --out /tmp/bench$i.json; done\n"
          f"    python -m bench.check /tmp/bench1.json /tmp/bench2.json /tmp/bench3.json {stored} --update\n"
          f"  then commit {stored}.\n"
          f"PASS (no baseline for {kind})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="RESULT [RESULT ...] BASELINE: runs (combined by median), then the baseline; "
                             "a single RESULT: the baseline of its host kind, bench/baselines/<kind>.json")
    parser.add_argument("--tolerance", type=float, help="allowed slowdown as a fraction (default: the baseline's)")
    parser.add_argument("--update", action="store_true",
                        help="after comparing, write the (combined) result over the baseline (or create it) "
                             "and exit 0")
    args = parser.parse_args(argv)
    results = args.paths[:-1] or args.paths
    try:
        result = combine([_load(path) for path in results])
        kind = host_kind_of(result)
        target = Path(args.paths[-1]) if len(args.paths) > 1 else baseline_path(kind)
        if not target.exists() and args.update:
            _write(result, target)
            print(f"baseline {target} created from {' + '.join(results)}")
            return 0
        if not target.exists() and len(args.paths) == 1:
            return _no_baseline(result, kind, results[0])
        baseline = _load(target)
        table, failed = compare(result, baseline, args.tolerance)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench/check.py: cannot compare ({' '.join(args.paths)}): {exc}", file=sys.stderr)
        return 2
    print(f"host kind {kind}, baseline {target}")
    print(format_table(["row", "baseline norm", "result norm", "change", "allowed", "status"], table))
    machines = result["machine"].get("cpu_model"), baseline["machine"].get("cpu_model")
    if machines[0] != machines[1] or result["machine"].get("gpu") != baseline["machine"].get("gpu"):
        print(f"note: different machines ({result['machine'].get('gpu') or machines[0]} vs "
              f"{baseline['machine'].get('gpu') or machines[1]}): normalised figures transfer only roughly")
    why = baseline["tolerance"].get("why", "") if args.tolerance is None else "given with --tolerance"
    print(f"tolerance: a row fails when its norm falls by more than 'allowed'. Why: {why}")
    if args.update:
        _write(result, target)
        print(f"baseline {target} replaced by {' + '.join(results)}")
        return 0
    if failed:
        print(f"FAIL: {len(failed)} of {len(table)} rows regressed or are missing: {', '.join(failed)}")
        return 1
    print(f"PASS: {len(table)} rows within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
