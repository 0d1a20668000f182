"""Restore a noisy data set with a trained model, and the restoration loop (SFBD, Ambient Dataloops).

    python -m ambient.restore RUN --data noisy.zip --dest restored.zip              # one restoration
    python -m ambient.restore RUN --data noisy.zip --dest loop/ --rounds 3 --kimg 40    # restore -> fine-tune x3
    python -m ambient.restore RUN --dest loop/ --rounds 1 --resume                  # RUN's own noisy images

Each noisy image y (sigma_n > 0) is replaced by a sample of its posterior p(x0 | y) under the model: EDM's
stochastic sampler run as the reverse SDE from x = y at sigma = sigma_n down to 0 (`posterior_sampler`; why it
samples the posterior: docs/design.md, "Restoration"), clamped to [-1, 1]. Clean images are copied as they are.
Image i's draws come from a generator seeded by (--seed, i) alone, so the result does not depend on --batch.

The restored set is a noisy data set (docs/noisy-data.md) that every tool takes (`python train.py --data OUT`,
ambient.eval, ambient.dataset_tool): a restored image is not exactly its clean image, so it carries a residual
noise level sigma_n' in dataset.json, the RMS error of restoration measured where the truth is known: up to
--calibration-images clean images of the set are noised at sigma_n and restored the same way, and
sigma_n' = sqrt(mean (x_hat - x0)^2) per level (interpolated between up to RESIDUAL_LEVELS levels). A set with no
clean image is calibrated on restored images instead (the model's own idea of clean images); dataset.json says
which, and keeps every image's source sigma_n and how it was restored ("restoration").

Without --data, the images restored are those RUN trained on: its data options (a synthetic corruption of a clean
set included) rebuild them, and they are written as a noisy data set first (DEST/data-0 with --rounds, else a
temporary folder beside DEST), so a trained run is all a restoration needs.

With --rounds K, --dest is a folder of K rounds: round k restores --data with the model of round k - 1 (RUN for
the first) into DEST/data-k and fine-tunes that model on it (its weights, a fresh optimiser: SFBD's Algorithm 1),
with RUN's training settings (--kimg to change its length), into DEST/run-k. With --resume an existing DEST
continues: a data set already written is kept (when the same model and settings made it), a round's run continues
from its last checkpoint, so a killed loop finishes as an uninterrupted one would.

OUT is written beside its place and renamed into it when complete: a failed or killed restoration leaves no
partial OUT, and an existing one is replaced only with --overwrite.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient.common import cli
from ambient.data import BaseDataset, load_dataset, make_dataset
from ambient.data.sources import LABELS_FILE, ImageFolderDataset, is_array
from ambient.data.streams import Stream, torch_seed
from ambient.data.tool import write_dataset, write_training_images
from ambient.data.training_data import data_options
from ambient.io import CheckpointError, load_network, read_meta, resolve_checkpoint
from ambient.model.generation import SeededNormals
from ambient.model.sampler import posterior_sampler

RESIDUAL_LEVELS = 8     # the residual noise is calibrated at up to this many levels, interpolated between them
# A round's training: RUN's settings but the data split (the restored set is used as stored) and the run's place.
SPLIT_OPTIONS = ("n_clean", "n_noisy", "clean_fraction", "all_clean", "sigma_n", "sigma_share", "p_clean",
                 "keep_fraction")
PLACE_OPTIONS = ("run_dir", "outdir", "resume", "allow_change", "init_from")


def restore_batch(net: torch.nn.Module, y: torch.Tensor, sigma_n: torch.Tensor, rnd: SeededNormals,
                  labels: torch.Tensor | None = None, *, steps: int = 18,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Posterior samples of the noisy images `y` (N, C, H, W) at levels `sigma_n` (N,), clamped to [-1, 1] (the
    range of a clean image), float32 on the CPU; image k's draws come from `rnd`'s generator k."""
    x = posterior_sampler(net, y.to(device, torch.float64), sigma_n.to(device, torch.float64),
                          None if labels is None else labels.to(device), num_steps=steps, randn_like=rnd.randn_like)
    return x.clamp(-1, 1).float().cpu()


