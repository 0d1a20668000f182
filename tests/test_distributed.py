"""torchrun with gloo on CPU: equivalence with one process, data order, resume across world sizes,
elastic restart after a killed rank, and rank 0 alone writing files."""
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ambient.data.order import GlobalOrderSampler, epoch_permutation
from ambient.io.checkpoint import latest_checkpoint, list_checkpoints, read_meta
from ambient.train.distributed import attempt_store

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--data", "digits", "--model-channels", "8", "--batch", "16", "--tick-kimg", "0.04", "--grid-size", "4",
        "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05", "--snap-kimg", "0.08",
        "--precision", "fp32",   # the equivalence is exact up to fp32 reduction order; bf16 (auto on AMX) is not
        "--lr-decay", "none"]    # runs extended by --kimg on resume: a rate that does not follow --kimg

# Runs train.py after installing an audit hook that records every file/directory this rank creates or writes, and
# then whether the process group is still alive.
AUDITED_TRAIN = """
import os, sys
log = open(sys.argv.pop(1) + f".rank{os.environ.get('RANK', 0)}", "w", buffering=1)
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and (
            (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
            or (args[2] or 0) & (os.O_WRONLY | os.O_RDWR)):
        log.write(f"{event} {args[0]}\\n")
    elif event in ("os.mkdir", "os.rename", "os.remove", "shutil.rmtree"):
        log.write(f"{event} {args[0]}\\n")
sys.addaudithook(hook)
sys.argv[0] = "train.py"
sys.path.insert(0, os.getcwd())
import train
status = train.main()
import torch.distributed
log.write(f"group alive at exit: {torch.distributed.is_initialized()}\\n")
sys.exit(status)
"""


