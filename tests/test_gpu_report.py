"""bench/gpu_report.py on a folder laid out as bench/gpu_check.sh leaves it (made here, no GPU); the script parses."""
import json
import random
import subprocess
from pathlib import Path

import pytest

from bench import gpu_report

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, losses: list[float], skipped: int = 0) -> None:
    folder.mkdir(parents=True)
    ticks = [{"step": 10 * (i + 1), "kimg": 1.28 * (i + 1), "loss": loss, "img_per_s": 4000.0, "skipped_steps": skipped}
             for i, loss in enumerate(losses)]
    (folder / "log.jsonl").write_text("".join(json.dumps(t) + "\n" for t in ticks))


def _curve(seed: int, level: float = 1.0) -> list[float]:
    """A descending loss curve with a few per cent of tick-to-tick scatter."""
    rng = random.Random(seed)
    return [level * (0.3 + 0.7 * 0.85 ** i) * (1 + 0.03 * rng.uniform(-1, 1)) for i in range(25)]


@pytest.fixture
def gpu_folder(tmp_path: Path) -> Path:
    (tmp_path / "machine.txt").write_text("GPU 0: NVIDIA H200 (UUID: GPU-0)\ntorch 2.14.1 cuda 13.0 triton 3.8.0\n")
    # name, exit code, seconds, limit (a line without the limit, as older scripts wrote, is read too)
    (tmp_path / "sections.tsv").write_text("kernel_tests\t0\t12\nrun_triton\t0\t95\t150\nrun_torch\t124\t120\t120\n"
                                           "aot\t0\t61\t90\n")
    (tmp_path / "aot.md").write_text("| kernel | workload |\n|---|---|\n| _attn_fwd_kernel | attention tiny |\n")
    (tmp_path / "kernel_tests.log").write_text("....\n80 passed, 2 skipped in 41.0s\n")
    (tmp_path / "xformers.txt").write_text("unavailable: xformers is not installed")
    baseline = next((REPO / "bench" / "baselines").glob("cpu-*.json"))
    (tmp_path / "kernels.json").write_text(baseline.read_text())
    return tmp_path


def test_one_report_with_every_section(gpu_folder: Path) -> None:
    _run(gpu_folder / "run-triton", _curve(1))
    _run(gpu_folder / "run-torch", _curve(2))
    assert gpu_report.main([str(gpu_folder)]) == 0
    text = (gpu_folder / "gpu-report.md").read_text()
    for part in ("# GPU report", "NVIDIA H200", "kernel_tests ok (12 s)", "run_torch TIMED OUT (120 s of 120)",
                 "; limits 360 s", "| run_triton | 0 | 95 | 150 |", "| _attn_fwd_kernel | attention tiny |",
                 "80 passed, 2 skipped", "train/tiny/b32/fp32/torch/eager", "unavailable: xformers is not installed",
                 "| kimg | loss triton | loss torch |", "**PASS**"):
        assert part in text, part
    assert "no train.json" not in text    # one of the two results is enough for the table


@pytest.mark.parametrize("triton, torch_, skipped, why", [
    (_curve(1, level=1.2), _curve(2), 0, "apart"),       # the Triton run's loss 20% higher
    (_curve(1)[::-1], _curve(2), 0, "both descend: False"),
    (_curve(1), _curve(2), 3, "skipped: 3 and 3"),
])
def test_curves_that_disagree_fail(tmp_path: Path, triton, torch_, skipped, why) -> None:
    _run(tmp_path / "a", triton, skipped)
    _run(tmp_path / "b", torch_, skipped)
    text, ok = gpu_report.loss_check(gpu_report.read_losses(tmp_path / "a"), gpu_report.read_losses(tmp_path / "b"))
    assert not ok and "**FAIL**" in text and why in text


def test_missing_pieces_are_named_not_guessed(tmp_path: Path) -> None:
    text = gpu_report.report(tmp_path)
    for part in ("(no machine.txt)", "Not run (no aot.md).", "(no kernels.json or train.json)",
                 "Not probed (no xformers.txt).", "no log of the triton and torch run(s)"):
        assert part in text, part


def test_gpu_check_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
