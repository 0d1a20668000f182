"""Data set restoration (python -m ambient.restore): the posterior sampler against the closed form on Gaussian data,
the restored set's format, its independence of the batch, bad inputs, a kill, a tiny restore -> fine-tune loop and
the trainer's --init-from."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chi2

import train
from ambient.data import make_dataset
from ambient.data.sources import load_dataset
from ambient.data.tool import main as dataset_tool
from ambient.io import list_checkpoints, load_checkpoint
from ambient.model.generation import SeededNormals
from ambient.model.sampler import edm_time_steps, posterior_sampler
from ambient.restore import calibration_levels, main, restore_batch, write_training_set
from ambient.train import train as run_training

REPO = Path(__file__).resolve().parents[1]
P_FAIL = 1e-9        # each statistical bound below fails a correct sampler with this probability


class GaussianDenoiser:
    """The optimal denoiser of x0 ~ N(mu, s0^2 I): D(x; sigma) = mu + s0^2 / (s0^2 + sigma^2) (x - mu)."""

    def __init__(self, mu: torch.Tensor, s0: float):
        self.mu, self.s0 = mu, s0

    def shrink(self, sigma):
        return self.s0 ** 2 / (self.s0 ** 2 + sigma ** 2)

    def __call__(self, x, sigma, labels=None):
        return self.mu + self.shrink(sigma.reshape(-1, 1, 1, 1)) * (x - self.mu)


def sampler_law(den: GaussianDenoiser, sigma_n: float, steps: int) -> tuple[float, float]:
    """The law of the sampler's output on Gaussian data started at y, in closed form: N(mu + g (y - mu), v I). With D
    affine each step is x - mu -> c (x_hat - mu), x_hat = x + churn noise: the churn adds t_i^2 - t_{i+1}^2 to v, the
    Heun step multiplies g by c and v by c^2 (c from its Euler and corrector slopes (1 - a(t)) / t, a the
    shrinkage)."""
    t = edm_time_steps(steps, min(0.002, sigma_n), sigma_n).tolist()
    gain, var = 1.0, 0.0
    for i in range(steps):
        t_cur, t_next = t[i], t[i + 1]
        t_hat = (2 * t_cur ** 2 - t_next ** 2) ** 0.5
        var += t_hat ** 2 - t_cur ** 2
        slope = (1 - den.shrink(t_hat)) / t_hat                   # d_cur = slope (x_hat - mu)
        c = 1 + (t_next - t_hat) * slope                          # Euler
        if i < steps - 1:
            c = 1 + (t_next - t_hat) * (0.5 * slope + 0.5 * (1 - den.shrink(t_next)) / t_next * c)
        gain, var = gain * c, var * c * c
    return gain, var


def test_sampler_law_approaches_the_posterior():
    """The closed form of the sampler's law (used below) tends to the posterior N(mu + a (y - mu), s^2) as the steps
    grow (deterministic; a = s0^2 / (s0^2 + sigma_n^2), s^2 = a sigma_n^2). Its mean's error (g - a)(y - mu), for a
    typical |y - mu| = sqrt(s0^2 + sigma_n^2), is below 0.12 s at EDM's 18 steps and 0.03 s at 64; its variance is
    below s^2 by under 9% at 18 steps and 3% at 64 over these levels and data scales (the worst measured: 0.109 s
    and 0.030 s, 8.0% and 2.7%, at sigma_n 0.7)."""
    for s0 in (0.3, 0.5, 1.0):
        den = GaussianDenoiser(torch.zeros(()), s0)
        for sigma_n in (0.1, 0.3, 0.7):
            a = den.shrink(sigma_n)
            s2, typical = a * sigma_n ** 2, (s0 ** 2 + sigma_n ** 2) ** 0.5
            (g18, v18), (g64, v64) = sampler_law(den, sigma_n, 18), sampler_law(den, sigma_n, 64)
            assert abs(g18 - a) * typical < 0.12 * s2 ** 0.5 and abs(g64 - a) * typical < 0.031 * s2 ** 0.5
            assert 0.91 < v18 / s2 < v64 / s2 < 1 and v64 / s2 > 0.97, (s0, sigma_n, v18 / s2, v64 / s2)


def test_restored_gaussian_images_have_the_posterior_mean_and_the_sampler_variance():
    """n copies of one noisy image at each of two levels in one batch (each level its own schedule): per pixel their
    mean and spread are the sampler's closed-form law (the posterior's within the bounds above), to chi-square
    bounds at P_FAIL."""
    n, shape, steps, s0 = 600, (1, 5, 7), 18, 0.5
    mu = torch.rand(shape, dtype=torch.float64) - 0.5
    den = GaussianDenoiser(mu, s0)
    levels = (0.3, 0.7)
    ys = [mu + s0 * torch.randn(shape, dtype=torch.float64) + s * torch.randn(shape, dtype=torch.float64)
          for s in levels]
    y = torch.stack([ys[k % 2] for k in range(2 * n)])
    sigma = torch.tensor([levels[k % 2] for k in range(2 * n)], dtype=torch.float64)
    base = int(torch.randint(0, 2**40, ()))
    out = posterior_sampler(den, y, sigma, num_steps=steps,
                            randn_like=SeededNormals(range(base, base + 2 * n), "cpu").randn_like)
    d = mu.numel()
    for k, sigma_n in enumerate(levels):
        samples = out[k::2]
        gain, var = sampler_law(den, sigma_n, steps)
        mean = mu + gain * (ys[k] - mu)
        t_mean = float(n * (samples.mean(0) - mean).square().sum() / var)              # chi^2 with d
        t_var = float((samples - mean).square().sum() / var)                          # chi^2 with n d
        assert t_mean < chi2.isf(P_FAIL, d), (sigma_n, t_mean)
        assert chi2.ppf(P_FAIL, n * d) < t_var < chi2.isf(P_FAIL, n * d), (sigma_n, t_var / (n * d))


def test_an_image_does_not_depend_on_its_batch():
    den = GaussianDenoiser(torch.zeros(1, 6, 6, dtype=torch.float64), 0.4)
    y, sigma = torch.randn(7, 1, 6, 6), torch.rand(7) + 0.05
    seeds = [int(s) for s in torch.randint(0, 2**40, (7,))]
    whole = restore_batch(den, y, sigma, SeededNormals(seeds, "cpu"), steps=5)
    parts = torch.cat([restore_batch(den, y[a:b], sigma[a:b], SeededNormals(seeds[a:b], "cpu"), steps=5)
                       for a, b in ((0, 3), (3, 4), (4, 7))])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, restore_batch(den, y, sigma, SeededNormals(seeds[::-1], "cpu"), steps=5))


def test_calibration_levels():
    assert calibration_levels(np.array([0, 0.2, 0.4, 0.2, 0])).tolist() == [0.2, 0.4]
    many = np.linspace(0.05, 0.5, 101)
    levels = calibration_levels(np.concatenate([[0.0], many]))
    assert len(levels) == 8 and levels[0] == 0.05 and levels[-1] == 0.5


# ------------------------------------------------------------------------------------------------
# The command on a real model: a few steps on noisy 8x8 digits
# ------------------------------------------------------------------------------------------------

FAST = ["--model-channels", "8", "--batch", "16", "--tick-kimg", "0.032", "--snap-kimg", "1", "--kimg", "0.032",
        "--grid-size", "1", "--no-progress", "--cond", "--seed", "3"]


def _train(data, run_dir, *flags):
    cfg = train.parse_args(FAST + ["--data", str(data), "--run-dir", str(run_dir), *flags])
    cfg.sample_steps = 2
    return run_training(cfg)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A noisy set of 45 digits (6 clean, the rest at sigma_n 0.2 and 0.5) and a conditional model trained 2 steps."""
    tmp = tmp_path_factory.mktemp("restore")
    noisy = tmp / "noisy"
    assert dataset_tool(["--source", "digits", "--dest", str(noisy), "--max-images", "45", "--add-noise", "0.2,0.5",
                         "--noisy-fraction", "0.87", "--seed", "1"]) == 0
    return noisy, _train(noisy, tmp / "run", "--lr-rampup-kimg", "0.016", "--ema-rampup-ratio", "none",
                         "--ema-halflife-kimg", "0.1")                                     # its EMA != its net


