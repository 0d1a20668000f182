"""The training data of a run, from its data options (the fields of `ambient.train.TrainConfig` of the same
names): the library's default split lives here, so a run from the command line and one from `TrainConfig()`
train on the same images.

    a clean data set, no choice given:  DEFAULT_CLEAN_FRACTION clean, the rest noisy at DEFAULT_SIGMA_N
    a noisy data set:                   as stored (all of its clean images unless n_clean says fewer)
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Mapping, Sequence
from typing import Any

from .corruption import AmbientDataset, check_split_options
from .sources import load_dataset

DEFAULT_CLEAN_FRACTION = 0.1    # the paper's setting: 10% clean + 90% noisy


def make_dataset(data: str | os.PathLike = "mnist", *, n_clean: int | None = None, n_noisy: int | None = None,
                 clean_fraction: float | None = None, all_clean: bool = False,
                 sigma_n: Sequence[float] | None = None, sigma_share: Sequence[float] | None = None,
                 p_clean: float | None = None, keep_fraction: float = 1.0, data_seed: int = 0,
                 xflip: bool = False, max_shift: int = 0, cond: bool = False) -> AmbientDataset:
    """The AmbientDataset these options describe (check_split_options says which combinations are allowed):
    a clean data set corrupted synthetically, or a noisy data set as stored.

    clean_fraction keeps round(clean_fraction N) images clean; all_clean keeps all of them (plain EDM training);
    none of n_clean, n_noisy, clean_fraction, p_clean, all_clean on a clean set: clean_fraction
    DEFAULT_CLEAN_FRACTION. `cond` asks for labels.
    """
    base = load_dataset(data)
    check_split_options(noisy_set=base.name if base.sigma_n is not None else None, n_clean=n_clean,
                        n_noisy=n_noisy, clean_fraction=clean_fraction, p_clean=p_clean,
                        keep_fraction=keep_fraction, all_clean=all_clean, sigma_n=sigma_n, sigma_share=sigma_share)
    if cond and not base.has_labels:
        raise ValueError(f"cond needs labels, but data set {data!r} has none (add a dataset.json)")
    chosen = all_clean or any(v is not None for v in (n_clean, n_noisy, clean_fraction, p_clean))
    if not chosen and base.sigma_n is None:
        clean_fraction = DEFAULT_CLEAN_FRACTION
    if clean_fraction is not None:
        n_clean = round(clean_fraction * len(base))
    return AmbientDataset(base, n_clean=n_clean, n_noisy=0 if all_clean else n_noisy,
                          sigma_n=list(sigma_n) if sigma_n is not None else None,
                          sigma_share=list(sigma_share) if sigma_share else None, seed=data_seed, p_clean=p_clean,
                          keep_fraction=keep_fraction, xflip=xflip, max_shift=max_shift)


DATA_OPTIONS = tuple(inspect.signature(make_dataset).parameters)     # the names of a run's data options


def data_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The make_dataset arguments among a run's recorded options (config.json, a checkpoint's meta)."""
    return {k: config[k] for k in DATA_OPTIONS if k in config}
