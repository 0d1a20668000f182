"""The data layer: base image sources (8-bit image sets and noisy float sets), the fixed clean/noisy split and
corruption, the random streams, the data order, and the data set tool (python -m ambient.dataset_tool).

Imports only ambient.common.
"""
from .corruption import DEFAULT_SIGMA_N, AmbientDataset, Split, check_split_options, split_clean_noisy
from .sources import MNIST_PAD, NAMED_DATASETS, BaseDataset, is_noisy_dataset, load_dataset
from .training_data import DATA_OPTIONS, DEFAULT_CLEAN_FRACTION, data_options, make_dataset

__all__ = ["DATA_OPTIONS", "DEFAULT_CLEAN_FRACTION", "DEFAULT_SIGMA_N", "MNIST_PAD", "NAMED_DATASETS", "AmbientDataset",
           "BaseDataset", "Split", "check_split_options", "data_options", "is_noisy_dataset", "load_dataset",
           "make_dataset", "split_clean_noisy"]