def _restore(run, data, dest, *flags):
    """python -m ambient.restore with 3 steps and 4 calibration images; data None: the run's own training images."""
    source = [] if data is None else ["--data", str(data)]
    return main([str(run), *source, "--dest", str(dest), "--steps", "3", "--calibration-images", "4", *flags])


def test_restored_set_round_trip_and_batch_independence(digits_run, tmp_path, capsys):
    """The restored set loads as a noisy set with the residual levels it states; clean images and labels are as
    stored; the bytes do not depend on --batch; a zip and a folder hold the same."""
    noisy, run = digits_run
    assert _restore(run, noisy, tmp_path / "a", "--batch", "64") == 0
    assert "0.2 -> " in capsys.readouterr().out
    assert _restore(run, noisy, tmp_path / "b.zip", "--batch", "5") == 0
    src, a, b = load_dataset(str(noisy)), load_dataset(str(tmp_path / "a")), load_dataset(str(tmp_path / "b.zip"))
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())["restoration"]
    residual = dict(map(tuple, meta["residual"]["levels"]))
    assert sorted(residual) == [0.2, 0.5] and meta["residual"]["images"] == "clean images of the set"
    assert meta["source_sigma_n"] == src.sigma_n.tolist()
    expected = np.array([residual[s] if s > 0 else 0.0 for s in src.sigma_n])
    assert np.array_equal(a.sigma_n, expected) and np.array_equal(b.sigma_n, expected)
    assert np.array_equal(a.labels, src.labels) and a.image_shape == src.image_shape
    clean = np.flatnonzero(src.sigma_n == 0)
    assert len(clean) == 6 and all(a.image_names[i].endswith(".png") for i in clean)
    assert torch.equal(a.signals(clean), src.signals(clean))
    restored, inputs = a.signals(), src.signals()
    assert torch.equal(restored, b.signals()) and restored.abs().max() <= 1
    noisy_idx = np.flatnonzero(src.sigma_n > 0)
    assert not torch.equal(restored[noisy_idx], inputs[noisy_idx])
    ds = make_dataset(str(tmp_path / "a"), cond=True)
    assert ds.describe().startswith(f"a: 6 clean + {len(noisy_idx)} noisy (stored sigma_n")


