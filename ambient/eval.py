"""Evaluate a trained checkpoint: generate images from seeds 0..n-1 and measure their quality.

    python -m ambient.eval --ckpt runs/00000-mnist-tiny                       # FD-MNIST + floor, KID, classes
    python -m ambient.eval --ckpt RUN --n 10000 --out metrics.json
    python -m ambient.eval --ckpt RUN --metric fid --ref cifar10.zip --inception-path inception.pt

FD-MNIST (1x32x32 models) is printed with its real-vs-real floor at the same n; FID is clean-fid's
"clean" FID against a reference folder or EDM zip. Images are generated batch by batch and never
written to disk. The metrics JSON is written atomically (temp file + rename).
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch

from . import cli, metrics
from .checkpoint import CheckpointError
from .images import generate
from .loading import load_network

METRICS = ("fd_mnist", "fid")


def _labels(label_dim: int):
    """Class labels seed mod label_dim for conditional models (as sample.py does), else None."""
    if not label_dim:
        return None
    return lambda seeds: torch.nn.functional.one_hot(torch.tensor(list(seeds)) % label_dim, label_dim).float()


def evaluate(ckpt: str | os.PathLike, *, n: int = 1000, steps: int = 18, metric: str = "fd_mnist",
             ref: str | os.PathLike | None = None, inception_path: str | os.PathLike | None = None,
             batch: int = 100, weights: str = "ema", cache_dir: str | os.PathLike | None = None,
             device: str = "cpu", progress: bool = True) -> dict:
    """Metrics of the images a checkpoint generates from seeds 0..n-1 with `steps` Heun steps.

    fd_mnist: {"fd_mnist", "fd_mnist_sd", "fd_mnist_floor", "floor_n", "kid", "class_histogram", ...};
    fid: {"fid", "ref"}; both also carry "n", "steps", "ckpt", "kimg", "seconds".
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if n < 2 or steps < 2:
        raise ValueError(f"need n >= 2 and steps >= 2, got n={n}, steps={steps}")
    if metric == "fid" and ref is None:
        raise ValueError("--metric fid needs --ref (a folder of images or an EDM data set zip)")
    if metric == "fd_mnist" and ref is not None:
        raise ValueError("--ref applies to --metric fid; FD-MNIST always compares with the embedded MNIST-5k")
    if ref is not None and not Path(ref).exists():
        raise FileNotFoundError(f"reference images not found: {ref}")
    start = time.perf_counter()
    net, meta = load_network(ckpt, which=weights, device=device)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    if metric == "fd_mnist" and shape != (1, 32, 32):
        raise ValueError(f"FD-MNIST needs a model of 1x32x32 images, this one makes {'x'.join(map(str, shape))}: "
                         f"use --metric fid --ref REFERENCE_IMAGES")

    def batches() -> Iterator[torch.Tensor]:
        from tqdm import tqdm
        stream = generate(net, range(n), shape, batch=batch, device=device, class_labels=_labels(net.label_dim),
                          num_steps=steps)
        with tqdm(total=n, unit="img", desc="generating", disable=not progress, dynamic_ncols=True) as bar:
            for _, images in stream:
                bar.update(len(images))
                yield images

    if metric == "fd_mnist":
        out = metrics.fd_mnist(torch.cat(list(batches())), cache_dir=cache_dir, device=device)
        out["class_histogram"] = out["class_histogram"].tolist()
    else:
        out = {"fid": metrics.fid_cleanfid(batches(), ref, inception_path=inception_path, device=device),
               "ref": str(ref)}
    out.update(metric=metric, n=n, steps=steps, weights=weights, ckpt=str(ckpt), kimg=meta.get("kimg"),
               seconds=round(time.perf_counter() - start, 1))
    return out


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write `data` as indented JSON through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)                    # mkstemp makes the file private; metrics are for reading
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def summary(m: dict) -> str:
    """One line for the terminal."""
    if m["metric"] == "fid":
        return f"FID {m['fid']:.3f} (n = {m['n']}, {m['steps']} steps) against {m['ref']}"
    return (f"FD-MNIST {m['fd_mnist']:.3f} (bootstrap sd {m['fd_mnist_sd']:.3f}; floor {m['fd_mnist_floor']:.3f} "
            f"at n = {m['floor_n']}), "
            f"KID {m['kid']:.5f}, n = {m['n']}, {m['steps']} steps; classes {m['class_histogram']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ambient.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory, or a run directory (its newest checkpoint)")
    p.add_argument("--n", type=cli.positive_int, default=1000, help="number of images (seeds 0..n-1)")
    p.add_argument("--steps", type=cli.positive_int, default=18, help="Heun sampler steps")
    p.add_argument("--out", default="metrics.json", help="metrics JSON file")
    p.add_argument("--metric", choices=METRICS, default="fd_mnist")
    p.add_argument("--ref", help="--metric fid: reference folder of images or EDM data set zip")
    p.add_argument("--inception-path", help="--metric fid: Inception weights file or folder (never downloaded)")
    p.add_argument("--batch", type=cli.positive_int, default=100)
    p.add_argument("--weights", choices=("ema", "net"), default="ema")
    p.add_argument("--cache-dir", help="FD-MNIST classifier cache (default $AMBIENT_CACHE or ~/.cache/ambient)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        m = evaluate(a.ckpt, n=a.n, steps=a.steps, metric=a.metric, ref=a.ref, inception_path=a.inception_path,
                     batch=a.batch, weights=a.weights, cache_dir=a.cache_dir, device=a.device,
                     progress=not a.no_progress)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(m))
    print(f"wrote {write_json(m, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
