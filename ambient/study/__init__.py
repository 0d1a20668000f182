"""The study layer: data-scaling studies (one model per n_clean, n_noisy, sigma_n and seed, trained and evaluated
through the command lines), their report (Table 1, the worth of a noisy image), the scaling-law fits and the GMM
experiment. `python -m ambient.study` is its command line; `python -m ambient.gmm` runs the GMM experiment.

Imports every layer below it.
"""
from .runner import Point, Settings, StudyError, make_points

__all__ = ["Point", "Settings", "StudyError", "make_points"]
