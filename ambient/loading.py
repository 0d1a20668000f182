"""Rebuild a trained network from a checkpoint directory (weights only, no code executed)."""
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from .networks import EDMPrecond, build_network


def load_network(path: str | Path, *, which: str = "ema", device: str | torch.device = "cpu") -> tuple[EDMPrecond, dict]:
    """The `which` ("ema" or "net") weights of a checkpoint or a run's newest checkpoint, in eval mode, and its meta."""
    if which not in ("ema", "net"):
        raise ValueError(f"which must be 'ema' or 'net', got {which!r}")
    ckpt = load_checkpoint(resolve_checkpoint(path), device)
    net_kwargs = ckpt["meta"].get("network")
    if not isinstance(net_kwargs, dict):
        raise CheckpointError(f"checkpoint {path} does not record its network configuration")
    net = build_network(**net_kwargs).to(device)
    try:
        net.load_state_dict(ckpt[which])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its recorded network: {e}") from None
    return net.eval().requires_grad_(False), ckpt["meta"]
