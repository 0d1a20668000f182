"""Hostile inputs (issue 16), all generated here: pickles that change tensors after their checks or ask for
huge or endless structures, forged checkpoints whose checksums agree, hostile data sets, the sampling and
evaluation CLIs' outputs, a full disk and Ctrl-C. Each must end in one clear error (or a clean stop) that
leaves everything existing as it was: no traceback, no code run, no read outside a storage, no allocation
beyond what the data holds.
"""
import collections
import io
import json
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ambient import sample
from ambient.data.sources import MAX_CLASSES, load_dataset
from ambient.eval import evaluation as ambient_eval
from ambient.io import load_network
from ambient.io.checkpoint import (
    CheckpointError,
    _meta_digest,
    _sha256,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ambient.io.convert import ConversionError, UnsafePickleError, convert_edm_pickle
from ambient.train import cli as train

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--data", "digits", "--model-channels", "8", "--batch", "16", "--tick-kimg", "0.08", "--grid-size", "4",
        "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05",
        "--lr-decay", "none"]    # runs extended by --kimg on resume: a rate that does not follow --kimg


def one_error_line(err: str, *fragments: str) -> None:
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


# --- 1. pickles that change a tensor after it was checked ---------------------------------------------

class Reduce:
    """Pickles as `func(*args)`, then pickle's BUILD with `state` when given (what __setstate__ receives)."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def tensor_of(storage, size=(4,), state=None) -> Reduce:
    return Reduce(torch._utils._rebuild_tensor_v2, (storage, 0, size, (1,), False, collections.OrderedDict()), state)


def refused(tmp_path: Path, obj, error=ConversionError, match: str = "") -> None:
    """`obj` pickled is refused by the converter, in Python and on the command line (which writes nothing)."""
    path = tmp_path / "hostile.pkl"
    path.write_bytes(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=4))
    with pytest.raises(error, match=match):
        convert_edm_pickle(path)
    proc = subprocess.run([sys.executable, "-m", "ambient.convert", str(path), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and not (tmp_path / "out").exists(), proc.stderr
    one_error_line(proc.stderr)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")                  # TypedStorage deprecation: EDM pickles hold them
    STORAGE = torch.arange(4.0).storage()


@pytest.mark.parametrize("obj, match", [
    # BUILD -> Tensor.__setstate__ -> set_(storage, 0, (10**6,), (1,)): grows the storage over uninitialised memory
    ({"ema": tensor_of(STORAGE, state=(STORAGE, 0, (10**6,), (1,)))}, "sets the state of a Tensor"),
    ({"ema": Reduce(torch._utils._rebuild_parameter, (tensor_of(STORAGE), False, collections.OrderedDict()),
                    state=(STORAGE, 0, (10**6,), (1,)))}, "sets the state of a Tensor"),
    ({"ema": Reduce(torch._utils._rebuild_parameter_with_state,
                    (tensor_of(STORAGE), False, collections.OrderedDict(), {"data": 1}))}, "state"),
    ({"ema": Reduce(collections.OrderedDict, (), state={"x": 1})}, "sets the state of a OrderedDict"),
    ({"ema": Reduce(torch._utils._rebuild_tensor_v2, (STORAGE, 0, (4,), (1,), False,
                                                      collections.OrderedDict(a=1)))}, "hooks"),
    ({"ema": Reduce(torch._utils._rebuild_tensor_v2, (STORAGE, 2, (2, 2), (2, 1), False, None))},
     "beyond its storage"),
    ({"ema": Reduce(torch._utils._rebuild_tensor_v2, (STORAGE, 0, [4], [1], False, None))}, "invalid layout"),
])
def test_tensors_cannot_be_changed_or_grown_after_their_check(tmp_path, obj, match):
    unsafe = match in ("sets the state of a Tensor", "state", "hooks", "sets the state of a OrderedDict")
    refused(tmp_path, obj, UnsafePickleError if unsafe else ConversionError, match=match)


def test_storage_recording_more_elements_than_its_bytes_is_refused_before_allocation(tmp_path):
    blob = io.BytesIO()
    torch.save(torch.ones(4).storage(), blob, _use_new_zipfile_serialization=False)
    data = blob.getvalue()
    # The legacy format records the element count in the pickled persistent id: make it ask for 2**40.
    assert data.count(b"K\x04Nt") == 1                         # BININT1 4, NONE, TUPLE: numel, view metadata
    forged = data.replace(b"K\x04Nt", b"\x8a\x06" + (2**40).to_bytes(6, "little") + b"Nt")
    refused(tmp_path, {"ema": Reduce(torch.storage._load_from_bytes, (forged,))}, match="storage")


# --- 2. pickles that ask for huge networks or endless structures -------------------------------------

@pytest.fixture
def edm_record(monkeypatch):
    """f(init_kwargs, **state) -> pickle bytes of {"ema": an EDMPrecond persistence record}, without NVIDIA's code."""
    fake = types.ModuleType("torch_utils.persistence")
    fake._reconstruct_persistent_obj = lambda meta: None
    fake._reconstruct_persistent_obj.__module__ = fake.__name__
    fake._reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", fake)

    def make(init_kwargs, **state):
        meta = dict(type="class", version=6, module_src="", class_name="EDMPrecond",
                    state=dict(_init_args=(), _init_kwargs=init_kwargs, **state))
        return pickle.dumps({"ema": Reduce(fake._reconstruct_persistent_obj, (meta,))}, protocol=4)
    return make


