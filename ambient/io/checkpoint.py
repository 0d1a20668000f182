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
checksum (mandatory) besides those of the other files; on load everything is verified, and
`latest_checkpoint` skips a damaged checkpoint with a warning in favour of the previous one. With
`check_network`, the content is checked too against the network its meta.json describes (built on the meta
device, `ambient.io.templates`) before anything is loaded: weight names, shapes and dtypes, the counters and the
optimizer state, so a checkpoint whose checksums agree but whose content does not fit (forged, or written by another
version) is one CheckpointError, and skipped like a damaged one. A write that fails (a full disk) removes
its partial directory and raises one CheckpointError naming the file system.
"""
import errno
import hashlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ambient.common.atomic import file_sha256 as _sha256
from ambient.common.atomic import writer_is_dead, writer_tag

from .templates import checkpoint_template, state_mismatch

PREFIX = "checkpoint-"
TENSOR_FILES = ("net.safetensors", "ema.safetensors")
DATA_FILES = (*TENSOR_FILES, "state.pt")
WORK_PREFIXES = (".tmp-", ".trash-")       # a checkpoint being written / being deleted
META_CHECKSUM = "meta_sha256"
# meta.json -> the network its weights must fit (on the meta device); ValueError if it describes none.
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, corrupt or does not fit the run."""


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
    return f"{kind}{name}.{writer_tag()}"


def _writer_is_dead(name: str) -> bool:
    """Whether a work directory's owner (`kind NAME.PID@HOST`) was a process on this host that no longer exists."""
    head, _, host = name.rpartition("@")
    return writer_is_dead(f"{head.rpartition('.')[2]}@{host}")


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
    """Write checkpoint `step` atomically into run_dir and keep only `keep` of them: this one and the newest
    keep - 1 others (never pruning the checkpoint just written, whatever other steps the directory holds).

    A failed write (CheckpointError naming the file system, e.g. a full disk) or an interrupted one
    removes its partial directory and leaves the existing checkpoints as they were.
    """
    run_dir = Path(run_dir)
    final = run_dir / f"{PREFIX}{step:09d}"
    tmp = run_dir / _work_name(".tmp-", final.name)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_work_dirs(run_dir)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # Serialised in memory, written by Python: a failed write is an OSError with its errno (a full disk),
        # not a serialiser's own error type.
        (tmp / "net.safetensors").write_bytes(safetensors_bytes(_contiguous(net)))
        (tmp / "ema.safetensors").write_bytes(safetensors_bytes(_contiguous(ema)))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        (tmp / "state.pt").write_bytes(buffer.getbuffer())
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)} for name in DATA_FILES}
        content = json.loads(json.dumps({**meta, "step": step, "files": files}))   # exactly what a reader will see
        (tmp / "meta.json").write_text(json.dumps({**content, META_CHECKSUM: _meta_digest(content)}, indent=2))
        for name in (*DATA_FILES, "meta.json"):
            _fsync(tmp / name)
        _fsync(tmp)
        if final.exists():                       # re-saving the same step (e.g. after a restart): replace it
            _remove_dir(final)
        os.rename(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise write_error(final, e) from None
        raise
    _fsync(run_dir)
    others = [c for c in list_checkpoints(run_dir) if c != final]     # the one just written always stays
    for old in others[:max(len(others) - (keep - 1), 0)]:
        _remove_dir(old)
    return final


def _mount_point(path: Path) -> Path:
    """The mount point of the file system holding `path` (its nearest existing ancestor)."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def write_error(path: str | Path, error: OSError) -> CheckpointError:
    """One CheckpointError for a write of `path` that failed, naming the file system (and its free space if full)."""
    mount = _mount_point(Path(path))
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = (f"no space left on the disk (file system {mount}, {shutil.disk_usage(mount).free / 2**20:.1f} MiB "
                  f"free); free space or choose another directory")
    else:
        reason = f"{error.strerror or error} (file system {mount})"
    return CheckpointError(f"cannot write {path}: {reason}; the checkpoints already there are unchanged")


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first (complete or not)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def read_meta(path: str | Path, verify: bool = True, check_network: bool = False) -> dict[str, Any]:
    """meta.json of a checkpoint; with `verify`, check its own checksum and every file's size and checksum;
    with `check_network`, also that the weight files' names, shapes and dtypes (their headers only) fit the
    network it records."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError, RecursionError) as e:          # RecursionError: JSON nested too deep
        raise CheckpointError(f"checkpoint {path} has no readable meta.json ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has a meta.json that is not a JSON object")
    if verify:
        if meta.get(META_CHECKSUM) != _meta_digest(meta):
            what = "records no checksum of its own" if META_CHECKSUM not in meta else "does not match its checksum"
            raise CheckpointError(f"checkpoint {path} is damaged: meta.json {what}")
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
    if check_network:
        _check_weights(path, _template(path, meta))
    return meta


def _template(path: Path, meta: dict[str, Any]) -> torch.nn.Module:
    """The network `meta` records, on the meta device; CheckpointError when it cannot be built."""
    try:
        return checkpoint_template(meta)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} does not describe a network that can be built: {e}") from None


