"""Build strategies from a Flower run config (``[tool.flwr.app.config]``)."""

from __future__ import annotations

from collections.abc import Mapping

from .fedbuff import FedBuff
from .staleness import staleness_fn

ConfigValue = int | float | str | bool


def fedbuff_from_run_config(
    cfg: Mapping[str, ConfigValue], **overrides: object
) -> FedBuff:
    """FedBuff configured by run-config keys; absent keys keep FedBuff's defaults.

    Keys: ``buffer-size``, ``max-wait`` (<= 0: none), ``staleness`` (a name for
    :func:`~flchain_flwr.strategies.staleness_fn`), ``max-staleness`` (< 0: none),
    ``server-lr``, ``server-momentum``, ``seed``, ``ledger-path`` ("" = no ledger),
    ``message-ttl`` (<= 0: ``start``'s timeout), ``membership-refresh``.
    ``overrides`` are passed to :class:`FedBuff` as they are.
    """
    kwargs: dict[str, object] = {}
    if "buffer-size" in cfg:
        kwargs["buffer_size"] = int(cfg["buffer-size"])
    if "max-wait" in cfg:
        max_wait = float(cfg["max-wait"])
        kwargs["max_wait"] = max_wait if max_wait > 0 else None
    if "staleness" in cfg:
        kwargs["staleness_fn"] = staleness_fn(str(cfg["staleness"]))
    if "max-staleness" in cfg:
        max_staleness = int(cfg["max-staleness"])
        kwargs["max_staleness"] = max_staleness if max_staleness >= 0 else None
    if "server-lr" in cfg:
        kwargs["server_lr"] = float(cfg["server-lr"])
    if "server-momentum" in cfg:
        kwargs["server_momentum"] = float(cfg["server-momentum"])
    if "seed" in cfg:
        kwargs["seed"] = int(cfg["seed"])
    if "message-ttl" in cfg:
        ttl = float(cfg["message-ttl"])
        kwargs["message_ttl"] = ttl if ttl > 0 else None
    if "membership-refresh" in cfg:
        kwargs["membership_refresh"] = float(cfg["membership-refresh"])
    if cfg.get("ledger-path"):
        kwargs["ledger"] = str(cfg["ledger-path"])
    kwargs.update(overrides)
    return FedBuff(**kwargs)  # type: ignore[arg-type]
