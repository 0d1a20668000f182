"""Argument types shared by the command-line tools: each bad value gets one clear message."""
import argparse
import math


def _number(text: str, kind: type, what: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def finite_float(text: str) -> float:
    return _number(text, float, "a number")


def positive_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def nonneg_float(text: str) -> float:
    value = _number(text, float, "a number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {value}")
    return value


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