def test_restore_then_fine_tune_rounds(digits_run, tmp_path):
    """Two rounds: each restores the source with the previous round's model and fine-tunes it on the result."""
    noisy, run = digits_run
    dest = tmp_path / "loop"
    assert _restore(run, noisy, dest, "--rounds", "2", "--kimg", "0.016") == 0
    for k in (1, 2):
        model = run if k == 1 else dest / f"run-{k - 1}"
        record = json.loads((dest / f"data-{k}" / "dataset.json").read_text())["restoration"]
        assert Path(record["checkpoint"]).parent == model
        config = json.loads((dest / f"run-{k}" / "config.json").read_text())
        assert config["data"] == str(dest / f"data-{k}") and config["init_from"] == str(model)
        assert config["kimg"] == 0.016 and config["cond"] and config["model_channels"] == 8 and config["seed"] == 3
        assert list((dest / f"run-{k}").glob("checkpoint-*"))


def test_init_from_starts_from_the_weights(digits_run, tmp_path, capsys):
    """A run with --init-from, a learning rate of 1e-12 and an EMA that barely moves ends where its source's net and
    EMA were (a fresh one does not); a source made for another network is refused before the run directory is made."""
    noisy, run = digits_run
    source = load_checkpoint(list_checkpoints(run)[-1])
    assert max(float((w - source["ema"][k]).abs().max()) for k, w in source["net"].items()) > 1e-4
    still = ["--lr", "1e-12", "--ema-rampup-ratio", "none", "--ema-halflife-kimg", "1000"]
    tuned = load_checkpoint(list_checkpoints(_train(noisy, tmp_path / "tuned", "--init-from", str(run), *still))[-1])
    fresh = load_checkpoint(list_checkpoints(_train(noisy, tmp_path / "fresh", *still))[-1])
    for name in ("net", "ema"):
        assert all(torch.allclose(w, source[name][k], rtol=0, atol=1e-6) for k, w in tuned[name].items()), name
        assert not all(torch.allclose(w, source[name][k], rtol=0, atol=1e-6) for k, w in fresh[name].items()), name
    assert train.main(FAST + ["--data", str(noisy), "--run-dir", str(tmp_path / "wide"), "--init-from", str(run),
                              "--model-channels", "16"]) == 1
    assert "made for network" in capsys.readouterr().err and not (tmp_path / "wide").exists()


