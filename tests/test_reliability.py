"""Reliability: damaged checkpoints, kill -9 at random moments, non-finite steps, and bad input on an existing run.

Every run here uses the tiny digits configuration of tests/test_training.py (8x8 images,
model_channels 8, batch 16): a few seconds per run on two cores.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ambient.io.checkpoint import (
    CheckpointError,
    _meta_digest,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from ambient.model import AmbientLoss
from ambient.train import cli as train
from ambient.train import loop as training
from ambient.train import train as run_training
from ambient.train.distributed import init_distributed

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--data", "digits", "--model-channels", "8", "--batch", "16", "--tick-kimg", "0.08", "--grid-size", "4",
        "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05",
        "--lr-decay", "none"]    # runs extended by --kimg on resume: a rate that does not follow --kimg
# 20 steps with a checkpoint every 2: the run the kill test interrupts.
KILL_RUN = FAST + ["--kimg", "0.32", "--snap-kimg", "0.032"]


def work_dirs(run_dir: Path) -> list[str]:
    """Leftover `.tmp-*` / `.trash-*` directories of checkpoint writes and deletions (none before run_dir exists)."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".tmp-", ".trash-"))) if run_dir.is_dir() \
        else []


def checkpoint_names(run_dir: Path) -> set[str]:
    return {c.name for c in list_checkpoints(run_dir)}


def file_states(root: Path) -> dict[str, tuple]:
    """Every file and directory under root with its mtime (and, for files, its sha256)."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns,
                                       hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def flip_byte(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 0x20
    path.write_bytes(bytes(data))


def same_weights(a: Path, b: Path) -> None:
    for name in ("net.safetensors", "ema.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f"{name} differs"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# --- damaged checkpoints --------------------------------------------------------------------------

def _edit_meta(ckpt: Path, change, recompute_checksum: bool = False) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    change(meta)
    if recompute_checksum:
        meta["meta_sha256"] = _meta_digest(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


DAMAGES = {
    "truncated net": lambda c, rng: (c / "net.safetensors").write_bytes((c / "net.safetensors").read_bytes()[:-7]),
    "flipped byte in ema": lambda c, rng: flip_byte(c / "ema.safetensors", rng),
    "flipped byte in state": lambda c, rng: flip_byte(c / "state.pt", rng),
    "missing state": lambda c, rng: (c / "state.pt").unlink(),
    "missing meta": lambda c, rng: (c / "meta.json").unlink(),
    "truncated meta": lambda c, rng: (c / "meta.json").write_text((c / "meta.json").read_text()[:40]),
    "meta value changed": lambda c, rng: _edit_meta(c, lambda m: m.update(kimg=99)),
    "meta lists no files": lambda c, rng: _edit_meta(c, lambda m: m.pop("files"), recompute_checksum=True),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_newest_checkpoint_is_skipped_for_the_previous_one(tmp_path, damage):
    weights = {"w": torch.arange(6.0)}
    good = save_checkpoint(tmp_path, 2, weights, weights, {"step": 2}, {"kimg": 0.1})
    bad = save_checkpoint(tmp_path, 4, weights, weights, {"step": 4}, {"kimg": 0.2})
    read_meta(bad, verify=True)
    DAMAGES[damage](bad, random.Random(damage))
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    with pytest.warns(UserWarning, match="skipping"):
        assert latest_checkpoint(tmp_path) == good
    assert load_checkpoint(good)["state"] == {"step": 2}


def test_leftovers_of_killed_writers_are_ignored_then_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead, host = dead_pid(), socket.gethostname()
    stale = [run / f".tmp-checkpoint-000000002.{dead}@{host}", run / f".trash-checkpoint-000000000.{dead}@{host}"]
    foreign = [run / f".tmp-checkpoint-000000002.{dead}@another-host", run / f".tmp-checkpoint-000000002.1@{host}"]
    for d in stale + foreign:
        d.mkdir()
        (d / "net.safetensors").write_bytes(b"partial")
    cfg = train.parse_args(FAST + ["--run-dir", str(run), "--resume", "auto"])
    run_dir, resume_from, held = training.prepare_run_dir(cfg, init_distributed("cpu"))
    held.close()
    assert (run_dir, resume_from) == (run, None)                                       # a fresh start, no error
    weights = {"w": torch.zeros(2)}
    for step in (1, 2, 3):
        save_checkpoint(run, step, weights, weights, {}, {}, keep=2)
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-000000002", "checkpoint-000000003"]
    # Dead local writers' directories are gone; another host's, or a live process's (pid 1), stay.
    assert work_dirs(run) == sorted(d.name for d in foreign)


# --- kill -9 ----------------------------------------------------------------------------------------

# train.py on a slow disk: each fsync of a checkpoint write waits, so a kill can land inside the write.
SLOW_DISK_TRAIN = """
import os, sys, time
import ambient.io.checkpoint as ckpt
fsync = ckpt._fsync
ckpt._fsync = lambda path: (time.sleep(float(os.environ["SLOW_FSYNC_S"])), fsync(path))[1]
sys.argv[0] = "train.py"
import train
sys.exit(train.main())
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    run_training(train.parse_args(KILL_RUN + ["--run-dir", str(run)]))
    return run


