"""torch.distributed set-up from the torchrun environment, and the collectives the training loop uses."""
import argparse
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ambient.common import cli


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def check_device(device: str) -> torch.device:
    """The device `device` names; ValueError unless `ambient.common.cli.device` accepts it (the flag's rule)."""
    try:
        return torch.device(cli.device(device))
    except argparse.ArgumentTypeError as e:
        raise ValueError(f"--device {e}") from None


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); one device per local rank.

    Plain `python train.py` (no RANK in the environment) runs as a world of one without a group.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = check_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
