"""Values checked where they are parsed, before any work or file (issue 25, class 6), and memory and work with
bounds (class 7): each refused value is one usage error naming its option; what the bounds let through still
trains, samples and evaluates; the loss-by-sigma log skips non-finite samples; the injected noise is drawn per
micro-batch with the numbers of one draw for the whole batch."""
import math
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ambient import sample
from ambient.common import cli
from ambient.data.tool import main as dataset_tool
from ambient.eval import evaluation as ev
from ambient.io import checkpoint
from ambient.model.sampler import check_schedule, edm_time_steps
from ambient.networks import build_network
from ambient.train import cli as train
from ambient.train.config import MAX_BATCH, MAX_CHANNELS, MAX_THREADS
from ambient.train.loop import log_losses
from ambient.train.step import NoiseStream

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("flags, message", [
    (["--device", "meta"], "only cpu and cuda devices"), (["--device", "mps"], "only cpu and cuda devices"),
    (["--device", "ipu"], "only cpu and cuda devices"), (["--device", "gpu0"], "is not a device"),
    *([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA device is available")]),
    (["--seed", str(2**64)], "a seed in [0, 2**40"), (["--data-seed", str(2**40)], "a seed in [0, 2**40"),
    (["--data-seed", "-1"], "a seed in [0, 2**40"),
    (["--P-std", "50"], "in (0, 3]"), (["--P-std", "0"], "in (0, 3]"), (["--P-mean", "1000"], "in [-10, 10]"),
    (["--P-mean", "-10.5"], "in [-10, 10]"),
    (["--model-channels", "70000"], f"an integer in [1, {MAX_CHANNELS}]"),
    (["--batch", "1e9"], "is not an integer"), (["--batch", str(MAX_BATCH + 1)], f"an integer in [1, {MAX_BATCH}]"),
    (["--threads", "100000"], f"an integer in [1, {MAX_THREADS}]"),
    (["--grid-size", "1000000"], "an integer in [1, 4096]"), (["--snap-grid-size", "4097"], "an integer in [1, 4096]"),
])
def test_train_refuses_values_that_would_fail_later_before_any_file(tmp_path, capsys, flags, message):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train.main(["--data", "digits", "--run-dir", str(run), *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and f"argument {flags[0]}" in err and message in err, err
    assert not run.exists()


def test_the_bounds_let_their_largest_values_through():
    cfg = train.parse_args(["--data", "digits", "--seed", str(cli.SEED_LIMIT - 1), "--P-mean", "10", "--P-std", "3",
                            "--model-channels", str(MAX_CHANNELS), "--batch", str(MAX_BATCH), "--threads",
                            str(MAX_THREADS), "--grid-size", "4096", "--device", "cpu"])
    assert (cfg.seed, cfg.P_mean, cfg.P_std, cfg.batch, cfg.grid_size) == (2**40 - 1, 10.0, 3.0, 2**22, 4096)
    # ln(sigma) = P_mean + P_std n within +-40 for |n| < 10: sigma^2 stays a normal float32 number
    sigma = torch.exp(torch.tensor([-10.0 - 3 * 10, 10.0 + 3 * 10]))
    assert torch.isfinite(sigma**2).all() and (sigma**2 > torch.finfo(torch.float32).tiny).all()


def test_loss_by_sigma_skips_non_finite_samples_against_a_float64_reference():
    rng = np.random.default_rng()
    n = int(rng.integers(50, 300))
    bins = torch.tensor([0.0, 0.1, 0.5, 1.0, 5.0, math.inf])
    sigma = torch.from_numpy(np.exp(rng.normal(0, 3, n))).float()
    loss = torch.from_numpy(rng.exponential(1.0, n)).float()
    odd = rng.choice(n, 12, replace=False)
    sigma[odd[:3]] = torch.tensor([math.inf, math.nan, -1.0])              # P_std 50 or P_mean 1000 overflow
    sigma[odd[3]] = 1e38                                                   # finite, beyond every bin edge but inf
    loss[odd[4:6]] = torch.tensor([math.nan, math.inf])
    stats = torch.zeros(2, len(bins) - 1, dtype=torch.float64)
    log_losses(stats, bins, loss, sigma)
    ref = np.zeros((2, len(bins) - 1))
    for s, v in zip(sigma.double().numpy(), loss.double().numpy()):
        if np.isfinite(s) and s >= 0 and np.isfinite(v):
            k = int(np.searchsorted(bins.numpy(), s, side="right")) - 1
            ref[:, k] += (v, 1)
    np.testing.assert_allclose(stats.numpy(), ref, rtol=1e-12)
    assert stats[1].sum() == n - 5


def _model(folder: Path, label_dim: int) -> Path:
    kwargs = dict(preset="tiny", img_resolution=8, img_channels=1, label_dim=label_dim, model_channels=8,
                  channel_mult=[1, 2], attn_resolutions=[])
    sd = build_network(**kwargs).state_dict()
    return checkpoint.save_checkpoint(folder, 0, sd, sd, {"step": 0}, {"network": kwargs, "kimg": 0.0})


@pytest.mark.parametrize("label_dim, flags, message, code", [
    (10, ["--class", "99"], "--class 99: this model has 10 classes (0-9)", 1),
    (10, ["--class", "10"], "--class 10: this model has 10 classes (0-9)", 1),
    (0, ["--class", "5"], "--class 5: this model is unconditional", 1),
    (0, ["--seeds", str(2**64)], "a seed in [0, 2**40", 2), (0, ["--seeds", f"0-{2**40}"], "a seed in [0, 2**40", 2),
    (0, ["--rho", "1e-300"], "--rho 1e-300 gives a noise schedule", 2),
    (0, ["--rho", "0"], "argument --rho: must be > 0", 2),
    (0, ["--sigma-max", "1e39"], "--sigma-max 1e+39 is above 1000", 2),
    (0, ["--sigma-min", "100", "--sigma-max", "80"], "--sigma-min 100 must be > 0 and below --sigma-max 80", 2),
    (0, ["--device", "meta"], "only cpu and cuda devices", 2),
    (0, ["--sigma-stop", "0.001"], "sigma_stop must be a finite level in [sigma_min, sigma_max) = [0.002, 80)", 2),
    (0, ["--sigma-max", "20", "--sigma-stop", "20"], "= [0.002, 20) of the sampler's schedule, got 20", 2),
])
def test_sample_refuses_before_sampling(tmp_path, capsys, label_dim, flags, message, code):
    ckpt = _model(tmp_path / "run", label_dim)
    out = tmp_path / "grid.png"
    argv = ["--ckpt", str(ckpt), "--seeds", "0-3", "--steps", "3", "--out", str(out), "--device", "cpu", *flags]
    if code == 2:
        with pytest.raises(SystemExit) as exit_:
            sample.main(argv)
        assert exit_.value.code == 2
    else:
        assert sample.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists(), err


def test_sample_takes_a_valid_class_and_schedule(tmp_path):
    ckpt = _model(tmp_path / "run", 10)
    out = tmp_path / "grid.png"
    assert sample.main(["--ckpt", str(ckpt), "--seeds", "0-2", "--steps", "2", "--class", "9", "--rho", "1",
                        "--sigma-max", "1000", "--out", str(out), "--device", "cpu"]) == 0
    assert out.stat().st_size > 0


@pytest.mark.parametrize("rho", [1.0, 3.7, 7.0, 100.0])
def test_check_schedule_accepts_what_gives_a_decreasing_finite_schedule(rho):
    check_schedule(18, 0.002, 80.0, rho)
    t = edm_time_steps(18, 0.002, 80.0, rho)[:-1]
    assert torch.isfinite(t).all() and (t[1:] < t[:-1]).all()


@pytest.mark.parametrize("cache, message", [("file", "is not a folder"), ("file/sub", "is not a writable folder")])
def test_eval_checks_its_cache_dir_before_any_work(tmp_path, capsys, cache, message):
    ckpt = _model(tmp_path / "run", 0)
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "m.json"
    assert ev.main(["--ckpt", str(ckpt), "--n", "4", "--ref", "digits", "--cache-dir", str(tmp_path / cache),
                    "--out", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --cache-dir") and message in err and not out.exists(), err


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4), (1, 6, 6), (3, 5, 5)])
def test_the_noise_is_drawn_per_micro_batch_with_the_numbers_of_one_draw(shape):
    """Any split of any rank's share into micro-batches, sample sizes a multiple of 16 or not (the latter drawn
    whole), fresh seeds and batch sizes."""
    rng = np.random.default_rng()
    for _ in range(4):
        s, batch = int(rng.integers(2**40)), int(rng.integers(1, 50))
        whole = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(s))
        stream, first = NoiseStream(s, batch, shape, torch.device("cpu")), int(rng.integers(batch))
        pieces, position = [], first
        while position < batch:
            count = int(rng.integers(1, batch - position + 1))
            pieces.append(stream.take(position, count))
            position += count
        assert torch.equal(torch.cat(pieces), whole[first:])
    with pytest.raises(ValueError, match="asked for after"):
        stream.take(0, 1)


def test_the_noise_of_a_huge_global_batch_takes_the_memory_of_one_micro_batch():
    """--batch 2**18 of 32x32 images is 1 GiB of noise; rank 1 of 2 takes its first micro-batch of 64 (after
    skipping the first rank's half) within 100 MiB of what Python and torch take at rest."""
    code = ("import resource, torch\nfrom ambient.train.step import NoiseStream\n"
            "rest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "eps = NoiseStream(5, 2**18, (1, 32, 32), torch.device('cpu')).take(2**17, 64)\n"
            "print(tuple(eps.shape), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rest)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    shape, grown_kib = proc.stdout.rsplit(" ", 1)
    assert shape == "(64, 1, 32, 32)" and int(grown_kib) < 100 << 10, proc.stdout + proc.stderr


def test_training_out_of_memory_is_one_error_naming_the_options_to_lower(tmp_path):
    """1024x1024 images in a process allowed 4 GiB of address space: the first large activation cannot be
    allocated (a real failed allocation, as on a host without the memory)."""
    data = tmp_path / "large"
    assert dataset_tool(["--source", "digits", "--max-images", "2", "--resolution", "1024", "--dest", str(data)]) == 0

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    argv = ["--data", str(data), "--all-clean", "--batch", "2", "--kimg", "0.002", "--run-dir", str(tmp_path / "run"),
            "--no-progress", "--threads", "1", "--precision", "fp32"]
    proc = subprocess.run([sys.executable, "-m", "ambient.train", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=limit)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: out of memory") and "lower --batch-gpu" in proc.stderr, proc.stderr
