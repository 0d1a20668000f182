"""Write an EDM-format data set (PNGs named `00000/img00000000.png` plus `dataset.json`), or a noisy one.

    python -m ambient.dataset_tool --source mnist --dest data/mnist.zip
    python -m ambient.dataset_tool --source photos/ --dest data/photos64 --resolution 64 --labels-from-folders
    python -m ambient.dataset_tool --source mnist --dest noisy.zip --add-noise 0.2 --noisy-fraction 0.9 --seed 0
    python -m ambient.dataset_tool --source scans/ --dest scans.zip --sigma-n-from sigmas.csv
    python -m ambient.dataset_tool --source scans/ --dest scans.zip --estimate-sigma
    python -m ambient.dataset_tool --source scans.zip --estimate-sigma        # only report the estimates

The source is "mnist" / "mnist28" / "digits" (embedded), a folder or a .zip of images. Labels come from the embedded
set, the source's `dataset.json`, or (with --labels-from-folders) from the names of the top-level class
folders, numbered in sorted order; without labels `dataset.json` says `"labels": null`. With
--resolution each image is center-cropped to a square and resized with Lanczos. --max-images keeps the
same fixed pseudo-random subset as `load_dataset(..., max_size=N)`. The output is written next to the
destination and renamed into place at the end, so a failure leaves nothing behind; an existing
non-empty destination is never overwritten.

A noisy data set stores each noisy image as a float32 `.npy` on the [-1, 1] scale (never clipped or
quantised) and each clean one as a PNG, and `dataset.json` gives every file its sigma_n
(`"sigma_n": [["00000/img00000000.npy", 0.2], ...]`, 0 for a clean image). Three ways to make one:

* --add-noise SIGMA[,SIGMA...]: a noisy copy of a clean source. The noisy images, their levels and
  their noise are exactly those of `AmbientDataset(base, n_noisy=round(F * N), sigma_n=..., seed=S)`
  (--noisy-fraction F, --seed S), so training on the copy is training with train.py's synthetic
  corruption of the source with --n-clean N - round(F * N) --data-seed S.
* --sigma-n X (every image) or --sigma-n-from FILE (CSV `file,sigma_n` rows or a JSON object
  {"file": sigma_n}, one entry per source image): the user's noisy images (.npy on the [-1, 1] scale,
  16-bit PNG / TIFF read as 0..65535 -> [-1, 1]) with known noise levels. A noisy 8-bit image is
  clipped and quantised: refused unless --allow-quantized (then converted with a warning).
* --estimate-sigma: each image's level estimated by scikit-image's wavelet estimator
  (`skimage.restoration.estimate_sigma`), with a summary printed; with a noisy data set as source it
  also prints the estimates' bias and spread against its stored sigma_n. Without --dest nothing is
  written.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ambient.common import cli
from ambient.common.atomic import atomic_path
from ambient.common.images import to_signal

from .corruption import AmbientDataset, check_split_options
from .sources import (
    LABELS_FILE,
    NAMED_DATASETS,
    ImageSource,
    check_regular_file,
    image_shape_of,
    is_array,
    load_dataset,
    parse_json,
    sigma_n_value,
    subset_indices,
)

# (pixels (H, W, C): uint8, written as a PNG, or float32 on the [-1, 1] scale, written as a .npy;
#  label or -1; where the image came from; sigma_n, None for a data set of clean images)
_Item = tuple[np.ndarray, int, str, float | None]

# Read by the noisy modes beside the data set's own formats (16-bit TIFF).
_TIFF_EXTENSIONS = (".tif", ".tiff")
# Lossy compression removes part of the noise: useless for a noisy image or an estimate of its noise.
_LOSSY_EXTENSIONS = (".jpg", ".jpeg", ".webp")


def _named_items(name: str, max_images: int | None) -> tuple[int, Iterator[_Item], bool, list[str] | None]:
    """Items of an embedded data set."""
    base = load_dataset(name, max_size=max_images)

    def items() -> Iterator[_Item]:
        for i in range(len(base)):
            image, label = base[i]
            yield image.numpy().transpose(1, 2, 0), label, f"{name}[{i}]", None

    return len(base), items(), base.has_labels, None


def _source_labels(source: ImageSource, labels_from_folders: bool) -> tuple[np.ndarray | None, list[str] | None]:
    """Labels of `source.image_names` (from class folders, or its dataset.json) and the class names."""
    names = source.image_names
    if not names:
        raise ValueError(f"no images found in {source.path}")
    if not labels_from_folders:
        return source.read_labels(), None
    at_root = [n for n in names if "/" not in n]
    if at_root:
        raise ValueError(f"--labels-from-folders needs every image inside a class folder, but "
                         f"{source.where(at_root[0])} is at the top level")
    class_names = sorted({n.split("/", 1)[0] for n in names})
    class_of = {c: k for k, c in enumerate(class_names)}
    return np.array([class_of[n.split("/", 1)[0]] for n in names], dtype=np.int64), class_names


def _folder_items(path: str, max_images: int | None,
                  labels_from_folders: bool) -> tuple[int, Iterator[_Item], bool, list[str] | None]:
    """Items of a folder or zip of images, with labels from dataset.json or class folders."""
    source = ImageSource(path)
    labels, class_names = _source_labels(source, labels_from_folders)
    if source.read_noise_levels() is not None:
        raise ValueError(f"{source.path} is a noisy data set (its {LABELS_FILE} gives sigma_n); converting it "
                         "to PNGs would clip and quantise its noise")
    names = source.image_names
    keep = subset_indices(len(names), max_images)

    def items() -> Iterator[_Item]:
        for k in keep:
            label = -1 if labels is None else int(labels[k])
            yield source.read_array(names[k]), label, source.where(names[k]), None

    return len(keep), items(), labels is not None, class_names


def _center_crop_resize(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Center-crop (H, W, C) pixels to a square and resize it to resolution x resolution (Lanczos)."""
    h, w, c = pixels.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    pixels = pixels[top:top + side, left:left + side]
    if side == resolution:
        return pixels
    image = Image.fromarray(pixels[:, :, 0] if c == 1 else pixels)
    resized = np.asarray(image.resize((resolution, resolution), Image.Resampling.LANCZOS))
    return resized[:, :, None] if resized.ndim == 2 else resized


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(values, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def _is_zip(dest: str) -> bool:
    """Whether `dest` names a .zip archive rather than a folder."""
    return dest.lower().endswith(".zip")


@contextlib.contextmanager
def _atomic_output(dest: str) -> Iterator[Callable[[str, bytes], None]]:
    """`write(name, data)` into a hidden partial folder / zip beside `dest`, renamed to `dest` when the
    block ends and removed when it raises: a failure leaves nothing behind."""
    with atomic_path(os.path.normpath(dest)) as partial:
        if _is_zip(dest):
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
                yield archive.writestr
        else:
            partial.mkdir()

            def write(name: str, data: bytes) -> None:
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                (partial / name).write_bytes(data)

            yield write


def write_dataset(dest: str, items: Iterator[_Item], *, has_labels: bool, class_names: list[str] | None = None,
                  resolution: int | None = None, extra: dict[str, object] | None = None) -> int:
    """Write `items` as an EDM-format data set at `dest` (atomically); returns the number of images.

    uint8 items become PNGs, float32 ones `.npy`; `dataset.json` gets a "sigma_n" table when the items
    carry sigma_n, and the entries of `extra` (how the set was made). Non-square images (without `resolution`)
    and mixed shapes are refused.
    """
    with _atomic_output(dest) as write:
        labels, sigmas, first = [], [], None
        for index, (pixels, label, where, sigma) in enumerate(items):
            if resolution is not None:
                pixels = _center_crop_resize(pixels, resolution)
            elif pixels.shape[0] != pixels.shape[1]:
                raise ValueError(f"{where} is {pixels.shape[1]}x{pixels.shape[0]} (WxH), not square; "
                                 "pass --resolution to center-crop and resize it")
            if first is None:
                first = (pixels.shape, where)
            elif pixels.shape != first[0]:
                raise ValueError(f"images differ in size or channels: {where} is {_hwc(pixels.shape)} but "
                                 f"{first[1]} is {_hwc(first[0])}; pass --resolution to resize them")
            stem = f"{index // 1000:05d}/img{index:08d}"
            if pixels.dtype == np.uint8:
                fname = f"{stem}.png"
                write(fname, _png_bytes(pixels))
            else:
                fname = f"{stem}.npy"
                write(fname, _npy_bytes(pixels))
            labels.append([fname, label])
            sigmas.append([fname, sigma])
        if first is None:
            raise ValueError("no images to write")
        metadata: dict[str, object] = {"labels": labels if has_labels else None}
        if sigmas[0][1] is not None:
            metadata["sigma_n"] = sigmas
        if class_names is not None:
            metadata["class_names"] = class_names
        metadata.update(extra or {})
        write(LABELS_FILE, json.dumps(metadata).encode())
    return len(labels)


def convert_dataset(source: str, dest: str, *, resolution: int | None = None,
                    max_images: int | None = None, labels_from_folders: bool = False) -> int:
    """Write `source` as an EDM-format data set to `dest` (a folder, or a .zip when it ends with .zip).

    Returns the number of images written. Raises ValueError / FileNotFoundError / FileExistsError with
    one clear message on bad input; nothing is left at `dest` then.
    """
    if resolution is not None and resolution < 1:
        raise ValueError(f"--resolution must be a positive integer, got {resolution}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"--max-images must be a positive integer, got {max_images}")
    cli.check_destination(dest, option="--dest", archive=_is_zip(dest))
    if source in NAMED_DATASETS:
        if labels_from_folders:
            raise ValueError(f"--labels-from-folders applies to folder sources; {source!r} has its own "
                             "labels")
        _, items, has_labels, class_names = _named_items(source, max_images)
    else:
        _, items, has_labels, class_names = _folder_items(source, max_images, labels_from_folders)
    return write_dataset(dest, items, has_labels=has_labels, class_names=class_names, resolution=resolution)


def add_noise(source: str, dest: str, sigma_n: Sequence[float], *, sigma_share: Sequence[float] | None = None,
              noisy_fraction: float = 1.0, seed: int = 0, max_images: int | None = None) -> AmbientDataset:
    """Write a noisy copy of the clean data set `source` to `dest`; returns the AmbientDataset it copies.

    Which images are noisy, their levels and their noise are AmbientDataset's for (seed, n_noisy =
    round(noisy_fraction * N)): the copy reproduces train.py's synthetic corruption exactly.
    """
    if not 0.0 <= noisy_fraction <= 1.0:
        raise ValueError(f"--noisy-fraction must be in [0, 1], got {noisy_fraction}")
    cli.check_destination(dest, option="--dest", archive=_is_zip(dest))
    base = load_dataset(source, max_size=max_images)
    if base.sigma_n is not None:
        raise ValueError(f"{source} is already a noisy data set; --add-noise needs a source of clean images")
    ds = AmbientDataset(base, n_noisy=round(noisy_fraction * len(base)), sigma_n=list(sigma_n),
                        sigma_share=sigma_share, seed=seed)
    assert np.array_equal(ds.indices, np.arange(len(base)))   # every image, in base order
    write_training_images(ds, dest, source)
    return ds


def write_training_images(ds: AmbientDataset, dest: str, source: str, extra: dict[str, object] | None = None) -> int:
    """Write the images `ds` trains on as a noisy data set at `dest` (atomically), in its order; returns their number.

    Clean images as the base stores them (8 bits stay 8 bits), noisy ones as the trainer sees them (float32
    x0 + sigma_n z, or as stored), each with its sigma_n (a stored set's sigma_tn windows are not written); no
    augmentation. `source` names the base in error messages.
    """
    if ds.xflip or ds.max_shift:
        raise ValueError("the images to write must not be augmented (xflip and max_shift off)")

    def items() -> Iterator[_Item]:
        for i in range(len(ds)):
            sigma, index = float(ds.sigma_n_of[i]), int(ds.indices[i])
            if sigma == 0:
                pixels, label = ds.base[index]
            else:
                item = ds[i]
                pixels, label = item["image"], item["label"]
            yield pixels.numpy().transpose(1, 2, 0), label, f"{source}[{index}]", sigma

    return write_dataset(dest, items(), has_labels=ds.base.has_labels, extra=extra)


def _read_sigma_table(path: str) -> dict[str, float]:
    """file -> sigma_n from a CSV (`file,sigma_n` rows, an optional header) or a JSON object."""
    if not os.path.lexists(path):
        raise FileNotFoundError(f"--sigma-n-from file not found: {path}")
    check_regular_file(path)
    with open(path, newline="") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        data = parse_json(text, path)
        if not isinstance(data, dict):
            raise ValueError(f'{path} must be a JSON object {{"relative/file.npy": sigma_n, ...}}')
        rows = list(data.items())
    else:
        rows = []
        for line, row in enumerate(csv.reader(io.StringIO(text)), 1):
            if not row or (line == 1 and row[-1].strip().lower() in ("sigma_n", "sigma")):
                continue
            if len(row) != 2:
                raise ValueError(f"{path} line {line}: expected `file,sigma_n`, got {row!r}")
            try:
                value = float(row[1])
            except ValueError:
                raise ValueError(f"{path} line {line}: sigma_n {row[1]!r} of {row[0]!r} is not a number") from None
            rows.append((row[0].strip(), value))
    table: dict[str, float] = {}
    for name, value in rows:
        name = name.replace("\\", "/")
        if name in table:
            raise ValueError(f"{path} lists {name!r} twice")
        try:
            table[name] = sigma_n_value(value, name)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return table


def _read_raw(source: ImageSource, name: str) -> np.ndarray:
    """One source image as (H, W, C): uint8 / uint16 as stored, or float32 on the [-1, 1] scale (.npy)."""
    where = source.where(name)
    lower = name.lower()
    if is_array(name):
        return source.read_float(name)
    if lower.endswith(_LOSSY_EXTENSIONS):
        raise ValueError(f"{where} is lossy-compressed, which alters its noise; give noisy images as "
                         ".npy, PNG or TIFF")
    if lower.endswith(_TIFF_EXTENSIONS):
        import tifffile  # scikit-image's TIFF reader; Pillow reads 16-bit RGB TIFF as 8-bit

        try:
            with source.open(name) as f, tifffile.TiffFile(f) as tiff:
                image_shape_of(tiff.series[0].shape, where)    # before decoding: a small file can declare a huge image
                array = tiff.asarray()
        except (OSError, tifffile.TiffFileError, IndexError) as e:
            raise ValueError(f"corrupt or unreadable image {where}: {e}") from None
    else:
        with source.open(name) as f:
            head = f.read(26)
        # PNG header: bit depth at byte 24, colour type at 25; Pillow reads 16-bit colour as 8-bit.
        if head[12:16] == b"IHDR" and head[24] == 16 and head[25] != 0:
            raise ValueError(f"{where} is a 16-bit colour PNG, which Pillow reads as 8-bit; save it as "
                             "16-bit TIFF or .npy")
        try:
            with source.open(name) as f, Image.open(f) as img:
                image_shape_of(img.size[::-1], where)      # before decoding: a small file can declare a huge image
                wide = img.mode.startswith("I")   # 16-bit grayscale PNG: I;16 (or I)
                array = np.array(img) if wide else None
        except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise ValueError(f"corrupt or unreadable image {where}: {e}") from None
        if array is None:
            array = source.read_array(name)
        elif array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{where}: values outside 0..65535 in a 16-bit image")
        else:
            array = array.astype(np.uint16)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{where} holds {array.dtype} values; give float images as .npy on the [-1, 1] scale")
    image_shape_of(array.shape, where)
    return array


def _signal(raw: np.ndarray) -> np.ndarray:
    """A raw image on the [-1, 1] scale as float32: 8-bit as the clean images, 16-bit 0..65535 -> [-1, 1]."""
    if raw.dtype == np.uint8:
        return to_signal(torch.from_numpy(raw), torch.float64).to(torch.float32).numpy()
    if raw.dtype == np.uint16:
        return (raw.astype(np.float64) / 32767.5 - 1.0).astype(np.float32)
    return raw


def estimate_sigma_n(signal: np.ndarray) -> float:
    """Noise level of one (H, W, C) image on the [-1, 1] scale: scikit-image's wavelet estimator (the
    median absolute deviation of the finest diagonal wavelet coefficients / 0.6745), averaged over
    channels, rounded to 1e-6 so that the round-off of a noiseless image (~1e-33) reads as 0, clean."""
    from skimage.restoration import estimate_sigma

    return round(float(estimate_sigma(signal.astype(np.float64), channel_axis=-1, average_sigmas=True)), 6)


def noisy_from_images(source: str, dest: str | None, *, sigma_n: float | None = None,
                      sigma_n_from: str | None = None, estimate: bool = False, max_images: int | None = None,
                      labels_from_folders: bool = False,
                      allow_quantized: bool = False) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Write the user's noisy images of `source` as a noisy data set at `dest` (None: write nothing).

    sigma_n of each image: `sigma_n` for all, `sigma_n_from` (a file -> sigma_n table) or, with
    `estimate`, `estimate_sigma_n`. Returns (sigma_n written per image, the source's stored sigma_n per
    image or None, number of 8-bit images stored as noisy).
    """
    if sum((sigma_n is not None, sigma_n_from is not None, estimate)) != 1:
        raise ValueError("give exactly one of sigma_n, sigma_n_from and estimate")
    if sigma_n is not None:
        sigma_n = sigma_n_value(sigma_n, "every image")
    if dest is not None:
        cli.check_destination(dest, option="--dest", archive=_is_zip(dest))
    if source in NAMED_DATASETS:
        raise ValueError(f"{source!r} holds clean images: make a noisy copy with --add-noise")
    image_source = ImageSource(source, extensions=_TIFF_EXTENSIONS)
    labels, class_names = _source_labels(image_source, labels_from_folders)
    stored = image_source.read_noise_levels()
    names = image_source.image_names
    table = _read_sigma_table(sigma_n_from) if sigma_n_from is not None else None
    if table is not None:
        extra = sorted(set(table) - set(names))
        if extra:
            raise ValueError(f"{sigma_n_from} lists {len(extra)} file(s) that are not images of {source}, "
                             f"first {extra[0]!r}")
        without = [n for n in names if n not in table]
        if without:
            raise ValueError(f"{sigma_n_from} has no sigma_n for {len(without)} image(s) of {source}, "
                             f"first {without[0]!r}")
    keep = subset_indices(len(names), max_images)
    written, quantized = np.zeros(len(keep)), 0

    def items() -> Iterator[_Item]:
        nonlocal quantized
        for j, k in enumerate(keep):
            name = names[k]
            raw = _read_raw(image_source, name)
            signal = _signal(raw)
            sigma = sigma_n if sigma_n is not None else table[name] if table is not None else estimate_sigma_n(signal)
            written[j] = sigma
            if sigma > 0 and raw.dtype == np.uint8 and dest is not None:
                if not allow_quantized:
                    raise ValueError(f"{image_source.where(name)} is an 8-bit image with sigma_n {sigma:g}: its "
                                     "noise is clipped to [0, 255] and quantised; give it as .npy or 16-bit, or "
                                     "pass --allow-quantized to accept that")
                quantized += 1
            label = -1 if labels is None else int(labels[k])
            yield (raw if sigma == 0 and raw.dtype == np.uint8 else signal), label, image_source.where(name), sigma

    if dest is None:
        for _ in items():
            pass
    else:
        write_dataset(dest, items(), has_labels=labels is not None, class_names=class_names)
    return written, None if stored is None else stored[keep], quantized


def estimate_summary(estimates: np.ndarray, stored: np.ndarray | None = None) -> str:
    """Text summary of estimated sigma_n; with the stored sigma_n, the bias and spread per stored level."""
    lo, hi = np.percentile(estimates, [5, 95])
    lines = [f"estimated sigma_n of {len(estimates)} images: median {np.median(estimates):.4g}, "
             f"5-95% {lo:.4g} to {hi:.4g}, min {estimates.min():.4g}, max {estimates.max():.4g}; "
             f"{int((estimates == 0).sum())} estimated 0 (clean)"]
    if stored is not None:
        levels = np.unique(stored)
        groups = [(f"{s:g}", stored == s) for s in levels] if len(levels) <= 10 else [("all", stored >= 0)]
        lines.append("stored sigma_n   images   mean estimate   bias      bias/sigma_n   sd of estimate")
        for label, sel in groups:
            est, ref = estimates[sel], stored[sel]
            bias = float((est - ref).mean())
            relative = f"{bias / ref.mean():+9.1%}" if ref.mean() > 0 else f"{'-':>9}"
            lines.append(f"{label:>14}   {int(sel.sum()):6d}   {est.mean():13.4f}   {bias:+.4f}   {relative}      "
                         f"{est.std(ddof=1) if sel.sum() > 1 else 0.0:.4f}")
    return "\n".join(lines)


def _hwc(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) + " (HxWxC)"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 with one message on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m ambient.dataset_tool",
                                     description="Write an EDM-format data set (PNGs + dataset.json), or a "
                                                 "noisy one (float32 .npy + sigma_n in dataset.json).")
    parser.add_argument("--source", required=True,
                        help=f"{' or '.join(NAMED_DATASETS)}, or a folder / .zip of images")
    parser.add_argument("--dest", help="output folder, or OUT.zip (optional only with --estimate-sigma)")
    parser.add_argument("--resolution", type=cli.positive_int, help="center-crop and resize to R x R")
    parser.add_argument("--max-images", type=cli.positive_int, help="keep a fixed subset of N images")
    parser.add_argument("--labels-from-folders", action="store_true",
                        help="label images by their top-level class folder (sorted names -> 0, 1, ...)")
    g = parser.add_argument_group("noisy data sets (one of)").add_mutually_exclusive_group()
    g.add_argument("--add-noise", type=cli.float_list, metavar="SIGMA[,SIGMA...]",
                   help="a noisy copy of a clean source with these noise levels (as train.py's --sigma-n)")
    g.add_argument("--sigma-n", type=cli.nonneg_float, help="the source's images are noisy at this known level")
    g.add_argument("--sigma-n-from", metavar="FILE", help="known sigma_n per source file (CSV file,sigma_n or JSON)")
    g.add_argument("--estimate-sigma", action="store_true",
                   help="estimate each image's sigma_n (skimage.restoration.estimate_sigma) and print a summary")
    g = parser.add_argument_group("with --add-noise")
    g.add_argument("--noisy-fraction", type=cli.fraction, help="fraction of the images made noisy (default 1)")
    g.add_argument("--sigma-share", type=cli.float_list, help="share of the noisy images at each level")
    g.add_argument("--seed", type=cli.nonneg_int, help="fixes which images are noisy and their noise (default 0), "
                                                        "as train.py's --data-seed")
    g = parser.add_argument_group("with --sigma-n, --sigma-n-from or --estimate-sigma")
    g.add_argument("--allow-quantized", action="store_true",
                   help="accept noisy 8-bit images (their noise is clipped and quantised), with a warning")
    args = parser.parse_args(argv)
    known = args.sigma_n is not None or args.sigma_n_from is not None or args.estimate_sigma
    misplaced = [flag for flag, given, allowed in (
        ("--noisy-fraction", args.noisy_fraction is not None, args.add_noise is not None),
        ("--sigma-share", args.sigma_share is not None, args.add_noise is not None),
        ("--seed", args.seed is not None, args.add_noise is not None),
        ("--allow-quantized", args.allow_quantized, known),
        ("--resolution", args.resolution is not None, args.add_noise is None and not known),
        ("--labels-from-folders", args.labels_from_folders, args.add_noise is None)) if given and not allowed]
    if misplaced:
        why = {"--resolution": "resampling a noisy image shrinks and correlates its noise (resize the clean "
                               "source first, then add noise to it)",
               "--labels-from-folders": "--add-noise takes the labels of its source (make a labeled set first)"}
        parser.error(f"{misplaced[0]} does not apply here" + (f": {why[misplaced[0]]}" if misplaced[0] in why
                                                              else "; see --help"))
    if args.dest is None and not args.estimate_sigma:
        parser.error("the following arguments are required: --dest")
    try:
        if args.add_noise is not None:
            check_split_options(sigma_n=args.add_noise, sigma_share=args.sigma_share,   # named by their flags here
                                name=lambda f: "--add-noise" if f == "sigma_n" else "--" + f.replace("_", "-"))
            ds = add_noise(args.source, args.dest, args.add_noise, sigma_share=args.sigma_share,
                           noisy_fraction=1.0 if args.noisy_fraction is None else args.noisy_fraction,
                           seed=args.seed or 0, max_images=args.max_images)
            print(f"wrote {len(ds)} images to {args.dest}: {ds.describe()}")
        elif known:
            written, stored, quantized = noisy_from_images(
                args.source, args.dest, sigma_n=args.sigma_n, sigma_n_from=args.sigma_n_from,
                estimate=args.estimate_sigma, max_images=args.max_images,
                labels_from_folders=args.labels_from_folders, allow_quantized=args.allow_quantized)
            if quantized:
                print(f"dataset_tool: warning: {quantized} noisy image(s) came from 8-bit files: their noise is "
                      "clipped and quantised, so sigma_n describes it only roughly", file=sys.stderr)
            if args.estimate_sigma:
                print(estimate_summary(written, stored))
            if args.dest is not None:
                print(f"wrote {len(written)} images to {args.dest}: {int((written == 0).sum())} clean + "
                      f"{int((written > 0).sum())} noisy")
        else:
            count = convert_dataset(args.source, args.dest, resolution=args.resolution,
                                    max_images=args.max_images, labels_from_folders=args.labels_from_folders)
            print(f"wrote {count} images to {args.dest}")
    except (ValueError, OSError) as e:
        print(f"dataset_tool: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
