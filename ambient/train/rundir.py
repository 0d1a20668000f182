"""The run directory: which one a run writes into, one writer at a time, and what a resume may change
(docs/design.md, "Checkpoints").

- One writer: rank 0 holds an OS lock (flock on the run directory) for the run's life; a second trainer on
  the same directory is refused with who holds it. The kernel drops the lock when its process ends, however.
- A run continues only in its own directory: `--resume RUN` writes into RUN, never into another --run-dir.
- A fresh run starts only in an empty directory; `--resume auto` starts afresh only in one that holds nothing
  but what a run writes before its first checkpoint, and never over damaged checkpoints.
- A resume keeps what defines the run (every TrainConfig field but RUN_CONTROLS): a change is refused unless
  named in --allow-change, and then recorded as a change at the step it was made (`resume_changes`).
- On resume the log is cut back to the checkpoint's step, so no step is logged twice.
"""
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from ambient.common.atomic import atomic_path
from ambient.data import NAMED_DATASETS
from ambient.io import checkpoint as ckpt

from .config import TrainConfig, flag_name
from .distributed import DistInfo, broadcast_object
from .events import EVENTS_PREFIX

LOG_FILE = "log.jsonl"
RUN_FILES = ("config.json", LOG_FILE)     # what a run writes before its first checkpoint, besides a grid
# How a run is carried out rather than what it computes: free to differ between a run and its resumption.
RUN_CONTROLS = ("kimg", "run_dir", "outdir", "resume", "allow_change", "tick_kimg", "snap_kimg", "keep_ckpts",
                "grid_size", "snap_grid_size", "device", "progress", "tensorboard", "workers", "threads",
                "max_bad_steps")


class RunDirInUse(FileExistsError):
    """Another process trains in this run directory."""


def _holder(path: Path) -> str:
    """Who holds the flock on `path`, read from /proc/locks (Linux): "pid N on HOST (its command line)"."""
    st = path.stat()
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and device in fields:
                pid = fields[fields.index(device) - 1]
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                return f"pid {pid} on {socket.gethostname()} ({command.strip()[:120]})"
    except OSError:
        pass
    return "another process"


class RunDirLock:
    """An exclusive flock on the run directory itself, held until close() or the end of the process. Nothing is
    written to take it, so a refused or failed start leaves the directory exactly as it was."""

    def __init__(self, run_dir: Path):
        self.fd: int | None = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise RunDirInUse(f"run directory {run_dir} is in use: {_holder(run_dir)} trains there; wait for it "
                              f"to end, or choose another --run-dir") from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _foreign(run_dir: Path) -> list[str]:
    """The names in run_dir that no run writes: not RUN_FILES, grids, event files, checkpoints or their work
    directories, nor the hidden temporaries of RUN_FILES, grids and event files (atomic_path's `.NAME.*.tmp*`) that a
    writer killed mid-write leaves, which a run killed before its first checkpoint may hold."""
    ours = (ckpt.PREFIX, "samples-", EVENTS_PREFIX, *ckpt.WORK_PREFIXES)
    temporaries = (*(f".{name}." for name in RUN_FILES), ".samples-", f".{EVENTS_PREFIX}")
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name not in RUN_FILES and not p.name.startswith(ours)
                  and not (p.name.startswith(temporaries) and ".tmp" in p.name))


