"""A run directory cannot be lost (issue 25, class 1): one writer at a time, a run continues only in its own
directory, never over damaged checkpoints or another folder's files, a resume keeps what defines the run unless a
change is asked for (and then records it at its step), and the log holds every step once."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ambient.io.checkpoint import list_checkpoints, save_checkpoint
from ambient.train import cli as train
from ambient.train.rundir import RunDirInUse, RunDirLock, choose_run_dir

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--data", "digits", "--model-channels", "8", "--batch", "16", "--tick-kimg", "0.016", "--grid-size", "4",
        "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05", "--snap-kimg", "0.08",
        "--lr", "0.002", "--lr-decay", "none"]             # runs extended by --kimg: a rate that does not follow it


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` by relative path: what must not change."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv: list[str], *fragments: str) -> None:
    capsys.readouterr()
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of 10 steps, checkpoints at steps 5 and 10, a log record every step."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train.main(FAST + ["--run-dir", str(run), "--kimg", "0.16"]) == 0
    return run


def test_one_writer_holds_the_directory(tmp_path):
    before = sorted(tmp_path.iterdir())
    held = RunDirLock(tmp_path)
    try:
        with pytest.raises(RunDirInUse, match=f"pid {os.getpid()} on "):
            RunDirLock(tmp_path)
    finally:
        held.close()
    RunDirLock(tmp_path).close()                 # free again once its holder lets go
    assert sorted(tmp_path.iterdir()) == before  # and nothing was written to take it


def test_a_second_trainer_on_a_busy_run_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "train.py", *FAST, "--run-dir", str(run), "--kimg", "16",
                              "--resume", "auto"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run / "config.json").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (run / "config.json").exists(), first.stderr.read() if first.poll() is not None else "no config"
        refused(capsys, FAST + ["--run-dir", str(run), "--resume", "auto", "--lr", "0.01"], "is in use: pid ",
                "trains there")
        assert json.loads((run / "config.json").read_text())["lr"] == 0.002      # the first run's, untouched
    finally:
        first.kill()
        first.wait()


def test_a_run_continues_only_in_its_own_directory(finished, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    before = digest(other)
    refused(capsys, FAST + ["--resume", str(finished), "--run-dir", str(other), "--kimg", "0.32"],
            "continues only in its own directory")
    assert digest(other) == before


def test_resume_auto_never_takes_over_a_folder_that_holds_no_run(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "config.json").write_text('{"not": "a run"}')
    before = digest(folder)
    refused(capsys, FAST + ["--run-dir", str(folder), "--resume", "auto", "--kimg", "0.032"], "notes.txt",
            "found no run")
    assert digest(folder) == before


def test_a_run_killed_before_its_first_checkpoint_starts_afresh_with_a_clean_log(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "log.jsonl").write_text('{"step": 1, "loss": 9}\n{"step": 2, "lo')     # the dead attempt's, cut short
    assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.048"]) == 0
    assert logged_steps(run) == [1, 2, 3]
    assert json.loads((run / "log.jsonl").read_text().splitlines()[0])["loss"] != 9


# A writer killed inside the atomic writes a run makes before its first checkpoint: config.json, the log cut back
# on a restart, the first grid (all three temporaries at once).
KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from ambient.common.atomic import atomic_path
run = Path(sys.argv[1])
with atomic_path(run / "config.json") as a, atomic_path(run / "log.jsonl") as b, \\
        atomic_path(run / "samples-000000002.png") as c:
    for tmp in (a, b, c):
        tmp.write_bytes(b"half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_temporaries_of_a_writer_killed_before_the_first_checkpoint_are_no_foreign_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run)], cwd=ROOT)
    assert killed.returncode == -9 and len(list(run.iterdir())) == 3 and not list(run.glob("[!.]*"))
    cfg = train.parse_args(FAST + ["--run-dir", str(run), "--resume", "auto"])
    run_dir, resume_from, held = choose_run_dir(cfg)
    held.close()
    assert (run_dir, resume_from) == (run, None)                                       # a fresh start, no error
    (run / ".notes.txt.1-2.tmp.txt").write_text("not a run's")
    refused(capsys, FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.032"], ".notes.txt",
            "found no run")


def test_damaged_checkpoints_are_never_trained_over(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for ckpt in list_checkpoints(run):
        blob = bytearray((ckpt / "net.safetensors").read_bytes())
        blob[-1] ^= 0xFF
        (ckpt / "net.safetensors").write_bytes(bytes(blob))
    before = digest(run)
    with pytest.warns(UserWarning, match="skipping"):
        refused(capsys, FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.16"],
                "every checkpoint in", "is damaged")
    assert digest(run) == before


def test_a_resume_keeps_what_defines_the_run_unless_a_change_is_asked_for(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = digest(run)
    refused(capsys, FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.32", "--lr", "0.001",
                            "--seed", "3"], "--lr 0.002 -> 0.001", "--seed 0 -> 3", "--allow-change lr,seed")
    refused(capsys, FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.08"],
            "has trained 0.16 kimg, more than --kimg 0.08")
    assert digest(run) == before
    # Run controls may change (log and snapshot intervals, kept checkpoints); an asked-for change is recorded.
    assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.32", "--lr", "0.001",
                              "--allow-change", "lr", "--tick-kimg", "0.032", "--keep-ckpts", "2"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 0.001 and config["changes"] == [{"step": 10, "changes": {"lr": [0.002, 0.001]}}]
    meta = json.loads((list_checkpoints(run)[-1] / "meta.json").read_text())
    assert meta["step"] == 20 and meta["changes"] == config["changes"]
    assert logged_steps(run) == [*range(1, 11), 12, 14, 16, 18, 20]
    # The next resume compares against the changed run, and keeps its history.
    assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.352", "--lr", "0.001"]) == 0
    assert json.loads((run / "config.json").read_text())["changes"] == config["changes"]


def test_under_a_cosine_decay_the_length_is_a_setting(tmp_path, capsys):
    run = tmp_path / "run"
    args = FAST + ["--lr-decay", "cosine", "--run-dir", str(run)]
    assert train.main(args + ["--kimg", "0.032"]) == 0                       # 2 steps, the rate down to 0 at 0.032
    before = digest(run)
    refused(capsys, args + ["--resume", "auto", "--kimg", "0.064"], "--kimg 0.032 -> 0.064", "--allow-change kimg")
    assert digest(run) == before
    assert train.main(args + ["--resume", "auto", "--kimg", "0.064", "--allow-change", "kimg"]) == 0
    changes = json.loads((run / "config.json").read_text())["changes"]
    assert changes == [{"step": 2, "changes": {"kimg": [0.032, 0.064]}}]

def test_the_log_holds_every_step_once_after_a_resume(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(list_checkpoints(run)[-1])          # killed after logging steps 6-10, before their checkpoint
    assert logged_steps(run) == list(range(1, 11))
    assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.16"]) == 0
    assert logged_steps(run) == list(range(1, 11))
    again = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    first = [json.loads(line)["loss"] for line in (finished / "log.jsonl").read_text().splitlines()]
    assert again == first                             # and the resumed steps are the same steps


def test_pruning_never_removes_the_checkpoint_just_written(tmp_path):
    tensors = {"w": torch.zeros(2)}
    state = {"optimizer": {}, "step": 0, "bad_steps": 0, "batch": 1}
    save_checkpoint(tmp_path, 50, tensors, tensors, state, {}, keep=3)       # a later step from another attempt
    for step in (10, 20):
        save_checkpoint(tmp_path, step, tensors, tensors, state, {}, keep=2)
        assert f"checkpoint-{step:09d}" in [c.name for c in list_checkpoints(tmp_path)]
    assert [c.name for c in list_checkpoints(tmp_path)] == ["checkpoint-000000020", "checkpoint-000000050"]
    save_checkpoint(tmp_path, 30, tensors, tensors, state, {}, keep=1)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["checkpoint-000000030"]