def residual_noise(net: torch.nn.Module, clean: torch.Tensor, levels: Sequence[float],
                   labels: torch.Tensor | None = None, *, seed: int = 0, steps: int = 18, batch: int = 64,
                   device: torch.device | str = "cpu") -> list[float]:
    """sigma_n' at each of `levels`: the RMS error of restoring the images `clean` (M, C, H, W) noised at that level,

        y_j = x0_j + sigma_n z_j,   sigma_n' = sqrt(mean over j and pixels of (x_hat_j - x0_j)^2)

    with x_hat_j = restore_batch(y_j); copy j's noise z_j (shared by every level), then its sampler draws, come from
    one generator seeded by (seed, Stream.CALIBRATE, j). Assumes the restoration error of a noisy image of the set is
    like that of these images, and treats it as white noise of that level."""
    squared = np.zeros(len(levels))
    for start in range(0, len(clean), batch):
        x0 = clean[start:start + batch].to(torch.float64)
        rnd = SeededNormals([torch_seed(seed, Stream.CALIBRATE, j) for j in range(start, start + len(x0))], device)
        z = rnd.randn(x0.shape[1:], device).cpu().to(torch.float64)
        lab = None if labels is None else labels[start:start + batch]
        for k, level in enumerate(levels):
            sigma = torch.full((len(x0),), float(level), dtype=torch.float64)
            x = restore_batch(net, x0 + level * z, sigma, rnd, lab, steps=steps, device=device)
            squared[k] += float((x.double() - x0).square().sum())
    return [float(np.sqrt(s / clean.numel())) for s in squared]


def calibration_levels(sigma_n: np.ndarray) -> np.ndarray:
    """The levels to calibrate at: every distinct noise level of the noisy images, or RESIDUAL_LEVELS quantiles of
    them when there are more (sigma_n' is interpolated linearly between them)."""
    noisy = np.unique(sigma_n[sigma_n > 0])
    return noisy if len(noisy) <= RESIDUAL_LEVELS else np.unique(np.quantile(noisy, np.linspace(0, 1, RESIDUAL_LEVELS)))


def _check(net: torch.nn.Module, ds: BaseDataset, data: str) -> None:
    """ValueError unless `ds` is a noisy data set with noisy images that the model `net` can restore."""
    if ds.sigma_n is None:
        raise ValueError(f"{data} is not a noisy data set (no sigma_n in its dataset.json): there is nothing to "
                         f"restore; make one with python -m ambient.dataset_tool --add-noise")
    if not (ds.sigma_n > 0).any():
        raise ValueError(f"{data} holds clean images only (every sigma_n is 0): there is nothing to restore")
    model_shape = (net.img_channels, net.img_resolution, net.img_resolution)
    if tuple(ds.image_shape) != model_shape:
        raise ValueError(f"{data} holds {'x'.join(map(str, ds.image_shape))} (CxHxW) images, but the model makes "
                         f"{'x'.join(map(str, model_shape))} ones")
    if net.label_dim and not ds.has_labels:
        raise ValueError(f"the model is class-conditional, but {data} has no labels to restore its images with")
    if net.label_dim and int(ds.labels.max()) >= net.label_dim:
        raise ValueError(f"{data} has labels up to {int(ds.labels.max())}, beyond the model's {net.label_dim} classes")


def write_training_set(run: str | Path, dest: str | Path) -> int:
    """Write the images the model of `run` trained on (its recorded data options) as a noisy data set at `dest`,
    atomically; returns their number. dataset.json records whose they are ("training_set")."""
    checkpoint = resolve_checkpoint(run, check_network=True)
    options = {**data_options(read_meta(checkpoint).get("config", {})), "xflip": False, "max_shift": 0}
    ds = make_dataset(**options)
    return write_training_images(ds, str(dest), str(options.get("data", "mnist")),
                                 extra={"training_set": {"checkpoint": str(checkpoint), "describe": ds.describe()}})


