"""The public path of the networks (docs/design.md, "Layout"): they live in ambient.model.networks."""
from ambient.model.networks import EDMPrecond, SongUNet, build_network

__all__ = ["EDMPrecond", "SongUNet", "build_network"]
