"""Training end to end: train.py and sample.py as a user runs them, exact resume, bad input."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ambient import sample
from ambient.io.checkpoint import latest_checkpoint, list_checkpoints
from ambient.model import generate
from ambient.networks import build_network
from ambient.train import TrainConfig
from ambient.train import cli as train
from ambient.train import train as run_training
from ambient.train.loop import snapshot_due

ROOT = Path(__file__).resolve().parents[1]
# 8x8 digits, tiny UNet: a few seconds per run on two cores.
FAST = ["--data", "digits", "--model-channels", "8", "--batch", "16", "--tick-kimg", "0.08", "--grid-size", "4",
        "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05",
        "--lr-decay", "none"]    # runs extended by --kimg on resume: a rate that does not follow --kimg


def fast_config(run_dir: Path, **kw) -> TrainConfig:
    return train.parse_args(FAST + ["--run-dir", str(run_dir), "--snap-kimg", "0.08", "--kimg", "0.16"]
                            + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()])


def test_train_then_sample_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ)
    subprocess.run([sys.executable, "train.py", *FAST, "--kimg", "0.1", "--snap-kimg", "0.05", "--run-dir", str(run),
                    "--n-clean", "200", "--sigma-n", "0.1,0.4", "--sigma-share", "0.5,0.5", "--xflip"],
                   cwd=ROOT, env=env, check=True, timeout=300)
    ckpts = list_checkpoints(run)
    assert [c.name for c in ckpts] == ["checkpoint-000000003", "checkpoint-000000007"]    # 6: left to the end's
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["dataset"].startswith("digits: 200 clean + 1597 noisy")
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 7 and all(np.isfinite(r["loss"]) for r in log)
    assert Image.open(run / "samples-000000007.png").size == (16, 16)           # 2x2 grid of 8x8
    net, ema = load_file(ckpts[-1] / "net.safetensors"), load_file(ckpts[-1] / "ema.safetensors")
    assert any(not torch.equal(net[k], ema[k]) for k in net)                   # EMA lags the raw weights

    out = tmp_path / "s.npz"
    subprocess.run([sys.executable, "sample.py", "--ckpt", str(run), "--seeds", "0-4", "--batch", "3",
                    "--steps", "6", "--out", str(out)], cwd=ROOT, env=env, check=True, timeout=300)
    images = np.load(out)["images"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0


def test_sample_is_per_seed_and_batch_independent(tmp_path):
    run = tmp_path / "run"
    run_training(fast_config(run))
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert sample.main(["--ckpt", str(run), "--seeds", "3-7", "--batch", "5", "--steps", "5", "--churn", "5",
                        "--out", str(a)]) == 0
    assert sample.main(["--ckpt", str(run), "--seeds", "5-7", "--batch", "2", "--steps", "5", "--churn", "5",
                        "--out", str(b)]) == 0
    assert np.array_equal(np.load(a)["images"][2:], np.load(b)["images"])


def test_resume_gives_the_same_weights_as_one_run(tmp_path):
    straight = run_training(fast_config(tmp_path / "straight"))
    part = run_training(fast_config(tmp_path / "part", kimg=0.08))               # stops at step 5
    resumed = run_training(fast_config(tmp_path / "part", resume=str(part)))
    assert resumed == part
    final_a, final_b = latest_checkpoint(straight), latest_checkpoint(resumed)
    assert final_a.name == final_b.name == "checkpoint-000000010"
    for name in ("net.safetensors", "ema.safetensors"):
        a, b = load_file(final_a / name), load_file(final_b / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    run_training(fast_config(run))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert train.main(FAST + ["--run-dir", str(run), "--kimg", "0.05"]) == 1
    assert "not empty" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/data"], "/no/such/data"),
    (["--n-clean", "5000"], "5000"),
    (["--sigma-n", "0.1,0.4", "--sigma-share", "0.5,0.6"], "sum"),
    (["--cond", "--data", "{unlabeled}"], "labels"),
])
def test_bad_input_one_clear_error(tmp_path, capsys, args, message):
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(unlabeled / f"{i}.png")
    args = [a.replace("{unlabeled}", str(unlabeled)) for a in args]
    assert train.main(FAST + ["--run-dir", str(tmp_path / "run")] + args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not list_checkpoints(tmp_path / "run")


@pytest.mark.parametrize("args, message", [
    (["--sigma-n", "-0.2"], "must be >= 0"),
    (["--batch", "0"], "an integer in [1, "),
    (["--p-clean", "1.5"], "[0, 1]"),
    (["--p-clean", "0.5", "--n-clean", "10"], "choose one"),
    (["--sigma-n", "0.1,0.2", "--sigma-share", "1"], "entries"),
])
def test_bad_flags_exit_with_usage_error(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        train.parse_args(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_corrupt_png_fails_before_training(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(data / f"{i}.png")
    blob = (data / "2.png").read_bytes()
    (data / "2.png").write_bytes(blob[: len(blob) // 2])
    proc = subprocess.run([sys.executable, "train.py", "--data", str(data), "--run-dir", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "2.png" in proc.stderr and "Traceback" not in proc.stderr


def test_triton_kernels_give_the_torch_loss_curve(tmp_path, monkeypatch):
    """--kernels triton (interpreted on CPU) against --kernels torch: same losses step by step.

    The Triton path normally draws its noise in-kernel (a different stream from torch's), so here
    both runs take the torch-drawn noise; the kernels then see identical inputs.
    """
    import ambient.train.step as step
    monkeypatch.setattr(step, "resolve_backend", lambda backend, device: "torch")
    curves = {}
    for backend in ("torch", "triton"):
        cfg = train.parse_args(FAST + ["--run-dir", str(tmp_path / backend), "--kimg", "0.064", "--tick-kimg", "0.016",
                                       "--snap-kimg", "1", "--kernels", backend, "--grid-size", "1"])
        run_training(cfg)
        curves[backend] = [json.loads(line)["loss"]
                           for line in (tmp_path / backend / "log.jsonl").read_text().splitlines()]
    assert len(curves["torch"]) == 4
    np.testing.assert_allclose(curves["triton"], curves["torch"], rtol=2e-4)


def test_class_indices_give_the_numbers_of_one_hot_labels():
    """Training and sampling pass class indices; EDMPrecond turns them into the one-hot vectors, bit for bit."""
    torch.manual_seed(0)
    net = build_network("tiny", 8, 1, label_dim=10, model_channels=8).eval()
    idx, x, sigma = torch.tensor([3, 0, 9, 3]), torch.randn(4, 1, 8, 8), torch.tensor([0.1, 1.0, 5.0, 20.0])
    with torch.no_grad():
        assert torch.equal(net(x, sigma, idx), net(x, sigma, torch.nn.functional.one_hot(idx, 10).float()))
    grids = [torch.cat([img for _, img in generate(net, range(5), (1, 8, 8), batch=2, num_steps=3,
                                                   class_labels=labels)])
             for labels in (lambda s: torch.tensor(s) % 10,
                            lambda s: torch.nn.functional.one_hot(torch.tensor(s) % 10, 10).float())]
    assert torch.equal(*grids)


@pytest.mark.parametrize("batch, kimg, snap_kimg", [(64, 80, 20), (64, 90, 20), (16, 0.1, 0.05), (7, 3.001, 0.1)])
def test_a_snapshot_just_before_the_end_is_the_ends(batch, kimg, snap_kimg):
    total, every = math.ceil(kimg * 1000 / batch), max(1, round(snap_kimg * 1000 / batch))     # as train() has them
    due = [s for s in range(1, total + 1) if snapshot_due(s, total, every)]
    assert due[-1] == total and all(s % every == 0 for s in due[:-1])
    gaps = np.diff([0, *due])
    assert (gaps[:-1] == every).all() and every / 2 <= gaps[-1] < 1.5 * every
    if (batch, kimg) == (64, 80):                                  # the default run: not 1248 and 1250
        assert due == [312, 624, 936, 1250]
