"""Argument types the command-line tools share."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """A whole number >= 1, or an argparse error naming what was given."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {value!r}")
    return number
