"""Checkpoints: a directory per snapshot, written atomically, loaded without executing code.

    run_dir/checkpoint-000001200/
        net.safetensors    raw weights          (safetensors: no code, no pickle)
        ema.safetensors    EMA weights
        state.pt           optimizer + counters (torch.load(weights_only=True))
        meta.json          config, counters, and the size + sha256 of each file above

The directory is built under a temporary name, every file fsync'ed, then renamed into place:
a checkpoint either exists whole or not at all. Directories leave the same way: renamed aside
first, then deleted, so a process killed at any moment never leaves a half-deleted
`checkpoint-*`. Work directories (`.tmp-*`, `.trash-*`) carry their writer's pid and host, and
the next save on that host removes those whose writer is dead. meta.json records its own
checksum besides those of the other files; on load everything is verified, and
`latest_checkpoint` skips a damaged checkpoint with a warning in favour of the previous one.
"""
import hashlib
import json
import os
import shutil
import socket
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

PREFIX = "checkpoint-"
TENSOR_FILES = ("net.safetensors", "ema.safetensors")
DATA_FILES = (*TENSOR_FILES, "state.pt")
WORK_PREFIXES = (".tmp-", ".trash-")       # a checkpoint being written / being deleted
META_CHECKSUM = "meta_sha256"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or does not fit the run."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _meta_digest(meta: dict[str, Any]) -> str:
    """Checksum of meta.json's content (all but the checksum itself), independent of key order."""
    content = {k: v for k, v in meta.items() if k != META_CHECKSUM}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _work_name(kind: str, name: str) -> str:
    """Name of a work directory (kind ".tmp-" or ".trash-") owned by this process on this host."""
    return f"{kind}{name}.{os.getpid()}@{socket.gethostname()}"


def _writer_is_dead(name: str) -> bool:
    """Whether a work directory's owner was a process on this host that no longer exists."""
    head, _, host = name.rpartition("@")
    pid = head.rpartition(".")[2]
    if host != socket.gethostname() or not pid.isdigit():
        return False                          # another machine's, or not ours: leave it alone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:                           # exists, owned by someone else
        return False
    return False


def _remove_dir(path: Path) -> None:
    """Delete a directory by first renaming it aside, so a kill midway leaves no partial checkpoint."""
    trash = path.parent / _work_name(".trash-", path.name)
    try:
        os.rename(path, trash)
    except FileNotFoundError:                 # already gone
        return
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_work_dirs(run_dir: str | Path) -> list[Path]:
    """Delete the `.tmp-*` / `.trash-*` directories left by killed writers on this host; returns them."""
    run_dir = Path(run_dir)
    stale = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(WORK_PREFIXES)
             and _writer_is_dead(p.name)] if run_dir.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def _contiguous(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}


def save_checkpoint(run_dir: str | Path, step: int, net: dict[str, torch.Tensor], ema: dict[str, torch.Tensor],
                    state: dict[str, Any], meta: dict[str, Any], keep: int = 3) -> Path:
    """Write checkpoint `step` atomically into run_dir and keep only the newest `keep` of them."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(run_dir)
    final = run_dir / f"{PREFIX}{step:09d}"
    tmp = run_dir / _work_name(".tmp-", final.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_contiguous(net), tmp / "net.safetensors")
    save_file(_contiguous(ema), tmp / "ema.safetensors")
    torch.save(state, tmp / "state.pt")
    files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in DATA_FILES}
    content = json.loads(json.dumps({**meta, "step": step, "files": files}))   # exactly what a reader will see
    (tmp / "meta.json").write_text(json.dumps({**content, META_CHECKSUM: _meta_digest(content)}, indent=2))
    for name in (*DATA_FILES, "meta.json"):
        _fsync(tmp / name)
    _fsync(tmp)
    if final.exists():                       # re-saving the same step (e.g. after a restart): replace it
        _remove_dir(final)
    os.rename(tmp, final)
    _fsync(run_dir)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        _remove_dir(old)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (complete or not)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def read_meta(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """meta.json of a checkpoint; with `verify`, check every file's size and checksum."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} has no readable meta.json ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has a meta.json that is not a JSON object")
    if verify:
        if META_CHECKSUM in meta and meta[META_CHECKSUM] != _meta_digest(meta):
            raise CheckpointError(f"checkpoint {path} is damaged: meta.json does not match its recorded checksum")
        files = meta.get("files")
        missing = [name for name in DATA_FILES if not isinstance(files, dict) or name not in files]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: meta.json records no checksum for {missing}")
        for name, info in files.items():
            f = path / name
            try:
                ok = f.is_file() and f.stat().st_size == info["bytes"] and _sha256(f) == info["sha256"]
            except (OSError, KeyError, TypeError):
                ok = False
            if not ok:
                raise CheckpointError(f"checkpoint {path} is damaged: {name} does not match its recorded size/checksum")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Verified checkpoint as {"net", "ema", "state", "meta"}; never unpickles code."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    meta = read_meta(path)
    out = {"meta": meta}
    for name in TENSOR_FILES:
        try:
            out[name.split(".")[0]] = load_file(path / name, device=str(device))
        except Exception as e:  # safetensors raises its own error type for a malformed file
            raise CheckpointError(f"checkpoint {path}: {name} cannot be read ({type(e).__name__}: {e})") from None
    try:
        out["state"] = torch.load(path / "state.pt", map_location=device, weights_only=True)
    except Exception as e:  # an unpickling error means a file that is not ours; say which
        raise CheckpointError(f"checkpoint {path}: state.pt cannot be loaded safely ({type(e).__name__}: {e})") from None
    return out


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Newest checkpoint of a run that verifies; damaged ones are skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            read_meta(path)
            return path
        except CheckpointError as e:
            warnings.warn(f"skipping {e}")
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint or run directory path (the run's newest good one)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {path}")
    found = latest_checkpoint(path)
    if found is None:
        raise CheckpointError(f"no complete checkpoint in {path}")
    return found
