"""torch.distributed set-up from the torchrun environment, and the collectives the training loop uses."""
import argparse
import os
import time
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
        store, _, _ = next(dist.rendezvous("env://", rank, world))
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=attempt_store(store, rank, world),
                                rank=rank, world_size=world, device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local_rank, dev)


def attempt_store(store: dist.Store, rank: int, world: int, poll_s: float = 0.05) -> dist.Store:
    """The part of torchrun's `store` that this start of the workers has to itself (a PrefixStore).

    torchrun's agents keep one store across elastic restarts, holding the dead workers' keys (their addresses),
    and count restarts per node: a node restarted because another node's worker failed does not count it, so
    TORCHELASTIC_RESTART_COUNT differs between nodes and cannot name the attempt. Instead rank 0 takes a number
    g no earlier attempt had and publishes it; every other rank joins the g it reads unless its own key for g is
    there already (an earlier worker of its rank joined g: g is an old attempt's), and goes on once rank 0 has
    seen all ranks join g. Every earlier worker is dead before a new one starts (each agent stops its workers
    before the next rendezvous), so nobody confirms an old g.
    """
    deadline = time.monotonic() + store.timeout.total_seconds()
    if rank == 0:
        g = store.add("ambient/attempts", 1)
        store.set("ambient/current", str(g))
        while not store.check([f"ambient/{g}/joined/{r}" for r in range(1, world)]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks 1..{world - 1} did not all join attempt {g} within {store.timeout}")
            time.sleep(poll_s)
        store.set(f"ambient/{g}/go", "")
    else:
        joined = None
        while True:
            g = int(store.get("ambient/current"))
            if g != joined and not store.check([f"ambient/{g}/joined/{rank}"]):
                store.set(f"ambient/{g}/joined/{rank}", "")
                joined = g
            if g == joined and store.check([f"ambient/{g}/go"]):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank 0 did not start a new attempt within {store.timeout}")
            time.sleep(poll_s)
    return dist.PrefixStore(f"ambient/{g}", store)


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


def shutdown() -> None:
    """Leave the process group, if this process joined one: the last thing a torchrun worker does.

    Exiting with the group alive leaves gloo's worker threads holding finished work (and its tensors) until the
    interpreter is torn down, where freeing them can abort the process (SIGABRT, "terminate called without an
    active exception"): a finished run that torchrun reports failed."""
    if dist.is_initialized():
        dist.destroy_process_group()