def _numbered(cfg: TrainConfig) -> Path:
    """A new numbered run directory under cfg.outdir, made here (mkdir is atomic: two runs never share one)."""
    outdir = Path(cfg.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    data_name = cfg.data if cfg.data in NAMED_DATASETS else Path(cfg.data).stem
    ids = [int(p.name.split("-")[0]) for p in outdir.iterdir() if p.name.split("-")[0].isdigit()]
    number = max(ids, default=-1) + 1
    while True:
        run_dir = outdir / f"{number:05d}-{data_name}-{cfg.preset}"
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            number += 1


def choose_run_dir(cfg: TrainConfig) -> tuple[Path, Path | None, RunDirLock]:
    """The run directory, the checkpoint to resume from (None for a fresh run) and the held lock of the
    directory; every decision about what is in the directory is taken under the lock."""
    run_dir = _run_dir(cfg)
    held = RunDirLock(run_dir)
    try:
        return run_dir, _resume_from(cfg, run_dir), held
    except BaseException:
        held.close()
        raise


def _run_dir(cfg: TrainConfig) -> Path:
    """The directory the run writes into (made when new); the errors that need no lock come first."""
    if cfg.resume not in (None, "auto"):
        run_dir = ckpt.resolve_checkpoint(cfg.resume, check_network=True).parent
        if cfg.run_dir and Path(cfg.run_dir).resolve() != run_dir.resolve():
            raise ValueError(f"--resume {cfg.resume} continues the run in {run_dir}, and a run continues only in "
                             f"its own directory, not in --run-dir {cfg.run_dir}")
        return run_dir
    if cfg.run_dir is None:
        if cfg.resume == "auto":
            raise ValueError("--resume auto needs --run-dir (the directory to look for checkpoints in)")
        return _numbered(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _resume_from(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """The checkpoint the run continues from, None to start afresh; decided with run_dir held."""
    if cfg.resume not in (None, "auto"):
        return ckpt.resolve_checkpoint(cfg.resume, check_network=True)
    if cfg.resume is None:
        if any(run_dir.iterdir()):
            raise FileExistsError(f"run directory {run_dir} is not empty; pass --resume {run_dir} to continue "
                                  f"that run, or choose a new --run-dir")
        return None
    found = ckpt.latest_checkpoint(run_dir, check_network=True)
    if found is None and ckpt.list_checkpoints(run_dir):
        raise ckpt.CheckpointError(f"every checkpoint in {run_dir} is damaged (the warnings above say how); a "
                                   f"run never starts afresh over them: move them aside, or choose another "
                                   f"--run-dir")
    if found is None and (foreign := _foreign(run_dir)):
        raise FileExistsError(f"--resume auto found no run in {run_dir} but other files ({', '.join(foreign[:5])}"
                              f"{' ...' if len(foreign) > 5 else ''}); start a run in an empty or new --run-dir")
    return found      # None: start afresh (an elastic restart before the first snapshot)


def prepare_run_dir(cfg: TrainConfig, dist_info: DistInfo) -> tuple[Path, Path | None, RunDirLock | None]:
    """`choose_run_dir` decided by rank 0 alone (the others would see its new files) and shared with all; the
    lock is rank 0's (None on the others)."""
    decision: tuple = (None, None, None)          # run_dir, resume_from, error
    held = None
    if dist_info.is_main:
        try:
            run_dir, resume_from, held = choose_run_dir(cfg)
            decision = (run_dir, resume_from, None)
        except (ValueError, OSError, ckpt.CheckpointError) as e:
            decision = (None, None, e)
    run_dir, resume_from, error = broadcast_object(decision)
    if error is not None:
        raise error
    return run_dir, resume_from, held


def _json(value: Any) -> Any:
    """A value as config.json and meta.json hold it (tuples become lists)."""
    return json.loads(json.dumps(value))


def resume_changes(cfg: TrainConfig, meta: dict[str, Any], step: int) -> list[dict[str, Any]]:
    """The run's history of changes, with this resumption's if it changes what defines the run (a change at
    `step`: {"step", "changes": {field: [before, after]}}); ValueError for a change not allowed by
    --allow-change, or a --kimg below what was trained. Under --lr-decay cosine the rate follows --kimg, so a
    different --kimg is a change too."""
    recorded = meta.get("config", {})
    trained = step * cfg.batch
    if cfg.kimg * 1000 < trained:
        raise ValueError(f"the run has trained {trained / 1000:g} kimg, more than --kimg {cfg.kimg:g}; resume with "
                         f"at least that (or sample from its checkpoints)")
    # A cosine decay runs over --kimg, so there the run's length is a setting of what it computes, not a control.
    controls = RUN_CONTROLS if cfg.lr_decay == "none" else tuple(c for c in RUN_CONTROLS if c != "kimg")
    current = _json({f: getattr(cfg, f) for f in recorded if f not in controls and hasattr(cfg, f)})
    changed = {f: [recorded[f], v] for f, v in current.items() if recorded[f] != v}
    history = list(meta.get("changes", []))
    if not changed:
        return history
    refused = sorted(set(changed) - set(cfg.allow_change or ()))
    if refused:
        what = ", ".join(f"{flag_name(f)} {changed[f][0]!r} -> {changed[f][1]!r}" for f in refused)
        raise ValueError(f"resuming at step {step} with other settings than the run was trained with: {what}; "
                         f"resume with the run's own settings, or change them from this step on with "
                         f"--allow-change {','.join(refused)}")
    return [*history, {"step": step, "changes": changed}]


def cut_log(run_dir: Path, step: int) -> None:
    """Keep the log records up to `step` (a resume continues from there; later records would be written
    twice), atomically."""
    log = run_dir / LOG_FILE
    if not log.exists():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):      # a record cut short by a kill: dropped
            continue
    with atomic_path(log) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in kept))
