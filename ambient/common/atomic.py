"""Atomic writes: a reader sees the old file (or folder) or the whole new one, never half of it, and a writer
killed or failing mid-way leaves nothing behind. Every file the project writes for others to read (run config,
sample grids, .npz samples, metrics, classifier weights, data sets, benchmark results) goes through `atomic_path`.
A writer killed with SIGKILL cannot remove its temporary: the temporary's name carries its writer (`writer_tag`,
pid@host), and the next write of the same path on that host removes those whose writer is dead, as checkpoints'
work directories are removed (ambient.io.checkpoint).
"""
import contextlib
import hashlib
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def writer_tag() -> str:
    """pid@host of this process: work files carry it, so that a later writer can tell whether theirs is dead."""
    return f"{os.getpid()}@{socket.gethostname()}"


def writer_is_dead(tag: str) -> bool:
    """Whether the writer `tag` (pid@host, `writer_tag`) was a process on this host that no longer exists."""
    pid, _, host = tag.partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return False                          # another machine's, or not ours: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:                           # exists, owned by someone else
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_dead_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of `path` (`.NAME.THREAD.PID@HOST.tmpSUFFIX`, atomic_path) whose writer is dead, e.g.
    killed with SIGKILL mid-write; returns them. Those of live writers and of other hosts are left alone."""
    path = Path(path)
    head, tail = f".{path.name}.", f".tmp{path.suffix}"
    try:
        names = [e.name for e in os.scandir(path.parent) if e.name.startswith(head) and e.name.endswith(tail)]
    except OSError:                           # no folder yet, or not readable: nothing of ours is there
        return []
    dead = []
    for name in names:
        thread, _, tag = name[len(head):len(name) - len(tail)].partition(".")
        if thread.isdigit() and writer_is_dead(tag):
            dead.append(path.parent / name)
            _remove(dead[-1])
    return dead


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary path beside `path` (same folder, so the rename is atomic; unique to this process and
    thread; same suffix, for writers that choose a format by it) to write a file or folder to. Renamed over `path`
    when the block ends, removed when it raises; the temporaries of `path` left by dead writers are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.{writer_tag()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_json(data: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """`data` as indented JSON (with a final newline) at `path`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n")
    return Path(path)


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks: what records name a file's content by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