def kill_round(run: Path, rng: random.Random, target: int | None, log: Path) -> dict:
    """Start training (resume auto) and SIGKILL it: at a random point of this round's `target`-th checkpoint write
    (on a slow disk), or with target None at a random moment of the 3 s after training began but no later than
    this round's first new checkpoint (so no round gets far, however fast the machine); returns what it saw."""
    env = dict(os.environ, SLOW_FSYNC_S="0.15")
    cmd = [sys.executable, "-c", SLOW_DISK_TRAIN] if target else [sys.executable, "train.py"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd + KILL_RUN + ["--run-dir", str(run), "--resume", "auto"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, writes, before = time.time() + 240, set(), checkpoint_names(run)
        while proc.poll() is None and time.time() < deadline:
            if target:    # the checkpoints this round began: its own work directories (its pid) and new checkpoint-*
                own = {n[len(".tmp-"):].partition(".")[0] for n in work_dirs(run)
                       if n.startswith(".tmp-") and f".{proc.pid}@" in n}
                writes |= own | (checkpoint_names(run) - before)
                if len(writes) >= target:
                    time.sleep(rng.uniform(0, 0.8))
                    break
            elif "\nrun " in "\n" + log.read_text():       # training has begun
                until = time.time() + rng.uniform(0, 3)
                while time.time() < until and proc.poll() is None and checkpoint_names(run) <= before:
                    time.sleep(0.005)
                break
            time.sleep(0.005)
        assert time.time() < deadline, "the training process never got going"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    for ckpt in list_checkpoints(run):       # a kill never leaves a partial checkpoint-* behind
        read_meta(ckpt, verify=True)
    newest = latest_checkpoint(run)
    return {"killed": proc.returncode == -signal.SIGKILL, "newest": newest.name if newest else None,
            "leftovers": work_dirs(run)}


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, uninterrupted):
    """Six rounds of kill -9, then `--resume auto` with the newest checkpoint damaged on top: the run ends with the
    uninterrupted run's checkpoints and weights.

    Slow-disk rounds (0, 2, 4) are killed at a random point of a checkpoint write (mostly inside it: five fsyncs of
    0.15 s); a write that is not atomic leaves a partial checkpoint-* that fails verification. Round 0 is killed in
    the run's first write, so round 1 mostly starts where no checkpoint exists yet. Rounds 2 and 4 are killed in
    their second write, after one complete checkpoint each: the damaged newest always has an older one to fall back
    to, however slow the machine. (Rounds killed after so many seconds left one checkpoint only on a loaded
    machine; damaging it left every checkpoint damaged, which `--resume auto` rightly refuses rather than start
    afresh: tests/test_rundir.py.) Rounds 1, 3 and 5 write one new checkpoint at most: by round 4 the run is at
    step 10 at most, so the slow-disk rounds always have writes left to be killed in.
    """
    run, rng = tmp_path / "run", random.Random(2024)
    rounds = [kill_round(run, rng, target, log=tmp_path / f"round{i}.log")
              for i, target in enumerate([1, None, 2, None, 2, None])]
    print("kill rounds:", rounds)
    assert all(r["killed"] for r in rounds[::2]), rounds     # a slow-disk run cannot finish before its kill
    # On top of the kills, damage the newest checkpoint: --resume auto must fall back to the one before.
    assert len(list_checkpoints(run)) >= 2, rounds
    damaged = list_checkpoints(run)[-1]
    flip_byte(damaged / "net.safetensors", rng)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(train.parse_args(KILL_RUN + ["--run-dir", str(run), "--resume", "auto"]))
    assert any(f"{damaged} is damaged" in str(w.message) for w in caught)
    assert [c.name for c in list_checkpoints(run)] == [c.name for c in list_checkpoints(uninterrupted)]
    for ckpt in list_checkpoints(run):
        read_meta(ckpt, verify=True)
    same_weights(latest_checkpoint(run), latest_checkpoint(uninterrupted))
    assert work_dirs(run) == []               # leftovers of killed writes were cleaned up
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 20


# --- non-finite steps -------------------------------------------------------------------------------

def nan_loss_on(monkeypatch, bad_calls) -> list[int]:
    """Make AmbientLoss return NaN losses on the calls for which bad_calls(call_index) is true; returns the log."""
    original, calls = AmbientLoss.__call__, []

    def poisoned(self, *args, **kwargs):
        loss, sigma = original(self, *args, **kwargs)
        calls.append(len(calls))
        return (loss * float("nan"), sigma) if bad_calls(calls[-1]) else (loss, sigma)

    monkeypatch.setattr(AmbientLoss, "__call__", poisoned)
    return calls


def test_one_nan_batch_is_skipped_and_counted(tmp_path, monkeypatch, capsys):
    calls = nan_loss_on(monkeypatch, lambda i: i == 3)
    run = tmp_path / "run"
    assert train.main(FAST + ["--run-dir", str(run), "--kimg", "0.16", "--snap-kimg", "0.08"]) == 0
    assert len(calls) == 10 and "step 3: non-finite" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 10 and records[-1]["skipped_steps"] == 1
    final = load_checkpoint(latest_checkpoint(run))
    assert final["state"]["bad_steps"] == 1
    assert all(torch.isfinite(t).all() for part in ("net", "ema") for t in final[part].values())


def test_persistent_nan_stops_with_a_clear_error_and_keeps_the_checkpoints(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert train.main(FAST + ["--run-dir", str(run), "--kimg", "0.08", "--snap-kimg", "0.04"]) == 0
    before = {c.name: file_states(c) for c in list_checkpoints(run)}
    calls = nan_loss_on(monkeypatch, lambda i: True)
    capsys.readouterr()
    assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.32", "--snap-kimg", "0.32",
                              "--max-bad-steps", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "3 consecutive" in err and "last good checkpoint" in err
    assert "Traceback" not in err and len(calls) == 3
    assert {c.name: file_states(c) for c in list_checkpoints(run)} == before
    for ckpt in list_checkpoints(run):
        read_meta(ckpt, verify=True)


# --- bad input on an existing run -------------------------------------------------------------------

@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> dict:
    """A finished short run plus bad data sets next to it; `state` is every file's mtime and hash."""
    root = tmp_path_factory.mktemp("existing")
    run = root / "run"
    assert train.main(FAST + ["--run-dir", str(run), "--kimg", "0.08", "--snap-kimg", "0.04"]) == 0

    def folder(name: str, images: list[np.ndarray]) -> str:
        d = root / name
        d.mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img).save(d / f"{i}.png")
        return str(d)

    gray = [np.full((8, 8), 40 * i, np.uint8) for i in range(4)]
    paths = {"run": str(run), "empty": str(root / "empty"), "badzip": str(root / "bad.zip"),
             "mixed": folder("mixed", gray + [np.zeros((16, 16), np.uint8)]), "unlabeled": folder("unlabeled", gray),
             "rgba": folder("rgba", [np.zeros((8, 8, 4), np.uint8)] * 3), "corrupt": folder("corrupt", gray),
             "damaged": str(root / "copy" / "ckpt")}
    blob = (root / "corrupt" / "2.png").read_bytes()
    (root / "corrupt" / "2.png").write_bytes(blob[: len(blob) // 2])
    (root / "empty").mkdir()
    (root / "bad.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    shutil.copytree(latest_checkpoint(run), paths["damaged"])
    flip_byte(Path(paths["damaged"]) / "ema.safetensors", random.Random(0))
    return {"paths": paths, "state": file_states(run)}


RESUME = ["--run-dir", "{run}", "--resume", "auto"]


@pytest.mark.parametrize("args, message", [
    (RESUME + ["--data", "/no/such/data"], "/no/such/data"),
    (RESUME + ["--data", "{corrupt}"], "2.png"),
    (RESUME + ["--data", "{mixed}"], "differ in size"),
    (RESUME + ["--data", "{rgba}"], "alpha channel"),
    (RESUME + ["--data", "{empty}"], "no images"),
    (RESUME + ["--data", "{badzip}"], "zip"),
    (RESUME + ["--cond", "--data", "{unlabeled}"], "labels"),
    (RESUME + ["--n-clean", "5000"], "5000"),
    (RESUME + ["--n-clean", "1000", "--n-noisy", "1000"], "more than"),
    (RESUME + ["--sigma-n", "0.1,0.4", "--sigma-share", "0.5,0.6"], "sum to 1"),
    (RESUME + ["--sigma-n", "0.2,0.2"], "twice"),
    (RESUME + ["--sigma-n", "0"], "sigma_n = 0"),
    (RESUME + ["--max-shift", "8"], "max_shift"),
    (RESUME + ["--model-channels", "16"], "was made for network"),
    (RESUME + ["--cond"], "was made for network"),
    (RESUME + ["--preset", "ddpmpp"], "was made for network"),
    (RESUME + ["--batch", "32"], "--batch 16"),
    (RESUME + ["--batch-gpu", "5"], "split evenly"),
    (RESUME + ["--dropout", "1"], "dropout"),
    (["--resume", "{run}", "--model-channels", "16"], "was made for network"),
    (["--run-dir", "{run}"], "not empty"),
    (["--resume", "{empty}"], "no complete checkpoint"),
    (["--resume", "/no/such/run"], "no such checkpoint"),
    (["--resume", "{damaged}"], "damaged"),
    (["--resume", "{damaged}", "--run-dir", "{run}"], "continues only in its own directory"),
])
def test_bad_input_on_an_existing_run_is_one_clear_error_and_changes_nothing(existing, capsys, args, message):
    args = [a.format(**existing["paths"]) for a in args]
    capsys.readouterr()
    assert train.main(FAST + ["--kimg", "0.16"] + args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert file_states(Path(existing["paths"]["run"])) == existing["state"]


@pytest.mark.parametrize("args", [
    ["--n-clean", "-1"], ["--n-noisy", "x"], ["--sigma-n", "-0.2"], ["--sigma-n", "nan"], ["--sigma-n", ","],
    ["--sigma-share", "-0.5"], ["--clean-fraction", "1.5"], ["--p-clean", "-0.1"], ["--keep-fraction", "2"],
    ["--data-seed", "-1"], ["--max-shift", "-1"], ["--workers", "-1"], ["--preset", "huge"], ["--model-channels", "0"],
    ["--dropout", "1.5"], ["--sigma-sampling", "uniform"], ["--weighting", "none"], ["--P-std", "0"],
    ["--batch", "0"], ["--batch-gpu", "-2"], ["--lr", "0"], ["--lr", "inf"], ["--lr-rampup-kimg", "-1"],
    ["--ema-halflife-kimg", "-1"], ["--kimg", "0"], ["--seed", "-1"], ["--precision", "fp8"], ["--kernels", "cuda"],
    ["--max-bad-steps", "0"], ["--tick-kimg", "0"], ["--snap-kimg", "-1"], ["--keep-ckpts", "0"], ["--grid-size", "0"],
    ["--P-mean", "nan"], ["--P-mean", "inf"],
])
def test_every_flag_out_of_range_is_a_usage_error(capsys, args):
    with pytest.raises(SystemExit) as e:
        train.parse_args(FAST + args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" in err and f"argument {args[0]}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("device", [
    "nonsense",
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
])
def test_unusable_device_is_a_clear_error(existing, capsys, device):
    try:
        code = train.main(FAST + ["--kimg", "0.16"] + [a.format(**existing["paths"]) for a in RESUME]
                          + ["--device", device])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and "error: " in err and device in err
    assert file_states(Path(existing["paths"]["run"])) == existing["state"]


@pytest.mark.parametrize("args, code, message", [
    (RESUME + ["--data", "{rgba}"], 1, "error: "),
    (RESUME + ["--batch", "0"], 2, "usage:"),
])
def test_command_line_exit_codes(existing, args, code, message):
    args = [a.format(**existing["paths"]) for a in args]
    proc = subprocess.run([sys.executable, "train.py"] + FAST + ["--kimg", "0.16"] + args, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == code and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert file_states(Path(existing["paths"]["run"])) == existing["state"]
