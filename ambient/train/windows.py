"""Per-image noise windows: the sigma-first batch sampler of Ambient-o (Daras et al., "Ambient Diffusion Omni",
arXiv 2506.10038; docs/design.md, "Per-image noise windows").

Image i may be used only at training noise levels s >= sigma_tn_i (its window; >= its sigma_n, 0 for a clean image).
Instead of drawing an image and then a level for it (which, under "clamp", spends a share of a noisy image's draws at
s = sigma_n, where its loss and gradient are exactly zero), the sampler draws the level first and then an image
admissible there. Global sample position p of step t (p = t B + j, j < B) gets:

    z_p, u_p                                  Philox keyed (seed, Stream.WINDOW), counter t: z ~ N(0, 1), u ~ U[0, 1)
    s_floor = min_i sigma_tn_i                0 when any image is clean
    s_p = exp(P_mean + P_std Phi^-1(L + (1 - L) Phi(z_p))),  L = Phi((ln s_floor - P_mean) / P_std)
                                              ln s ~ N(P_mean, P_std^2) given s >= s_floor (loss.sample_sigma
                                              "truncate"), in float32, rounded up to s_floor where float32 fell below
    A(s) = {i : sigma_tn_i <= s}              in ascending (sigma_tn_i, i) order
    i_p = A(s_p)[floor(u_p |A(s_p)|)]         uniform over the images admissible at s_p
    w_p = |A(s_p)| / N                        the loss factor, only with `factor` (docs/design.md: it makes the
                                              objective exactly the image-first one)

so every draw is a function of (seed, step, position) alone, the same for any world size, micro-batch and resume,
and s_p >= sigma_tn_{i_p} holds exactly for the float32 level the loss is given.
"""
from collections.abc import Iterator

import numpy as np
import torch

from ambient.data.order import check_positions
from ambient.data.streams import Stream, philox
from ambient.model import sample_sigma


def _float32_at_least(x: float) -> np.float32:
    """The smallest float32 >= x."""
    f = np.float32(x)
    return f if f >= x else np.nextafter(f, np.float32(np.inf))


class SigmaFirstSampler(torch.utils.data.Sampler):
    """Yields (index, epoch, {"sigma": s_p}) for this rank, forever, from global position `start` on: the image i_p and
    the noise level s_p of each position (module docstring), with "weight": w_p too when `factor`; epoch = p // N
    selects the augmentation draws.

    Rank r takes positions [t B + r B/W, t B + (r + 1) B/W) of step t, as GlobalOrderSampler does.
    """

    def __init__(self, windows: np.ndarray, batch: int, rank: int, world_size: int, seed: int, *, P_mean: float,
                 P_std: float, factor: bool = False, start: int = 0):
        check_positions(batch, world_size, start)
        windows = np.asarray(windows, dtype=np.float64)
        self.order = np.argsort(windows, kind="stable")      # ascending (sigma_tn_i, i)
        self.sorted = windows[self.order]
        self.floor = float(self.sorted[0])
        self.n, self.batch, self.rank, self.world, self.seed, self.start = len(windows), batch, rank, world_size, \
            seed, start
        self.P_mean, self.P_std, self.factor = P_mean, P_std, factor

    def draws(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s, i, w): the float32 noise levels, the item indices and the loss factors of the B positions of step
        `step`."""
        rng = philox(self.seed, Stream.WINDOW, step)
        z, u = rng.standard_normal(self.batch), rng.random(self.batch)
        floor = torch.full((self.batch,), self.floor, dtype=torch.float64)
        s = sample_sigma(floor, torch.from_numpy(z), P_mean=self.P_mean, P_std=self.P_std, mode="truncate").numpy()
        s = np.maximum(s, _float32_at_least(self.floor))
        k = np.searchsorted(self.sorted, s.astype(np.float64), side="right")    # |A(s)| >= 1, since s >= s_floor
        return s, self.order[np.minimum((u * k).astype(np.int64), k - 1)], k / self.n

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        per_rank = self.batch // self.world
        step = self.start // self.batch
        while True:
            s, index, w = self.draws(step)
            for j in range(self.rank * per_rank, (self.rank + 1) * per_rank):
                fields = {"sigma": float(s[j]), "weight": float(w[j])} if self.factor else {"sigma": float(s[j])}
                yield int(index[j]), (step * self.batch + j) // self.n, fields
            step += 1
