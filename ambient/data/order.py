"""The data order: one seeded permutation per epoch over global sample positions, the same on every rank."""
from collections.abc import Iterator
from typing import Any

import torch

from .corruption import AmbientDataset
from .streams import epoch_seed


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: one seeded permutation of range(n), the same on every rank."""
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=gen)


def check_positions(batch: int, world_size: int, start: int) -> None:
    """ValueError unless the global batch splits evenly over the ranks and `start` is the first position of a step: what
    a sampler over global positions (this one, ambient.train.windows.SigmaFirstSampler) needs."""
    if batch % world_size:
        raise ValueError(f"global batch {batch} is not divisible by the world size {world_size}")
    if start % batch:
        raise ValueError(f"start position {start} is not a multiple of the global batch {batch}")


class GlobalOrderSampler(torch.utils.data.Sampler):
    """Yields (index, epoch) for this rank, forever, starting at global image position `start`.

    Global positions p = 0, 1, 2, ... walk through one seeded permutation per epoch
    (index = perm_{p // n}[p % n]). Global batch b covers positions [b*B, (b+1)*B) and rank r
    takes the slice [b*B + r*B/W, b*B + (r+1)*B/W). The order is therefore independent of the
    world size, which is what lets a run resume on a different number of processes.
    """

    def __init__(self, n: int, batch: int, rank: int, world_size: int, seed: int, start: int = 0):
        check_positions(batch, world_size, start)
        self.n, self.batch, self.rank, self.world, self.seed, self.start = n, batch, rank, world_size, seed, start
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def position_to_item(self, p: int) -> tuple[int, int]:
        epoch = p // self.n
        if epoch != self._perm_epoch:
            self._perm_epoch, self._perm = epoch, epoch_permutation(self.n, self.seed, epoch)
        return int(self._perm[p % self.n]), epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_rank = self.batch // self.world
        step_start = self.start
        while True:
            first = step_start + self.rank * per_rank
            for p in range(first, first + per_rank):
                yield self.position_to_item(p)
            step_start += self.batch


class EpochIndexed(torch.utils.data.Dataset):
    """Adapter taking the sampler's (index, epoch) so augmentation is a function of both; a sampler that drew more
    with the image, (index, epoch, fields), adds those fields to the item (the sigma-first sampler's "sigma" and
    "weight")."""

    def __init__(self, ds: AmbientDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int] | tuple[int, int, dict[str, Any]]) -> dict[str, Any]:
        index, epoch, *fields = key
        self.ds.set_epoch(epoch)
        item = self.ds[index]
        return {**item, **fields[0]} if fields else item
