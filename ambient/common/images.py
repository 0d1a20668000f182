"""Pixels: the one conversion between 8-bit images and the model's [-1, 1] scale, and writing images as a PNG
grid, a folder of PNGs or an .npz (docs/design.md, "Pixels").

    to the model:  x = u / 127.5 - 1                        (0 -> -1, 255 -> 1), in the caller's dtype
    back:          u = trunc(clamp(x * 127.5 + 128, 0, 255)), the nearest byte (EDM's generate.py)

so from 8 bits and back returns every u exactly.
"""
import contextlib
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path

MAX_GRID = 4096        # images in one PNG grid (held in memory); more go to a folder or an .npz


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8: x * 127.5 + 128, clipped to [0, 255] and truncated."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def to_signal(pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 pixels (any layout) on the model's scale, u / 127.5 - 1, computed in `dtype`."""
    return pixels.to(dtype) / 127.5 - 1


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1] (to_signal)."""
    return to_signal(torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2))


def quantise(images: torch.Tensor) -> torch.Tensor:
    """The images a saved PNG would hold: clamped to [-1, 1] and quantised to 8 bits (to_uint8, from_uint8)."""
    return from_uint8(to_uint8(images))


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)


def save_grid(images: torch.Tensor, path: str | Path, ncol: int | None = None) -> np.ndarray:
    """One PNG with the images tiled row by row; returns the tiled (H, W, C) uint8 image it holds."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    grid = np.zeros((nrow * h, ncol * w, c), dtype=np.uint8)
    for i, img in enumerate(arr):
        r, q = divmod(i, ncol)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    with atomic_path(path) as tmp:                              # a killed run leaves no half PNG
        _pil(grid).save(tmp, format="PNG")
    return grid


def save_pngs(images: torch.Tensor, seeds: Sequence[int], folder: str | Path) -> None:
    """One PNG per image, named by its seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for seed, img in zip(seeds, to_uint8(images)):
        _pil(img).save(folder / f"{seed:06d}.png")


@contextlib.contextmanager
def npz_writer(path: str | Path) -> Iterator[Callable[[str, Sequence[int], np.dtype], IO[bytes]]]:
    """An .npz written one array at a time, each streamed: `with npz_writer(p) as add, add(name, shape, dtype) as f:
    f.write(rows.tobytes())`. np.load reads it as any .npz; nothing is held in memory. Atomic (temp file + rename):
    an interrupted write leaves nothing behind."""

    def add(name: str, shape: Sequence[int], dtype: np.dtype) -> IO[bytes]:
        f = archive.open(f"{name}.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": tuple(shape)})
        return f

    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        yield add

