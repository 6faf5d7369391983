"""Numbers written as text (policy specs, CLI arguments, JSON keys), read
strictly: ASCII digits only.

Python's ``int()`` and ``float()`` also take other scripts' digits
(Arabic-Indic "12" is 12), underscores (``"1_0"``) and surrounding spaces, so
one number would have many spellings: a spec recorded in a ledger's settings
would parse back from text it was not written as, and a CLI height given in
another script's digits would be taken silently. These readers take what the
project writes.
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