def restore_dataset(run: str | Path, data: str | None, dest: str | Path, *, steps: int = 18, seed: int = 0,
                    batch: int = 64, calibration_images: int = 64, weights: str = "ema", overwrite: bool = False,
                    device: str = "cpu", source: str | None = None) -> dict[str, Any]:
    """Write the restoration of noisy data set `data` (None: the images `run` trained on) by the model of `run` to
    `dest` (a folder or .zip), atomically; returns what dataset.json records of it ("restoration"), whose "source"
    is `source` (default: `data`).
    ValueError / FileNotFoundError / FileExistsError / CheckpointError with one clear message on bad input, before
    anything is written."""
    if not overwrite:
        cli.check_destination(dest, option="--dest", archive=str(dest).lower().endswith(".zip"))
    if data is None:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=Path(dest).parent, prefix=f".{Path(dest).name}.source-") as tmp:
            write_training_set(run, Path(tmp) / "data")
            return restore_dataset(run, str(Path(tmp) / "data"), dest, steps=steps, seed=seed, batch=batch,
                                   calibration_images=calibration_images, weights=weights, overwrite=True,
                                   device=device, source=f"the training images of {run}")
    checkpoint = resolve_checkpoint(run, check_network=True)
    net, _ = load_network(checkpoint, which=weights, device=device)
    ds = load_dataset(data)
    _check(net, ds, data)
    assert isinstance(ds, ImageFolderDataset)           # a noisy data set is a folder or a zip
    conditional = bool(net.label_dim)
    sigma_n = ds.sigma_n
    noisy = np.flatnonzero(sigma_n > 0)

    def restored(indices: Sequence[int]) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, len(indices), batch):
            chunk = [int(i) for i in indices[start:start + batch]]
            rnd = SeededNormals([torch_seed(seed, Stream.RESTORE, i) for i in chunk], device)
            x = restore_batch(net, ds.signals(chunk), torch.from_numpy(sigma_n[chunk]), rnd,
                              torch.from_numpy(ds.labels[chunk]) if conditional else None, steps=steps, device=device)
            yield from zip(chunk, x)

    known = np.flatnonzero(sigma_n == 0)[:calibration_images]
    if len(known):
        truth, on = ds.signals(known), "clean images of the set"
    else:                          # no clean image: the model's restorations stand in for them
        known = noisy[:calibration_images]
        truth, on = torch.stack([x for _, x in restored(known)]), "restored images of the set (it has no clean one)"
    levels = calibration_levels(sigma_n)
    residual = residual_noise(net, truth, levels.tolist(), torch.from_numpy(ds.labels[known]) if conditional else None,
                              seed=seed, steps=steps, batch=batch, device=device)
    new_sigma = np.where(sigma_n > 0, np.interp(sigma_n, levels, residual), 0.0)
    record = {"source": source or str(data), "checkpoint": str(checkpoint), "weights": weights, "steps": steps,
              "seed": seed,
              "sampler": "ambient.model.sampler.posterior_sampler: EDM's Algorithm 2 as the reverse SDE from "
                         "sigma_n to 0, clamped to [-1, 1]",
              "residual": {"method": "RMS error of restoring noised copies of known images at each level",
                           "images": on, "count": len(truth),
                           "levels": [[float(s), r] for s, r in zip(levels, residual)]},
              "source_sigma_n": sigma_n.tolist()}

    def items() -> Iterator[tuple[np.ndarray, int, str, float]]:
        out = restored(noisy)
        for i, name in enumerate(ds.image_names):
            where, label = ds.source.where(name), int(ds.labels[i])
            if sigma_n[i] == 0:              # as stored: 8 bits stay 8 bits, a float image stays float
                pixels = ds.source.read_float(name, 0.0) if is_array(name) else ds.source.read_array(name)
            else:
                j, x = next(out)
                assert j == i
                pixels = x.numpy().transpose(1, 2, 0)
            yield pixels, label, where, float(new_sigma[i])

    with _replacing(Path(dest)) as target:
        write_dataset(str(target), items(), has_labels=ds.has_labels, extra={"restoration": record})
    return record


