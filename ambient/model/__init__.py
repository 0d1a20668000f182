"""The model layer: EDM's networks and preconditioning, the ambient loss, the sampler and image generation.

Imports only ambient.common and kernels.
"""
from .generation import generate, seed_classes
from .loss import SIGMA_SAMPLINGS, AmbientLoss, consistency_loss, sample_sigma, sample_sigma_below
from .networks import PRESETS, EDMPrecond, SongUNet, build_network
from .sampler import ancestral_sampler, check_sigma_stop, edm_sampler, edm_time_steps, posterior_sampler

__all__ = ["PRESETS", "SIGMA_SAMPLINGS", "AmbientLoss", "EDMPrecond", "SongUNet", "build_network",
           "ancestral_sampler", "check_sigma_stop", "consistency_loss", "edm_sampler", "edm_time_steps", "generate",
           "posterior_sampler", "sample_sigma", "sample_sigma_below", "seed_classes"]
