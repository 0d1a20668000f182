"""The networks the benchmarks build: the data each preset trains on and its self-attention layers."""
from __future__ import annotations

from typing import Any

import torch

from ambient.model.networks import UNetBlock, build_network

# The data each preset trains on: (channels, resolution) — DDPM++ and NCSN++ on CIFAR-10, tiny on MNIST-5k.
PRESET_DATA = {"ddpmpp": (3, 32), "ncsnpp": (3, 32), "tiny": (1, 32)}


def attention_layers(preset: str, **overrides: Any) -> list[tuple[int, UNetBlock]]:
    """(resolution, block) of every self-attention layer of the preset's network on its data.

    Built on the meta device: no memory, no weight init (a DDPM++ built on the CPU takes seconds). A block's
    `_attend` needs no weights, so it runs on real tensors as in training. `overrides` go to build_network
    (e.g. model_channels).
    """
    channels, resolution = PRESET_DATA[preset]
    with torch.device("meta"):
        net = build_network(preset, resolution, channels, **overrides)
    return [(int(name.split("x")[0]), block) for part in (net.model.enc, net.model.dec)
            for name, block in part.items() if isinstance(block, UNetBlock) and block.num_heads]
