"""Noisy data sets: the format, dataset_tool's three ways to make one, the noise-level estimator,
training from the file against the synthetic mode, and every bad input."""
import json
import math
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import sample
import train
from ambient.common.images import to_signal
from ambient.data import AmbientDataset
from ambient.data.sources import is_noisy_dataset, load_dataset
from ambient.data.tool import estimate_sigma_n
from ambient.data.tool import main as dataset_tool
from ambient.io.checkpoint import list_checkpoints
from ambient.train import train as run_training

REPO = Path(__file__).resolve().parents[1]


def _write_noisy_set(folder, images, sigmas, labels=None):
    """The README's recipe: one float32 .npy per image on the [-1, 1] scale, sigma_n per file in dataset.json."""
    os.makedirs(folder, exist_ok=True)
    entries = []
    for i, (image, sigma) in enumerate(zip(images, sigmas)):
        name = f"img{i:06d}.npy"
        np.save(os.path.join(folder, name), image.astype(np.float32))
        entries.append([name, float(sigma)])
    meta = {"sigma_n": entries, "labels": None if labels is None else [[e[0], int(c)] for e, c in zip(entries, labels)]}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(meta, f)
    return folder


def _zip_folder(folder, path):
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(os.listdir(folder)):
            archive.write(os.path.join(folder, name), name)
    return path


def _random_set(tmp_path, n=13, size=11, channels=3):
    """n noisy RGB images of a non-power-of-two size, values well outside [-1, 1], random levels."""
    rng = np.random.default_rng()
    sigmas = rng.uniform(0.05, 1.5, n)
    sigmas[[2, 7]] = 0.0
    images = [rng.uniform(-1, 1, (size, size, channels)) + s * rng.standard_normal((size, size, channels))
              for s in sigmas]
    labels = rng.integers(0, 4, n)
    return _write_noisy_set(tmp_path / "set", images, sigmas, labels), images, sigmas, labels


# ------------------------------------------------------------------------------------------------
# The format
# ------------------------------------------------------------------------------------------------

def test_hand_written_noisy_set_reads_back_exactly_from_folder_and_zip(tmp_path):
    folder, images, sigmas, labels = _random_set(tmp_path)
    for path in (folder, _zip_folder(folder, tmp_path / "set.zip")):
        assert is_noisy_dataset(str(path))
        base = load_dataset(str(path))
        assert (len(base), base.image_shape, base.label_dim) == (13, (3, 11, 11), int(labels.max()) + 1)
        np.testing.assert_array_equal(base.sigma_n, sigmas)
        ds = AmbientDataset(base, xflip=False)
        assert (ds.n_clean, ds.n_noisy) == (2, 11) and "stored sigma_n" in ds.describe()
        for i in range(13):
            item = ds[i]
            expected = torch.from_numpy(images[i].astype(np.float32).transpose(2, 0, 1))
            assert item["image"].dtype == torch.float32 and torch.equal(item["image"], expected)
            assert item["sigma_n"] == sigmas[i] and item["label"] == labels[i] and item["index"] == i
        assert ds[0]["image"].abs().max() > 1   # never clipped
    assert not is_noisy_dataset("digits") and not is_noisy_dataset(str(tmp_path / "nowhere"))


def test_clean_png_beside_arrays_is_on_the_same_scale(tmp_path):
    rng = np.random.default_rng()
    folder = _write_noisy_set(tmp_path / "set", [rng.standard_normal((9, 9))], [0.3])
    pixels = rng.integers(0, 256, (9, 9), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "clean.png")
    meta = json.loads((folder / "dataset.json").read_text())
    meta["sigma_n"].append(["clean.png", 0])
    (folder / "dataset.json").write_text(json.dumps(meta))
    base = load_dataset(str(folder))
    image, label = base[0]             # "clean.png" sorts before "img000000.npy"
    assert image.dtype == torch.float32 and label == -1
    torch.testing.assert_close(image[0].double(), torch.from_numpy(pixels / 127.5 - 1), rtol=0, atol=1e-7)
    assert float(image.min()) >= -1 and float(image.max()) <= 1


