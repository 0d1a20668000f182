"""The evaluation layer: sample-quality metrics (FD-MNIST and its floor, KID, classes, memorisation, background
noise, clean-fid FID) and the evaluation of a checkpoint. `python -m ambient.eval` is its command line.

Imports ambient.common, ambient.data, ambient.model and ambient.io; never the training loop.
"""
from .evaluation import METRICS, evaluate, reference_images, summary, training_images

__all__ = ["METRICS", "evaluate", "reference_images", "summary", "training_images"]