def run(args: list[str], nproc: int = 1, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` or `torchrun --nproc_per_node=N SCRIPT ARGS`; SCRIPT defaults to train.py."""
    if not args[0].endswith(".py"):
        args = ["train.py"] + args
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    return subprocess.run(launcher + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **popen)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(latest_checkpoint(run_dir) / "net.safetensors")


def assert_close_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("n, batch, world", [(37, 8, 2), (50, 12, 3), (19, 4, 1)])
def test_every_image_once_per_epoch_disjoint_ranks(n, batch, world):
    steps = 3 * n // batch + 2
    per_rank = []
    for rank in range(world):
        it = iter(GlobalOrderSampler(n, batch, rank, world, seed=5))
        per_rank.append([next(it) for _ in range(steps * batch // world)])
    # Reassemble the global order: step s is rank 0's slice, then rank 1's, ...
    k = batch // world
    order = [item for s in range(steps) for r in range(world) for item in per_rank[r][s * k:(s + 1) * k]]
    for epoch in range(len(order) // n):
        seen = order[epoch * n:(epoch + 1) * n]
        assert sorted(i for i, _ in seen) == list(range(n)) and {e for _, e in seen} == {epoch}
        assert [i for i, _ in seen] == epoch_permutation(n, 5, epoch).tolist()
    for s in range(steps):                       # within a global batch, no rank sees another's images
        slices = [{pos for pos in range(s * batch + r * k, s * batch + (r + 1) * k)} for r in range(world)]
        assert all(not (slices[a] & slices[b]) for a in range(world) for b in range(a + 1, world))
    resumed = iter(GlobalOrderSampler(n, batch, 0, 1, seed=5, start=2 * batch))
    assert [next(resumed) for _ in range(batch)] == order[2 * batch:3 * batch]


def test_two_processes_match_one_and_only_rank0_writes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(FAST + ["--run-dir", str(one), "--kimg", "0.08"]).returncode == 0
    script = tmp_path / "audited_train.py"
    script.write_text(AUDITED_TRAIN)
    audit = tmp_path / "audit"
    proc = run([str(script), str(audit)] + FAST + ["--run-dir", str(two), "--kimg", "0.08", "--batch-gpu", "4"],
               nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_weights(weights(one), weights(two))
    assert "2 process(es)" in proc.stdout and "batch 16 = 2 x 2 x 4" in proc.stdout
    written = {r: [line for line in Path(f"{audit}.rank{r}").read_text().splitlines() if str(two) in line]
               for r in (0, 1)}
    assert any("checkpoint" in line for line in written[0]) and any("log.jsonl" in line for line in written[0])
    assert written[1] == [], written[1]
    for r in (0, 1):            # main() left the group: exiting with it alive can abort a finished worker
        assert "group alive at exit: False" in Path(f"{audit}.rank{r}").read_text()


def test_an_error_every_rank_meets_is_one_whole_line_per_rank(tmp_path):
    p = run(FAST + ["--run-dir", str(tmp_path / "run"), "--batch", "15"], nproc=2)
    said = "--batch 15 must split evenly into 2 rank(s) x micro-batches of --batch-gpu 7"
    lines = [line for line in p.stderr.splitlines() if "error" in line and "--batch 15" in line]
    assert p.returncode != 0 and sorted(lines) == [f"error (rank 1 of 2): {said}", f"error: {said}"], p.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resume_across_world_sizes(tmp_path, first, second):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(FAST + ["--run-dir", str(straight), "--kimg", "0.16"]).returncode == 0
    p = run(FAST + ["--run-dir", str(split), "--kimg", "0.08"], nproc=first)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run(FAST + ["--resume", str(split), "--kimg", "0.16"], nproc=second)
    assert p.returncode == 0, p.stderr[-3000:]
    assert latest_checkpoint(split).name == latest_checkpoint(straight).name == "checkpoint-000000010"
    assert_close_weights(weights(straight), weights(split))


@pytest.mark.parametrize("old", ["complete", "partial"])
def test_attempt_store_is_fresh_and_shared_after_a_restart(old):
    """A restart's workers find the store of a dead attempt (torchrun keeps one across restarts): its published
    number, its join keys and its data. Ranks 1 and 2 start before rank 0 and must still all end up in the new
    attempt's namespace, not the old one's."""
    world = 3
    server = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                        timeout=timedelta(seconds=30))
    old_g = server.add("ambient/attempts", 2)          # two earlier attempts, the second published
    server.set("ambient/current", str(old_g))
    server.set(f"ambient/{old_g}/joined/2", "")
    if old == "complete":
        server.set(f"ambient/{old_g}/joined/1", "")
        server.set(f"ambient/{old_g}/go", "")
    server.set(f"ambient/{old_g}/x", "old")
    got = {}

    def worker(rank: int) -> None:
        client = torch.distributed.TCPStore("127.0.0.1", server.port, is_master=False,
                                            timeout=timedelta(seconds=30))
        store = attempt_store(client, rank, world, poll_s=0.01)
        if rank == 0:
            store.set("x", "new")
        got[rank] = store.get("x").decode()

    threads = [threading.Thread(target=worker, args=(r,), daemon=True) for r in (1, 2, 0)]
    for i, t in enumerate(threads):
        t.start()
        if i < 2:
            time.sleep(0.2)                         # ranks 1 and 2 read the old attempt's number first
    for t in threads:
        t.join(timeout=30)
    assert got == {0: "new", 1: "new", 2: "new"}, got
    assert server.get("ambient/current") == str(old_g + 1).encode()


def worker_pids(parent: int) -> dict[int, int]:
    """{RANK: pid} of the worker processes below `parent`."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            stat = (d / "stat").read_text().split()
        except OSError:
            continue
        rank = [e for e in env if e.startswith(b"RANK=")]
        if rank and b"TORCHELASTIC_RUN_ID=" in b"\0".join(env) and int(stat[3]) == parent:
            out[int(rank[0][5:])] = int(d.name)
    return out


def test_killed_rank_restarts_from_checkpoint(tmp_path):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    args = FAST + ["--run-dir", str(run_dir), "--resume", "auto", "--kimg", "0.32"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "train.py"] + args
    log = tmp_path / "torchrun.log"              # a file, not a pipe: nobody reads a pipe while we wait
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)   # its own process group, so cleanup reaches the workers too
    try:
        deadline = time.time() + 240
        while not list_checkpoints(run_dir) and time.time() < deadline:     # wait for the first snapshot
            time.sleep(0.2)
        assert list_checkpoints(run_dir), "no checkpoint appeared"
        pids = worker_pids(proc.pid)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        proc.wait(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, log.read_text()[-3000:]
    final = latest_checkpoint(run_dir)
    assert final.name == "checkpoint-000000020"
    read_meta(final, verify=True)
    p = run(FAST + ["--run-dir", str(reference), "--kimg", "0.32"], nproc=2)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert_close_weights(weights(reference), weights(run_dir))         # as if never interrupted
