"""The benchmark regression check (bench/check.py) on the committed CPU baseline and on real runs.

Speed is never asserted here as such: the check must pass a result against itself and fail when
a slowdown is put in — once by editing a measured result, once by making the code measured by
bench/run.py really slower (a test hook runs the workload four times per call), far beyond the
tolerance. The benchmarks run in subprocesses, as CI runs them, so their thread and allocator
settings stay out of this process.
"""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "bench" / "baselines" / "cpu.json"
ROW = "kernels/ambient_loss_fwd_bwd/tiny/B64x1x32x32/float32/torch"


def run_script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "bench" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def baseline() -> dict:
    return json.loads(BASELINE.read_text())


def test_committed_baseline_is_a_quick_cpu_run_with_the_reported_figures(baseline: dict) -> None:
    machine = baseline["machine"]
    assert machine["device"] == "cpu" and machine["gpu"] is None
    assert machine["cpu_model"] and machine["cpu_cores"] >= 1 and machine["torch"] and machine["triton"]
    assert baseline["settings"]["quick"] and baseline["settings"]["clock"] == "cpu"
    assert baseline["tolerance"]["why"] and set(baseline["tolerance"]["max_slowdown"]) == {"kernels", "train"}
    assert all(0 < tol < 1 for tol in baseline["tolerance"]["max_slowdown"].values())
    assert {c["id"] for c in baseline["calibration"]["train"]} == {"calib/copy", "calib/matmul_fp32",
                                                                   "calib/matmul_bf16"}
    rows = {r["id"]: r for r in baseline["rows"]}
    for precision in ("fp32", "bf16"):
        step = rows[f"train/tiny/b32/{precision}/torch/eager"]
        assert step["status"] == "ok" and step["img_per_s"] > 0 and 0 < step["of_ceiling"] < 2 and step["norm"] > 0
        assert rows[f"train/tiny/b32/{precision}/triton/eager"]["status"] == "n/a"
    kernel_rows = [r for r in baseline["rows"] if r["section"] == "kernels"]
    assert {r["op"] for r in kernel_rows} == {"noise_injection", "ambient_loss_fwd_bwd", "attention_fwd_bwd"}
    assert {r["preset"] for r in kernel_rows} == {"ddpmpp", "tiny"}
    assert all(r["status"] == ("n/a" if r["backend"] == "triton" else "ok") for r in kernel_rows)


def test_check_passes_the_baseline_against_itself_and_reports_it() -> None:
    done = run_script("check.py", BASELINE, BASELINE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "REGRESSED" not in done.stdout
    report = run_script("report.py", BASELINE)
    assert report.returncode == 0 and "train/tiny/b32/bf16/torch/eager" in report.stdout


def test_check_fails_on_a_degraded_missing_or_failed_row(baseline: dict, tmp_path: Path) -> None:
    tol = baseline["tolerance"]["max_slowdown"]["kernels"]
    base = write(tmp_path / "base.json", baseline)

    def with_row(change) -> Path:
        doc = copy.deepcopy(baseline)
        doc["rows"] = [change(dict(r)) if r["id"] == ROW else r for r in doc["rows"]]
        doc["rows"] = [r for r in doc["rows"] if r is not None]
        return write(tmp_path / "result.json", doc)

    slower = run_script("check.py", with_row(lambda r: {**r, "norm": r["norm"] * (1 - tol - 0.1)}), base)
    assert slower.returncode == 1 and "REGRESSED" in slower.stdout and ROW in slower.stdout
    within = run_script("check.py", with_row(lambda r: {**r, "norm": r["norm"] * (1 - tol / 2)}), base)
    assert within.returncode == 0, within.stdout
    missing = run_script("check.py", with_row(lambda r: None), base)
    assert missing.returncode == 1 and "MISSING" in missing.stdout
    failed = run_script("check.py", with_row(lambda r: {"id": r["id"], "status": "error", "reason": "boom"}), base)
    assert failed.returncode == 1 and "ERROR: boom" in failed.stdout
    gpu = copy.deepcopy(baseline)
    gpu["machine"]["device"] = "cuda"
    assert run_script("check.py", write(tmp_path / "gpu.json", gpu), base).returncode == 2


def test_update_replaces_the_baseline_on_purpose(baseline: dict, tmp_path: Path) -> None:
    base = write(tmp_path / "base.json", baseline)
    doc = copy.deepcopy(baseline)
    doc["rows"] = [{**r, "norm": r["norm"] / 2} if "norm" in r else r for r in doc["rows"]]
    result = write(tmp_path / "result.json", doc)
    assert run_script("check.py", result, base, "--update").returncode == 0
    assert json.loads(base.read_text()) == doc


def test_a_real_slowdown_measured_by_the_harness_fails_the_check(tmp_path: Path) -> None:
    base, slow = tmp_path / "base.json", tmp_path / "slow.json"
    args = ["--quick", "--sections", "kernels", "--presets", "tiny", "--only", ROW, "--rounds", "5"]
    # Both runs in one fresh process (one torch import), as bench/run.py's main would make them.
    code = (f"from bench.run import run; run({args + ['--out', str(base)]!r}); "
            f"run({args + ['--out', str(slow), '--inject-slowdown', ROW + ':4']!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=150, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    base_row, slow_row = (next(r for r in json.loads(p.read_text())["rows"] if r["id"] == ROW) for p in (base, slow))
    assert base_row["status"] == slow_row["status"] == "ok" and slow_row["injected_slowdown"] == 4
    assert slow_row["norm"] < 0.5 * base_row["norm"]          # four times the work, measured as such

    assert run_script("check.py", base, base).returncode == 0
    done = run_script("check.py", slow, base)
    assert done.returncode == 1, done.stdout
    assert "REGRESSED" in done.stdout and ROW in done.stdout
