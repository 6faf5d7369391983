"""Build strategies from a Flower run config (``[tool.flwr.app.config]``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TypeVar

from .fedbuff import FedBuff, MaxStaleness
from .scheduling import scheduling_policy
from .staleness import staleness_fn
from .state import state_rule
from .weighting import example_weighting

ConfigValue = int | float | str | bool
T = TypeVar("T")


def fedbuff_from_run_config(
    cfg: Mapping[str, ConfigValue], **overrides: object
) -> FedBuff:
    """FedBuff configured by run-config keys; absent keys keep FedBuff's defaults.

    Keys (each maps to the :class:`FedBuff` argument of the same name):

    - ``buffer-size`` (int >= 1); ``max-wait`` (seconds, <= 0 or inf: none);
    - ``staleness`` (a name for :func:`~flchain_flwr.strategies.staleness_fn`);
      ``max-staleness`` (``"auto"`` or an int, < 0: none);
    - ``server-lr`` (> 0); ``server-momentum`` (in [0, 1)); ``seed`` (int);
    - ``example-weighting`` (a spec for
      :func:`~flchain_flwr.strategies.weighting.example_weighting`, e.g.
      ``"median:4"``, ``"claimed"``);
    - ``scheduling`` (``"random"`` or ``"shuffle"``);
    - ``state-rule`` (``"average"``, ``"delta"`` or ``"keep"``);
    - ``downlink`` (bool: sparse downlink deltas, with the client's
      ``downlink_mod``);
    - ``fraction-train`` (in (0, 1]); ``fraction-evaluate`` (in [0, 1], 0: no
      federated evaluation); ``concurrency`` (int, <= 0: none, i.e. from
      ``fraction-train``);
    - ``evaluate-every`` (versions, <= 0: once per FedAvg round's worth of
      updates);
    - ``message-ttl`` (seconds, <= 0 or inf: ``start``'s timeout);
      ``membership-refresh`` (seconds > 0); ``ledger-path`` ("": no ledger).

    ``overrides`` are passed to :class:`FedBuff` as they are, over the keys.

    Raises
    ------
    ValueError
        If a key holds a value of the wrong type or out of range; the message
        names the key.
    """
    kwargs: dict[str, object] = {}
    if "buffer-size" in cfg:
        kwargs["buffer_size"] = _integer(cfg, "buffer-size", minimum=1)
    if "max-wait" in cfg:
        max_wait = _number(cfg, "max-wait", allow_inf=True)
        kwargs["max_wait"] = max_wait if 0 < max_wait < math.inf else None
    if "staleness" in cfg:
        kwargs["staleness_fn"] = _parsed(cfg, "staleness", staleness_fn)
    if "max-staleness" in cfg:
        kwargs["max_staleness"] = _max_staleness(cfg)
    if "server-lr" in cfg:
        kwargs["server_lr"] = _number(cfg, "server-lr", low=0.0, low_open=True)
    if "server-momentum" in cfg:
        kwargs["server_momentum"] = _number(
            cfg, "server-momentum", low=0.0, high=1.0, high_open=True
        )
    if "seed" in cfg:
        kwargs["seed"] = _integer(cfg, "seed")
    if "example-weighting" in cfg:
        kwargs["example_weighting"] = _parsed(
            cfg, "example-weighting", example_weighting
        )
    if "scheduling" in cfg:
        kwargs["scheduling"] = _parsed(cfg, "scheduling", scheduling_policy)
    if "state-rule" in cfg:
        kwargs["state_rule"] = _parsed(cfg, "state-rule", state_rule)
    if "downlink" in cfg:
        kwargs["downlink"] = _flag(cfg, "downlink")
    if "fraction-train" in cfg:
        kwargs["fraction_train"] = _number(
            cfg, "fraction-train", low=0.0, high=1.0, low_open=True
        )
    if "fraction-evaluate" in cfg:
        kwargs["fraction_evaluate"] = _number(
            cfg, "fraction-evaluate", low=0.0, high=1.0
        )
    if "concurrency" in cfg:
        concurrency = _integer(cfg, "concurrency")
        kwargs["concurrency"] = concurrency if concurrency > 0 else None
    if "evaluate-every" in cfg:
        every = _integer(cfg, "evaluate-every")
        kwargs["evaluate_every"] = every if every > 0 else None
    if "message-ttl" in cfg:
        ttl = _number(cfg, "message-ttl", allow_inf=True)
        kwargs["message_ttl"] = ttl if 0 < ttl < math.inf else None
    if "membership-refresh" in cfg:
        kwargs["membership_refresh"] = _number(
            cfg, "membership-refresh", low=0.0, low_open=True
        )
    if "ledger-path" in cfg:
        ledger_path = _text(cfg, "ledger-path")
        if ledger_path:
            kwargs["ledger"] = ledger_path
    kwargs.update(overrides)
    return FedBuff(**kwargs)  # type: ignore[arg-type]


def _bad(key: str, value: ConfigValue, expected: str) -> ValueError:
    return ValueError(f"run config key {key!r}: expected {expected}, got {value!r}")


def _number(  # pylint: disable=too-many-arguments
    cfg: Mapping[str, ConfigValue],
    key: str,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """``cfg[key]`` as a float in the given range (ints accepted); finite
    unless ``allow_inf`` (NaN never)."""
    value = cfg[key]
    kind = "a number" if allow_inf else "a finite number"
    expected = f"{kind}{_range(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, value, expected)
    number = float(value)
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if math.isnan(number) or (math.isinf(number) and not allow_inf) or below or above:
        raise _bad(key, value, expected)
    return number


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


def _integer(
    cfg: Mapping[str, ConfigValue], key: str, *, minimum: int | None = None
) -> int:
    """``cfg[key]`` as an int (a float only if integral), at least ``minimum``."""
    value = cfg[key]
    expected = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool):
        raise _bad(key, value, expected)
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    else:
        raise _bad(key, value, expected)
    if minimum is not None and number < minimum:
        raise _bad(key, value, expected)
    return number


def _flag(cfg: Mapping[str, ConfigValue], key: str) -> bool:
    """``cfg[key]``, which must be a bool."""
    value = cfg[key]
    if not isinstance(value, bool):
        raise _bad(key, value, "true or false")
    return value


def _text(cfg: Mapping[str, ConfigValue], key: str) -> str:
    """``cfg[key]``, which must be a string."""
    value = cfg[key]
    if not isinstance(value, str):
        raise _bad(key, value, "a string")
    return value


def _parsed(cfg: Mapping[str, ConfigValue], key: str, parse: Callable[[str], T]) -> T:
    """``parse(cfg[key])``, its ValueError re-raised naming ``key``."""
    text = _text(cfg, key)
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"run config key {key!r}: {exc}") from None


def _max_staleness(cfg: Mapping[str, ConfigValue]) -> MaxStaleness:
    """``"auto"``, or an int (< 0: no limit)."""
    value = cfg["max-staleness"]
    if value == "auto":
        return "auto"
    try:
        limit = _integer(cfg, "max-staleness")
    except ValueError:
        expected = "'auto' or an integer (< 0: no limit)"
        raise _bad("max-staleness", value, expected) from None
    return limit if limit >= 0 else None
