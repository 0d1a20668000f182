"""Every random draw of the data and of a training step, as a pure function of (seed, purpose, position).

The data's draws come from counter-based Philox generators, one `Stream` per purpose: the key is (seed, stream)
and the image index and epoch sit in the counter, so a draw is the same in every epoch, DataLoader worker, rank,
process and resume (docs/design.md, "Data corruption is fixed"). Where torch itself draws (the data order, a
step's noise levels and noise, dropout) its generators are seeded from the run's seed by the functions below,
the only places that mix a seed with a counter; the consistency loss's draws are a Philox stream of their own.
"""
import enum

import numpy as np

SEED_MULTIPLIER = 1_000_003     # a prime: seed * SEED_MULTIPLIER + counter keeps the seeds of two runs apart


class Stream(enum.IntEnum):
    """The purpose of a Philox stream, its key's second word: one per purpose, so the streams never overlap."""

    SUBSET = 1      # load_dataset(max_size=...)
    SELECT = 2      # which images are used / clean (ambient.data.split_clean_noisy)
    LEVEL = 3       # which noise level each noisy image gets
    BERNOULLI = 4   # per-image clean/noisy coin (p_clean mode)
    NOISE = 5       # the fixed noise z_i of image i (ambient.data.AmbientDataset)
    AUGMENT = 6     # flips and shifts of image i in an epoch
    WINDOW = 7      # a step's noise levels and images under per-image noise windows (the sigma-first sampler)
    RESTORE = 8     # the posterior sampler's draws for image i of a restored data set (python -m ambient.restore)
    CALIBRATE = 9   # the noise and sampler draws of calibration copy j of a restoration's residual noise
    CONSISTENCY = 10 # the consistency loss's level and sampler noise for sample position i of a step


def philox(seed: int, stream: Stream, index: int = 0, epoch: int = 0) -> np.random.Generator:
    """Generator whose whole output is a pure function of (seed, stream, index, epoch).

    The key is (seed, stream); index and epoch sit in the two upper counter words, so each tuple owns
    2**128 counter blocks that no other tuple reaches.
    """
    key = np.array([seed, stream], dtype=np.uint64)
    counter = np.array([0, 0, index, epoch], dtype=np.uint64)
    return np.random.Generator(np.random.Philox(key=key, counter=counter))


def torch_seed(seed: int, stream: Stream, index: int) -> int:
    """A torch.Generator seed that is a pure function of (seed, stream, index): 63 bits of that Philox stream."""
    return int(philox(seed, stream, index).integers(2**63))

def consistency_rng(seed: int, step: int, position: int) -> np.random.Generator:
    """Generator of the consistency loss's draws for the sample at global `position` of training step `step`:
    philox(seed, CONSISTENCY, index=position, epoch=step), a stream no other draw touches."""
    return philox(seed, Stream.CONSISTENCY, position, step)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the data order of `epoch`: seed * SEED_MULTIPLIER + epoch."""
    return seed * SEED_MULTIPLIER + epoch


def step_seed(seed: int, step: int) -> int:
    """Seed of everything random in training step `step`: (seed SEED_MULTIPLIER + 7919 step + 12345) mod (2^31 - 1)."""
    return (seed * SEED_MULTIPLIER + step * 7_919 + 12_345) % (2**31 - 1)


def dropout_seed(step_seed: int, position: int) -> int:
    """Seed of the dropout masks of the micro-batch whose first sample sits at global `position` of its step."""
    return step_seed + 1 + position
