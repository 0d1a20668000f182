"""The training layer: the run's configuration, the one training step, the loop around it, torch.distributed
and the host CPU's precision and threads. `python -m ambient.train` is its command line (ambient.train.cli).

Imports ambient.common, ambient.data, ambient.model and ambient.io.
"""
from .config import TrainConfig, config_flags
from .loop import TrainingDiverged, TrainingInterrupted, train
from .step import StepStats, TrainState, build_state, train_step

__all__ = ["StepStats", "TrainConfig", "TrainState", "TrainingDiverged", "TrainingInterrupted", "build_state",
           "config_flags", "train", "train_step"]
