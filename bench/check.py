"""Compare a benchmark result with a stored baseline; exit 1 when something regressed.

    python bench/check.py RESULT.json bench/baselines/cpu.json              # compare
    python bench/check.py RESULT.json bench/baselines/cpu.json --update     # compare, then make RESULT the baseline

Only normalised figures are compared: each row's `norm`, the median over rounds of (calibration
time / row time) measured side by side in one run (bench/harness.py), so the machine's load and
speed cancel to first order. A row regressed when result norm < baseline norm x (1 - tolerance);
the tolerance is the baseline's own (`tolerance.max_slowdown`, with the reason beside it) unless
--tolerance is given. A row the baseline measured that the result lacks, or that failed in the
result, also fails the check. Calibration rows (calib/...) are machine figures and are not compared.
Exit codes: 0 pass, 1 regression, 2 the files cannot be compared.

Pure standard library (no torch import), so it runs in well under a second.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

SCHEMA = "ambient-bench/1"


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [header] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def compare(result: dict[str, Any], baseline: dict[str, Any], tolerance: float | None = None
            ) -> tuple[list[list[Any]], list[str], float]:
    """(table rows, ids that fail, tolerance used). Raises ValueError when the files cannot be compared."""
    for name, doc in (("result", result), ("baseline", baseline)):
        if doc.get("schema") != SCHEMA:
            raise ValueError(f"{name} is not a benchmark result of schema {SCHEMA!r} (got {doc.get('schema')!r})")
    devices = result["machine"]["device"], baseline["machine"]["device"]
    if devices[0] != devices[1]:
        raise ValueError(f"result measured on {devices[0]}, baseline on {devices[1]}: pick the {devices[0]} baseline")
    tol = baseline["tolerance"]["max_slowdown"] if tolerance is None else tolerance
    got = {r["id"]: r for r in result["rows"]}
    table, failed = [], []
    for base in baseline["rows"]:
        if "norm" not in base or base["id"].startswith("calib/"):
            continue
        new = got.get(base["id"])
        if new is None or "norm" not in new:
            status = "MISSING" if new is None else f"{new.get('status', '?').upper()}: {new.get('reason', '')}"[:60]
            table.append([base["id"], base["norm"], None, None, status])
            failed.append(base["id"])
            continue
        change = new["norm"] / base["norm"] - 1
        if change < -tol:
            status = "REGRESSED"
            failed.append(base["id"])
        else:
            status = "faster (refresh the baseline?)" if change > tol else "ok"
        table.append([base["id"], base["norm"], new["norm"], f"{change:+.1%}", status])
    return table, failed, tol


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result")
    parser.add_argument("baseline")
    parser.add_argument("--tolerance", type=float, help="allowed slowdown as a fraction (default: the baseline's)")
    parser.add_argument("--update", action="store_true", help="after comparing, copy RESULT over BASELINE (exit 0)")
    args = parser.parse_args(argv)
    try:
        with open(args.result) as f:
            result = json.load(f)
        with open(args.baseline) as f:
            baseline = json.load(f)
        table, failed, tol = compare(result, baseline, args.tolerance)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench/check.py: cannot compare {args.result} with {args.baseline}: {exc}", file=sys.stderr)
        return 2
    print(format_table(["row", "baseline norm", "result norm", "change", "status"], table))
    machines = result["machine"].get("cpu_model"), baseline["machine"].get("cpu_model")
    if machines[0] != machines[1] or result["machine"].get("gpu") != baseline["machine"].get("gpu"):
        print(f"note: different machines ({result['machine'].get('gpu') or machines[0]} vs "
              f"{baseline['machine'].get('gpu') or machines[1]}): normalised figures transfer only roughly")
    why = baseline["tolerance"].get("why", "") if args.tolerance is None else "--tolerance"
    print(f"tolerance: a row fails below {1 - tol:.0%} of its baseline norm ({why})")
    if args.update:
        shutil.copyfile(args.result, args.baseline)
        print(f"baseline {args.baseline} replaced by {args.result}")
        return 0
    if failed:
        print(f"FAIL: {len(failed)} of {len(table)} rows regressed or are missing: {', '.join(failed)}")
        return 1
    print(f"PASS: {len(table)} rows within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
