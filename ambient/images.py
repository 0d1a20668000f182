"""Generating images from seeds, and writing them as a PNG grid, a folder of PNGs or an .npz."""
import contextlib
import itertools
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path
from .sampler import edm_sampler


class SeededNormals:
    """randn_like with one generator per image seed, so image i does not depend on its batch."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str):
        self.gens = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, device=device) for g in self.gens])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape[1:], x.device).to(x.dtype)


def generate(net: Callable, seeds: Sequence[int], shape: Sequence[int], *, batch: int = 64,
             device: torch.device | str = "cpu", class_labels: Callable[[Sequence[int]], torch.Tensor] | None = None,
             **sampler_kwargs) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yields (seeds, images in [-1, 1] float32 on CPU) batch by batch; image i is a function of seed i alone.

    `seeds` is read lazily, one batch at a time (any iterable, e.g. a range of a billion).
    """
    remaining = iter(seeds)
    while chunk := list(itertools.islice(remaining, batch)):
        rnd = SeededNormals(chunk, device)
        latents = rnd.randn(shape, device)
        labels = class_labels(chunk).to(device) if class_labels is not None else None
        images = edm_sampler(net, latents, labels, randn_like=rnd.randn_like, **sampler_kwargs)
        yield chunk, images.float().cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, as EDM's generate.py saves images: x * 127.5 + 128,
    clipped to [0, 255] and truncated."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def from_uint8(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, C, H, W) float32 in [-1, 1] by u / 127.5 - 1, as training data is read."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1


def quantise(images: torch.Tensor) -> torch.Tensor:
    """The images a saved PNG would hold: clamped to [-1, 1] and quantised to 8 bits (to_uint8, from_uint8)."""
    return from_uint8(to_uint8(images))


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)


def save_grid(images: torch.Tensor, path: str | Path, ncol: int | None = None) -> None:
    """One PNG with the images tiled row by row."""
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