def test_n_clean_keeps_a_seeded_subset_of_the_stored_clean_images(tmp_path):
    rng = np.random.default_rng()
    sigmas = np.full(29, 0.25)
    sigmas[rng.choice(29, 7 + rng.integers(5), replace=False)] = 0.0
    folder = _write_noisy_set(tmp_path / "set", [rng.uniform(-1, 1, (6, 6))] * 29, sigmas)   # plausible pixels
    base = load_dataset(str(folder))
    n_clean = int((sigmas == 0).sum())
    small, large = AmbientDataset(base, n_clean=3, seed=4), AmbientDataset(base, n_clean=n_clean - 1, seed=4)
    assert (small.n_clean, small.n_noisy) == (3, 29 - n_clean)
    assert set(small.indices[small.is_clean]) <= set(large.indices[large.is_clean])
    assert set(small.indices[~small.is_clean]) == set(np.flatnonzero(sigmas > 0))
    with pytest.raises(ValueError, match=f"more than the {n_clean} clean images"):
        AmbientDataset(base, n_clean=n_clean + 1)


@pytest.mark.parametrize("kwargs", [dict(n_noisy=3), dict(sigma_n=0.2), dict(sigma_share=[1.0]),
                                    dict(p_clean=0.5), dict(keep_fraction=0.5)])
def test_synthetic_options_are_refused_on_a_noisy_set(tmp_path, kwargs):
    folder, *_ = _random_set(tmp_path)
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))}.*noisy data set"):
        AmbientDataset(load_dataset(str(folder)), **kwargs)


# ------------------------------------------------------------------------------------------------
# dataset_tool: --add-noise, --sigma-n / --sigma-n-from, --estimate-sigma
# ------------------------------------------------------------------------------------------------

def test_add_noise_stores_exactly_the_synthetic_images(tmp_path, capsys):
    seed = int(np.random.default_rng().integers(2**32))
    dest = tmp_path / "noisy.zip"   # 0.8 * 151 = 120.8 -> 121 noisy: 30 at 0.3, 91 at 0.7
    assert dataset_tool(["--source", "digits", "--dest", str(dest), "--max-images", "151", "--add-noise", "0.3,0.7",
                         "--sigma-share", "0.25,0.75", "--noisy-fraction", "0.8", "--seed", str(seed)]) == 0
    assert "30 clean + 121 noisy (sigma_n 0.3: 30, 0.7: 91)" in capsys.readouterr().out
    stored = AmbientDataset(load_dataset(str(dest)), seed=seed)
    synthetic = AmbientDataset(load_dataset("digits", max_size=151), n_clean=30, sigma_n=[0.3, 0.7],
                               sigma_share=[0.25, 0.75], seed=seed)
    np.testing.assert_array_equal(stored.sigma_n_of, synthetic.sigma_n_of)
    for i in range(151):
        a, b = stored[i], synthetic[i]
        assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]
    with zipfile.ZipFile(dest) as archive:
        names = [n for n in archive.namelist() if n != "dataset.json"]
        meta = json.loads(archive.read("dataset.json"))
    assert sum(n.endswith(".npy") for n in names) == 121 and sum(n.endswith(".png") for n in names) == 30
    assert [e[0] for e in meta["sigma_n"]] == [e[0] for e in meta["labels"]] == sorted(names)
    images = torch.stack([stored[i]["image"] for i in range(151)])
    assert images.max() > 1 and images.min() < -1


