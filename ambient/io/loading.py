"""Rebuild a trained network from a checkpoint directory (weights only, no code executed)."""
from pathlib import Path

import torch

from ambient.model.networks import EDMPrecond, build_network

from .checkpoint import load_checkpoint, resolve_checkpoint


def load_network(path: str | Path, *, which: str = "ema",
                 device: str | torch.device = "cpu") -> tuple[EDMPrecond, dict]:
    """The `which` ("ema" or "net") weights of a checkpoint or a run's newest checkpoint that fits its own
    network record, in eval mode, and its meta."""
    if which not in ("ema", "net"):
        raise ValueError(f"which must be 'ema' or 'net', got {which!r}")
    ckpt = load_checkpoint(resolve_checkpoint(path, check_network=True), device, check_network=True)
    net = build_network(**ckpt["meta"]["network"]).to(device)        # its weights are there and fit it
    net.load_state_dict(ckpt[which])
    return net.eval().requires_grad_(False), ckpt["meta"]