class _replacing:
    """The path to write a data set to: `dest` itself, or when it exists a new name beside it, swapped in when the
    block ends (the old one is renamed aside first and removed last, so a kill loses neither)."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.new = dest.with_name(f".{dest.name}.new{dest.suffix}") if dest.exists() else dest

    def __enter__(self) -> Path:
        return self.new

    def __exit__(self, kind: type | None, *_: object) -> None:
        if kind is not None or self.new == self.dest:
            return
        old = self.dest.with_name(f".{self.dest.name}.old{self.dest.suffix}")
        os.replace(self.dest, old)
        os.replace(self.new, self.dest)
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()


def round_config(meta: dict[str, Any], data: str, run_dir: str, init_from: str, kimg: float | None,
                 resume: bool = False) -> Any:
    """The TrainConfig of a round: the trained run's own settings (`meta["config"]`), on `data` as stored, in
    `run_dir`, starting from the weights of `init_from`, for `kimg` (None: the run's); with `resume`, continuing
    `run_dir` where it has a checkpoint."""
    from ambient.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    keep = {k: v for k, v in meta.get("config", {}).items()
            if k in fields and k not in SPLIT_OPTIONS + PLACE_OPTIONS}
    return TrainConfig(**{**keep, "data": data, "run_dir": run_dir, "init_from": init_from,
                          **({"kimg": kimg} if kimg is not None else {}), **({"resume": "auto"} if resume else {})})


def _kept(path: Path, entry: str, expected: dict[str, Any]) -> bool:
    """Whether a resumed loop keeps the data set at `path`: False where there is none; True where its dataset.json
    `entry` records `expected`; ValueError where another model or other settings made it."""
    if not path.exists():
        return False
    try:
        recorded = json.loads((path / LABELS_FILE).read_text()).get(entry, {})
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path} is not a data set this loop wrote ({type(e).__name__}: {e}); give a new --dest") \
            from None
    differ = sorted(k for k, v in expected.items() if recorded.get(k) != v)
    if differ:
        raise ValueError(f"{path} was made with other {', '.join(differ)} than this loop's "
                         f"({', '.join(f'{recorded.get(k)!r} != {expected[k]!r}' for k in differ)}); give a new --dest")
    return True


def restoration_loop(run: str | Path, data: str | None, dest: str | Path, *, rounds: int, kimg: float | None = None,
                     resume: bool = False, **restore_kw: Any) -> list[tuple[Path, Path]]:
    """K rounds of restore -> fine-tune (`python -m ambient.restore --rounds`) of `data` (None: the images `run`
    trained on, written to DEST/data-0 first); with `resume`, an existing `dest` continues (module docstring).
    Returns each round's (data set, run)."""
    from ambient.train import train

    dest = Path(dest)
    if str(dest).lower().endswith(".zip"):
        raise ValueError("--rounds writes a folder of rounds (data-1, run-1, ...); give --dest a folder, not a .zip")
    if not (resume and dest.is_dir()):
        cli.check_destination(dest, option="--dest")
    checkpoint = resolve_checkpoint(run, check_network=True)
    meta = read_meta(checkpoint)
    round_config(meta, data or "mnist", str(dest / "run-1"), str(run), kimg)    # its settings checked before any work
    if data is None:
        data = str(dest / "data-0")
        if not _kept(Path(data), "training_set", {"checkpoint": str(checkpoint)}):
            write_training_set(run, data)
    settings = {k: restore_kw[k] for k in ("steps", "seed", "weights") if k in restore_kw}
    done, model = [], Path(run)
    for k in range(1, rounds + 1):
        data_k, run_k = dest / f"data-{k}", dest / f"run-{k}"
        made_by = {"source": str(data), "checkpoint": str(resolve_checkpoint(model, check_network=True)), **settings}
        if not _kept(data_k, "restoration", made_by):
            restore_dataset(model, data, data_k, **restore_kw)
            print(f"round {k}: restored {data} with {model} into {data_k}", flush=True)
        train(round_config(meta, str(data_k), str(run_k), str(model), kimg, resume))
        done.append((data_k, run_k))
        model = run_k
    return done


def main(argv: list[str] | None = None) -> int:
    """Restore from a command line; the exit status: 0 done, 1 an error (one line)."""
    p = argparse.ArgumentParser(prog=" ".join(cli.invocation("ambient.restore")), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="the model: a run directory (its newest checkpoint) or a checkpoint directory")
    p.add_argument("--data", help="the noisy data set (folder or .zip with sigma_n in dataset.json); default: the "
                                  "images RUN trained on")
    p.add_argument("--dest", required=True, help="the restored data set (folder or .zip); with --rounds a folder")
    p.add_argument("--steps", type=cli.positive_int, default=18, help="sampler steps over [0, sigma_n]")
    p.add_argument("--seed", type=cli.nonneg_int, default=0, help="fixes every draw (image i: a function of it and i)")
    p.add_argument("--batch", type=cli.positive_int, default=64)
    p.add_argument("--calibration-images", type=cli.positive_int, default=64,
                   help="images the residual noise level is measured on")
    p.add_argument("--weights", choices=("ema", "net"), default="ema")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dest (not with --rounds)")
    p.add_argument("--rounds", type=cli.positive_int, help="restore -> fine-tune this many times")
    p.add_argument("--kimg", type=cli.positive_float, help="with --rounds: each round's training length")
    p.add_argument("--resume", action="store_true", help="with --rounds: continue an existing --dest")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be >= 2")
    if a.rounds is None and a.kimg is not None:
        p.error("--kimg applies to --rounds only")
    if a.rounds is not None and a.overwrite:
        p.error("--overwrite does not apply to --rounds (each round writes new folders)")
    if a.rounds is None and a.resume:
        p.error("--resume applies to --rounds only")
    kw = dict(steps=a.steps, seed=a.seed, batch=a.batch, calibration_images=a.calibration_images, weights=a.weights,
              device=a.device)
    try:
        if a.rounds is None:
            record = restore_dataset(a.run, a.data, a.dest, overwrite=a.overwrite, **kw)
            levels = ", ".join(f"{s:g} -> {r:.4g}" for s, r in record["residual"]["levels"])
            print(f"wrote {a.dest}: sigma_n -> residual sigma_n' {levels} (measured on {record['residual']['count']} "
                  f"{record['residual']['images']})")
            for s, r in record["residual"]["levels"]:
                if r >= s:
                    print(f"warning: at sigma_n {s:g} the restored images are further from the truth ({r:.4g}) than "
                          f"the noisy ones; the model does not restore at that level", file=sys.stderr)
        else:
            for data_k, run_k in restoration_loop(a.run, a.data, a.dest, rounds=a.rounds, kimg=a.kimg,
                                                 resume=a.resume, **kw):
                print(f"wrote {data_k} and {run_k}")
    except (ValueError, OSError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
