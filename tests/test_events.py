"""TensorBoard events (ambient.train.events), read back with TensorBoard's own readers."""
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ambient.io.checkpoint import list_checkpoints
from ambient.train import cli as train
from ambient.train.events import EVENTS_PREFIX, GRID_TAG, scalars

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader  # noqa: E402
from tensorboard.compat.proto.event_pb2 import Event  # noqa: E402

# 8x8 digits, 7 steps of 16: a tick every 2 steps (2, 4, 6, 7), snapshots at 3 and 7 (6 is left to the end's).
RUN = ["--data", "digits", "--model-channels", "8", "--batch", "16", "--tick-kimg", "0.032", "--snap-kimg", "0.048",
       "--kimg", "0.1", "--grid-size", "4", "--snap-grid-size", "1", "--no-progress"]


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def read_back(run: Path) -> EventAccumulator:
    return EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0}).Reload()


def raw_events(run: Path) -> list[Event]:
    """Every event record in the run's event files, as written (no reader's purging)."""
    return [Event.FromString(r) for path in sorted(run.glob(EVENTS_PREFIX + "*"))
            for r in RawEventFileLoader(str(path)).Load()]


def assert_events_match_the_run(run: Path) -> None:
    """The scalars equal log.jsonl's (as float32, TensorBoard's type) at the same steps, and each snapshot's grid is
    there with the pixels of its PNG."""
    acc, records = read_back(run), log_records(run)
    expected: dict[str, list[tuple[int, np.float32]]] = {}
    for rec in records:
        for tag, value in scalars(rec).items():
            expected.setdefault(tag, []).append((rec["step"], np.float32(value)))
    assert {"loss", "loss_by_sigma/0-0.1", "img_per_s", "lr", "ema_beta"} <= expected.keys()
    assert set(acc.Tags()["scalars"]) == expected.keys()
    for tag, points in expected.items():
        assert [(e.step, np.float32(e.value)) for e in acc.Scalars(tag)] == points, tag
    grids = {int(p.stem.split("-")[1]): p for p in run.glob("samples-*.png")}
    images = acc.Images(GRID_TAG)
    assert [e.step for e in images] == sorted(grids)
    for e in images:
        png = np.asarray(Image.open(grids[e.step]).convert("RGB"))
        assert (e.height, e.width) == png.shape[:2]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")), png)


def test_events_hold_the_log_and_the_grids_and_a_resume_cuts_what_it_redoes(tmp_path):
    run = tmp_path / "run"
    assert train.main(RUN + ["--run-dir", str(run)]) == 0
    assert [c.name for c in list_checkpoints(run)] == ["checkpoint-000000003", "checkpoint-000000007"]
    assert [r["step"] for r in log_records(run)] == [2, 4, 6, 7]
    assert_events_match_the_run(run)
    assert Image.open(run / "samples-000000007.png").size == (16, 16)         # the last grid in full: 2x2 of 8x8

    # Killed after logging steps 4-7, before their checkpoint, while writing an event record.
    shutil.rmtree(list_checkpoints(run)[-1])
    (events,) = run.glob(EVENTS_PREFIX + "*")
    last = list(RawEventFileLoader(str(events)).Load())[-1]
    events.write_bytes(events.read_bytes() + events.read_bytes()[-(len(last) + 16):][:20])   # its first 20 bytes
    assert train.main(RUN + ["--run-dir", str(run), "--resume", "auto"]) == 0
    assert_events_match_the_run(run)
    written = [(e.step, v.tag) for e in raw_events(run) for v in e.summary.value]
    assert len(written) == len(set(written)), "a step written twice"
    assert {step for step, tag in written if tag == GRID_TAG} == {3, 7}
    assert {step for step, tag in written if tag == "loss"} == {2, 4, 6, 7}
    for path in run.glob(EVENTS_PREFIX + "*"):                    # no record cut short is left
        assert path.stat().st_size == sum(len(r) + 16 for r in RawEventFileLoader(str(path)).Load())


def test_a_restart_before_the_first_checkpoint_cuts_the_events_and_no_tensorboard_writes_none(tmp_path):
    run = tmp_path / "run"
    assert train.main(RUN + ["--run-dir", str(run), "--kimg", "0.032"]) == 0
    assert {v.tag for e in raw_events(run) for v in e.summary.value} >= {"loss", GRID_TAG}
    for path in [*list_checkpoints(run), *run.glob("samples-*")]:       # killed before its first snapshot
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    files = sorted(run.glob(EVENTS_PREFIX + "*"))
    assert train.main(RUN + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.032", "--no-tensorboard"]) == 0
    assert sorted(run.glob(EVENTS_PREFIX + "*")) == files                  # no new event file
    assert not [v for e in raw_events(run) for v in e.summary.value]      # and the old steps cut from the history
    assert [r["step"] for r in log_records(run)] == [2]
