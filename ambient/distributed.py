"""torch.distributed set-up from the torchrun environment, and the data order shared by all ranks."""
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); one device per local rank.

    Plain `python train.py` (no RANK in the environment) runs as a world of one without a group.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if "RANK" in os.environ and not dist.is_initialized():
        # After an elastic restart the rendezvous store still holds the dead workers' addresses;
        # a prefix per restart keeps the new group from connecting to them.
        store, _, _ = next(dist.rendezvous("env://", rank, world))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                store=dist.PrefixStore(f"ambient/{attempt}", store),
                                rank=rank, world_size=world, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (identity without a process group)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (in place; identity without a process group); `t` lives on this rank's device."""
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch `epoch`: one seeded permutation of range(n), the same on every rank."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


class GlobalOrderSampler(torch.utils.data.Sampler):
    """Yields (index, epoch) for this rank, forever, starting at global image position `start`.

    Global positions p = 0, 1, 2, ... walk through one seeded permutation per epoch
    (index = perm_{p // n}[p % n]). Global batch b covers positions [b*B, (b+1)*B) and rank r
    takes the slice [b*B + r*B/W, b*B + (r+1)*B/W). The order is therefore independent of the
    world size, which is what lets a run resume on a different number of processes.
    """

    def __init__(self, n: int, batch: int, rank: int, world_size: int, seed: int, start: int = 0):
        if batch % world_size:
            raise ValueError(f"global batch {batch} is not divisible by the world size {world_size}")
        if start % batch:
            raise ValueError(f"start position {start} is not a multiple of the global batch {batch}")
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
