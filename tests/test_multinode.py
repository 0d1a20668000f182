"""The README's multi-node command run for real: two "nodes" as two Linux network namespaces joined by a veth pair,
each with its own hostname (a UTS namespace) and hosts file, each starting `torchrun --nnodes 2 --nproc-per-node 1
--rdzv-backend c10d` against node0's name, gloo on CPU. Their traffic can go only over the veth pair: a namespace
has no other interface than its loopback. The run directory is shared, as /shared/runs is on a cluster.

One node's worker process group is killed after the first snapshot; torchrun's --max-restarts and the trainer's
--resume auto bring the job back. The weights of the snapshot before the kill and of the last one must equal a
one-process run of the same global batch and micro-batch bit for bit: DDP's mean over two ranks of the gradients
scaled by world_size / batch is exactly the one process's sum over its two micro-batches.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import FAST, ROOT, run

from ambient.io.checkpoint import latest_checkpoint, list_checkpoints, read_meta

NODES = ("node0", "node1")
ADDRESSES = ("10.225.25.1", "10.225.25.2")     # a private /30 that exists only inside the test's namespaces
PORT = 29500
RUN = FAST + ["--batch-gpu", "8", "--kimg", "0.16", "--resume", "auto"]   # 10 steps, snapshots at 5 and 10


def sh(*cmd: str) -> subprocess.CompletedProcess:
    """A short command's result (each one here takes well under a second)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def why_no_namespaces() -> str | None:
    """Why the nodes cannot be made here (None when they can): not root, no iproute2 or util-linux, no
    CAP_NET_ADMIN (network namespace) or CAP_SYS_ADMIN (`ip netns exec`'s mounts, the UTS namespace)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH"
    probe = f"ambient-probe-{uuid.uuid4().hex[:8]}"
    try:
        for cmd in (["ip", "netns", "add", probe], ["ip", "netns", "exec", probe, "unshare", "--uts", "true"]):
            if (done := sh(*cmd)).returncode != 0:
                return f"`{' '.join(cmd)}` failed: {done.stderr.strip()}"
    finally:
        sh("ip", "netns", "del", probe)
    return None


@pytest.fixture
def namespaces() -> Iterator[list[str]]:
    """Two network namespaces joined by a veth pair, with NODES resolving to ADDRESSES inside them; every process
    in them is killed and both are removed at the end."""
    reason = why_no_namespaces()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:6]
    names = [f"ambient-{tag}-{i}" for i in range(2)]
    hosts = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for a, n in zip(ADDRESSES, NODES))
    try:
        for name in names:
            assert sh("ip", "netns", "add", name).returncode == 0
            etc = Path("/etc/netns") / name          # `ip netns exec` mounts these files over /etc
            etc.mkdir(parents=True)
            (etc / "hosts").write_text(hosts)
        link = sh("ip", "link", "add", f"amb{tag}a", "netns", names[0], "type", "veth",
                  "peer", "name", f"amb{tag}b", "netns", names[1])
        assert link.returncode == 0, link.stderr
        for name, dev, addr in zip(names, (f"amb{tag}a", f"amb{tag}b"), ADDRESSES):
            for cmd in (["addr", "add", f"{addr}/30", "dev", dev], ["link", "set", dev, "up"],
                        ["link", "set", "lo", "up"]):
                done = sh("ip", "-n", name, *cmd)
                assert done.returncode == 0, done.stderr
            assert len(sh("ip", "-n", name, "-o", "link").stdout.splitlines()) == 2     # lo and the veth end only
        yield names
    finally:
        for name in names:
            deadline = time.time() + 30
            while (pids := sh("ip", "netns", "pids", name).stdout.split()) and time.time() < deadline:
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.1)
            sh("ip", "netns", "del", name)           # removes the veth pair with it
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        with contextlib.suppress(OSError):           # made here if it was not there; kept if anything else is in it
            Path("/etc/netns").rmdir()


def start_node(namespace: str, node: str, args: list[str], log: Path) -> subprocess.Popen:
    """The README's SLURM line as one node's task runs it on host `node`: `torchrun --nnodes=2 ... train.py ARGS`
    (torchrun's INFO lines, in `log`, say why each node restarted its worker)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint={NODES[0]}:{PORT}", "--rdzv-id=multinode",
                "--max-restarts=3", "train.py"]
    cmd = ["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', node,
           *torchrun, *args]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "LOGLEVEL": "INFO"})


def worker(namespace: str) -> int:
    """The pid of the trainer in `namespace`: the process torchrun started with RANK in its environment."""
    for pid in sh("ip", "netns", "pids", namespace).stdout.split():
        try:
            if any(v.startswith(b"RANK=") for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                return int(pid)
        except OSError:
            continue
    raise AssertionError(f"no torchrun worker in {namespace}")


def same_weights(ckpt: Path, reference: Path) -> bool:
    """Whether the net and EMA weights of the two checkpoints are equal bit for bit."""
    read_meta(ckpt, verify=True)
    for name in ("net.safetensors", "ema.safetensors"):
        a, b = load_file(ckpt / name), load_file(reference / name)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            return False
    return True


def test_two_nodes_match_one_process_bit_for_bit_across_a_killed_node(namespaces, tmp_path):
    run_dir, reference = tmp_path / "run", tmp_path / "reference"
    one = run(RUN + ["--run-dir", str(reference)])
    assert one.returncode == 0, one.stderr[-3000:]
    logs = [tmp_path / f"{node}.log" for node in NODES]
    nodes = [start_node(ns, node, RUN + ["--run-dir", str(run_dir)], log)
             for ns, node, log in zip(namespaces, NODES, logs)]
    deadline = time.time() + 240
    while not list_checkpoints(run_dir) and time.time() < deadline and all(p.poll() is None for p in nodes):
        time.sleep(0.1)
    assert list_checkpoints(run_dir), "no checkpoint appeared: " + logs[0].read_text()[-3000:]
    os.killpg(worker(namespaces[1]), signal.SIGKILL)    # node1's trainer: torchrun started it in its own group
    first = latest_checkpoint(run_dir)                  # no step completes without node1: this was before the kill
    assert first.name == "checkpoint-000000005", first
    inode = first.stat().st_ino
    while any(p.poll() is None for p in nodes) and time.time() < deadline:
        time.sleep(0.1)
    out = "".join(log.read_text() for log in logs)
    assert [p.returncode for p in nodes] == [0, 0], out[-4000:]
    assert out.count("2 process(es) on cpu") >= 2, out[-4000:]     # rank 0 started again: a restart
    assert first.stat().st_ino == inode                 # not written again: the restart resumed from it
    last = latest_checkpoint(run_dir)
    assert last.name == "checkpoint-000000010"
    assert same_weights(first, reference / first.name)  # two nodes before the kill
    assert same_weights(last, reference / last.name)    # and after the restart
