"""bench/gpu_check.sh --dry-run on this CPU: every section's own command at tiny sizes, the Triton kernels interpreted.

One dry run, started from another folder with only `python3` on PATH (no `python`, no pip: nothing can be installed,
so it runs from the checkout), must pass every section, write every file the GPU run writes, and keep the GPU run's
limits within 13 minutes.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
SECTIONS = ["kernel_tests", "run_triton", "run_torch", "aot", "micro", "train", "xformers_probe"]
LEASE_S = 13 * 60      # what the script's limits (and kills of overruns) may add up to


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "PYTHONPATH", "TRITON_INTERPRET")}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", OUT=str(out))
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=bin_dir, env=env, capture_output=True, text=True,
                          timeout=_setting("DRY_LIMIT_SCALE") * LEASE_S + 120)
    return done, out


def _setting(name: str) -> int:
    """A NAME=integer line of the script."""
    return int(re.search(rf"^{name}=(\d+)$", SCRIPT.read_text(), re.M)[1])


def _sections(out: Path) -> list[list[str]]:
    return [line.split("\t") for line in (out / "sections.tsv").read_text().splitlines()]


def test_every_section_passes_in_order(dry_run):
    done, out = dry_run
    logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-1500:] for p in sorted(out.glob("*.log")))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:] + logs
    sections = _sections(out)
    assert [s[0] for s in sections] == SECTIONS
    assert all(s[1] == "0" for s in sections), sections


def test_the_limits_fit_the_lease(dry_run):
    """The GPU run's limits: the dry run's, which allow DRY_LIMIT_SCALE times as long, scaled back."""
    _, out = dry_run
    limits = [int(s[3]) // _setting("DRY_LIMIT_SCALE") for s in _sections(out)]
    assert sum(limits) + _setting("KILL_AFTER_S") * len(limits) <= LEASE_S, limits


def test_it_ran_the_checkout_with_python3(dry_run):
    _, out = dry_run
    machine = (out / "machine.txt").read_text()
    assert f"kernels from {REPO / 'kernels'}" in machine, machine
    assert f"python {sys.version.split()[0]}" in machine and "dry run" in machine, machine


def test_every_file_and_the_report(dry_run):
    _, out = dry_run
    for run, kernels in (("run-triton", "triton"), ("run-torch", "torch")):
        config = json.loads((out / run / "config.json").read_text())
        assert (config["kernels"], config["precision"], config["seed"]) == (kernels, "bf16", 1)
        ticks = [json.loads(line) for line in (out / run / "log.jsonl").read_text().splitlines() if line.strip()]
        assert len(ticks) >= 4 and all(t["loss"] > 0 for t in ticks)
    kernel_rows = {r["id"]: r for r in json.loads((out / "kernels.json").read_text())["rows"]}
    assert any(i.endswith("/triton") and r["status"] == "ok" for i, r in kernel_rows.items()), list(kernel_rows)
    train_rows = json.loads((out / "train.json").read_text())["rows"]
    assert [(r["id"], r["status"]) for r in train_rows] == [("train/tiny/b32/fp32/torch/eager", "ok")]
    aot = json.loads((out / "aot.json").read_text())
    assert aot["failures"] == [] and {c["arch"] for c in aot["compiles"]} == {80, 90}
    report = (out / "gpu-report.md").read_text()
    for part in ("## Sections", "xformers_probe ok", "| _noise_kernel | noise+loss tiny 1x32x32 fp32 |",
                 " passed", "train/tiny/b32/fp32/torch/eager", "unavailable: ", "| kimg | loss triton | loss torch |",
                 "Mean loss over the second half"):
        assert part in report, part


def test_an_unknown_argument_is_refused():
    done = subprocess.run(["bash", str(SCRIPT), "--dryrun"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage" in done.stderr
