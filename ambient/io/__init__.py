"""The storage layer: checkpoints (written atomically, verified, loaded without executing code), network templates
and their validation, loading a trained network, and importing NVIDIA EDM pickles (python -m ambient.convert).

Imports ambient.common and ambient.model.
"""
from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
)
from .loading import load_network

__all__ = ["CheckpointError", "latest_checkpoint", "list_checkpoints", "load_checkpoint", "load_network", "read_meta",
           "resolve_checkpoint", "save_checkpoint"]
