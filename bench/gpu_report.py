"""The GPU report: everything bench/gpu_check.sh measured, as one markdown file.

    python -m bench.gpu_report OUT_DIR [--out docs/bench/gpu-report.md]

OUT_DIR is gpu_check.sh's folder: sections.tsv and one log per section, aot.md (bench/aot_check.py), kernels.json
and train.json (bench/run.py), xformers.txt (why the xformers backend cannot run, or "available"), and the two
training runs run-triton/ and run-torch/ (log.jsonl). A missing piece is reported as missing, never guessed.

The loss-curve check: DDPM++ at 32x32 trained with the Triton kernels and with the torch kernels from the same
seed (same data order and weights; the injected noise differs, Philox in-kernel against torch.randn) must both
descend and agree on the mean loss of the second half of the run within LOSS_TOLERANCE. Pure standard library
apart from bench/report.py's table (no torch import).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from bench.report import read_sections, sections_line, summary_table

# A tick's loss is the mean over 1280 images whose noise levels and weights vary widely, so it scatters by several
# per cent; the second-half means (12 ticks) of two correct runs should differ by a few per cent at most, while a
# broken kernel shows as a curve that stalls, diverges or goes non-finite.
LOSS_TOLERANCE = 0.10


def read_losses(run: Path) -> list[dict]:
    """The tick records of a training run's log.jsonl (empty when there is none)."""
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def loss_check(triton: list[dict], torch: list[dict]) -> tuple[str, bool]:
    """Markdown (a per-tick table and the verdict) and whether the Triton run's curve matches the torch run's."""
    if not triton or not torch:
        missing = [name for name, run in (("triton", triton), ("torch", torch)) if not run]
        return f"Not measured: no log of the {' and '.join(missing)} run(s).\n", False
    rows = [[f"{a['kimg']:.2f}", f"{a['loss']:.4f}", f"{b['loss']:.4f}", f"{a['img_per_s']:.0f}",
             f"{b['img_per_s']:.0f}"] for a, b in zip(triton, torch)]
    half = len(rows) // 2
    tails = [statistics.fmean(r["loss"] for r in run[half:]) for run in (triton, torch)]
    gap = abs(tails[0] - tails[1]) / tails[1]
    descends = all(run[0]["loss"] > tail for run, tail in zip((triton, torch), tails))
    skipped = [run[-1].get("skipped_steps", 0) for run in (triton, torch)]
    ok = len(triton) == len(torch) >= 4 and descends and gap <= LOSS_TOLERANCE and skipped == [0, 0]
    verdict = (f"Mean loss over the second half: triton {tails[0]:.4f}, torch {tails[1]:.4f} ({gap:.1%} apart, "
               f"tolerance {LOSS_TOLERANCE:.0%}); both descend: {descends}; non-finite steps skipped: "
               f"{skipped[0]} and {skipped[1]}. **{'PASS' if ok else 'FAIL'}**")
    table = markdown_table(["kimg", "loss triton", "loss torch", "img/s triton", "img/s torch"], rows)
    return f"{table}\n{verdict}\n", ok


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def _text(path: Path, missing: str) -> str:
    return path.read_text().strip() if path.exists() else missing


def report(out: Path) -> str:
    """The whole report from gpu_check.sh's folder."""
    parts = ["# GPU report", "", "Made by `bash bench/gpu_check.sh`; every section below is read from its folder.", ""]
    parts += ["## Machine", "", "```", _text(out / "machine.txt", "(no machine.txt)"), "```", ""]
    sections = out / "sections.tsv"
    if sections.exists():
        parts += ["## Sections", "", sections_line(str(sections)), "",
                  markdown_table(["section", "exit code", "seconds", "limit s"], read_sections(str(sections)))]
    parts += ["## Ahead-of-time compiles (bench/aot_check.py, sm_90 and sm_80)", "",
              _text(out / "aot.md", "Not run (no aot.md)."), ""]
    parts += ["## Kernel tests on the GPU", "", "```", "\n".join(_text(out / "kernel_tests.log", "(no log)")
                                                                .splitlines()[-15:]), "```", ""]
    results = [json.loads(p.read_text()) for p in (out / "kernels.json", out / "train.json") if p.exists()]
    parts += ["## Kernel microbenchmarks and trainer throughput (bench/run.py)", "",
              "The triton, torch, compile, sdpa and xformers rows of each op and shape side by side; targets from "
              "docs/design.md.", "", "```", summary_table(results) if results else "(no kernels.json or train.json)",
              "```", ""]
    parts += ["## xformers", "", _text(out / "xformers.txt", "Not probed (no xformers.txt)."), ""]
    text, _ = loss_check(read_losses(out / "run-triton"), read_losses(out / "run-torch"))
    parts += ["## Loss curve: DDPM++ 32x32, bf16, Triton kernels against torch kernels", "", text]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="gpu_check.sh's output folder")
    parser.add_argument("--out", help="write the report here (default: FOLDER/gpu-report.md)")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    path = Path(args.out) if args.out else folder / "gpu-report.md"
    path.write_text(report(folder))
    print(f"GPU report written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
