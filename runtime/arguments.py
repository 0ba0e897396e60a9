"""argparse types the two command lines share (albert-run, albert-serve): each refuses a bad value in one line."""
from __future__ import annotations

import argparse
from typing import Callable

from .backends import parse_device
from .errors import OptionError


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """A number of `kind` (int or float) no smaller than `minimum`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value < minimum:
            bound = "must not be negative" if minimum == 0 else f"must be at least {minimum}"
            raise argparse.ArgumentTypeError(f"{text} {bound}")
        return value

    return parse


def comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item; give words separated by commas")
    return items


def device_argument(text: str) -> str:
    """--device: cpu, cuda or cuda:N."""
    try:
        return str(parse_device(text))
    except OptionError:
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N") from None
