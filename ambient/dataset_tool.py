"""Write an EDM-format data set: PNGs named `00000/img00000000.png` plus `dataset.json`.

    python -m ambient.dataset_tool --source mnist --dest data/mnist.zip
    python -m ambient.dataset_tool --source photos/ --dest data/photos64 --resolution 64 --labels-from-folders

The source is "mnist" / "digits" (embedded), a folder or a .zip of images. Labels come from the embedded
set, the source's `dataset.json`, or (with --labels-from-folders) from the names of the top-level class
folders, numbered in sorted order; without labels `dataset.json` says `"labels": null`. With
--resolution each image is center-cropped to a square and resized with Lanczos. --max-images keeps the
same fixed pseudo-random subset as `load_dataset(..., max_size=N)`. The output is written next to the
destination and renamed into place at the end, so a failure leaves nothing behind; an existing
non-empty destination is never overwritten.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from ambient.data import NAMED_DATASETS, ImageSource, load_dataset, subset_indices

# (pixels (H, W, C) uint8, label or -1, where the image came from)
_Item = tuple[np.ndarray, int, str]


def _named_items(name: str, max_images: int | None) -> tuple[int, Iterator[_Item], bool, list[str] | None]:
    """Items of an embedded data set."""
    base = load_dataset(name, max_size=max_images)

    def items() -> Iterator[_Item]:
        for i in range(len(base)):
            image, label = base[i]
            yield image.numpy().transpose(1, 2, 0), label, f"{name}[{i}]"

    return len(base), items(), base.has_labels, None


def _folder_items(path: str, max_images: int | None,
                  labels_from_folders: bool) -> tuple[int, Iterator[_Item], bool, list[str] | None]:
    """Items of a folder or zip of images, with labels from dataset.json or class folders."""
    source = ImageSource(path)
    names = source.image_names
    if not names:
        raise ValueError(f"no images found in {source.path}")
    class_names = None
    if labels_from_folders:
        at_root = [n for n in names if "/" not in n]
        if at_root:
            raise ValueError(f"--labels-from-folders needs every image inside a class folder, but "
                             f"{source.where(at_root[0])} is at the top level")
        class_names = sorted({n.split("/", 1)[0] for n in names})
        class_of = {c: k for k, c in enumerate(class_names)}
        labels = np.array([class_of[n.split("/", 1)[0]] for n in names], dtype=np.int64)
    else:
        labels = source.read_labels()
    keep = subset_indices(len(names), max_images)

    def items() -> Iterator[_Item]:
        for k in keep:
            label = -1 if labels is None else int(labels[k])
            yield source.read_array(names[k]), label, source.where(names[k])

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


def _check_destination(dest: str) -> None:
    """Refuse to overwrite anything: dest must not exist, or be an empty folder / empty file."""
    if os.path.isdir(dest) and os.listdir(dest):
        raise FileExistsError(f"destination {dest} exists and is not empty; choose another --dest")
    if os.path.isfile(dest) and os.path.getsize(dest) > 0:
        raise FileExistsError(f"destination {dest} exists; choose another --dest")
    if dest.lower().endswith(".zip") and os.path.isdir(dest):
        raise FileExistsError(f"destination {dest} is a folder but its name ends with .zip")


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
    _check_destination(dest)
    if source in NAMED_DATASETS:
        if labels_from_folders:
            raise ValueError(f"--labels-from-folders applies to folder sources; {source!r} has its own "
                             "labels")
        count, items, has_labels, class_names = _named_items(source, max_images)
    else:
        count, items, has_labels, class_names = _folder_items(source, max_images, labels_from_folders)

    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    partial = os.path.join(parent, f".{os.path.basename(os.path.normpath(dest))}.partial-{os.getpid()}")
    to_zip = dest.lower().endswith(".zip")
    archive = zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) if to_zip else None
    write: Callable[[str, bytes], None]
    if archive is not None:
        write = archive.writestr
    else:
        os.makedirs(partial)

        def write(name: str, data: bytes) -> None:
            os.makedirs(os.path.dirname(os.path.join(partial, name)), exist_ok=True)
            with open(os.path.join(partial, name), "wb") as f:
                f.write(data)

    try:
        labels, first = [], None
        for index, (pixels, label, where) in enumerate(items):
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
            fname = f"{index // 1000:05d}/img{index:08d}.png"
            write(fname, _png_bytes(pixels))
            labels.append([fname, label])
        metadata: dict[str, object] = {"labels": labels if has_labels else None}
        if class_names is not None:
            metadata["class_names"] = class_names
        write("dataset.json", json.dumps(metadata).encode())
        if archive is not None:
            archive.close()
        os.replace(partial, dest)
    except BaseException:
        if archive is not None:
            archive.close()
        if os.path.isdir(partial):
            shutil.rmtree(partial)
        elif os.path.exists(partial):
            os.remove(partial)
        raise
    return count


def _hwc(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) + " (HxWxC)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (1 with one message on bad input)."""
    parser = argparse.ArgumentParser(prog="python -m ambient.dataset_tool",
                                     description="Write an EDM-format data set (PNGs + dataset.json).")
    parser.add_argument("--source", required=True,
                        help=f"{' or '.join(NAMED_DATASETS)}, or a folder / .zip of images")
    parser.add_argument("--dest", required=True, help="output folder, or OUT.zip")
    parser.add_argument("--resolution", type=_positive_int, help="center-crop and resize to R x R")
    parser.add_argument("--max-images", type=_positive_int, help="keep a fixed subset of N images")
    parser.add_argument("--labels-from-folders", action="store_true",
                        help="label images by their top-level class folder (sorted names -> 0, 1, ...)")
    args = parser.parse_args(argv)
    try:
        count = convert_dataset(args.source, args.dest, resolution=args.resolution,
                                max_images=args.max_images, labels_from_folders=args.labels_from_folders)
    except (ValueError, OSError) as e:
        print(f"dataset_tool: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {count} images to {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
