"""Train an ambient diffusion model.

    python -m ambient.train                      # tiny UNet on the embedded MNIST-5k, 10% clean + 90% noisy
    python -m ambient.train --data DATA.zip --preset ddpmpp --n-clean 5000 --sigma-n 0.2 --batch 512
    python -m ambient.train --data noisy.zip     # a noisy data set: its stored images and sigma_n as they are
    torchrun --nproc_per_node=8 -m ambient.train ...   # DDP, one process per GPU

(`python train.py ...` in a checkout is the same.) Every flag is a field of ambient.training.TrainConfig, with
its help text beside it; only --all-clean is not.
"""
import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch

from . import cli
from .checkpoint import CheckpointError
from .sources import is_noisy_dataset
from .training import TrainConfig, TrainingDiverged, TrainingInterrupted, train


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, as its `option` metadata says, and --all-clean."""
    p = argparse.ArgumentParser(prog=" ".join(cli.invocation("ambient.train")), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    groups, group = {}, p
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            raise TypeError(f"TrainConfig.{f.name} is not declared with option(): it would have no flag")
        kw = dict(f.metadata)
        if "group" in kw:
            title = kw.pop("group")
            group = groups[title] = p.add_argument_group(title)
        name = kw.pop("name", "--" + f.name.replace("_", "-"))
        if name is not None:
            group.add_argument(name, dest=f.name, default=f.default, **kw)
    groups["data"].add_argument("--all-clean", action="store_true", help="use every image clean (plain EDM training)")
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line; a usage error (exit 2) for flags that contradict each other."""
    p = build_parser()
    a = p.parse_args(argv)
    d = TrainConfig()
    modes = [m for m, on in (("--n-clean/--n-noisy", a.n_clean is not None or a.n_noisy is not None),
                             ("--clean-fraction", a.clean_fraction is not None), ("--p-clean", a.p_clean is not None),
                             ("--all-clean", a.all_clean)) if on]
    if len(modes) > 1:
        p.error(f"choose one way to say which images are clean, not {' and '.join(modes)}")
    noisy_data = is_noisy_dataset(a.data)
    synthetic = [flag for flag, given in (
        ("--n-noisy", a.n_noisy is not None), ("--sigma-n", a.sigma_n is not None),
        ("--sigma-share", a.sigma_share is not None), ("--clean-fraction", a.clean_fraction is not None),
        ("--p-clean", a.p_clean is not None), ("--keep-fraction", a.keep_fraction != d.keep_fraction),
        ("--all-clean", a.all_clean)) if given]
    if noisy_data and synthetic:
        p.error(f"{', '.join(synthetic)} choose(s) which clean images to corrupt and how, but {a.data} is a noisy "
                f"data set: its images carry their own noise and sigma_n (dataset.json) and are trained on as "
                f"stored; only --n-clean applies (it keeps that many of the set's clean images)")
    if a.device is not None:
        try:
            dev = torch.device(a.device)
        except RuntimeError:
            p.error(f"argument --device: {a.device!r} is not a device (cpu, cuda, cuda:1, ...)")
        if dev.type == "cuda" and not torch.cuda.is_available():
            p.error(f"argument --device: {a.device!r} asked for, but no CUDA device is available")
    n_levels = len(a.sigma_n) if a.sigma_n is not None else 1
    if a.sigma_share is not None and len(a.sigma_share) != n_levels:
        p.error(f"--sigma-share has {len(a.sigma_share)} entries but --sigma-n has {n_levels}")
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(a, f.name)}
    # Default: the paper's 10% clean + 90% noisy; a noisy data set has its own split.
    clean_fraction = a.clean_fraction if modes or noisy_data else 0.1
    return TrainConfig(**{**given, "clean_fraction": clean_fraction, "n_noisy": 0 if a.all_clean else a.n_noisy})


def resume_command(argv: list[str], run_dir: str | Path) -> str:
    """The command line that continues run_dir: these arguments with --run-dir RUN --resume auto."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.split("=")[0] in ("--run-dir", "--resume"):
            skip = not skip and "=" not in arg
            continue
        kept.append(arg)
    return shlex.join([*cli.invocation("ambient.train"), *kept, "--run-dir", str(run_dir), "--resume", "auto"])


def main(argv: list[str] | None = None) -> int:
    """Train from a command line; the exit status: 0 done, 1 an error (one line), 130 interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    try:
        run_dir = train(cfg)
    except (ValueError, OSError, CheckpointError, TrainingDiverged) as e:   # OSError: e.g. a full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"{e}; resume with: {resume_command(argv, e.run_dir)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the first training step; run the same command again", file=sys.stderr)
        return 130
    print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