def _header(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as meta tensors (names, shapes, dtypes), read from its header alone."""
    try:
        with safe_open(file, framework="pt") as f:
            specs = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
        return {k: torch.empty(shape, dtype=_SAFETENSORS_DTYPES[dtype], device="meta")
                for k, (shape, dtype) in specs.items()}
    except Exception as e:  # safetensors raises its own error type for a malformed file; KeyError: unknown dtype
        raise CheckpointError(f"{file} cannot be read ({type(e).__name__}: {e})") from None


def _check_weights(path: Path, net: torch.nn.Module) -> None:
    """The weight files' names, shapes and dtypes (headers only) against the network `net` of the meta.json."""
    expected = net.state_dict()
    for name in TENSOR_FILES:
        problem = state_mismatch(expected, _header(path / name))
        if problem:
            raise CheckpointError(f"checkpoint {path}: {name} does not fit the network its meta.json describes: "
                                  f"{problem}")


def _check_state(path: Path, state: Any, net: torch.nn.Module) -> None:
    """The training state of a checkpoint: counters, and an Adam state that fits `net`'s parameters."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path}: state.pt {what}")

    if not isinstance(state, dict) or not {"optimizer", "step", "bad_steps", "batch"} <= state.keys():
        raise bad("lacks the training state (optimizer, step, bad_steps, batch)")
    for key in ("step", "bad_steps", "batch"):
        value = state[key]
        if not (value is None and key == "batch") and not (type(value) is int and 0 <= value < 2**62):
            raise bad(f"records {key} = {value!r}, not a count")
    opt = state["optimizer"]
    if opt == {}:                            # a converted checkpoint: weights only
        return
    params = [p.shape for p in net.parameters()]
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                               for g in groups) \
            or [i for g in groups for i in g["params"]] != list(range(len(params))):
        raise bad(f"holds an optimizer state that is not one for the network's {len(params)} parameters")
    plain = (bool, int, float, type(None))
    for g in groups:
        for key, value in g.items():
            if key != "params" and not (isinstance(value, plain) or isinstance(value, (tuple, list))
                                        and all(isinstance(v, plain) for v in value)):
                raise bad(f"holds an optimizer setting {key} = {value!r}")
    per_param = opt.get("state")
    if not isinstance(per_param, dict) or not set(per_param) <= set(range(len(params))):
        raise bad("holds an optimizer state for parameters the network does not have")
    for i, entries in per_param.items():
        if not isinstance(entries, dict) or not all(
                isinstance(t, torch.Tensor) and t.is_floating_point() and (t.ndim == 0 or t.shape == params[i])
                for t in entries.values()):
            raise bad(f"holds an optimizer state for parameter {i} that does not fit its shape {tuple(params[i])}")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", check_network: bool = False,
                    resume: bool = False) -> dict[str, Any]:
    """Verified checkpoint as {"net", "ema", "state", "meta"}; never unpickles code.

    With `check_network`, its weights are checked to fit the network its meta.json describes before they
    are loaded, and with `resume` its training state too (counters, optimizer); CheckpointError otherwise.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint not found: {path}")
    meta = read_meta(path)
    net = _template(path, meta) if check_network else None
    if net is not None:
        _check_weights(path, net)
    out = {"meta": meta}
    for name in TENSOR_FILES:
        try:
            out[name.split(".")[0]] = load_file(path / name, device=str(device))
        except Exception as e:  # safetensors raises its own error type for a malformed file
            raise CheckpointError(f"checkpoint {path}: {name} cannot be read ({type(e).__name__}: {e})") from None
    try:
        out["state"] = torch.load(path / "state.pt", map_location=device, weights_only=True)
    except Exception as e:  # an unpickling error means a file that is not ours; say which
        raise CheckpointError(
            f"checkpoint {path}: state.pt cannot be loaded safely ({type(e).__name__}: {e})") from None
    if net is not None and resume:
        _check_state(path, out["state"], net)
    return out


def latest_checkpoint(run_dir: str | Path, check_network: bool = False) -> Path | None:
    """Newest checkpoint of a run that verifies (with `check_network`: and fits its network); damaged ones are
    skipped with a warning."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            read_meta(path, check_network=check_network)
            return path
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    return None


def resolve_checkpoint(path: str | Path, check_network: bool = False) -> Path:
    """A checkpoint directory from a checkpoint or run directory path (the run's newest good one)."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {path}")
    found = latest_checkpoint(path, check_network)
    if found is None:
        raise CheckpointError(f"no complete checkpoint in {path}")
    return found
