"""Staleness weighting functions.

Staleness ``s`` is how many global versions old the model an update was trained on
is: ``s = current_version - trained_on_version``. A weight function maps ``s`` to a
factor in ``(0, 1]`` that scales the update's contribution.

References: FedAsync (Xie et al., 2019) for constant, polynomial and hinge;
FedBuff (Nguyen et al., AISTATS 2022) for ``1 / sqrt(1 + s)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..numbertext import decimal_integer, decimal_number

StalenessFn = Callable[[int], float]
"""Maps a staleness ``s >= 0`` to a weight in ``(0, 1]``."""


def _check_staleness(s: int) -> None:
    if s < 0:
        raise ValueError(f"staleness must be >= 0, got {s}")


@dataclass(frozen=True)
class Constant:
    """``w(s) = 1``: every update counts fully, however stale."""

    def __call__(self, s: int) -> float:
        _check_staleness(s)
        return 1.0


@dataclass(frozen=True)
class Polynomial:
    """``w(s) = (1 + s) ** -a`` (FedAsync's polynomial staleness)."""

    a: float = 0.5

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError(f"a must be >= 0, got {self.a}")

    def __call__(self, s: int) -> float:
        _check_staleness(s)
        return float((1.0 + s) ** (-self.a))


@dataclass(frozen=True)
class Hinge:
    """``w(s) = 1`` if ``s <= b`` else ``1 / (a (s - b) + 1)`` (FedAsync's hinge)."""

    a: float = 10.0
    b: int = 4

    def __post_init__(self) -> None:
        if self.a < 0 or self.b < 0:
            raise ValueError(f"a and b must be >= 0, got a={self.a}, b={self.b}")

    def __call__(self, s: int) -> float:
        _check_staleness(s)
        if s <= self.b:
            return 1.0
        return 1.0 / (self.a * (s - self.b) + 1.0)


@dataclass(frozen=True)
class FedBuffStaleness:
    """``w(s) = 1 / sqrt(1 + s)`` (FedBuff's default)."""

    def __call__(self, s: int) -> float:
        _check_staleness(s)
        return 1.0 / math.sqrt(1.0 + s)


_BY_NAME: dict[str, Callable[..., StalenessFn]] = {
    "constant": Constant,
    "polynomial": Polynomial,
    "hinge": Hinge,
    "fedbuff": FedBuffStaleness,
}


def staleness_fn(name: str, **params: float) -> StalenessFn:
    """Build a weight function by name, e.g. ``staleness_fn("hinge", a=10, b=4)``.

    Names: ``constant``, ``polynomial`` (``a``), ``hinge`` (``a``, ``b``), ``fedbuff``.
    Useful for run configs, where a strategy is configured from strings.
    """
    try:
        factory = _BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"unknown staleness function {name!r}; choose one of {sorted(_BY_NAME)}"
        ) from None
    if name == "hinge" and "b" in params:
        params = {**params, "b": int(params["b"])}
    return factory(**params)


_BY_CLASS: dict[str, Callable[..., StalenessFn]] = {
    cls.__name__: cls for cls in (Constant, Polynomial, Hinge, FedBuffStaleness)
}


def staleness_from_repr(text: str) -> StalenessFn:
    """Rebuild one of this module's functions from its ``repr`` (what
    :meth:`~flchain_flwr.strategies.FedBuff.config_dict` records).

    Raises
    ------
    ValueError
        If ``text`` is not the ``repr`` of one of them.
    """
    match = re.fullmatch(r"(\w+)\((.*)\)", text)
    cls = _BY_CLASS.get(match.group(1)) if match else None
    if match is None or cls is None:
        raise ValueError(f"staleness function {text[:60]!r} cannot be rebuilt")
    params: dict[str, float | int] = {}
    for part in filter(None, match.group(2).split(", ")):
        name, _, value = part.partition("=")
        params[name] = decimal_integer(value) if name == "b" else decimal_number(value)
    fn: StalenessFn = cls(**params)
    if repr(fn) != text:
        raise ValueError(f"staleness function {text[:60]!r} cannot be rebuilt")
    return fn
