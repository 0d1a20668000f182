"""Compare a benchmark result with a stored baseline; exit 1 when something regressed.

    python bench/check.py RESULT.json bench/baselines/cpu.json                # compare
    python bench/check.py R1.json R2.json R3.json bench/baselines/cpu.json    # compare the runs' median
    python bench/check.py R1.json R2.json R3.json BASELINE.json --update      # then store it as the baseline

Only normalised figures are compared: each row's `norm`, the median over rounds of (calibration
time / row time) measured side by side in one run (bench/harness.py), so the machine's load and
speed cancel to first order. A row regressed when result norm < baseline norm x (1 - tolerance);
the tolerance is the baseline's own (`tolerance.max_slowdown`, one per section — the first part of
a row id — with the reason beside it) unless --tolerance is given. A row the baseline measured
that the result lacks, or that failed in the result, also fails the check. The calibrations
themselves (machine figures) are not compared. Several results are combined row by row into the
run with the median norm (`combine`): a baseline made so sits in the middle of the run-to-run
spread rather than at whichever edge one run landed on.
Exit codes: 0 pass, 1 regression, 2 the files cannot be compared.

Pure standard library (no torch import), so it runs in well under a second.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):   # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import SCHEMA, format_table


def combine(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs of the same benchmark: each row from the run with its median norm.

    The row keeps that run's figures (all consistent with each other) and lists every run's norm.
    """
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
    devices = result["machine"]["device"], baseline["machine"]["device"]
    if devices[0] != devices[1]:
        raise ValueError(f"result measured on {devices[0]}, baseline on {devices[1]}: pick the {devices[0]} baseline")
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


def _load(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", metavar="RESULT", help="one or more runs (combined by median)")
    parser.add_argument("baseline")
    parser.add_argument("--tolerance", type=float, help="allowed slowdown as a fraction (default: the baseline's)")
    parser.add_argument("--update", action="store_true",
                        help="after comparing, write the (combined) result over BASELINE and exit 0")
    args = parser.parse_args(argv)
    try:
        result = combine([_load(path) for path in args.results])
        baseline = _load(args.baseline)
        table, failed = compare(result, baseline, args.tolerance)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench/check.py: cannot compare {' '.join(args.results)} with {args.baseline}: {exc}", file=sys.stderr)
        return 2
    print(format_table(["row", "baseline norm", "result norm", "change", "allowed", "status"], table))
    machines = result["machine"].get("cpu_model"), baseline["machine"].get("cpu_model")
    if machines[0] != machines[1] or result["machine"].get("gpu") != baseline["machine"].get("gpu"):
        print(f"note: different machines ({result['machine'].get('gpu') or machines[0]} vs "
              f"{baseline['machine'].get('gpu') or machines[1]}): normalised figures transfer only roughly")
    why = baseline["tolerance"].get("why", "") if args.tolerance is None else "given with --tolerance"
    print(f"tolerance: a row fails when its norm falls by more than 'allowed'. Why: {why}")
    if args.update:
        with open(args.baseline, "w") as f:
            json.dump(result, f, indent=1)
        print(f"baseline {args.baseline} replaced by {' + '.join(args.results)}")
        return 0
    if failed:
        print(f"FAIL: {len(failed)} of {len(table)} rows regressed or are missing: {', '.join(failed)}")
        return 1
    print(f"PASS: {len(table)} rows within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
