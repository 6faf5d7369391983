"""One simulated node's work on one message: what it costs, and how it ends.

The node runs the real ClientApp on private copies (:func:`run_client_app`); the
message's bytes (:func:`payload_bytes`), its work (a :data:`WorkFn`) and the
device give its completion time (:func:`finish_time`), and the node's
availability and the message's TTL decide whether a reply arrives at that time
or an error does (:func:`late_failure`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Final, NamedTuple

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from ..strategies.traffic import content_bytes
from .devices import DeviceProfile

TTL_EXPIRED: Final = "message expired (TTL)"
"""The reason of a message that hangs, or is not done, until its TTL ends."""

WorkFn = Callable[[Message, Message], float]
"""Work of one message in seconds at speed 1, from (instruction, reply)."""


class Failure(NamedTuple):
    """The error a message ends in instead of its reply."""

    code: int
    reason: str
    at: float  # simulated time the error is reported


def payload_bytes(content: RecordDict) -> int:
    """Bytes a RecordDict occupies on the wire (array data, configs, metrics)."""
    return content_bytes(content)


def examples_work(
    seconds_per_example: float, weighted_by_key: str = "num-examples"
) -> WorkFn:
    """Work model: ``seconds_per_example`` times the reply's example count.

    Replies without a count (errors, custom messages) cost one example.
    """

    def work(_: Message, reply: Message) -> float:
        count = 1.0
        if reply.has_content():
            for record in reply.content.metric_records.values():
                value = record.get(weighted_by_key)
                if isinstance(value, int | float) and value > 0:
                    count = float(value)
                    break
        return seconds_per_example * count

    return work


def run_client_app(
    client_app: ClientApp, message: Message, context: Context
) -> tuple[Message, Context | None]:
    """Run the ClientApp on private copies, as Flower's runtimes do.

    Returns the reply and the node's updated Context (``None`` when the
    ClientApp raised: its state changes are dropped, as Flower does). Any
    exception, ``KeyboardInterrupt`` and ``SystemExit`` included, becomes an
    error reply: in Flower a ClientApp runs in its own process, and its crash
    is the node's error, not the server's.
    """
    delivered = copy.deepcopy(message)
    working = copy.deepcopy(context)
    try:
        reply = client_app(delivered, working)
    except BaseException as exc:  # pylint: disable=broad-exception-caught
        reason = f"{type(exc)}:<'{exc}'>"
        error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
        return Message(error, reply_to=message), None
    if reply.metadata.reply_to_message_id != message.metadata.message_id:
        error = Error(
            ErrorCode.UNKNOWN, "ClientApp returned a message that is not a reply"
        )
        return Message(error, reply_to=message), working
    return copy.deepcopy(reply), working


def draw_delays(rng: np.random.Generator, device: DeviceProfile) -> tuple[bool, float]:
    """Whether a message hangs on ``device``, and its compute time's jitter factor.

    Draws from ``rng`` only what the device needs, hang first.
    """
    hang = device.hang_probability > 0 and rng.random() < device.hang_probability
    jitter = math.exp(rng.normal(0.0, device.jitter)) if device.jitter else 1.0
    return hang, jitter


def finish_time(
    device: DeviceProfile, start: float, down: int, compute: float, up: int
) -> float:
    """When a message started at ``start`` is done: download, compute, upload."""
    return (
        start
        + device.transfer_seconds(down, device.downlink_bps)
        + compute
        + device.transfer_seconds(up, device.uplink_bps)
    )


def late_failure(
    done: float, leaves: float, ttl_end: float, failure_detection_s: float
) -> Failure | None:
    """How a started message fails, or ``None`` if its reply arrives at ``done``.

    A node that goes offline (at ``leaves``) before it is done is reported
    ``failure_detection_s`` later, but no later than the TTL's end; a reply not
    done by the TTL's end expires then.
    """
    if leaves < done:
        return Failure(
            ErrorCode.NODE_UNAVAILABLE,
            "node disconnected while processing the message",
            min(leaves + failure_detection_s, ttl_end),
        )
    if done > ttl_end:
        return Failure(ErrorCode.MESSAGE_UNAVAILABLE, TTL_EXPIRED, ttl_end)
    return None