def _hand_set(folder, shape, sigmas):
    folder.mkdir()
    entries = []
    for i, s in enumerate(sigmas):
        np.save(folder / f"{i}.npy", np.zeros(shape, np.float32))
        entries.append([f"{i}.npy", s])
    (folder / "dataset.json").write_text(json.dumps({"sigma_n": entries, "labels": [[e[0], 1] for e in entries]}))
    return folder


@pytest.mark.parametrize("case, message", [
    ("missing run", "no such checkpoint or run directory"),
    ("clean set", "not a noisy data set"),
    ("clean only", "holds clean images only"),
    ("channels", "holds 3x8x8 (CxHxW) images, but the model makes 1x8x8"),
    ("size", "holds 1x6x6 (CxHxW) images, but the model makes 1x8x8"),
    ("exists", "exists and is not an empty directory"),
    ("missing data", "data set not found"),
])
def test_bad_input_one_clear_error(digits_run, tmp_path, capsys, case, message):
    noisy, run = digits_run
    dest = tmp_path / "out"
    hand = {"clean only": ((8, 8), [0.0, 0.0]), "channels": ((8, 8, 3), [0.2, 0.0]), "size": ((6, 6), [0.2, 0.0])}
    data = {"clean set": "digits", "missing data": tmp_path / "nothing"}.get(case, noisy)
    if case in hand:
        data = _hand_set(tmp_path / "c", *hand[case])
    if case == "exists":
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    assert _restore(tmp_path / "no-run" if case == "missing run" else run, data, dest) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert sorted(set(os.listdir(tmp_path)) - {"c"}) == (["out"] if case == "exists" else [])   # no partial output
    if case == "exists":
        assert os.listdir(dest) == ["keep.txt"]


def test_overwrite_replaces_an_existing_set_whole(digits_run, tmp_path):
    noisy, run = digits_run
    dest = tmp_path / "out"
    assert _restore(run, noisy, dest, "--seed", "1") == 0
    first = load_dataset(str(dest)).signals()
    assert _restore(run, noisy, dest, "--seed", "2") == 1
    assert torch.equal(load_dataset(str(dest)).signals(), first)
    assert _restore(run, noisy, dest, "--seed", "2", "--overwrite") == 0
    assert not torch.equal(load_dataset(str(dest)).signals(), first)
    assert os.listdir(tmp_path) == ["out"]


