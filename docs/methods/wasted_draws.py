"""The wasted draws of a training run, counted without training: `python docs/methods/wasted_draws.py [TRAIN FLAGS]`.

Replays the draws that `python train.py [TRAIN FLAGS]` makes on one process (its data order and noise levels:
GlobalOrderSampler, step_randomness, sample_sigma) and those it makes with --sigma-min-per-image (SigmaFirstSampler),
over the run's cfg.kimg, and counts them with the trainer's own draw_counts (docs/design.md, "Per-image noise windows").
"""
import itertools
import sys

import torch

from ambient.data import make_dataset
from ambient.data.order import GlobalOrderSampler
from ambient.model import sample_sigma
from ambient.train import cli
from ambient.train.loop import draw_counts
from ambient.train.step import step_randomness
from ambient.train.windows import SigmaFirstSampler


def main(argv: list[str]) -> None:
    cfg = cli.parse_args(argv)
    ds = make_dataset(**cfg.data_options())
    order = iter(GlobalOrderSampler(len(ds), cfg.batch, 0, 1, cfg.data_seed))
    windows = SigmaFirstSampler(ds.sigma_tn_of, cfg.batch, 0, 1, cfg.seed, P_mean=cfg.P_mean, P_std=cfg.P_std)
    shape = (ds.num_channels, ds.resolution, ds.resolution)
    first, second = torch.zeros(3), torch.zeros(3)
    for step in range(round(cfg.kimg * 1000 / cfg.batch)):
        sigma_n = torch.tensor(ds.sigma_n_of[[i for i, _ in itertools.islice(order, cfg.batch)]]).float()
        normals = step_randomness(cfg.seed, step, cfg.batch, shape, torch.device("cpu"), draw_eps=False)[1]
        first += draw_counts(sample_sigma(sigma_n, normals, P_mean=cfg.P_mean, P_std=cfg.P_std,
                                          mode=cfg.sigma_sampling), sigma_n)
        s, index, _ = windows.draws(step)
        second += draw_counts(torch.from_numpy(s), torch.tensor(ds.sigma_n_of[index]).float())
    print(ds.describe())
    for name, (total, noisy, wasted) in ((f"image first ({cfg.sigma_sampling})", first.tolist()),
                                         ("--sigma-min-per-image", second.tolist())):
        print(f"{name}: {total:.0f} draws, {noisy:.0f} of noisy images, {wasted:.0f} wasted: {wasted / total:.4f} of "
              f"all, {wasted / noisy:.4f} of the noisy images' draws")


if __name__ == "__main__":
    main(sys.argv[1:])