SONG = dict(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=8, channel_mult=[1, 2],
            num_blocks=1, attn_resolutions=[4])


@pytest.mark.parametrize("change, match", [
    (dict(model_channels=2**20), "out of bounds"),
    (dict(num_blocks=10**9), "out of bounds"),
    (dict(channel_mult=[1] * 1000), "entries"),
    (dict(img_resolution=2**40), "out of bounds"),
    (dict(model_channels="wide"), "network"),
    (dict(label_dim=-5), "label_dim"),
    (dict(model_channels=4096, img_resolution=1024, attn_resolutions=[512]), "do not fit"),   # 50G parameters
    (dict(img_resolution=1024), "no such level"),       # attention at 4, which a 1024x1024, 2-level net lacks
])
def test_network_arguments_are_bounded_and_checked_against_the_weights_before_building(tmp_path, edm_record,
                                                                                        change, match):
    path = tmp_path / "huge.pkl"
    path.write_bytes(edm_record({**SONG, **change}))
    assert path.stat().st_size < 5000
    code = ("import resource, sys; from ambient import convert; rc = convert.main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    one_error_line(proc.stderr, match)
    assert int(proc.stdout.split()[-1]) < 1_500_000, "peak RSS over 1.5 GB: the network was built"
    assert time.time() - start < 120


def opcodes_nested_lists(depth: int) -> bytes:
    """{"ema": [[[...]]]} nested `depth` deep, written as opcodes (pickle.dumps itself would recurse)."""
    return (b"\x80\x04}" + b"\x8c\x03ema" + b"]" * depth + b"a" * (depth - 1) + b"s.")


def self_referencing() -> dict:
    loop: list = []
    loop.append(loop)
    return {"ema": loop}


def exponential() -> dict:
    node: list = []
    for _ in range(60):
        node = [node, node]           # 2**60 paths through 60 shared lists
    return {"ema": node}


@pytest.mark.parametrize("make", [lambda: opcodes_nested_lists(200_000), self_referencing, exponential],
                         ids=["deep", "self", "exponential"])
def test_deep_self_referencing_or_exponential_structures_are_one_error(tmp_path, make):
    refused(tmp_path, make(), match="nested more than")


def test_module_tree_referring_to_itself_is_one_error(tmp_path, edm_record, monkeypatch):
    fake = sys.modules["torch_utils.persistence"]
    record = Reduce(fake._reconstruct_persistent_obj, (dict(type="class", class_name="EDMPrecond", state={}),))
    record.state = {"_init_args": (), "_init_kwargs": SONG, "_modules": {"model": record}}   # set by BUILD
    refused(tmp_path, {"ema": record}, match="nested more than")


# --- 3. forged checkpoints whose checksums agree -----------------------------------------------------

def reseal(ckpt: Path) -> None:
    """Recompute every checksum of a checkpoint, as a forger would."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {name: {"bytes": (ckpt / name).stat().st_size, "sha256": _sha256(ckpt / name)}
                     for name in ("net.safetensors", "ema.safetensors", "state.pt")}
    meta["meta_sha256"] = _meta_digest(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def edit_meta(change):
    def forge(ckpt: Path) -> None:
        meta = json.loads((ckpt / "meta.json").read_text())
        change(meta)
        (ckpt / "meta.json").write_text(json.dumps(meta))
        reseal(ckpt)
    return forge


def edit_weights(change):
    def forge(ckpt: Path) -> None:
        for name in ("net.safetensors", "ema.safetensors"):
            weights = load_file(ckpt / name)
            change(weights)
            save_file(weights, ckpt / name)
        reseal(ckpt)
    return forge


def edit_state(change):
    def forge(ckpt: Path) -> None:
        state = torch.load(ckpt / "state.pt", weights_only=True)
        change(state)
        torch.save(state, ckpt / "state.pt")
        reseal(ckpt)
    return forge


def first_key(d: dict):
    return next(iter(d))


WEIGHT_FORGERIES = {
    "network record changed": edit_meta(lambda m: m["network"].update(model_channels=16)),
    "network record removed": edit_meta(lambda m: m.pop("network")),
    "network record huge": edit_meta(lambda m: m["network"].update(num_blocks=10**9)),
    "network record not a dict": edit_meta(lambda m: m.update(network=[1, 2])),
    "weight removed": edit_weights(lambda w: w.pop(first_key(w))),
    "weight added": edit_weights(lambda w: w.update(extra=torch.zeros(3))),
    "weight reshaped": edit_weights(lambda w: w.update({first_key(w): w[first_key(w)].flatten()[:-1]})),
    "weight dtype changed": edit_weights(lambda w: w.update({first_key(w): w[first_key(w)].double()})),
}
STATE_FORGERIES = {
    "step missing": edit_state(lambda s: s.pop("step")),
    "step not a count": edit_state(lambda s: s.update(step="ten")),
    "optimizer state of the wrong shape": edit_state(
        lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3, 3, 3))),
    "optimizer for another network": edit_state(lambda s: s["optimizer"]["param_groups"][0]["params"].pop()),
    "optimizer setting not a number": edit_state(lambda s: s["optimizer"]["param_groups"][0].update(lr="fast")),
    "optimizer state not a dict": edit_state(lambda s: s.update(optimizer=[1])),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A short run with two checkpoints (steps 5 and 10)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train.main(FAST + ["--run-dir", str(run), "--kimg", "0.16", "--snap-kimg", "0.08"]) == 0
    return run


def forged_run(trained: Path, tmp_path: Path, forge) -> tuple[Path, Path, Path]:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    good, newest = list_checkpoints(run)
    forge(newest)
    return run, good, newest


def test_meta_json_without_its_checksum_is_damaged(tmp_path):
    weights = {"w": torch.arange(3.0)}
    good = save_checkpoint(tmp_path, 1, weights, weights, {}, {"kimg": 1})
    bad = save_checkpoint(tmp_path, 2, weights, weights, {}, {"kimg": 2})
    meta = json.loads((bad / "meta.json").read_text())
    del meta["meta_sha256"]
    meta["kimg"] = 99
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="records no checksum"):
        load_checkpoint(bad)
    with pytest.warns(UserWarning, match="no checksum"):
        assert latest_checkpoint(tmp_path) == good


@pytest.mark.parametrize("forgery", sorted(WEIGHT_FORGERIES))
def test_forged_weights_or_network_record_fall_back_to_the_previous_checkpoint(trained, tmp_path, capsys, forgery):
    run, good, newest = forged_run(trained, tmp_path, WEIGHT_FORGERIES[forgery])
    with pytest.raises(CheckpointError):
        load_network(newest)
    capsys.readouterr()
    assert sample.main(["--ckpt", str(newest), "--seeds", "0", "--steps", "2", "--out", str(tmp_path / "a.png")]) == 1
    one_error_line(capsys.readouterr().err, str(newest))
    with pytest.warns(UserWarning, match="skipping"):            # a run directory: its previous checkpoint
        assert sample.main(["--ckpt", str(run), "--seeds", "0", "--steps", "2", "--out", str(tmp_path / "b.png")]) == 0
    with pytest.warns(UserWarning, match="skipping"):
        assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.24",
                                  "--snap-kimg", "0.08"]) == 0
    assert json.loads((latest_checkpoint(run) / "meta.json").read_text())["step"] == 15


@pytest.mark.parametrize("forgery", sorted(STATE_FORGERIES))
def test_forged_training_state_is_one_clear_error_on_resume(trained, tmp_path, capsys, forgery):
    run, good, newest = forged_run(trained, tmp_path, STATE_FORGERIES[forgery])
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    assert train.main(FAST + ["--resume", str(newest), "--run-dir", str(run), "--kimg", "0.24"]) == 1
    one_error_line(capsys.readouterr().err, "state.pt")
    assert sorted(p.name for p in run.iterdir()) == before


def test_converted_checkpoint_cannot_be_resumed(trained, tmp_path, capsys):
    run, good, newest = forged_run(trained, tmp_path, edit_state(
        lambda s: s.update(optimizer={}, batch=None)))
    capsys.readouterr()
    assert train.main(FAST + ["--resume", str(newest), "--run-dir", str(run), "--kimg", "0.24"]) == 1
    one_error_line(capsys.readouterr().err, "weights only")


# --- 4. hostile data sets ------------------------------------------------------------------------------

def png_bytes(value: int, size: int = 8) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(out, format="PNG")
    return out.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def zip_set(path: Path, members: dict[str, bytes], bomb: str | None = None, bomb_bytes: int = 0) -> str:
    """A data set zip of `members`, plus member `bomb`: a valid PNG followed by `bomb_bytes` zeros (compresses to
    a thousandth of that), written in 1 MiB pieces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if bomb:
            with zf.open(bomb, "w", force_zip64=True) as f:
                f.write(png_bytes(0))
                for _ in range(bomb_bytes >> 20):
                    f.write(bytes(1 << 20))
    return str(path)


GOOD = {f"{i}.png": png_bytes(30 * i) for i in range(4)}


@pytest.mark.parametrize("members, bomb, message", [
    (GOOD, "9.png", "more than"),                                   # a member that decompresses to 200 MiB
    ({"0.png": png_bytes(0)}, "1.png", "more than"),
    ({**GOOD, "dataset.json": b"[" + b" " * (8 << 20) + b"]"}, None, "dataset.json"),
])
def test_zip_bombs_are_refused_without_reading_them(tmp_path, members, bomb, message):
    path = zip_set(tmp_path / "bomb.zip", members, bomb, bomb_bytes=200 << 20)
    assert os.path.getsize(path) < 2 << 20
    code = ("import resource, sys; from ambient.data import load_dataset\n"
            "try:\n    print(load_dataset(sys.argv[1]))\nexcept ValueError as e:\n    print(e)\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")

    def load(data: str) -> tuple[str, int]:
        proc = subprocess.run([sys.executable, "-c", code, data], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        message, peak_kib = proc.stdout.strip().splitlines()
        return message, int(peak_kib)
    error, peak_kib = load(path)
    assert message in error
    assert peak_kib < load(zip_set(tmp_path / "good.zip", GOOD))[1] + (50 << 10), "the bomb was read into memory"


@pytest.mark.parametrize("array_bytes, message", [
    # header declares 100000 x 100000 float32 (40 GB) over 256 bytes of data: numpy would allocate it first
    (lambda: npy_bytes(np.zeros((8, 8), np.float32)).replace(b"(8, 8)", b"(100000, 100000)"), "declares"),
    (lambda: npy_bytes(np.zeros((8, 8), np.float32)).replace(b"(8, 8)", b"(8, 9)"), "declares"),
    (lambda: npy_bytes(np.zeros((8, 8), np.float32)) + bytes(4 << 20), "more than"),   # 4 MiB behind an 8x8 image
    (lambda: npy_bytes(np.zeros((8, 8, 8, 8), np.float32)), "expected an image"),
])
def test_arrays_declaring_more_than_they_hold_are_refused(tmp_path, array_bytes, message):
    """The hostile array is the first file, whose declared shape every other file is compared with (a later file
    declaring another shape is refused for that before it is decoded)."""
    members = {"0.npy": array_bytes(), "1.npy": npy_bytes(np.zeros((8, 8), np.float32))}
    members["dataset.json"] = json.dumps({"sigma_n": [["0.npy", 0.1], ["1.npy", 0.1]]}).encode()
    path = zip_set(tmp_path / "arrays.zip", members)
    with pytest.raises(ValueError, match=message):
        load_dataset(path)


@pytest.mark.parametrize("label", [2**64, 10**9, MAX_CLASSES, -1])
def test_labels_out_of_range_are_one_clear_error(tmp_path, capsys, label):
    folder = tmp_path / "set"
    folder.mkdir()
    for name, data in GOOD.items():
        (folder / name).write_bytes(data)
    labels = [[name, label if i == 2 else i] for i, name in enumerate(GOOD)]
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    capsys.readouterr()
    assert train.main(FAST + ["--data", str(folder), "--cond", "--run-dir", str(tmp_path / "run")]) == 1
    one_error_line(capsys.readouterr().err, "2.png", f"below {MAX_CLASSES}")


def test_memory_error_while_reading_is_a_read_error(tmp_path, monkeypatch):
    path = zip_set(tmp_path / "set.zip", GOOD)

    def exhausted(*args, **kwargs):
        raise MemoryError()
    monkeypatch.setattr(np, "array", exhausted)
    ds = load_dataset(path)
    with pytest.raises(ValueError, match="corrupt or unreadable image .*0.png"):
        ds[0]


# --- 6. a full disk ------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """f(kib) -> a fresh tmpfs of that size (root only), unmounted afterwards."""
    mounts = []

    def mount(kib: int) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()})")
        mounts.append(where)
        return where
    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill a file system until only about `leave` bytes are free."""
    with open(disk / "filler", "wb") as f:
        while shutil.disk_usage(disk).free > leave:
            f.write(bytes(min(1 << 16, shutil.disk_usage(disk).free - leave) or 1))
            f.flush()


def test_checkpoint_write_on_a_full_disk_is_one_error_and_leaves_nothing(small_disk):
    disk = small_disk(512)
    small = {"w": torch.zeros(10)}
    first = save_checkpoint(disk, 1, small, small, {"step": 1}, {})
    big = {"w": torch.zeros(100_000)}                      # 400 kB per file: does not fit
    with pytest.raises(CheckpointError, match=f"no space left on the disk \\(file system {disk},"):
        save_checkpoint(disk, 2, big, big, {"step": 2}, {})
    assert sorted(p.name for p in disk.iterdir()) == [first.name]          # no .tmp-* left behind
    assert load_checkpoint(first)["state"] == {"step": 1}


def test_training_on_a_full_disk_stops_with_one_error_and_keeps_the_run(small_disk, capsys):
    disk = small_disk(16 << 10)
    run = disk / "run"
    assert train.main(FAST + ["--run-dir", str(run), "--kimg", "0.08", "--snap-kimg", "0.08"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in list_checkpoints(run)}
    fill(disk, 48 << 10)                                    # room for logs and a grid, not for a checkpoint
    capsys.readouterr()
    assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.16",
                              "--snap-kimg", "0.08"]) == 1
    one_error_line(capsys.readouterr().err, "no space left on the disk", str(disk))
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "a partial file or folder was left"
    assert {p.name: p.stat().st_mtime_ns for p in list_checkpoints(run)} == before
    (disk / "filler").unlink()
    assert train.main(FAST + ["--run-dir", str(run), "--resume", "auto", "--kimg", "0.16",
                              "--snap-kimg", "0.08"]) == 0


# --- 7. Ctrl-C -----------------------------------------------------------------------------------------

def test_ctrl_c_prints_where_the_run_stopped_and_how_to_resume(tmp_path):
    run = tmp_path / "run"
    args = FAST + ["--run-dir", str(run), "--kimg", "16", "--snap-kimg", "0.048"]
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across exec: give
    # the trainer the default disposition, as a terminal does, so the test does not depend on how pytest started.
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(run)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("interrupted at step ") and f"of {run}" in err, err
    command = err.split("resume with: ")[1].strip()
    assert command.endswith(f"--run-dir {run} --resume auto") and command.count("--run-dir") == 1
    for ckpt in list_checkpoints(run):
        load_checkpoint(ckpt)
    stopped = json.loads((latest_checkpoint(run) / "meta.json").read_text())["step"]
    assert command.startswith("python train.py ")
    resumed = subprocess.run([sys.executable, *shlex.split(command)[1:], "--kimg", "0.64"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((latest_checkpoint(run) / "meta.json").read_text())["step"] >= max(stopped, 40)


# --- 5. the sampling and evaluation CLIs -------------------------------------------------------------

def sample_fails(args: list[str], capsys, *fragments: str) -> None:
    """sample.py refuses `args` with one error line, before it samples anything."""
    capsys.readouterr()
    start = time.time()
    assert sample.main(args) == 1
    one_error_line(capsys.readouterr().err, *fragments)
    assert time.time() - start < 60


def test_sample_checks_its_output_before_sampling(trained, tmp_path, capsys):
    ckpt = ["--ckpt", str(trained), "--steps", "2"]
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    sample_fails(ckpt + ["--out", str(blocker / "x.png")], capsys, "not a writable folder")
    existing = tmp_path / "pngs"
    existing.mkdir()
    (existing / "000000.png").write_bytes(b"my own image")
    sample_fails(ckpt + ["--out", str(existing)], capsys, "not an empty folder")
    assert (existing / "000000.png").read_bytes() == b"my own image"
    sample_fails(ckpt + ["--seeds", "0-999999999999", "--out", str(tmp_path / "g.png")], capsys, "more than")
    sample_fails(ckpt + ["--out", str(blocker)], capsys, "not an empty folder")
    assert blocker.read_text() == "mine"


def test_sample_writes_into_a_new_nested_folder(trained, tmp_path, capsys):
    out = tmp_path / "a" / "b" / "grid.png"
    assert sample.main(["--ckpt", str(trained), "--steps", "2", "--seeds", "0-3", "--out", str(out)]) == 0
    assert Image.open(out).size == (16, 16)


def test_seed_ranges_take_no_memory_and_are_read_lazily(trained):
    from ambient.common.cli import int_range
    from ambient.model import generate
    seeds = int_range("0-999999999999,5")
    assert len(seeds) == 10**12 + 1 and seeds[10**12 - 1] == 10**12 - 1 and seeds[-1] == 5
    net, _ = load_network(trained)
    got, images = next(generate(net, seeds, (1, 8, 8), batch=3, num_steps=2))
    assert got == [0, 1, 2] and images.shape == (3, 1, 8, 8)


def test_npz_is_streamed_and_reads_back_as_before(trained, tmp_path):
    out, folder = tmp_path / "s.npz", tmp_path / "pngs"
    assert sample.main(["--ckpt", str(trained), "--steps", "2", "--seeds", "3-9", "--batch", "3",
                        "--out", str(out)]) == 0
    assert sample.main(["--ckpt", str(trained), "--steps", "2", "--seeds", "3-9", "--batch", "3",
                        "--out", str(folder)]) == 0
    data = np.load(out)
    assert data["images"].shape == (7, 8, 8, 1) and data["seeds"].tolist() == list(range(3, 10))
    for seed, image in zip(data["seeds"], data["images"]):
        assert np.array_equal(np.array(Image.open(folder / f"{seed:06d}.png")), image[:, :, 0])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.fixture(scope="module")
def bad_inception(tmp_path_factory) -> dict[str, Path]:
    """Files that are not clean-fid's Inception network: text, a zip, a torch.save file, TorchScript without layers."""
    root = tmp_path_factory.mktemp("inception")
    paths = {name: root / f"{name}.pt" for name in ("text", "zip", "torch_save", "script")}
    paths["text"].write_text("not a network")
    with zipfile.ZipFile(paths["zip"], "w") as zf:
        zf.writestr("x/readme.txt", "hello")
    torch.save({"w": torch.zeros(2)}, paths["torch_save"])
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(paths["script"]))
    return paths


