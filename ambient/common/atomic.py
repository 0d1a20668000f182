"""Atomic writes: a reader sees the old file (or folder) or the whole new one, never half of it, and a writer
killed or failing mid-way leaves nothing behind. Every file the project writes for others to read (run config,
sample grids, .npz samples, metrics, classifier weights, data sets, benchmark results) goes through `atomic_path`.
"""
import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A hidden temporary path beside `path` (same folder, so the rename is atomic; unique to this process and
    thread; same suffix, for writers that choose a format by it) to write a file or folder to. Renamed over `path`
    when the block ends, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)


def write_json(data: Any, path: str | os.PathLike, indent: int = 2) -> Path:
    """`data` as indented JSON (with a final newline) at `path`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent) + "\n")
    return Path(path)
