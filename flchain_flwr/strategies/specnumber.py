"""A number as a policy spec writes it: short where that is exact.

A policy's spec (``"inverse:4"``, ``"staleness:2:1:10:1.5"``) is what a
ledger's settings record, what a block's ``config_digest`` covers, and what
``verify --replay`` and a resumed run parse back, so it must give back exactly
the number the server used: ``%g`` alone would write 4.0000001 as ``4``.
"""

from __future__ import annotations


def number_text(value: float) -> str:
    """``value`` as a spec writes it: short (``"4"``) where that reads back as
    the same float, else all its digits (``repr``)."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))