def test_known_levels_from_16_bit_png_tiff_and_npy(tmp_path, capsys):
    rng = np.random.default_rng()
    src = tmp_path / "scans"
    (src / "b").mkdir(parents=True)
    gray16 = rng.integers(0, 65536, (10, 10), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (10, 10, 3), dtype=np.uint16)
    floats = (rng.uniform(-1, 1, (10, 10, 3)) + 0.4 * rng.standard_normal((10, 10, 3))).astype(np.float32)
    Image.fromarray(gray16).save(src / "a.png")
    tifffile.imwrite(src / "b" / "c.tif", rgb16)
    np.save(src / "b" / "d.npy", floats)
    clean8 = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(clean8).save(src / "e.png")
    (tmp_path / "levels.csv").write_text("file,sigma_n\na.png,0.11\nb/c.tif,0.25\nb/d.npy,0.5\ne.png,0\n")
    (tmp_path / "levels.json").write_text(json.dumps({"a.png": 0.11, "b/c.tif": 0.25, "b/d.npy": 0.5, "e.png": 0}))
    for table in ("levels.csv", "levels.json"):
        dest = tmp_path / f"{table}.zip"
        # Mixed channels are refused: the grayscale 16-bit PNG on its own, then the three RGB images.
        assert dataset_tool(["--source", str(src), "--dest", str(dest), "--sigma-n-from", str(tmp_path / table)]) == 1
        assert "differ in size or channels" in capsys.readouterr().err and not dest.exists()
    os.remove(src / "a.png")
    (tmp_path / "levels.csv").write_text("b/c.tif,0.25\nb/d.npy,0.5\ne.png,0\n")   # no header this time
    (tmp_path / "levels.json").write_text(json.dumps({"b/c.tif": 0.25, "b/d.npy": 0.5, "e.png": 0}))
    for table in ("levels.csv", "levels.json"):
        dest = tmp_path / f"{table}.zip"
        assert dataset_tool(["--source", str(src), "--dest", str(dest), "--sigma-n-from", str(tmp_path / table)]) == 0
        base = load_dataset(str(dest))
        np.testing.assert_array_equal(base.sigma_n, [0.25, 0.5, 0.0])
        for i, array in ((0, rgb16 / 32767.5 - 1), (1, floats)):
            np.testing.assert_array_equal(base[i][0].numpy(), array.astype(np.float32).transpose(2, 0, 1))
        clean = to_signal(torch.from_numpy(clean8), torch.float64).float().numpy().transpose(2, 0, 1)
        np.testing.assert_array_equal(base[2][0].numpy(), clean)
        with zipfile.ZipFile(dest) as archive:   # the clean 8-bit image stays a PNG
            assert sorted(archive.namelist()) == ["00000/img00000000.npy", "00000/img00000001.npy",
                                                  "00000/img00000002.png", "dataset.json"]
    one = tmp_path / "one"
    assert dataset_tool(["--source", str(src / "b"), "--dest", str(one), "--sigma-n", "0.4"]) == 0
    np.testing.assert_array_equal(load_dataset(str(one)).sigma_n, [0.4, 0.4])
    gray = tmp_path / "gray16"
    gray.mkdir()
    Image.fromarray(gray16).save(gray / "a.png")
    assert dataset_tool(["--source", str(gray), "--dest", str(tmp_path / "g"), "--sigma-n", "0.1"]) == 0
    np.testing.assert_array_equal(load_dataset(str(tmp_path / "g"))[0][0][0].numpy(),
                                  (gray16 / 32767.5 - 1).astype(np.float32))


