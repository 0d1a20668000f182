"""The model layer: EDM's networks and preconditioning, the ambient loss, the sampler and image generation.

Imports only ambient.common and kernels.
"""
from .generation import generate, seed_classes
from .loss import SIGMA_SAMPLINGS, AmbientLoss, sample_sigma
from .networks import PRESETS, EDMPrecond, SongUNet, build_network
from .sampler import edm_sampler, edm_time_steps

__all__ = ["PRESETS", "SIGMA_SAMPLINGS", "AmbientLoss", "EDMPrecond", "SongUNet", "build_network", "edm_sampler",
           "edm_time_steps", "generate", "sample_sigma", "seed_classes"]
