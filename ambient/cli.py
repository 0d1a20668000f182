"""Argument types shared by the command-line tools: each bad value gets one clear message."""
import argparse
import math
from typing import Callable


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


def float_list(text: str) -> tuple[float, ...]:
    """"0.1,0.4" -> (0.1, 0.4); every entry finite and >= 0."""
    return tuple(nonneg_float(part.strip()) for part in text.split(",") if part.strip()) or _empty(text)


def int_range(text: str) -> list[int]:
    """"0-63" or "1,5,7-9" -> list of ints (seeds)."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        start, stop = nonneg_int(lo), nonneg_int(hi) if hi else None
        if stop is not None and stop < start:
            raise argparse.ArgumentTypeError(f"range {part!r} runs backwards")
        out.extend(range(start, (stop if stop is not None else start) + 1))
    return out


def _empty(text: str):
    raise argparse.ArgumentTypeError(f"{text!r} holds no numbers")
