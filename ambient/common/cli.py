"""Argument types shared by the command-line tools: each bad value gets one clear message."""
import argparse
import itertools
import math
import operator
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch


def _number(text: str, kind: type, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _checked(kind: type, what: str, ok: Callable[[float], bool], requirement: str) -> Callable[[str], float]:
    """An argparse type parsing `kind` and refusing values for which ok(value) is false."""
    def parse(text: str) -> float:
        value = _number(text, kind, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
        return value
    return parse


finite_float = _checked(float, "a number", lambda v: True, "finite")
positive_int = _checked(int, "an integer", lambda v: v > 0, "a positive integer")
nonneg_int = _checked(int, "an integer", lambda v: v >= 0, ">= 0")
positive_float = _checked(float, "a number", lambda v: v > 0, "> 0")
nonneg_float = _checked(float, "a number", lambda v: v >= 0, ">= 0")
fraction = _checked(float, "a number", lambda v: 0 <= v <= 1, "a fraction in [0, 1]")

# Every seed of every command: below 2**40, so seed * SEED_MULTIPLIER + counter (ambient.data.streams) stays
# within the 64-bit seeds of torch and numpy for any counter below 2**62.
SEED_LIMIT = 2**40
seed = _checked(int, "an integer", lambda v: 0 <= v < SEED_LIMIT, f"a seed in [0, 2**40 = {SEED_LIMIT})")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""
    return _checked(int, "an integer", lambda v: lo <= v <= hi, f"an integer in [{lo}, {hi}]")


def float_in(lo: float, hi: float, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in [lo, hi] (in (lo, hi] with `open_low`)."""
    return _checked(float, "a number", lambda v: (lo < v if open_low else lo <= v) and v <= hi,
                    f"in {'(' if open_low else '['}{lo:g}, {hi:g}]")


def or_none(parse: Callable[[str], float]) -> Callable[[str], float | None]:
    """`parse`, or None for the text "none" (a flag that can switch its feature off)."""
    def parse_or_none(text: str) -> float | None:
        return None if text.strip().lower() == "none" else parse(text)
    return parse_or_none


def name_list(text: str) -> tuple[str, ...]:
    """Comma-separated names, e.g. "lr,seed" (option names with - or _)."""
    names = tuple(part.strip().replace("-", "_") for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing")
    return names


def float_list(text: str) -> tuple[float, ...]:
    """"0.1,0.4" -> (0.1, 0.4); every entry finite and >= 0."""
    return tuple(nonneg_float(part.strip()) for part in text.split(",") if part.strip()) or _empty(text)


def resolution_list(text: str) -> tuple[int, ...]:
    """"7" or "16,8" -> (7,) or (16, 8), each a positive integer; "none" -> () (an empty list: none at all)."""
    if text.strip().lower() == "none":
        return ()
    return tuple(positive_int(part.strip()) for part in text.split(",") if part.strip()) or _empty(text)


class IntRanges(Sequence[int]):
    """Integers kept as the ranges they were given in, so 0-999999999999 takes no memory; iterate lazily."""

    def __init__(self, ranges: list[range]) -> None:
        self.ranges = ranges

    def __len__(self) -> int:
        return sum(len(r) for r in self.ranges)

    def __iter__(self) -> Iterator[int]:
        return itertools.chain.from_iterable(self.ranges)

    def __getitem__(self, i: int) -> int:        # type: ignore[override]
        i = operator.index(i) + (len(self) if i < 0 else 0)
        for r in self.ranges:
            if 0 <= i < len(r):
                return r[i]
            i -= len(r)
        raise IndexError("index out of range")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))


def int_range(text: str) -> IntRanges:
    """"0-63" or "1,5,7-9" -> those seeds (each by `seed`'s rule), as ranges."""
    out: list[range] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        start, stop = seed(lo), seed(hi) if hi else None
        if stop is not None and stop < start:
            raise argparse.ArgumentTypeError(f"range {part!r} runs backwards")
        out.append(range(start, (stop if stop is not None else start) + 1))
    return IntRanges(out)


def device(text: str) -> str:
    """An argparse type: a CPU or an available CUDA device ("cpu", "cuda", "cuda:1"), checked before any work."""
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu and cuda devices are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this host has {torch.cuda.device_count()} CUDA device(s)")
    return text


def check_folder(path: str | os.PathLike, *, option: str) -> Path:
    """A folder to write into, checked before any work: ValueError unless it is a writable folder or can be made
    (its nearest existing parent a writable folder). `option` names it in the message ("--cache-dir")."""
    path = Path(path)
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if existing == path.absolute() and not path.is_dir():
        raise ValueError(f"{option} {path} is not a folder")
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {existing} is not a writable folder")
    return path


def check_output(path: str | os.PathLike, *, kind: str = "file", overwrite: bool = False) -> Path:
    """An output path checked before any work: ValueError unless it can be written.

    kind "file": not a folder, its nearest existing parent a writable folder, and not existing unless
    `overwrite`; kind "folder": absent or an empty folder (its PNGs are never overwritten), likewise writable.
    """
    path = Path(path)
    if kind == "folder" and path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not an empty folder; choose a new --out folder (nothing there is "
                         f"overwritten)")
    if kind == "file" and path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    if kind == "file" and path.exists() and not overwrite:
        raise ValueError(f"{path} exists; choose another output file")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {path}: {parent} is not a writable folder")
    return path


def check_destination(dest: str | os.PathLike, *, option: str, archive: bool = False) -> Path:
    """A data set's or a checkpoint's destination, checked before any work: FileExistsError unless it is absent or
    an empty directory, or with `archive` (a .zip written whole) absent or an empty file, so nothing that holds
    data is written into or replaced. `option` names it in the message ("--dest")."""
    dest = Path(dest)
    if dest.exists():
        right_kind = dest.is_file() if archive else dest.is_dir()
        if not right_kind or (dest.stat().st_size > 0 if archive else any(dest.iterdir())):
            why = "it is not empty" if right_kind else f"it is a {'directory' if dest.is_dir() else 'file'}"
            raise FileExistsError(f"destination {dest} exists and is not an empty {'file' if archive else 'directory'} "
                                  f"({why}); choose another {option}")
    return dest


def _empty(text: str):
    raise argparse.ArgumentTypeError(f"{text!r} holds no numbers")


def invocation(module: str) -> list[str]:
    """How this process was started, for the usage line and printed commands: ["python", SCRIPT] when it runs the
    checkout's script shim of `module` (e.g. train.py for ambient.train), else ["python", "-m", module]."""
    script = module.rsplit(".", 1)[-1] + ".py"
    started_as_module = getattr(sys.modules.get("__main__"), "__spec__", None) is not None
    if not started_as_module and Path(sys.argv[0]).name == script:
        return ["python", sys.argv[0]]
    return ["python", "-m", module]
