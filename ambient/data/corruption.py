"""The ambient training data: a base data set with a fixed clean/noisy split and fixed noise.

`split_clean_noisy` decides once and for all which images of a base data set (`ambient.data.sources`) are
clean and which are noisy, and the noise level of each noisy one; `AmbientDataset` gives every noisy image
a fixed noise draw z_i, so y_i = x0_i + sigma_n * z_i is the same in every epoch, DataLoader worker, rank,
process and resume (docs/design.md, "Data corruption is fixed"); on a noisy data set it takes the stored
images and their stored sigma_n as they are.

All randomness comes from counter-based Philox generators keyed by (seed, purpose) with the image index
(and epoch) in the counter (`ambient.data.streams`), so every draw is a pure function of its key; the global
RNGs are never used. `check_split_options` holds the rules on how the clean images are chosen.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .sources import SIGMA_N_MAX, BaseDataset, as_int, check_item
from .streams import Stream, philox

DEFAULT_SIGMA_N = 0.2       # noise level of synthetic noisy images unless one is given


def _as_fraction(name: str, value: Any) -> float:
    """`value` as a float in [0, 1], else ValueError naming `name`."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= result <= 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return result


def _as_key(name: str, value: Any) -> int:
    """`value` as an int in [0, 2**64) (a word of a Philox key or counter), else ValueError naming `name`."""
    result = as_int(name, value)
    if result >= 2**64:
        raise ValueError(f"{name} must be < 2**64, got {value}")
    return result


def _noise_levels(sigma_n: float | Sequence[float]) -> tuple[float, ...]:
    """Validated noise levels of the noisy images: one or more distinct finite numbers > 0."""
    levels_in = [sigma_n] if np.ndim(sigma_n) == 0 else list(sigma_n)  # type: ignore[arg-type]
    if not levels_in:
        raise ValueError("sigma_n must name at least one noise level")
    levels = []
    for value in levels_in:
        try:
            level = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"sigma_n must be a number or a list of numbers, got {str(value)[:40]}") from None
        if not 0 <= level <= SIGMA_N_MAX:          # NaN and inf fail too
            raise ValueError(f"sigma_n must be finite, >= 0 and <= {SIGMA_N_MAX:g} (the sampler's largest noise "
                             f"level), got {value!r}")
        if level == 0:
            raise ValueError("sigma_n = 0 among the noise levels of the noisy images: clean images are "
                             "set with n_clean (or p_clean), not with a zero noise level")
        levels.append(level)
    if len(set(levels)) != len(levels):
        raise ValueError(f"sigma_n lists a noise level twice: {levels}")
    return tuple(levels)


