"""The result format's summary: one table of benchmark rows, with the docs/design.md targets on a GPU.

    python -m bench.report RESULT.json [MORE.json ...] [--sections sections.tsv]

`--sections` takes the "name<TAB>exit code<TAB>seconds<TAB>limit" lines bench/gpu_check.sh writes (the limit
optional) and prints them as one line above the table. Pure standard library (no torch import).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

SCHEMA = "ambient-bench/1"
# docs/design.md "Measuring", GPU targets.
MEMORY_BOUND_TARGET = 0.85     # noise, loss: fraction of the measured device copy bandwidth
STEP_SPEEDUP_TARGET = 2.0      # DDPM++ step, bf16, over the fp32 eager EDM-style step


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    cells = [header] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def target(row: dict[str, Any], rows_by_id: dict[str, dict[str, Any]]) -> str | None:
    """Whether a CUDA row meets its docs/design.md target (None: the row has none)."""
    if row.get("status") != "ok":
        return None
    if row.get("backend") == "triton" and row["op"] in ("noise_injection", "ambient_loss_fwd_bwd"):
        met = row.get("of_ceiling", 0) >= MEMORY_BOUND_TARGET
        return f">={MEMORY_BOUND_TARGET:.0%} of copy: {'met' if met else 'MISSED'}"
    if row.get("backend") == "triton" and row["op"] == "attention_fwd_bwd":
        sdpa = rows_by_id.get(row["id"].rsplit("/", 1)[0] + "/sdpa", {})
        if "norm" in sdpa:
            return f">= sdpa: {'met' if row['norm'] >= sdpa['norm'] else 'MISSED'} ({row['norm'] / sdpa['norm']:.2f}x)"
    if row.get("section") == "train" and row["preset"] == "ddpmpp" and row["precision"] == "bf16":
        speedup = row.get("vs_fp32_eager_torch")
        if speedup is not None:
            return f">={STEP_SPEEDUP_TARGET:g}x EDM fp32: {'met' if speedup >= STEP_SPEEDUP_TARGET else 'MISSED'}"
    return None


def summary_table(results: list[dict[str, Any]]) -> str:
    """One line per row of every result: time, rate, fraction of the measured ceiling, img/s, norm."""
    lines = []
    for result in results:
        by_id = {r["id"]: r for r in result["rows"]}
        cuda = result["machine"]["device"] == "cuda"
        for r in result["rows"]:
            rate = (f"{r['GB/s']:.1f} GB/s" if "GB/s" in r else f"{r['TFLOP/s']:.3g} TFLOP/s" if "TFLOP/s" in r
                    else None)
            speedup = r.get("vs_torch", r.get("vs_fp32_eager_torch"))
            mfu = r.get("mfu_vs_datasheet")
            lines.append([r["id"], r.get("status"), r.get("median_ms"), rate, r.get("of_ceiling"),
                          r.get("img_per_s"), r.get("peak_mem_mb", r.get("peak_rss_mb")), r.get("norm"),
                          None if speedup is None else f"{speedup:.2f}x", mfu, target(r, by_id) if cuda else None])
    header = ["row", "status", "ms", "rate", "of ceiling", "img/s", "peak MiB", "norm", "speed-up", "MFU", "target"]
    keep = [i for i in range(len(header)) if i < 2 or any(line[i] is not None for line in lines)]
    return format_table([header[i] for i in keep], [[line[i] for i in keep] for line in lines])


def read_sections(path: str) -> list[tuple[str, str, str, str]]:
    """(name, exit code, seconds, limit in seconds or "") of each line of gpu_check.sh's sections file."""
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                name, rc, seconds, *limit = line.rstrip("\n").split("\t")
                rows.append((name, rc, seconds, limit[0] if limit else ""))
    return rows


def sections_line(path: str) -> str:
    """'kernel_tests ok (12 s of 120), aot FAILED (rc 1, 80 s of 90), ...; limits 210 s' from gpu_check.sh's
    sections file."""
    parts, limits = [], 0
    for name, rc, seconds, limit in read_sections(path):
        state = "ok" if rc == "0" else "TIMED OUT" if rc in ("124", "137") else f"FAILED (rc {rc})"
        parts.append(f"{name} {state} ({seconds} s{f' of {limit}' if limit else ''})")
        limits += int(limit or 0)
    return "sections: " + ", ".join(parts) + (f"; limits {limits} s" if limits else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*")
    parser.add_argument("--sections", help="gpu_check.sh's sections.tsv")
    args = parser.parse_args(argv)
    if args.sections:
        print(sections_line(args.sections))
    results = []
    for path in args.results:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except (OSError, ValueError) as exc:
            print(f"{path}: no result ({exc})")
    for result in results:
        m = result["machine"]
        print(f"{m.get('gpu') or m['cpu_model']}: torch {m['torch']}, triton {m['triton']}, "
              f"{result.get('elapsed_s')} s, sections {result['settings']['sections']}")
    if results:
        print(summary_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
