"""The public path of the sampler (docs/design.md, "Layout"): it lives in ambient.model.sampler."""
from ambient.model.sampler import edm_sampler, edm_time_steps

__all__ = ["edm_sampler", "edm_time_steps"]
