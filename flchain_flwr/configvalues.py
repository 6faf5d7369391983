"""Typed run-config values: each reader checks one key's type and range.

Every reader raises a ``ValueError`` that names the key and what it expected,
so a bad ``[tool.flwr.app.config]`` entry is reported before anything is built.
A leaf module: the app, the strategies and the client mods all read their keys
here (a client mod importing it loads nothing else of the package). The number
and text readers also read a node's config (``source="node config"``). The
policies' constructors check their arguments by the same rules
(:func:`checked_number`, :func:`checked_integer`), so a value given in Python
is refused where the same value in a run config is.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import TypeVar

ConfigValue = int | float | str | bool
T = TypeVar("T")


def bad_value(
    key: str, value: object, expected: str, source: str = "run config"
) -> ValueError:
    """The error for ``key``'s ``value`` (of the ``source`` config), which is
    not ``expected``."""
    return refused(f"{source} key {key!r}", value, expected)


def refused(name: str, value: object, expected: str) -> ValueError:
    """The error for ``name`` (a config key or an argument) holding ``value``,
    which is not ``expected``."""
    return ValueError(f"{name}: expected {expected}, got {value!r}")


def number_value(  # pylint: disable=too-many-arguments
    cfg: Mapping[str, ConfigValue],
    key: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
    source: str = "run config",
) -> float:
    """``cfg[key]`` as a float in the given range (ints accepted); finite
    unless ``allow_inf`` (NaN never)."""
    return checked_number(
        cfg[key],
        f"{source} key {key!r}",
        low=low,
        high=high,
        low_open=low_open,
        high_open=high_open,
        allow_inf=allow_inf,
    )


def checked_number(  # pylint: disable=too-many-arguments
    value: object,
    name: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """``value`` (an int or a float, not a bool) as a float in the given range;
    finite unless ``allow_inf`` (NaN never). The ValueError names ``name``."""
    kind = "a number" if allow_inf else "a finite number"
    expected = f"{kind}{_range(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise refused(name, value, expected)
    if isinstance(value, int) and abs(value) > sys.float_info.max:
        raise refused(name, value, expected)  # float() would overflow
    number = float(value)
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or below or above:
        raise refused(name, value, expected)
    return number


def seconds_or_none(
    cfg: Mapping[str, ConfigValue], key: str, *, low: float = -math.inf
) -> float | None:
    """``cfg[key]``, a number of seconds >= ``low``, or ``None`` (no limit)
    for one <= 0 or inf; ValueError naming the key otherwise."""
    value = number_value(cfg, key, low=low, allow_inf=True)
    return value if 0 < value < math.inf else None


def _range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """`` in [0, 1)``, `` > 0``, ... or "" for the whole line."""
    if math.isinf(low) and math.isinf(high):
        return ""
    if math.isinf(high):
        return f" {'>' if low_open else '>='} {low:g}"
    if math.isinf(low):
        return f" {'<' if high_open else '<='} {high:g}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f" in {left}{low:g}, {high:g}{right}"


def integer_value(
    cfg: Mapping[str, ConfigValue],
    key: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    source: str = "run config",
) -> int:
    """``cfg[key]`` as an int (a float only if integral), at least ``minimum``
    and at most ``maximum``."""
    return checked_integer(
        cfg[key],
        f"{source} key {key!r}",
        minimum=minimum,
        maximum=maximum,
        integral_float=True,
    )


def checked_integer(
    value: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    integral_float: bool = False,
) -> int:
    """``value``, an int (not a bool; an integral float too if
    ``integral_float``), at least ``minimum`` and at most ``maximum``. The
    ValueError names ``name``."""
    if minimum is not None and maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"
    elif maximum is not None:
        expected = f"an integer <= {maximum}"
    else:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise refused(name, value, expected)
    if isinstance(value, int):
        number = value
    elif integral_float and isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise refused(name, value, expected)
    if (minimum is not None and number < minimum) or (
        maximum is not None and number > maximum
    ):
        raise refused(name, value, expected)
    return number


def flag_value(cfg: Mapping[str, ConfigValue], key: str) -> bool:
    """``cfg[key]``, which must be a bool."""
    value = cfg[key]
    if not isinstance(value, bool):
        raise bad_value(key, value, "true or false")
    return value


def text_value(
    cfg: Mapping[str, ConfigValue], key: str, *, source: str = "run config"
) -> str:
    """``cfg[key]``, which must be a string."""
    value = cfg[key]
    if not isinstance(value, str):
        raise bad_value(key, value, "a string", source)
    return value


def parsed_value(
    cfg: Mapping[str, ConfigValue], key: str, parse: Callable[[str], T]
) -> T:
    """``parse(cfg[key])``, its ValueError re-raised naming ``key``."""
    text = text_value(cfg, key)
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"run config key {key!r}: {exc}") from None