@pytest.mark.parametrize("name, message", [("text", "not clean-fid's Inception"), ("zip", "not clean-fid's"),
                                           ("torch_save", "not clean-fid's"), ("script", "cannot be loaded as")])
def test_eval_refuses_files_that_are_not_the_inception_network(trained, tmp_path, capsys, bad_inception, name,
                                                               message):
    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(ref / f"{i}.png")
    capsys.readouterr()
    assert ambient_eval.main(["--ckpt", str(trained), "--metric", "fid", "--ref", str(ref), "--n", "4", "--steps", "2",
                              "--inception-path", str(bad_inception[name]), "--no-progress",
                              "--out", str(tmp_path / "m.json")]) == 1
    one_error_line(capsys.readouterr().err, str(bad_inception[name]), message)
    assert not (tmp_path / "m.json").exists()


def test_eval_help_says_inception_files_run_code(capsys):
    with pytest.raises(SystemExit):
        ambient_eval.main(["--help"])
    assert "runs code from the file" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("flag", ["--samples-out", "--out"])
def test_eval_checks_its_outputs_before_sampling(trained, tmp_path, capsys, flag):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    for bad, message in ((blocker / "s.npz", "not a writable folder"), (tmp_path, "is a folder")):
        capsys.readouterr()
        start = time.time()
        assert ambient_eval.main(["--ckpt", str(trained), "--n", "100000", "--no-progress", flag, str(bad)]) == 1
        one_error_line(capsys.readouterr().err, message)
        assert time.time() - start < 30


@pytest.mark.parametrize("state", [dict(_parameters=[1, 2]), dict(_modules="x"), dict(_buffers={1: None}),
                                   dict(_non_persistent_buffers_set=5), dict(_modules={"m": 3})])
def test_module_records_of_the_wrong_shape_are_one_error(tmp_path, edm_record, state):
    refused(tmp_path, edm_record(SONG, **state), match="records|not a module")


def test_json_nested_too_deep_is_one_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    weights = {"w": torch.zeros(2)}
    good = save_checkpoint(tmp_path / "run", 1, weights, weights, {}, {})
    bad = save_checkpoint(tmp_path / "run", 2, weights, weights, {}, {})
    (bad / "meta.json").write_text(deep)
    with pytest.raises(CheckpointError, match="no readable meta.json"):
        load_checkpoint(bad)
    with pytest.warns(UserWarning, match="skipping"):
        assert latest_checkpoint(tmp_path / "run") == good
    path = zip_set(tmp_path / "deep.zip", {**GOOD, "dataset.json": deep.encode()})
    with pytest.raises(ValueError, match="dataset.json is not valid JSON"):
        load_dataset(path)
