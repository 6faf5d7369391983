"""FedBuff's constructor arguments, checked before any of them is kept.

:func:`check_arguments` raises ``ValueError`` naming the first argument out of
range, in a fixed order (the integer types first). Checks that need the
settings already kept (the state rule's name, ``anchor`` without a ledger, the
update memory's conflicts) stay in :class:`~.settings.FedBuffSettings`.
"""

from __future__ import annotations

from typing import Literal

from .loop import QueuedDispatch

MaxStaleness = int | Literal["auto"] | None


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)


# pylint: disable=too-many-arguments,too-many-locals
def check_arguments(
    *,
    fraction_train: float,
    fraction_evaluate: float,
    min_train_nodes: int,
    min_evaluate_nodes: int,
    min_available_nodes: int,
    buffer_size: int,
    max_wait: float | None,
    max_staleness: MaxStaleness,
    server_lr: float,
    server_momentum: float,
    concurrency: int | None,
    message_ttl: float | None,
    membership_refresh: float,
    retry_backoff: float,
    evaluate_every: int | None,
    time_budget: float | None,
    poll_interval: float,
    downlink: bool,
    downlink_from_initial: bool,
    queued_dispatch: QueuedDispatch,
) -> None:
    """Raise ``ValueError`` for the first argument :class:`~.fedbuff.FedBuff`
    cannot run with (see its parameters for each range)."""
    for name, value in (
        ("buffer_size", buffer_size),
        ("min_train_nodes", min_train_nodes),
        ("min_evaluate_nodes", min_evaluate_nodes),
        ("min_available_nodes", min_available_nodes),
        ("concurrency", concurrency),
        ("evaluate_every", evaluate_every),
    ):
        require(
            value is None or (isinstance(value, int) and not isinstance(value, bool)),
            f"{name} must be an int, got {value!r}",
        )
    require(buffer_size >= 1, f"buffer_size must be >= 1, got {buffer_size}")
    require(max_wait is None or max_wait > 0, "max_wait must be > 0 or None")
    require(
        max_staleness in (None, "auto")
        or (isinstance(max_staleness, int) and max_staleness >= 0),
        "max_staleness must be an int >= 0, 'auto' or None",
    )
    require(server_lr > 0, f"server_lr must be > 0, got {server_lr}")
    require(0.0 <= server_momentum < 1.0, "server_momentum must be in [0, 1)")
    require(concurrency is None or concurrency >= 1, "concurrency must be >= 1")
    require(0.0 < fraction_train <= 1.0, "fraction_train must be in (0, 1]")
    require(0.0 <= fraction_evaluate <= 1.0, "fraction_evaluate must be in [0, 1]")
    require(min_train_nodes >= 0, "min_train_nodes must be >= 0")
    require(min_evaluate_nodes >= 0, "min_evaluate_nodes must be >= 0")
    require(min_available_nodes >= 1, "min_available_nodes must be >= 1")
    require(message_ttl is None or message_ttl > 0, "message_ttl must be > 0")
    require(membership_refresh > 0, "membership_refresh must be > 0")
    require(retry_backoff > 0, "retry_backoff must be > 0")
    require(
        evaluate_every is None or evaluate_every >= 1, "evaluate_every must be >= 1"
    )
    require(poll_interval > 0, "poll_interval must be > 0")
    require(
        queued_dispatch in (True, False, "auto"),
        f"queued_dispatch must be a bool or 'auto', got {queued_dispatch!r}",
    )
    require(
        not (queued_dispatch is True and downlink),
        "queued_dispatch and downlink cannot be combined",
    )
    require(
        downlink or not downlink_from_initial,
        "downlink_from_initial needs downlink",
    )
    require(time_budget is None or time_budget > 0, "time_budget must be > 0")