def test_noisy_8_bit_images_need_allow_quantized(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        Image.fromarray(np.full((7, 7), 40 * k, np.uint8)).save(src / f"{k}.png")
    dest = tmp_path / "out"
    assert dataset_tool(["--source", str(src), "--dest", str(dest), "--sigma-n", "0.1"]) == 1
    err = capsys.readouterr().err
    assert "8-bit" in err and "--allow-quantized" in err and not dest.exists()
    assert dataset_tool(["--source", str(src), "--dest", str(dest), "--sigma-n", "0.1", "--allow-quantized"]) == 0
    assert "warning: 3 noisy image(s) came from 8-bit files" in capsys.readouterr().err
    base = load_dataset(str(dest))
    np.testing.assert_array_equal(base[2][0].numpy(), np.full((1, 7, 7), 80 / 127.5 - 1, np.float32))


@pytest.fixture(scope="module")
def mnist_levels(tmp_path_factory):
    """400 MNIST images, 100 at each of four levels (not the documented ones), as a noisy set."""
    dest = tmp_path_factory.mktemp("est") / "m.zip"
    assert dataset_tool(["--source", "mnist", "--dest", str(dest), "--max-images", "400",
                         "--add-noise", "0.07,0.15,0.3,0.6", "--seed", "11"]) == 0
    return dest


def test_estimator_recovers_the_noise_level(mnist_levels):
    """Bias within 0.01 + 10% of sigma_n (the wavelet MAD estimator on 32x32 MNIST: the digits' edges
    leak into the finest wavelet band, +0.009 at 0.05 down to -0.003 at 0.4, docs/noisy-data.md) and a
    spread under 15% of sigma_n (7% from the noise alone); an estimator on the wrong scale ([0, 1]
    instead of [-1, 1]: half), a plain standard deviation of the image or an estimate without the
    0.6745 Gaussian MAD factor all fail."""
    base = load_dataset(str(mnist_levels))
    estimates = np.array([estimate_sigma_n(base[i][0].numpy().transpose(1, 2, 0)) for i in range(len(base))])
    for level in (0.07, 0.15, 0.3, 0.6):
        est = estimates[base.sigma_n == level]
        assert len(est) == 100
        assert abs(est.mean() - level) < 0.01 + 0.1 * level, (level, est.mean())
        assert est.std() < 0.15 * level, (level, est.std())
    # Closed form: on pure Gaussian noise (no image) the estimator is unbiased; 5 sd of the MAD estimate.
    rng = np.random.default_rng()
    sigma = float(rng.uniform(0.1, 1.0))
    noise = sigma * rng.standard_normal((62, 62, 3))
    n_coefficients = 3 * 32 * 32   # finest diagonal wavelet coefficients of 3 channels of 62x62
    assert abs(estimate_sigma_n(noise) - sigma) < 5 * 1.166 * sigma / math.sqrt(n_coefficients)


def test_estimate_sigma_report_and_written_set(mnist_levels, tmp_path, capsys):
    assert dataset_tool(["--source", str(mnist_levels), "--estimate-sigma", "--max-images", "37"]) == 0
    out = capsys.readouterr().out
    assert "estimated sigma_n of 37 images" in out and "bias/sigma_n" in out
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["0.07", "0.15", "0.3", "0.6"]
    assert not list(tmp_path.iterdir())                         # report only: nothing written
    dest = tmp_path / "est.zip"
    assert dataset_tool(["--source", str(mnist_levels), "--dest", str(dest), "--estimate-sigma",
                         "--max-images", "37"]) == 0
    written, source = load_dataset(str(dest)), load_dataset(str(mnist_levels), max_size=37)
    np.testing.assert_allclose(written.sigma_n, [estimate_sigma_n(source[i][0].numpy().transpose(1, 2, 0))
                                                 for i in range(37)])
    assert torch.equal(written[5][0], source[5][0]) and written[5][1] == source[5][1]
    # Noiseless 8-bit digits estimate to exactly 0: clean, kept as PNGs.
    assert dataset_tool(["--source", "mnist", "--dest", str(tmp_path / "clean"), "--max-images", "23"]) == 0
    assert dataset_tool(["--source", str(tmp_path / "clean"), "--dest", str(tmp_path / "est"), "--estimate-sigma"]) == 0
    clean = load_dataset(str(tmp_path / "est"))
    assert clean.sigma_n.tolist() == [0.0] * 23 and all(n.endswith(".png") for n in clean.image_names)


# ------------------------------------------------------------------------------------------------
# Training from the file = the synthetic mode; sample.py on the result
# ------------------------------------------------------------------------------------------------

FAST = ["--model-channels", "8", "--batch", "16", "--tick-kimg", "0.016", "--snap-kimg", "1", "--kimg", "0.048",
        "--grid-size", "1", "--no-progress", "--lr-rampup-kimg", "0.05", "--ema-halflife-kimg", "0.05",
        "--xflip", "--max-shift", "2", "--cond", "--data-seed", "5", "--seed", "3"]


def test_training_from_the_file_gives_the_synthetic_losses(tmp_path):
    """3 steps on 200 digits: identical per-step losses, so the stored values are neither clipped
    nor quantised (8-bit would change every noisy pixel by up to 1/255)."""
    clean, noisy = tmp_path / "clean.zip", tmp_path / "noisy.zip"
    assert dataset_tool(["--source", "digits", "--dest", str(clean), "--max-images", "200"]) == 0
    assert dataset_tool(["--source", "digits", "--dest", str(noisy), "--max-images", "200", "--add-noise", "0.2",
                         "--noisy-fraction", "0.9", "--seed", "5"]) == 0
    curves = {}
    for name, args in (("synthetic", ["--data", str(clean), "--n-clean", "20", "--sigma-n", "0.2"]),
                       ("file", ["--data", str(noisy)])):
        cfg = train.parse_args(FAST + args + ["--run-dir", str(tmp_path / name)])
        cfg.sample_steps = 2
        run_training(cfg)
        curves[name] = [json.loads(line)["loss"] for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    assert len(curves["file"]) == 3
    np.testing.assert_allclose(curves["file"], curves["synthetic"], rtol=1e-6, atol=0)
    meta = json.loads((list_checkpoints(tmp_path / "file")[-1] / "meta.json").read_text())
    assert meta["dataset"].startswith("noisy: 20 clean + 180 noisy (stored sigma_n 0.2: 180)")
    out = tmp_path / "s.npz"
    assert sample.main(["--ckpt", str(tmp_path / "file"), "--seeds", "0-2", "--steps", "3", "--out", str(out)]) == 0
    assert np.load(out)["images"].shape == (3, 8, 8, 1)


@pytest.mark.parametrize("flags", [["--n-noisy", "5"], ["--sigma-n", "0.2"], ["--p-clean", "0.5"],
                                   ["--clean-fraction", "0.5"], ["--all-clean"], ["--sigma-share", "1"],
                                   ["--keep-fraction", "0.5", "--p-clean", "0.2"]])
def test_train_refuses_synthetic_options_on_a_noisy_set(tmp_path, capsys, flags):
    folder, *_ = _random_set(tmp_path)
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--data", str(folder), *flags])
    err = capsys.readouterr().err
    assert e.value.code == 2 and flags[0] in err and "is a noisy data set" in err
    cfg = train.parse_args(["--data", str(folder), "--n-clean", "1"])
    assert (cfg.n_clean, cfg.clean_fraction, cfg.sigma_n) == (1, None, None)


# ------------------------------------------------------------------------------------------------
# Bad input: one clear error, nothing written
# ------------------------------------------------------------------------------------------------

def _edit_meta(folder, edit):
    meta = json.loads((folder / "dataset.json").read_text())
    edit(meta)
    (folder / "dataset.json").write_text(json.dumps(meta))   # allow_nan: NaN and Infinity as JSON extensions


def _set_sigma(k, value):
    return lambda meta: meta["sigma_n"][k].__setitem__(1, value)


def _save(name, array):
    return lambda folder: np.save(folder / name, array)


@pytest.mark.parametrize("break_it, message", [
    (lambda f: _edit_meta(f, lambda m: m["sigma_n"].pop(4)), r"no sigma_n for 1 image.*img000004\.npy"),
    (lambda f: _edit_meta(f, _set_sigma(3, -0.1)), r"sigma_n of 'img000003\.npy' must be a finite number >= 0"),
    (lambda f: _edit_meta(f, _set_sigma(3, float("nan"))), r"img000003\.npy.*finite"),
    (lambda f: _edit_meta(f, _set_sigma(3, float("inf"))), r"img000003\.npy.*finite"),
    (lambda f: _edit_meta(f, _set_sigma(3, "0.2")), r"img000003\.npy.*finite"),
    (lambda f: _edit_meta(f, lambda m: m["sigma_n"].append(["ghost.npy", 0.1])), r"ghost\.npy"),
    (lambda f: _edit_meta(f, lambda m: m.pop("sigma_n")), r"img000000\.npy is a float array.*no sigma_n"),
    (lambda f: _save("img000005.npy", np.where(np.eye(11)[:, :, None], np.nan, 0.0).repeat(3, 2))(f),
     r"img000005\.npy has 33 NaN or infinite"),
    (lambda f: _save("img000005.npy", np.full((11, 11, 3), np.inf, np.float32))(f), r"img000005\.npy has 363 NaN"),
    (lambda f: _save("img000005.npy", np.zeros((11, 11, 3), np.int16))(f), r"img000005\.npy holds int16"),
    (lambda f: _save("img000005.npy", np.zeros((3, 11, 11), np.float32))(f), r"img000005\.npy has shape \(3, 11, 11\)"),
    (lambda f: _save("img000005.npy", np.zeros((11, 11, 4), np.float32))(f), r"img000005\.npy has shape"),
    (lambda f: _save("img000005.npy", np.zeros((12, 12, 3), np.float32))(f), r"img000005\.npy is 3x12x12.*3x11x11"),
    (lambda f: (f / "img000005.npy").write_bytes(b"\x93NUMPY truncated"), r"img000005\.npy"),
    (lambda f: (Image.fromarray(np.zeros((11, 11, 3), np.uint8)).save(f / "img000005.png"),
                os.remove(f / "img000005.npy"),
                _edit_meta(f, lambda m: [m[key][5].__setitem__(0, "img000005.png") for key in ("sigma_n", "labels")])),
     r"img000005\.png has sigma_n .* 8-bit image.*quantised"),
])
def test_bad_noisy_set_one_clear_error(tmp_path, break_it, message):
    folder, *_ = _random_set(tmp_path)
    break_it(folder)
    with pytest.raises(ValueError, match=message):
        load_dataset(str(folder))
    with pytest.raises(ValueError, match=message):
        load_dataset(str(_zip_folder(folder, tmp_path / "set.zip")))


def test_bad_noisy_set_stops_train_py_before_any_output(tmp_path):
    folder, *_ = _random_set(tmp_path)
    np.save(folder / "img000006.npy", np.full((11, 11, 3), np.nan, np.float32))
    proc = subprocess.run([sys.executable, "train.py", "--data", str(folder), "--run-dir", str(tmp_path / "run")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "img000006.npy has 363 NaN" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("entry", ["../evil.npy", "/abs/evil.npy", "a/../../evil.npy", "C:/evil.npy"])
def test_zip_entry_escaping_the_folder_is_refused(tmp_path, entry):
    folder, *_ = _random_set(tmp_path)
    path = _zip_folder(folder, tmp_path / "set.zip")
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(zipfile.ZipInfo(entry), b"")
    with pytest.raises(ValueError, match=f"zip entry '{entry}' escapes"):
        load_dataset(str(path))


@pytest.mark.parametrize("table, message", [
    ("a.npy,0.1\n", r"no sigma_n for 1 image.*b\.npy"),
    ("a.npy,0.1\nb.npy,0.2\nc.npy,0.3\n", r"not images of .*first 'c\.npy'"),
    ("a.npy,0.1\nb.npy,-0.2\n", r"sigma_n of 'b\.npy' must be a finite number >= 0"),
    ("a.npy,0.1\nb.npy,nan\n", r"b\.npy.*finite"),
    ("a.npy,0.1\nb.npy,x\n", r"line 2: sigma_n 'x' of 'b\.npy' is not a number"),
    ("a.npy,0.1\na.npy,0.2\nb.npy,0.1\n", "twice"),
])
def test_bad_sigma_table_one_clear_error(tmp_path, capsys, table, message):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.npy", "b.npy"):
        np.save(src / name, np.zeros((5, 5), np.float32))
    (tmp_path / "t.csv").write_text(table)
    assert dataset_tool(["--source", str(src), "--dest", str(tmp_path / "out.zip"), "--sigma-n-from",
                         str(tmp_path / "t.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dataset_tool: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert sorted(os.listdir(tmp_path)) == ["src", "t.csv"]


@pytest.mark.parametrize("args, message", [
    (["--source", "digits", "--dest", "X", "--noisy-fraction", "0.5"], "--noisy-fraction does not apply"),
    (["--source", "digits", "--dest", "X", "--add-noise", "0.2", "--resolution", "4"], "shrinks and correlates"),
    (["--source", "digits", "--dest", "X", "--add-noise", "0.2", "--sigma-n", "0.1"], "not allowed with"),
    (["--source", "digits", "--add-noise", "0.2"], "--dest"),
    (["--source", "digits", "--dest", "X", "--add-noise", "-0.2"], ">= 0"),
])
def test_tool_flag_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        dataset_tool([a.replace("X", str(tmp_path / "x")) for a in args])
    assert e.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_tool_refuses_noisy_sources_where_they_do_not_belong(tmp_path, capsys):
    folder, *_ = _random_set(tmp_path)
    assert dataset_tool(["--source", str(folder), "--dest", str(tmp_path / "a"), "--add-noise", "0.1"]) == 1
    assert "already a noisy data set" in capsys.readouterr().err
    assert dataset_tool(["--source", str(folder), "--dest", str(tmp_path / "b")]) == 1
    assert "clip and quantise" in capsys.readouterr().err
    assert dataset_tool(["--source", "mnist", "--dest", str(tmp_path / "c"), "--sigma-n", "0.1"]) == 1
    assert "--add-noise" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["set"]


def _png_16_bit_rgb(path, values):
    """A 16-bit RGB PNG written by hand (Pillow cannot write one): IHDR, one zlib IDAT, IEND."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("name, message", [("a.png", "16-bit colour PNG, which Pillow reads as 8-bit"),
                                           ("a.jpg", "lossy-compressed")])
def test_sources_that_lose_noise_are_refused(tmp_path, capsys, name, message):
    src = tmp_path / "src"
    src.mkdir()
    values = np.random.default_rng().integers(0, 65536, (6, 6, 3))
    if name.endswith(".png"):
        _png_16_bit_rgb(src / name, values)
        assert Image.open(src / name).mode == "RGB"     # what Pillow would silently make of it
    else:
        Image.fromarray((values >> 8).astype(np.uint8)).save(src / name)
    assert dataset_tool(["--source", str(src), "--dest", str(tmp_path / "out"), "--sigma-n", "0.1"]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()
