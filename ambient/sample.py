"""Generate images from a trained checkpoint with EDM's Heun sampler.

    python -m ambient.sample --ckpt runs/00000-mnist-tiny --out grid.png   # a PNG grid of seeds 0-63
    python -m ambient.sample --ckpt RUN --seeds 0-9999 --out images/        # a folder of PNGs
    python -m ambient.sample --ckpt RUN --seeds 0-49999 --out samples.npz   # uint8 array (N, H, W, C)

Image i comes from seed i, whatever the batch size. (`python sample.py ...` in a checkout is the same.)
"""
import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

from ambient.common import cli
from ambient.common.images import MAX_GRID, npz_writer, save_grid, save_pngs, to_uint8
from ambient.io import CheckpointError, load_network
from ambient.model import generate, seed_classes
from ambient.model.sampler import check_schedule, check_sigma_stop


def check_class(class_idx: int | None, label_dim: int) -> None:
    """ValueError unless --class `class_idx` is absent or one of a conditional model's `label_dim` classes."""
    if class_idx is None:
        return
    if not label_dim:
        raise ValueError(f"--class {class_idx}: this model is unconditional (it has no classes)")
    if class_idx >= label_dim:
        raise ValueError(f"--class {class_idx}: this model has {label_dim} classes (0-{label_dim - 1})")


def main(argv: list[str] | None = None) -> int:
    """Sample from a command line; the exit status: 0 done, 1 an error (one line)."""
    p = argparse.ArgumentParser(prog=" ".join(cli.invocation("ambient.sample")), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory, or a run directory (its newest checkpoint)")
    p.add_argument("--out", required=True, help="*.png (grid), *.npz, or a folder for one PNG per image")
    p.add_argument("--seeds", type=cli.int_range, default=cli.int_range("0-63"), help="e.g. 0-63 or 1,5,7-9")
    p.add_argument("--batch", type=cli.positive_int, default=64)
    p.add_argument("--weights", choices=("ema", "net"), default="ema", help="EMA (default) or raw weights")
    p.add_argument("--steps", type=cli.positive_int, default=18, help="Heun steps (2 evaluations each but the last)")
    p.add_argument("--sigma-min", type=cli.positive_float, default=0.002)
    p.add_argument("--sigma-max", type=cli.positive_float, default=80.0)
    p.add_argument("--rho", type=cli.positive_float, default=7.0)
    p.add_argument("--churn", type=cli.nonneg_float, default=0.0, help="S_churn (0: deterministic)")
    p.add_argument("--s-min", type=cli.nonneg_float, default=0.0)
    p.add_argument("--s-max", type=cli.nonneg_float, default=float("inf"))
    p.add_argument("--s-noise", type=cli.positive_float, default=1.0)
    p.add_argument("--sigma-stop", type=cli.positive_float,
                   help="stop early at this noise level, return the denoised estimate")
    p.add_argument("--class", dest="class_idx", type=cli.nonneg_int,
                   help="class label (conditional models; default: seed mod classes)")
    p.add_argument("--device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be >= 2")
    try:
        check_schedule(a.steps, a.sigma_min, a.sigma_max, a.rho)
        if a.sigma_stop is not None:
            check_sigma_stop(a.sigma_stop, a.sigma_min, a.sigma_max)
    except ValueError as e:
        p.error(str(e))
    out, n = Path(a.out), len(a.seeds)
    try:                                          # the output is checked before any work
        if out.suffix == ".png" and n > MAX_GRID:
            raise ValueError(f"a grid of {n} images is more than {MAX_GRID}; write them to a folder or an .npz")
        cli.check_output(out, kind="file" if out.suffix in (".png", ".npz") else "folder")
        net, meta = load_network(a.ckpt, which=a.weights, device=a.device)
        check_class(a.class_idx, net.label_dim)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    res, ch = net.img_resolution, net.img_channels
    labels = seed_classes(net.label_dim, a.class_idx)      # class indices: EDMPrecond makes them one-hot
    kw = dict(num_steps=a.steps, sigma_min=a.sigma_min, sigma_max=a.sigma_max, rho=a.rho, S_churn=a.churn,
              S_min=a.s_min, S_max=a.s_max, S_noise=a.s_noise, sigma_stop=a.sigma_stop)
    from tqdm import tqdm
    batches = tqdm(generate(net, a.seeds, (ch, res, res), batch=a.batch, device=a.device, class_labels=labels, **kw),
                   total=-(-n // a.batch), unit="batch")
    try:
        if out.suffix in (".png", ".npz"):
            out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".png":
            save_grid(torch.cat([images for _, images in batches]), out)
        elif out.suffix == ".npz":                # streamed: one batch in memory at a time
            with npz_writer(out) as add:
                with add("images", (n, res, res, ch), np.uint8) as f:
                    for _, images in batches:
                        f.write(to_uint8(images).tobytes())
                with add("seeds", (n,), np.int64) as f:
                    seeds = iter(a.seeds)
                    while chunk := list(itertools.islice(seeds, 1 << 16)):
                        f.write(np.array(chunk, dtype=np.int64).tobytes())
        else:
            for seeds, images in batches:
                save_pngs(images, seeds, out)
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {n} images to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
