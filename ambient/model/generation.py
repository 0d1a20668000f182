"""Generating images from seeds: image i is a function of seed i alone, whatever the batch it is in
(docs/design.md, "Sampler")."""
import itertools
from collections.abc import Callable, Iterator, Sequence

import torch

from .sampler import edm_sampler


class SeededNormals:
    """randn_like with one generator per image seed, so image i does not depend on its batch."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str):
        self.gens = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape: Sequence[int], device: torch.device | str) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, device=device) for g in self.gens])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape[1:], x.device).to(x.dtype)


def seed_classes(label_dim: int, fixed: int | None = None) -> Callable[[Sequence[int]], torch.Tensor] | None:
    """The class indices of a conditional model's images: `fixed` for every image, else seed mod label_dim (so the
    class too is a function of the seed); None for an unconditional model (label_dim 0)."""
    if not label_dim:
        return None
    if fixed is not None:
        return lambda seeds: torch.full((len(seeds),), fixed, dtype=torch.int64)
    return lambda seeds: torch.tensor(list(seeds)) % label_dim


def generate(net: Callable, seeds: Sequence[int], shape: Sequence[int], *, batch: int = 64,
             device: torch.device | str = "cpu", class_labels: Callable[[Sequence[int]], torch.Tensor] | None = None,
             **sampler_kwargs) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yields (seeds, images in [-1, 1] float32 on CPU) batch by batch; image i is a function of seed i alone.

    `seeds` is read lazily, one batch at a time (any iterable, e.g. a range of a billion); `class_labels` maps a
    batch's seeds to class indices (`seed_classes`); the rest goes to `edm_sampler`.
    """
    remaining = iter(seeds)
    while chunk := list(itertools.islice(remaining, batch)):
        rnd = SeededNormals(chunk, device)
        latents = rnd.randn(shape, device)
        labels = class_labels(chunk).to(device) if class_labels is not None else None
        images = edm_sampler(net, latents, labels, randn_like=rnd.randn_like, **sampler_kwargs)
        yield chunk, images.float().cpu()
