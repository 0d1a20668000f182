"""ambient.common.atomic: the rename happens only when the write finished; a failed write leaves the old file and no
temporary behind, for files and folders alike; a writer killed with SIGKILL leaves one that the next write removes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ambient.common.atomic import atomic_path, write_json
from ambient.common.images import save_grid
from ambient.data import load_dataset
from ambient.data.tool import main as dataset_tool

ROOT = Path(__file__).resolve().parents[1]


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_write_json_round_trips_and_replaces(tmp_path):
    rng = np.random.default_rng()
    data = {"x": rng.normal(size=7).tolist(), "n": int(rng.integers(1, 1000))}
    path = write_json(data, tmp_path / "sub" / "m.json")      # parent folders made
    assert json.loads(path.read_text()) == data and path.read_text().endswith("\n")
    write_json({"n": 3}, path)
    assert json.loads(path.read_text()) == {"n": 3}
    assert _listing(path.parent) == ["m.json"]


@pytest.mark.parametrize("folder", [False, True])
def test_a_failed_write_keeps_the_old_content_and_leaves_nothing(tmp_path, folder):
    dest = tmp_path / "out"
    dest.write_text("old") if not folder else (dest.mkdir(), (dest / "a").write_text("old"))
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(dest) as tmp:
        assert tmp.parent == dest.parent and tmp.name.startswith(".")
        if folder:
            tmp.mkdir()
            (tmp / "a").write_text("half")
        else:
            tmp.write_text("half")
        raise RuntimeError("disk full")
    assert (dest / "a" if folder else dest).read_text() == "old"
    assert _listing(tmp_path) == ["out"]


def test_the_temporary_keeps_the_suffix(tmp_path):
    """np.savez appends .npz to a name without it; the temporary must keep the suffix so the rename finds it."""
    images = np.random.default_rng().integers(0, 256, size=(5, 3, 3, 1), dtype=np.uint8)
    with atomic_path(tmp_path / "s.npz") as tmp:
        assert tmp.suffix == ".npz"
        np.savez_compressed(tmp, images=images)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["images"], images)
    assert _listing(tmp_path) == ["s.npz"]


# A writer that stops inside atomic_path, having written half of `path` (a file, or a folder for a name without a
# suffix), and says where; it is then killed with SIGKILL (or left alive).
HALF_WRITER = """import sys, time
from ambient.common.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    (tmp.mkdir(), (tmp / "half.png").write_bytes(b"half")) if not tmp.suffix else tmp.write_bytes(b"half")
    print(tmp.name, flush=True)
    time.sleep(600)
"""


def _half_writer(path: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", HALF_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    return proc, path.parent / proc.stdout.readline().strip()


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()


@pytest.mark.parametrize("name", ["samples-000000016.png", "noisy"])
def test_temporaries_of_writers_killed_with_sigkill_are_removed_by_the_next_write(tmp_path, name):
    """A sample grid (a file) and a dataset_tool folder: the half-written temporary of a process killed with
    SIGKILL is removed by the next write of the same path; a live writer's is kept, as are other hosts'."""
    dest = tmp_path / name
    dead, dead_tmp = _half_writer(dest)
    live, live_tmp = _half_writer(dest)
    try:
        _kill(dead)
        foreign = tmp_path / dead_tmp.name.replace(f"@{socket.gethostname()}.", "@another-host.")
        foreign.write_bytes(b"half")
        assert dead_tmp.exists() and live_tmp.exists()
        if dest.suffix == ".png":
            images = torch.rand(4, 1, 5, 5) * 2 - 1
            save_grid(images, dest)
            assert np.asarray(Image.open(dest)).shape == (10, 10)
        else:
            assert dataset_tool(["--source", "digits", "--dest", str(dest), "--max-images", "7"]) == 0
            assert len(load_dataset(str(dest))) == 7
        assert _listing(tmp_path) == sorted([dest.name, live_tmp.name, foreign.name])
    finally:
        _kill(live)


def test_a_dataset_tool_killed_mid_write_leaves_a_temporary_the_next_run_removes(tmp_path):
    """The real dataset_tool, killed with SIGKILL while its .tmp.zip is being written."""
    dest = tmp_path / "digits.zip"
    proc = subprocess.Popen([sys.executable, "-m", "ambient.dataset_tool", "--source", "digits", "--dest", str(dest),
                             "--resolution", "64"], cwd=ROOT, stdout=subprocess.DEVNULL)
    while not (partial := [p for p in tmp_path.iterdir() if p.name.endswith(".tmp.zip")]):
        assert proc.poll() is None, "dataset_tool ended before its temporary was seen"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert partial[0].exists() and not dest.exists()
    assert dataset_tool(["--source", "digits", "--dest", str(dest), "--max-images", "5"]) == 0
    assert _listing(tmp_path) == ["digits.zip"] and len(load_dataset(str(dest))) == 5