def _largest_remainder(shares: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to `shares` summing exactly to `total` (largest-remainder rounding;
    ties go to the earlier level)."""
    exact = shares * total
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _exact_counts(n_clean: int | None, n_noisy: int | None, n: int) -> tuple[int, int]:
    """Resolve n_clean / n_noisy (None = all the remaining images) against a base of n images."""
    clean = None if n_clean is None else as_int("n_clean", n_clean)
    noisy = None if n_noisy is None else as_int("n_noisy", n_noisy)
    requested = (clean or 0) + (noisy or 0)
    if requested > n:
        raise ValueError(f"n_clean + n_noisy = {clean or 0} + {noisy or 0} = {requested} is more than "
                         f"the {n} images of the base data set")
    if clean is None:
        clean = 0 if noisy is None else n - noisy
    if noisy is None:
        noisy = n - clean
    return clean, noisy


def check_split_options(*, noisy_set: str | None = None, n_clean: int | None = None, n_noisy: int | None = None,
                        clean_fraction: float | None = None, p_clean: float | None = None,
                        keep_fraction: float = 1.0, all_clean: bool = False,
                        sigma_n: float | Sequence[float] | None = None, sigma_share: Sequence[float] | None = None,
                        name: Callable[[str], str] = str) -> None:
    """The rules on how a run says which images are clean and how the others are corrupted; ValueError naming
    the options at fault, each as `name(field)` (the command line passes its flag names).

    - one way to choose the clean images: exact counts (n_clean / n_noisy), clean_fraction, p_clean (the
      paper's Bernoulli mode, with keep_fraction) or all_clean;
    - keep_fraction belongs to the Bernoulli mode;
    - a noisy data set (`noisy_set`, its name) is used as stored: no option that corrupts clean images applies,
      only n_clean (how many of its clean images to keep);
    - sigma_share has one share per level of sigma_n.
    Every caller checks through here: AmbientDataset, split_clean_noisy, make_dataset and the command lines.
    """
    if noisy_set is not None:
        synthetic = [name(field) for field, given in (
            ("n_noisy", n_noisy is not None), ("sigma_n", sigma_n is not None),
            ("sigma_share", sigma_share is not None), ("clean_fraction", clean_fraction is not None),
            ("p_clean", p_clean is not None), ("keep_fraction", keep_fraction != 1.0),
            ("all_clean", all_clean)) if given]
        if synthetic:
            raise ValueError(f"{', '.join(synthetic)} choose(s) which clean images to corrupt and how, but {noisy_set} "
                             f"is a noisy data set: its images carry their own noise and sigma_n (dataset.json) and "
                             f"are used as stored; only {name('n_clean')} applies (it keeps that many of the set's "
                             f"clean images)")
    modes = [mode for mode, given in (
        (f"{name('n_clean')}/{name('n_noisy')}", n_clean is not None or n_noisy is not None),
        (name("clean_fraction"), clean_fraction is not None), (name("p_clean"), p_clean is not None),
        (name("all_clean"), all_clean)) if given]
    if len(modes) > 1:
        raise ValueError(f"choose one way to say which images are clean, not {' and '.join(modes)}")
    if keep_fraction != 1.0 and p_clean is None:
        raise ValueError(f"{name('keep_fraction')} applies to the Bernoulli mode ({name('p_clean')}); with exact "
                         f"counts choose the images with {name('n_clean')} / {name('n_noisy')}")
    n_levels = 1 if sigma_n is None or np.ndim(sigma_n) == 0 else len(sigma_n)  # type: ignore[arg-type]
    if sigma_share is not None and len(sigma_share) != n_levels:
        raise ValueError(f"{name('sigma_share')} has {len(sigma_share)} entries but {name('sigma_n')} has "
                         f"{n_levels} levels")


class Split(NamedTuple):
    """Which images of a base data set are clean, which are noisy, and the noise level of each noisy one."""

    clean: np.ndarray   # base indices of the clean images, ascending
    noisy: np.ndarray   # base indices of the noisy images, ascending
    level: np.ndarray   # level[j]: index into sigma_share of the noise level of image noisy[j]


def split_clean_noisy(n: int, *, n_clean: int | None = None, n_noisy: int | None = None,
                      p_clean: float | None = None, keep_fraction: float = 1.0,
                      sigma_share: Sequence[float] = (1.0,), seed: int = 0) -> Split:
    """Choose the clean and the noisy images of a base of n, and the noise level of each noisy one.

    A pure function of its arguments; every draw comes from a Philox stream keyed by (seed, purpose):

        order = permutation(n)                                      stream SELECT
        exact counts (p_clean None; None = all the remaining images, both None = all noisy):
            clean = order[:n_clean]
            noisy = order[n_clean : n_clean + n_noisy]
        Bernoulli (p_clean given, the paper's code):
            kept  = order[:floor(keep_fraction * n)]                at least 1 image
            clean = {i in kept : u_i < p_clean},  u = uniform(n)    stream BERNOULLI: one coin per base image
            noisy = kept - clean
        levels (exact counts per sigma_share, largest remainder):
            count_l = largest_remainder(sigma_share / sum(sigma_share) * |noisy|)
            sorted(noisy)[permutation(|noisy|)]                     stream LEVEL
            its first count_0 images get level 0, the next count_1 level 1, ...

    More clean images (a larger n_clean or p_clean, same seed) keep the old clean ones.
    """
    n = as_int("n", n, minimum=1)
    seed = _as_key("seed", seed)
    shares = np.array([_as_fraction("each sigma_share", s) for s in sigma_share], dtype=np.float64)
    if len(shares) == 0:
        raise ValueError("sigma_share must give at least one share")
    if abs(shares.sum() - 1.0) > 1e-6:
        raise ValueError(f"sigma_share must sum to 1, got {list(sigma_share)} (sum {shares.sum():.9g})")
    check_split_options(n_clean=n_clean, n_noisy=n_noisy, p_clean=p_clean, keep_fraction=keep_fraction)
    order = philox(seed, Stream.SELECT).permutation(n)
    if p_clean is None:
        k_clean, k_noisy = _exact_counts(n_clean, n_noisy, n)
        clean, noisy = order[:k_clean], order[k_clean:k_clean + k_noisy]
    else:
        p_clean, keep_fraction = _as_fraction("p_clean", p_clean), _as_fraction("keep_fraction", keep_fraction)
        # round() absorbs float representation error, e.g. 0.29 * 100 = 28.999999999999996.
        n_kept = math.floor(round(keep_fraction * n, 9))
        if n_kept < 1:
            raise ValueError(f"keep_fraction {keep_fraction:g} of {n} images keeps none; "
                             f"use at least {1 / n:.3g}")
        kept = order[:n_kept]
        coin_is_clean = philox(seed, Stream.BERNOULLI).random(n) < p_clean
        clean, noisy = kept[coin_is_clean[kept]], kept[~coin_is_clean[kept]]
    noisy = np.sort(noisy)
    by_level = philox(seed, Stream.LEVEL).permutation(len(noisy))
    level = np.empty(len(noisy), dtype=np.int64)
    level[by_level] = np.repeat(np.arange(len(shares)), _largest_remainder(shares / shares.sum(), len(noisy)))
    return Split(np.sort(clean), noisy, level)


class AmbientDataset(Dataset):
    """A base data set with a fixed clean/noisy split and fixed noise: the ambient training data.

    Which images are clean and which noisy, and each noisy image's level of `sigma_n` (default
    DEFAULT_SIGMA_N, shares `sigma_share`), is `split_clean_noisy`: exact counts n_clean / n_noisy, or
    Bernoulli with p_clean and keep_fraction (the paper's code). Image i's noise z_i is drawn from Philox
    keyed by (seed, i): the same in every epoch, worker, rank and process. Noisy images are float32
    x0 + sigma_n * z, never clipped or quantised.

    A noisy data set (`base.sigma_n` not None) is used as stored: every noisy image with its own
    sigma_n, no noise added; the synthetic options are refused (`check_split_options`), and n_clean keeps
    that many of its clean images (a prefix of the seeded permutation; default all). Each item's sigma_tn, the
    lowest training noise level it may be used at (docs/design.md, "Per-image noise windows"), is its stored
    sigma_tn where the set gives one, else its sigma_n.

    Augmentation (xflip, integer circular shifts up to max_shift) is a pure function of
    (seed, epoch, index); `set_epoch` selects the epoch (the trainer's `ambient.data.order.EpochIndexed` sets
    it per item from the sampler's (index, epoch), so no DataLoader worker keeps an epoch of its own). The
    shift is circular (torch.roll) for every image: it only permutes pixels, so iid noise stays iid N(0, sigma_n^2) —
    zero padding would create noiseless pixels, interpolation would shrink and correlate the noise —
    and clean and noisy images are treated alike. Resampling augmentations (rotation, scaling, sub-pixel
    shifts, EDM's augment_pipe) are not offered: they interpolate between pixels, which shrinks and correlates
    the fixed noise, so y - x0 would no longer be N(0, sigma_n^2 I) as the ambient loss assumes.

    Items: {"image": float32 (C, H, W), "sigma_n": float (0.0 clean), "label": int (-1 none),
    "index": base index}, ordered by base index.
    """

    def __init__(self, base: BaseDataset, *, n_clean: int | None = None, n_noisy: int | None = None,
                 sigma_n: float | Sequence[float] | None = None, sigma_share: Sequence[float] | None = None,
                 seed: int = 0, p_clean: float | None = None, keep_fraction: float = 1.0,
                 xflip: bool = False, max_shift: int = 0) -> None:
        n = len(base)
        if n == 0:
            raise ValueError("the base data set is empty")
        self.base = base
        self.stored = base.sigma_n is not None   # a noisy data set: images and sigma_n as stored
        self.seed = _as_key("seed", seed)
        self.xflip = bool(xflip)
        self.max_shift = as_int("max_shift", max_shift)
        if self.max_shift >= base.resolution:
            raise ValueError(f"max_shift must be smaller than the resolution {base.resolution}, "
                             f"got {max_shift}")
        self.p_clean = None if p_clean is None else _as_fraction("p_clean", p_clean)
        self.keep_fraction = _as_fraction("keep_fraction", keep_fraction)
        check_split_options(noisy_set=base.name if self.stored else None, n_clean=n_clean, n_noisy=n_noisy,
                            p_clean=p_clean, keep_fraction=self.keep_fraction, sigma_n=sigma_n,
                            sigma_share=sigma_share)

        if self.stored:
            order = philox(self.seed, Stream.SELECT).permutation(n)
            stored_clean = order[base.sigma_n[order] == 0]
            k_clean = len(stored_clean) if n_clean is None else as_int("n_clean", n_clean)
            if k_clean > len(stored_clean):
                raise ValueError(f"n_clean = {k_clean} is more than the {len(stored_clean)} clean images of the "
                                 f"noisy data set {base.name}")
            clean, noisy = stored_clean[:k_clean], np.flatnonzero(base.sigma_n > 0)
            noisy_sigma = base.sigma_n[noisy]
            levels, counts = np.unique(noisy_sigma, return_counts=True)
            self.sigma_levels = tuple(float(s) for s in levels)
        else:
            self.sigma_levels = _noise_levels(DEFAULT_SIGMA_N if sigma_n is None else sigma_n)
            n_levels = len(self.sigma_levels)
            split = split_clean_noisy(n, n_clean=n_clean, n_noisy=n_noisy, p_clean=p_clean,
                                      keep_fraction=keep_fraction, seed=self.seed,
                                      sigma_share=np.full(n_levels, 1.0 / n_levels) if sigma_share is None
                                      else sigma_share)
            clean, noisy = split.clean, split.noisy
            noisy_sigma = np.array(self.sigma_levels)[split.level]
            counts = np.bincount(split.level, minlength=n_levels)

        indices = np.concatenate([clean, noisy]).astype(np.int64)
        sigmas = np.concatenate([np.zeros(len(clean)), noisy_sigma])
        by_index = np.argsort(indices)
        self.indices = indices[by_index]      # base index of each item
        self.sigma_n_of = sigmas[by_index]    # sigma_n of each item, 0.0 for clean
        windows = base.sigma_tn if self.stored else None
        self.sigma_tn_of = self.sigma_n_of if windows is None else windows[self.indices]   # sigma_tn of each item
        self.n_clean = len(clean)
        self.n_noisy = len(noisy)
        self.counts_by_sigma = {level: int(c) for level, c in zip(self.sigma_levels, counts)}
        self.epoch = 0

    @property
    def is_clean(self) -> np.ndarray:
        """Boolean per item: True for clean images."""
        return self.sigma_n_of == 0

    @property
    def resolution(self) -> int:
        return self.base.resolution

    @property
    def num_channels(self) -> int:
        return self.base.num_channels

    @property
    def label_dim(self) -> int:
        return self.base.label_dim

    @property
    def has_labels(self) -> bool:
        return self.base.has_labels

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of `epoch` (the fixed noise does not depend on it)."""
        self.epoch = _as_key("epoch", epoch)

    def noise(self, i: int) -> torch.Tensor:
        """The fixed standard-normal noise z (float64, C x H x W, before augmentation) of item i."""
        if self.stored:
            raise ValueError(f"{self.base.name} stores noisy images, not their noise apart from the image")
        return self._noise(int(self.indices[check_item(i, len(self))]))

    def _noise(self, base_index: int) -> torch.Tensor:
        shape = self.base.image_shape
        return torch.from_numpy(philox(self.seed, Stream.NOISE, base_index).standard_normal(shape))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = check_item(i, len(self))
        base_index = int(self.indices[i])
        sigma = float(self.sigma_n_of[i])
        pixels, label = self.base[base_index]
        image = self.base.as_signal(pixels, torch.float64)   # a noisy set's image holds its stored noise
        if sigma > 0 and not self.stored:
            image = image + sigma * self._noise(base_index)
        image = image.to(torch.float32)
        return {"image": self._augment(image, base_index), "sigma_n": sigma, "label": label,
                "index": base_index}

    def _augment(self, image: torch.Tensor, base_index: int) -> torch.Tensor:
        """Flip / circularly shift `image` by the draws of (seed, epoch, base_index)."""
        if not self.xflip and self.max_shift == 0:
            return image
        rng = philox(self.seed, Stream.AUGMENT, base_index, self.epoch)
        flip = bool(rng.integers(2)) and self.xflip
        dy, dx = (int(s) for s in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
        if flip:
            image = torch.flip(image, dims=(2,))
        if dy or dx:
            image = torch.roll(image, shifts=(dy, dx), dims=(1, 2))
        return image

    def describe(self) -> str:
        """One-line summary, e.g. "mnist: 500 clean + 4500 noisy (sigma_n 0.2: 4500), seed 0"."""
        if self.stored and len(self.counts_by_sigma) > 4:   # e.g. estimated, one level per image
            noisy = self.sigma_n_of[~self.is_clean]
            levels = f"{noisy.min():g} to {noisy.max():g}, median {np.median(noisy):g}"
        else:
            levels = ", ".join(f"{s:g}: {c}" for s, c in self.counts_by_sigma.items())
        stored = "stored " if self.stored else ""
        text = (f"{self.base.name}: {self.n_clean} clean + {self.n_noisy} noisy ({stored}sigma_n {levels}), "
                f"seed {self.seed}")
        if (wider := self.sigma_tn_of > self.sigma_n_of).any():
            text += f", sigma_tn above sigma_n for {int(wider.sum())} (up to {self.sigma_tn_of.max():g})"
        if self.p_clean is not None:
            text += f", bernoulli p_clean {self.p_clean:g} keep_fraction {self.keep_fraction:g}"
        if self.xflip or self.max_shift:
            text += f", augment xflip={self.xflip} max_shift={self.max_shift}"
        return text

    def __repr__(self) -> str:
        return f"AmbientDataset({self.describe()})"
