"""The benchmark regression check (bench/check.py): committed per-host-kind baselines, their selection, real runs.

Speed is never asserted here as such: the check must pass a result against itself and fail when
a slowdown is put in — by editing a measured result (a training step just over 4/3 slower, against
every committed baseline), and by making the code measured by bench/run.py really slower (a test
hook runs the workload K times per call), far beyond the tolerance. Baselines are kept per host
kind (bench/harness.host_kind); which one a result is compared with is tested on faked
capabilities and files. The benchmarks run in subprocesses, as CI runs them, so their thread and
allocator settings stay out of this process.
"""
import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import check
from bench.bench_train import NO_BF16, train_workloads
from bench.harness import calibrations, host_kind, native_bf16

REPO = Path(__file__).resolve().parents[1]
BASELINES = sorted((REPO / "bench" / "baselines").glob("cpu-*.json"))
ROW = "kernels/ambient_loss_fwd_bwd/tiny/B64x1x32x32/float32/torch"
TRAIN_ROW = "train/tiny/b32/fp32/torch/eager"


def run_script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m bench.<name> ARGS` from the repository root, as CI runs it."""
    return subprocess.run([sys.executable, "-m", f"bench.{name}", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def fake_result(kind: str) -> dict:
    """The smallest result check.py accepts: one train row, measured on a host of `kind`."""
    return {"schema": check.SCHEMA, "created": "2026-01-01T00:00:00+00:00",
            "machine": {"device": "cpu", "gpu": None, "cpu_model": "fake", "host_kind": kind},
            "settings": {}, "tolerance": {"max_slowdown": {"train": 0.2}, "why": "test"},
            "rows": [{"id": TRAIN_ROW, "status": "ok", "norm": 1.0}]}


@pytest.fixture
def fake_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """check.py's baselines folder moved into tmp_path (bench/baselines/ there, empty)."""
    monkeypatch.setattr(check, "REPO", tmp_path)
    monkeypatch.setattr(check, "BASELINES", tmp_path / "bench" / "baselines")
    check.BASELINES.mkdir(parents=True)
    return tmp_path


@pytest.mark.parametrize("capability, flags, kind", [
    ("AVX2", set(), "cpu-avx2"),
    ("AVX2", {"avx512_bf16", "amx_bf16"}, "cpu-avx2"),       # forced down to AVX2 kernels: bf16 not counted
    ("AVX512", {"avx512f"}, "cpu-avx512"),
    ("AVX512", {"avx512f", "avx512_bf16"}, "cpu-avx512-bf16"),
    ("AVX512", {"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}, "cpu-avx512-amx"),
    ("NO AVX", set(), "cpu-no-avx"),
])
def test_host_kind_from_torch_capability_and_cpu_flags(capability: str, flags: set[str], kind: str) -> None:
    assert host_kind(capability, flags) == kind
    assert native_bf16(kind) == kind.endswith(("-amx", "-bf16"))


def test_bf16_rows_and_matmul_are_left_out_without_native_bf16() -> None:
    cpu = torch.device("cpu")
    rows = train_workloads(cpu, ["tiny"], quick=True, bf16=False, keep=lambda wid: "/bf16/" in wid)
    assert rows and all(w.fn is None for w in rows)
    assert {w.info["reason"] for w in rows if w.info["kernels"] == "torch"} == {NO_BF16}
    assert [w.id for w in calibrations(cpu, bf16=False)] == ["calib/copy", "calib/matmul_fp32"]
    native = train_workloads(cpu, ["tiny"], quick=True, bf16=True, keep=lambda wid: "bf16/torch/eager" in wid)
    assert [w.fn is not None for w in native] == [True]


def test_the_committed_baselines_are_the_expected_host_kinds() -> None:
    assert {"cpu-avx512-amx", "cpu-avx512-bf16"} <= {path.stem for path in BASELINES}


@pytest.mark.parametrize("path", BASELINES, ids=lambda p: p.stem)
def test_committed_baseline_is_a_quick_run_of_its_host_kind(path: Path) -> None:
    baseline = json.loads(path.read_text())
    machine = baseline["machine"]
    assert machine["device"] == "cpu" and machine["gpu"] is None and machine["host_kind"] == path.stem
    assert machine["native_bf16"] == native_bf16(path.stem)
    assert machine["cpu_model"] and machine["cpu_cores"] >= 1 and machine["torch"] and machine["triton"]
    assert baseline["settings"]["quick"] and baseline["settings"]["clock"] == "cpu"
    assert baseline["tolerance"]["why"] and set(baseline["tolerance"]["max_slowdown"]) == {"kernels", "train"}
    assert all(0 < tol < 1 for tol in baseline["tolerance"]["max_slowdown"].values())
    calib = {"calib/copy", "calib/matmul_fp32"} | ({"calib/matmul_bf16"} if machine["native_bf16"] else set())
    assert {c["id"] for c in baseline["calibration"]["train"]} == calib
    rows = {r["id"]: r for r in baseline["rows"]}
    for precision in ("fp32", "bf16"):
        step = rows[f"train/tiny/b32/{precision}/torch/eager"]
        if precision == "bf16" and not machine["native_bf16"]:
            assert step["status"] == "skipped" and step["reason"] == NO_BF16
            continue
        assert step["status"] == "ok" and step["img_per_s"] > 0 and 0 < step["of_ceiling"] < 2 and step["norm"] > 0
        assert rows[f"train/tiny/b32/{precision}/triton/eager"]["status"] == "n/a"
    kernel_rows = [r for r in baseline["rows"] if r["section"] == "kernels"]
    assert {r["op"] for r in kernel_rows} == {"noise_injection", "ambient_loss_fwd_bwd", "attention_fwd_bwd"}
    assert {r["preset"] for r in kernel_rows} == {"ddpmpp", "tiny"}
    assert all(r["status"] == ("n/a" if r["backend"] == "triton" else "ok") for r in kernel_rows)

    done = run_script("check", path, path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "REGRESSED" not in done.stdout
    report = run_script("report", path)
    assert report.returncode == 0 and TRAIN_ROW in report.stdout


@pytest.mark.parametrize("capability, flags", [("AVX512", {"avx512_bf16", "amx_bf16"}), ("AVX512", {"avx512_bf16"}),
                                               ("AVX512", set()), ("AVX2", set())])
def test_check_picks_the_baseline_of_the_result_host_kind(capability: str, flags: set[str], fake_repo: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    for kind in ("cpu-avx512-amx", "cpu-avx512-bf16", "cpu-avx512", "cpu-avx2"):
        write(check.baseline_path(kind), fake_result(kind))
    kind = host_kind(capability, flags)
    result = write(fake_repo / "result.json", fake_result(kind))
    assert check.main([str(result)]) == 0
    out = capsys.readouterr().out
    assert f"host kind {kind}, baseline {fake_repo / 'bench' / 'baselines' / kind}.json\n" in out and "PASS" in out


def test_no_baseline_of_the_host_kind_warns_writes_the_candidate_and_passes(fake_repo: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    doc = fake_result("cpu-avx2")
    result = write(fake_repo / "bench.json", doc)
    assert check.main([str(result)]) == 0
    out = capsys.readouterr().out
    candidate = fake_repo / "bench.baseline-cpu-avx2.json"
    assert "WARNING: no baseline for host kind cpu-avx2" in out and str(candidate) in out
    assert "bench/baselines/cpu-avx2.json --update" in out
    assert json.loads(candidate.read_text()) == doc
    # The printed way of recording it works, and then the check compares with it.
    assert check.main([str(result), str(fake_repo / "bench" / "baselines" / "cpu-avx2.json"), "--update"]) == 0
    assert check.main([str(result)]) == 0 and "PASS: 1 rows within tolerance" in capsys.readouterr().out


def test_a_baseline_or_run_of_another_host_kind_is_refused(fake_repo: Path, capsys: pytest.CaptureFixture) -> None:
    amx, avx2 = (write(fake_repo / f"{kind}.json", fake_result(kind)) for kind in ("cpu-avx512-amx", "cpu-avx2"))
    assert check.main([str(avx2), str(amx)]) == 2
    err = capsys.readouterr().err
    assert "cpu-avx2 host" in err and "cpu-avx512-amx host" in err and "bench/baselines/cpu-avx2.json" in err
    assert check.main([str(avx2), str(amx), str(amx)]) == 2
    assert "different host kinds (cpu-avx2, cpu-avx512-amx)" in capsys.readouterr().err
    assert check.main([str(avx2), str(amx), "--update"]) == 2
    assert json.loads(amx.read_text()) == fake_result("cpu-avx512-amx")     # not overwritten


@pytest.mark.parametrize("path", BASELINES, ids=lambda p: p.stem)
def test_check_fails_on_a_slower_missing_or_failed_row(path: Path, tmp_path: Path) -> None:
    baseline = json.loads(path.read_text())
    tol = baseline["tolerance"]["max_slowdown"]["kernels"]
    base = write(tmp_path / "base.json", baseline)

    def with_row(row_id: str, change) -> Path:
        doc = copy.deepcopy(baseline)
        doc["rows"] = [change(dict(r)) if r["id"] == row_id else r for r in doc["rows"]]
        doc["rows"] = [r for r in doc["rows"] if r is not None]
        return write(tmp_path / "result.json", doc)

    slower = run_script("check", with_row(ROW, lambda r: {**r, "norm": r["norm"] * (1 - tol - 0.1)}), base)
    assert slower.returncode == 1 and "REGRESSED" in slower.stdout and ROW in slower.stdout
    within = run_script("check", with_row(ROW, lambda r: {**r, "norm": r["norm"] * (1 - tol / 2)}), base)
    assert within.returncode == 0, within.stdout
    step = run_script("check", with_row(TRAIN_ROW, lambda r: {**r, "norm": r["norm"] / 1.34}), base)
    assert step.returncode == 1 and "REGRESSED" in step.stdout, step.stdout    # a step just over 4/3 slower
    missing = run_script("check", with_row(ROW, lambda r: None), base)
    assert missing.returncode == 1 and "MISSING" in missing.stdout
    failed = run_script("check", with_row(ROW, lambda r: {"id": r["id"], "status": "error", "reason": "boom"}), base)
    assert failed.returncode == 1 and "ERROR: boom" in failed.stdout
    gpu = copy.deepcopy(baseline)
    gpu["machine"].update(device="cuda", host_kind="cuda")
    assert run_script("check", write(tmp_path / "gpu.json", gpu), base).returncode == 2


def test_update_replaces_the_baseline_on_purpose(tmp_path: Path) -> None:
    baseline = json.loads(BASELINES[0].read_text())
    base = write(tmp_path / "base.json", baseline)
    doc = copy.deepcopy(baseline)
    doc["rows"] = [{**r, "norm": r["norm"] / 2} if "norm" in r else r for r in doc["rows"]]
    result = write(tmp_path / "result.json", doc)
    assert run_script("check", result, base, "--update").returncode == 0
    assert json.loads(base.read_text()) == doc


def test_a_real_slowdown_measured_by_the_harness_fails_the_check(tmp_path: Path) -> None:
    """Two real runs (a kernel and a training step, then both made slower) against each other and against the
    committed baseline this host's kind selects (its two rows), or its no-baseline warning where there is none."""
    base, slow = tmp_path / "base.json", tmp_path / "slow.json"
    args = ["--quick", "--presets", "tiny", "--only", ROW, "--only", TRAIN_ROW, "--rounds", "5"]
    slower = ["--inject-slowdown", f"{ROW}:4", "--inject-slowdown", f"{TRAIN_ROW}:2"]
    # Both runs in one fresh process (one torch import), as bench/run.py's main would make them.
    code = (f"from bench.run import run; run({args + ['--out', str(base)]!r}); "
            f"run({args + ['--out', str(slow)] + slower!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = [{r["id"]: r for r in json.loads(p.read_text())["rows"]} for p in (base, slow)]
    for row_id, factor in ((ROW, 4), (TRAIN_ROW, 2)):
        base_row, slow_row = runs[0][row_id], runs[1][row_id]
        assert base_row["status"] == slow_row["status"] == "ok" and slow_row["injected_slowdown"] == factor
        assert slow_row["norm"] < 0.75 * base_row["norm"]       # K times the work, measured as such

    assert run_script("check", base, base).returncode == 0
    done = run_script("check", slow, base)
    assert done.returncode == 1, done.stdout
    assert "REGRESSED" in done.stdout and ROW in done.stdout and TRAIN_ROW in done.stdout

    stored = check.baseline_path(json.loads(slow.read_text())["machine"]["host_kind"])
    if not stored.exists():
        done = run_script("check", slow)
        assert done.returncode == 0 and "WARNING: no baseline for host kind" in done.stdout
        return
    committed = json.loads(stored.read_text())
    committed["rows"] = [r for r in committed["rows"] if r["id"] in (ROW, TRAIN_ROW)]
    done = run_script("check", slow, write(tmp_path / "committed.json", committed))
    assert done.returncode == 1, done.stdout
    assert done.stdout.count("REGRESSED") == 2


def test_the_pytest_benchmark_entry_point_runs_bench_workloads() -> None:
    """`pytest bench/` (pytest-benchmark) runs bench's own workloads; here each once, untimed (--benchmark-disable),
    and what cannot run on this machine is skipped with its reason."""
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/test_benchmarks.py", "-v", "-rs",
                           "-p", "no:cacheprovider", "--benchmark-disable", "--bench-presets", "tiny",
                           "-k", "noise_injection or (train_step and fp32)"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    for test in ("test_kernel[kernels/noise_injection/tiny/B64x1x32x32/float32/torch]",
                 "test_train_step[train/tiny/b32/fp32/torch/eager]"):
        assert f"{test} PASSED" in done.stdout, done.stdout
    assert "test_kernel[kernels/noise_injection/tiny/B64x1x32x32/float32/triton] SKIPPED" in done.stdout
    assert "Triton runs on a CPU only under its interpreter" in done.stdout
