"""Importing EDM-style network pickles without running their code, and refusing malicious pickles/checkpoints.

The EDM-style pickles are made here without NVIDIA's code: a subprocess puts a fake
`torch_utils/persistence.py` on its path and pickles our own networks the way NVIDIA's
persistence decorator does (each module as `_reconstruct_persistent_obj(meta)` with its __dict__
and, for the top-level network, its constructor arguments). The fake reconstructor and the fake
module source would each create a marker file if they were ever run.
"""
import collections
import io
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sample
from ambient.io import convert, load_network
from ambient.io.checkpoint import (
    CheckpointError,
    _meta_digest,
    _sha256,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ambient.io.convert import ConversionError, UnsafePickleError, convert_edm_pickle

ROOT = Path(__file__).resolve().parents[1]

FAKE_PERSISTENCE = '''"""Stand-in for NVIDIA's torch_utils.persistence: loading runs the pickled module source."""
import os


def _reconstruct_persistent_obj(meta):
    open(os.environ["RECONSTRUCT_MARKER"], "w").close()
    exec(meta["module_src"], {})
    raise RuntimeError("a safe converter never calls this")
'''
MODULE_SRC = 'import os\nopen(os.environ["MODULE_SRC_MARKER"], "w").close()\n'

WRITER = r'''
import json, pickle, sys
import torch
fake_root, out_dir, jobs, module_src = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
sys.path.insert(0, fake_root)
from torch_utils import persistence
from ambient.model import networks

class EDMLoss:                                   # another persistent object of EDM's pickles
    def __init__(self):
        self.P_mean, self.P_std, self.sigma_data = -1.2, 1.2, 0.5

class Planted:                                   # a payload hidden in the network's state
    def __init__(self, path):
        self.path = path
    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)

PERSISTENT = {networks.EDMPrecond, networks.SongUNet, networks.UNetBlock, networks.Conv2d, networks.Linear,
              networks.GroupNorm, networks.PositionalEmbedding, networks.FourierEmbedding, EDMLoss}

for job in jobs:
    torch.manual_seed(job["seed"])
    net = networks.EDMPrecond(*job["args"], **job["kwargs"]).eval()
    with torch.no_grad():                        # move every weight off its init so each one matters
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    recorded = job.get("recorded_kwargs", job["kwargs"])

    class EDMStylePickler(pickle.Pickler):
        def reducer_override(self, obj):
            if type(obj) not in PERSISTENT:
                return NotImplemented
            state = dict(obj.__dict__)
            state["_init_args"] = tuple(job["args"]) if obj is net else ()
            state["_init_kwargs"] = dict(recorded) if obj is net else {}
            if obj is net and job.get("plant"):
                state["_planted"] = Planted(job["plant"])
            meta = dict(type="class", version=6, module_src=module_src, class_name=type(obj).__name__, state=state)
            return persistence._reconstruct_persistent_obj, (meta,)

    data = dict(ema=net, loss_fn=EDMLoss(), augment_pipe=None,
                dataset_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="data.zip",
                                    resolution=net.img_resolution, xflip=False))
    with open(f"{out_dir}/{job['name']}.pkl", "wb") as f:
        EDMStylePickler(f, protocol=4).dump(data)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, net.img_channels, net.img_resolution, net.img_resolution, generator=g)
    sigma = torch.tensor([0.02, 0.7, 20.0])
    labels = torch.eye(net.label_dim)[:3] if net.label_dim else None
    with torch.no_grad():
        torch.save(dict(x=x, sigma=sigma, labels=labels, out=net(x, sigma, labels)), f"{out_dir}/{job['name']}.ref.pt")
'''

# EDM's DDPM++ layout (keyword arguments only) and its NCSN++ layout (positional arguments, labels, augment labels).
DDPMPP = dict(img_resolution=8, img_channels=1, model_type="SongUNet", embedding_type="positional",
              encoder_type="standard", decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
              model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.13)
NCSNPP = dict(label_dim=4, use_fp16=True, sigma_min=0.002, sigma_max=80.0, model_type="SongUNet",
              embedding_type="fourier", encoder_type="residual", decoder_type="skip", channel_mult_noise=2,
              resample_filter=[1, 3, 3, 1], model_channels=8, channel_mult=[1, 2], num_blocks=1,
              attn_resolutions=[4], augment_dim=9, label_dropout=0.1)


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    """EDM-style pickles written by a subprocess: good ones, a lying one, and one with a planted payload."""
    root = tmp_path_factory.mktemp("edm")
    fake = root / "fake_nvidia"
    (fake / "torch_utils").mkdir(parents=True)
    (fake / "torch_utils" / "__init__.py").write_text("")
    (fake / "torch_utils" / "persistence.py").write_text(FAKE_PERSISTENCE)
    planted_marker = root / "planted-ran"
    jobs = [dict(name="ddpmpp", seed=0, args=[], kwargs=DDPMPP),
            dict(name="ncsnpp", seed=1, args=[8, 3], kwargs=NCSNPP),
            dict(name="lying", seed=2, args=[], kwargs=DDPMPP, recorded_kwargs={**DDPMPP, "model_channels": 16}),
            dict(name="adm", seed=3, args=[], kwargs=DDPMPP,
                 recorded_kwargs={k: v for k, v in DDPMPP.items() if k != "model_type"}),
            dict(name="planted", seed=4, args=[], kwargs=DDPMPP, plant=str(planted_marker))]
    subprocess.run([sys.executable, "-c", WRITER, str(fake), str(root), json.dumps(jobs), MODULE_SRC],
                   cwd=ROOT, check=True,
                   timeout=300)
    return root


@pytest.fixture
def nvidia_code_available(pickles, tmp_path, monkeypatch):
    """Make the fake NVIDIA module importable (as on a machine with EDM installed) and arm its markers."""
    markers = [tmp_path / "reconstruct-ran", tmp_path / "module-src-ran"]
    monkeypatch.setenv("RECONSTRUCT_MARKER", str(markers[0]))
    monkeypatch.setenv("MODULE_SRC_MARKER", str(markers[1]))
    monkeypatch.syspath_prepend(str(pickles / "fake_nvidia"))
    yield markers
    imported = [name for name in sys.modules if name.split(".")[0] == "torch_utils"]
    for name in imported:
        del sys.modules[name]
    assert not imported, "the converter imported torch_utils"
    assert not any(m.exists() for m in markers), "code from the pickle ran"


def reference_output(net: torch.nn.Module, ref: dict) -> torch.Tensor:
    with torch.no_grad():
        return net(ref["x"], ref["sigma"], ref["labels"])


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp"])
def test_converted_network_computes_what_the_pickled_one_did(pickles, nvidia_code_available, name):
    net, info = convert_edm_pickle(pickles / f"{name}.pkl")
    ref = torch.load(pickles / f"{name}.ref.pt", weights_only=True)
    assert torch.equal(reference_output(net, ref), ref["out"])
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert info["class_name"] == "EDMPrecond"
    assert info["pickle_keys"] == ["augment_pipe", "dataset_kwargs", "ema", "loss_fn"]
    assert info["network"]["img_resolution"] == 8 and info["network"]["model_channels"] == 8
    if name == "ncsnpp":       # positional arguments were bound to their names
        assert info["network"]["img_channels"] == 3 and info["network"]["label_dim"] == 4
        assert info["network"]["augment_dim"] == 9 and info["network"]["encoder_type"] == "residual"


def test_command_line_writes_a_checkpoint_that_sample_py_reads(pickles, tmp_path):
    dest = tmp_path / "converted"
    proc = subprocess.run([sys.executable, "-m", "ambient.convert", str(pickles / "ddpmpp.pkl"), str(dest)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "converted EDMPrecond" in proc.stdout
    net, meta = load_network(dest)
    ref = torch.load(pickles / "ddpmpp.ref.pt", weights_only=True)
    assert torch.equal(reference_output(net, ref), ref["out"])
    assert meta["converted_from"]["source_sha256"] == _sha256(pickles / "ddpmpp.pkl")
    assert load_network(dest, which="net")[0].state_dict().keys() == net.state_dict().keys()
    out = tmp_path / "s.npz"
    assert sample.main(["--ckpt", str(dest), "--seeds", "0-2", "--steps", "4", "--out", str(out)]) == 0
    assert np.load(out)["images"].shape == (3, 8, 8, 1)


def test_refuses_to_write_into_a_non_empty_destination(pickles, tmp_path, capsys):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    assert convert.main([str(pickles / "ddpmpp.pkl"), str(dest)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an empty directory" in err
    assert [p.name for p in dest.iterdir()] == ["keep.txt"] and (dest / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert convert.main([str(pickles / "ddpmpp.pkl"), str(empty)]) == 0      # an empty directory is fine
    assert latest_checkpoint(empty) is not None


@pytest.mark.parametrize("name, message", [
    ("lying", "do not fit"),            # recorded arguments (model_channels 16) disagree with the weights (8)
    ("adm", "DhariwalUNet"),            # no model_type: EDM's default, which we do not implement
])
def test_pickles_that_do_not_describe_a_supported_network(pickles, nvidia_code_available, name, message):
    with pytest.raises(ConversionError, match=message):
        convert_edm_pickle(pickles / f"{name}.pkl")


def test_payload_planted_in_a_network_pickle_is_refused(pickles, nvidia_code_available):
    with pytest.raises(UnsafePickleError, match="builtins.exec"):
        convert_edm_pickle(pickles / "planted.pkl")
    assert not (pickles / "planted-ran").exists()


class Payload:
    """Pickles as a call of `func(*args)`: what an attacker plants."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> list[tuple[object, str]]:
    """(object whose unpickling would create `marker`, the global the refusal must name)."""
    import builtins
    calls = [Payload(os.system, f"touch {marker}"), Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
             Payload(builtins.open, str(marker), "w"), Payload(subprocess.Popen, ["touch", str(marker)])]
    cases = [(p, f"{p.func.__module__}.{p.func.__qualname__}") for p in calls]    # e.g. posix.system, io.open
    return cases + [({"ema": calls[0]}, cases[0][1])]


@pytest.mark.parametrize("case", range(5))
@pytest.mark.parametrize("protocol", [0, 4])
def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, case, protocol):
    marker = tmp_path / "pwned"
    obj, global_name = payloads(marker)[case]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(UnsafePickleError, match=re.escape(global_name)):
        convert_edm_pickle(path)
    assert convert.main([str(path), str(tmp_path / "out")]) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_payload_inside_a_tensor_storage_is_refused(tmp_path):
    """EDM pickles store tensors as torch.save'd bytes; those bytes are loaded with weights_only=True."""
    marker = tmp_path / "pwned"
    blob = io.BytesIO()
    torch.save(Payload(os.system, f"touch {marker}"), blob, _use_new_zipfile_serialization=False)
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": Payload(torch.storage._load_from_bytes, blob.getvalue())}))
    with pytest.raises(UnsafePickleError, match="storage"):
        convert_edm_pickle(path)
    assert not marker.exists()


def test_numpy_objects_are_refused(tmp_path):
    """A crafted numpy dtype makes numpy's scalar reconstruction read raw bytes as object pointers."""
    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps({"ema": np.float64(1.0)}))
    with pytest.raises(UnsafePickleError, match="numpy"):
        convert_edm_pickle(path)


def test_tensor_reaching_beyond_its_storage_is_refused(tmp_path):
    storage = torch.ones(4).storage()                  # a TypedStorage: pickles through _load_from_bytes
    hooks = collections.OrderedDict()
    path = tmp_path / "oob.pkl"
    path.write_bytes(pickle.dumps({"ema": Payload(torch._utils._rebuild_tensor_v2, storage, 0, (100,), (1,), False,
                                                  hooks)}))
    with pytest.raises(ConversionError, match="beyond its storage of 4 elements"):
        convert_edm_pickle(path)


def test_unreadable_or_foreign_files_get_a_clear_error(pickles, tmp_path):
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes((pickles / "ddpmpp.pkl").read_bytes()[:5000])
    with pytest.raises(ConversionError, match="not a readable pickle"):
        convert_edm_pickle(truncated)
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ConversionError, match="'ema'"):
        convert_edm_pickle(foreign)
    with pytest.raises(ConversionError, match="cannot read"):
        convert_edm_pickle(tmp_path / "missing.pkl")


def test_checkpoint_with_a_malicious_state_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    weights = {"w": torch.ones(3)}
    first = save_checkpoint(tmp_path / "run", 1, weights, weights, {"step": 1}, {})
    second = save_checkpoint(tmp_path / "run", 2, weights, weights, {"step": 2}, {})
    torch.save({"step": Payload(os.system, f"touch {marker}")}, second / "state.pt")
    # Swapped file alone: the checksum catches it, and the run falls back to the previous checkpoint.
    with pytest.raises(CheckpointError, match="state.pt"):
        load_checkpoint(second)
    with pytest.warns(UserWarning, match="damaged"):
        assert latest_checkpoint(tmp_path / "run") == first
    # An attacker who also rewrites the checksums: weights_only loading still refuses it.
    meta = json.loads((second / "meta.json").read_text())
    meta["files"]["state.pt"] = {"bytes": (second / "state.pt").stat().st_size, "sha256": _sha256(second / "state.pt")}
    meta["meta_sha256"] = _meta_digest(meta)
    (second / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(second)
    assert not marker.exists()
