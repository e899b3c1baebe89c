"""Types of the command's numeric flags: each value is checked when the flags are parsed, so
nan, inf, zero or a negative number is one line and the usage exit code, before anything
runs."""

from __future__ import annotations

import argparse
import math
from typing import Any

__all__ = ["COUNT", "FRACTION", "NATURAL", "PORT", "POSITIVE", "number"]


def number(kind: type[float], *, low: float, low_allowed: bool, high: float = math.inf) -> Any:
    """An argparse type: a finite number of `kind` within its bounds, checked at parse time."""
    above = f"at least {low:g}" if low_allowed else f"more than {low:g}"
    within = above if high == math.inf else f"from {low:g} to {high:g}"
    noun = "a whole number" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {within}, not {text!r}") from None
        fits = (value >= low if low_allowed else value > low) and value <= high
        if not (math.isfinite(value) and fits):
            raise argparse.ArgumentTypeError(f"must be {noun} {within}, not {text!r}")
        return value

    return parse


POSITIVE = number(float, low=0, low_allowed=False)
COUNT = number(int, low=1, low_allowed=True)
FRACTION = number(float, low=0, low_allowed=True, high=1)
PORT = number(int, low=0, low_allowed=True, high=65535)
NATURAL = number(int, low=0, low_allowed=True)
