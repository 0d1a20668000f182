"""TensorBoard events beside log.jsonl, as EDM writes them: rank 0 writes into the run directory the scalars of
every tick's log record and the sample grid of every snapshot, when the `tensorboard` package is importable
(`pip install -e ".[tensorboard]"`) and --no-tensorboard is not given.

TensorBoard draws the points by step, so a resume at step S first cuts every event after S out of the run's event
files (`cut_events`, as rundir.cut_log cuts log.jsonl): the steps a killed run logged after its last checkpoint
are not shown twice, and a record cut short by the kill is dropped. Each session writes its own event file.
"""
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ambient.common.atomic import atomic_path

EVENTS_PREFIX = "events.out.tfevents."     # the names TensorBoard's writers give their files
GRID_TAG = "samples"
_SCALARS = ("img_per_s", "lr", "ema_beta")  # log record fields written under their own names


def available() -> bool:
    """Whether the tensorboard package can be imported (it is an optional extra)."""
    return importlib.util.find_spec("tensorboard") is not None


def scalars(rec: dict[str, Any]) -> dict[str, float]:
    """The scalars of a log.jsonl record by tag: "loss" (absent when every step of the tick was skipped),
    "loss_by_sigma/LO-HI" per noise-level range, "img_per_s", "lr", "ema_beta"."""
    values = {} if rec["loss"] is None else {"loss": rec["loss"]}
    values.update({f"loss_by_sigma/{key}": value for key, value in rec["loss_by_sigma"].items()})
    values.update({key: rec[key] for key in _SCALARS})
    return values


def cut_events(run_dir: Path, step: int) -> None:
    """Keep the events up to `step` in every event file of `run_dir`, dropping a record cut short; a file that
    changes is rewritten atomically. Needs tensorboard (to read the records); without it the files stay as they
    are (nothing reads them here)."""
    if not available():
        return
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter
    for path in sorted(run_dir.glob(EVENTS_PREFIX + "*")):
        records = list(RawEventFileLoader(str(path)).Load())         # stops at a truncated or damaged record
        kept = [r for r in records if Event.FromString(r).step <= step]
        whole = sum(len(r) + 16 for r in records) == path.stat().st_size    # 16 bytes of length and CRCs each
        if len(kept) == len(records) and whole:
            continue
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for r in kept:
                writer.write(r)


class EventLog:
    """This session's event file in `run_dir` (TensorBoard's SummaryWriter), flushed after every write."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(run_dir))

    def tick(self, rec: dict[str, Any]) -> None:
        """The scalars of log record `rec` at its step, with its wall time."""
        for tag, value in scalars(rec).items():
            self.writer.add_scalar(tag, value, rec["step"], walltime=rec["time"])
        self.writer.flush()

    def grid(self, step: int, image: np.ndarray) -> None:
        """The sample grid of step `step`: the (H, W, C) uint8 image its PNG holds."""
        self.writer.add_image(GRID_TAG, image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