def test_a_killed_restore_leaves_no_output(digits_run, tmp_path):
    """SIGKILL while the restored set is being written (its hidden partial folder exists): there is no OUT, and the
    same command then writes it whole."""
    noisy, run = digits_run
    dest = tmp_path / "out"
    cmd = [sys.executable, "-m", "ambient.restore", str(run), "--data", str(noisy), "--dest", str(dest),
           "--steps", "40", "--calibration-images", "1", "--batch", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not list(tmp_path.glob(".out.*.tmp")):
            time.sleep(0.01)
        assert proc.poll() is None and time.time() < deadline, "the restore never began writing"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not dest.exists()
    assert _restore(run, noisy, dest) == 0 and len(load_dataset(str(dest))) == 45


def test_without_data_the_run_s_own_training_images_are_restored(tmp_path):
    """A run trained on a synthetic corruption of a subset of a clean set: without --data its own training images
    are restored (6 clean + 20 noisy at 0.3, as the trainer drew them), the same bytes as restoring their copy."""
    run = _train("digits", tmp_path / "run", "--n-clean", "6", "--n-noisy", "20", "--sigma-n", "0.3",
                 "--data-seed", "5", "--xflip")
    assert main([str(run), "--dest", str(tmp_path / "own"), "--steps", "3", "--calibration-images", "4"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["own", "run"]                           # no temporary folder left
    trained = make_dataset("digits", n_clean=6, n_noisy=20, sigma_n=[0.3], data_seed=5)
    write_training_set(run, tmp_path / "copy")
    copy = load_dataset(str(tmp_path / "copy"))
    assert np.array_equal(copy.sigma_n, trained.sigma_n_of) and np.array_equal(copy.labels, [
        trained[i]["label"] for i in range(len(trained))])
    assert torch.equal(copy.signals(), torch.stack([trained[i]["image"] for i in range(len(trained))]))
    assert _restore(run, tmp_path / "copy", tmp_path / "from-copy") == 0
    own, from_copy = load_dataset(str(tmp_path / "own")), load_dataset(str(tmp_path / "from-copy"))
    assert torch.equal(own.signals(), from_copy.signals()) and np.array_equal(own.sigma_n, from_copy.sigma_n)
    record = json.loads((tmp_path / "own" / "dataset.json").read_text())["restoration"]
    assert record["source"] == f"the training images of {run}" and record["source_sigma_n"] == copy.sigma_n.tolist()


def test_a_resumed_loop_finishes_as_an_uninterrupted_one(digits_run, tmp_path, capsys):
    """Round 1, then --rounds 2 --resume on the same folder: round 1 is kept as it was (its data set and run untouched)
    and round 2 gives the bytes of an uninterrupted 2-round loop; a folder made with another --seed is refused."""
    _, run = digits_run
    loop = ["--kimg", "0.016"]
    assert _restore(run, None, tmp_path / "whole", "--rounds", "2", *loop) == 0
    assert _restore(run, None, tmp_path / "cut", "--rounds", "1", *loop) == 0
    first = {p: p.read_bytes() for p in (tmp_path / "cut").rglob("*") if p.is_file()}
    assert _restore(run, None, tmp_path / "cut", "--rounds", "2", "--resume", *loop) == 0
    assert all(p.read_bytes() == b for p, b in first.items() if p.name != "config.json")   # it records --resume
    for name in ("data-0", "data-1", "data-2"):
        whole, cut = (load_dataset(str(tmp_path / d / name)) for d in ("whole", "cut"))
        assert torch.equal(whole.signals(), cut.signals()) and np.array_equal(whole.sigma_n, cut.sigma_n), name
    ckpt = [load_checkpoint(list_checkpoints(tmp_path / d / "run-2")[-1])["ema"] for d in ("whole", "cut")]
    assert all(torch.equal(w, ckpt[1][k]) for k, w in ckpt[0].items())
    capsys.readouterr()
    assert _restore(run, None, tmp_path / "cut", "--rounds", "2", "--resume", "--seed", "1", *loop) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "data-1 was made with other seed" in err and "new --dest" in err, err
    assert _restore(run, None, tmp_path / "cut", "--rounds", "2", *loop) == 1      # without --resume: refused
    assert "exists" in capsys.readouterr().err
