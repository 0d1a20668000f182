"""Train an ambient diffusion model.

    python -m ambient.train                      # tiny UNet on the embedded MNIST-5k, 10% clean + 90% noisy
    python -m ambient.train --data DATA.zip --preset ddpmpp --n-clean 5000 --sigma-n 0.2 --batch 512
    python -m ambient.train --data noisy.zip     # a noisy data set: its stored images and sigma_n as they are
    torchrun --nproc_per_node=8 -m ambient.train ...   # DDP, one process per GPU

(`python train.py ...` in a checkout is the same.) Every flag is a field of ambient.train.TrainConfig, with
its help text beside it.
"""
import argparse
import dataclasses
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import torch

from ambient.common import cli
from ambient.data import check_split_options, is_noisy_dataset
from ambient.io import CheckpointError

from .config import TrainConfig, flag_name
from .distributed import shutdown
from .loop import TrainingDiverged, TrainingInterrupted, train


def _fields() -> list[dataclasses.Field]:
    """TrainConfig's fields, each checked to carry its flag's metadata."""
    fields = dataclasses.fields(TrainConfig)
    for f in fields:
        if "help" not in f.metadata:
            raise TypeError(f"TrainConfig.{f.name} is not declared with option(): it would have no flag")
    return fields


def add_flags(container: argparse._ActionsContainer, names: Iterable[str] | None = None, *,
              defaults: bool = True) -> None:
    """Add the flags of TrainConfig fields `names` (default all, in sections) to a parser or group; with
    `defaults` False an absent flag leaves no attribute (so the given ones can be told apart)."""
    wanted = None if names is None else set(names)
    group = container
    for f in _fields():
        kw = dict(f.metadata)
        title = kw.pop("group", None)
        if wanted is not None and f.name not in wanted:
            continue
        if title is not None and wanted is None:
            group = container.add_argument_group(title)
        kw.pop("name", None)
        if (flag := flag_name(f.name)) is not None:
            group.add_argument(flag, dest=f.name, default=f.default if defaults else argparse.SUPPRESS, **kw)


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, as its `option` metadata says."""
    p = argparse.ArgumentParser(prog=" ".join(cli.invocation("ambient.train")), description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(p)
    return p


class _RefusingParser(argparse.ArgumentParser):
    """A parser whose usage errors are ValueErrors (for flags read from inside another command's option)."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line; a usage error (exit 2) for flags that contradict each other, by the
    library's own rules (ambient.data.check_split_options, TrainConfig.check_window_options)."""
    p = build_parser()
    a = p.parse_args(argv)
    try:
        cfg = TrainConfig(**vars(a))
        check_split_options(noisy_set=cfg.data if is_noisy_dataset(cfg.data) else None, n_clean=cfg.n_clean,
                            n_noisy=cfg.n_noisy, clean_fraction=cfg.clean_fraction, p_clean=cfg.p_clean,
                            keep_fraction=cfg.keep_fraction, all_clean=cfg.all_clean, sigma_n=cfg.sigma_n,
                            sigma_share=cfg.sigma_share, name=flag_name)
        cfg.check_window_options()
    except ValueError as e:
        p.error(str(e))
    return cfg


def given_flags(argv: list[str]) -> dict[str, Any]:
    """The TrainConfig fields that a list of flags sets, and their values (nothing for the flags not given);
    ValueError for a flag the trainer does not know (--help included) or a value it refuses."""
    p = _RefusingParser(add_help=False)
    add_flags(p, defaults=False)
    return vars(p.parse_args(argv))


def resume_command(argv: list[str], run_dir: str | Path) -> str:
    """The command line that continues run_dir: these arguments with --run-dir RUN --resume auto."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.split("=")[0] in ("--run-dir", "--resume"):
            skip = not skip and "=" not in arg
            continue
        kept.append(arg)
    return shlex.join([*cli.invocation("ambient.train"), *kept, "--run-dir", str(run_dir), "--resume", "auto"])


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed: MemoryError, CUDA's OutOfMemoryError, the CPU allocator's error."""
    return isinstance(e, MemoryError | torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def _say_error(message: str) -> None:
    """`error: MESSAGE` on stderr as one write: under torchrun every rank may say it on one terminal, and a line
    written in pieces interleaves with another rank's. Ranks other than 0 name themselves."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    sys.stderr.write(f"error{f' (rank {rank} of {world})' if rank else ''}: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Train from a command line; the exit status: 0 done, 1 an error (one line), 130 interrupted."""
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_args(argv)
    try:
        run_dir = train(cfg)
    except (ValueError, OSError, CheckpointError, TrainingDiverged) as e:   # OSError: e.g. a full disk
        _say_error(str(e))
        return 1
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        _say_error(f"out of memory ({str(e).strip().splitlines()[-1][:200]}); lower --batch-gpu (the images each "
                  "process takes at once; default --batch / processes), the network's size (--model-channels, "
                  "--preset) or the images' resolution")
        return 1
    except TrainingInterrupted as e:
        print(f"{e}; resume with: {resume_command(argv, e.run_dir)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted before the first training step; run the same command again", file=sys.stderr)
        return 130
    shutdown()                  # every rank is past the run's last barrier: nothing of the group is still in flight
    if int(os.environ.get("RANK", 0)) == 0:          # under torchrun: rank 0 alone says it
        print(f"done: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
