"""Numbers written as text (policy specs, CLI arguments, JSON keys): read
strictly, in ASCII digits only, and written exactly.

Python's ``int()`` and ``float()`` also take other scripts' digits
(Arabic-Indic "12" is 12), underscores (``"1_0"``) and surrounding spaces, so
one number would have many spellings: a spec recorded in a ledger's settings
would parse back from text it was not written as, and a CLI height given in
another script's digits would be taken silently. These readers take what the
project writes.

A policy's spec (``"inverse:4"``, ``"staleness:2:1:10:1.5"``) is what a
ledger's settings record, what a block's ``config_digest`` covers, and what
``verify --replay`` and a resumed run parse back, so :func:`number_text`
writes exactly the number the server used (``%g`` alone would write
4.0000001 as ``4``), in a form :func:`decimal_number` reads.
"""

from __future__ import annotations

import re
from typing import Final

from .quoting import clip

_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_NUMBER: Final = re.compile(
    r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|nan)"
)


def decimal_integer(text: str) -> int:
    """``text`` as an integer: an optional sign and ASCII digits; ValueError
    otherwise (also for more digits than ``int()`` converts)."""
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"{clip(text, 40)!r} is not an integer (ASCII digits)")
    return int(text)


def decimal_number(text: str) -> float:
    """``text`` as a float: decimal or exponent notation in ASCII, or
    ``inf``/``nan`` (for the caller's own range check); ValueError otherwise."""
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"{clip(text, 40)!r} is not a number (ASCII digits)")
    return float(text)


def number_text(value: float) -> str:
    """``value`` as a spec writes it: short (``"4"``) where that reads back as
    the same float, else all its digits (``repr``)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))
