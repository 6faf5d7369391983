"""What an event loop's send and receive sides share.

:class:`~.dispatch.Dispatcher` and :class:`~.outcomes.MessageOutcomes` work on
the same node tracker, messages in flight, buffer, federated evaluation, queue
forecast, policy and downlink; the loop (:class:`~.loop.EventLoop`) builds
each part once and hands both sides this one record of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..runtime import Clock
from .buffer import UpdateBuffer
from .downlink import DownlinkSync
from .evaluation import FederatedEvaluation
from .flights import InFlight
from .nodes import NodeTracker
from .queue_forecast import QueueForecast
from .scheduling import SchedulingPolicy


# pylint: disable=too-many-instance-attributes
@dataclass(frozen=True)
class LoopParts:
    """The parts both sides of an event loop use (never replaced during a run).

    ``ttl`` is each message's time to live; ``elapsed`` is the loop's time.
    """

    clock: Clock
    ttl: float
    nodes: NodeTracker
    in_flight: InFlight
    buffer: UpdateBuffer
    evaluation: FederatedEvaluation
    forecast: QueueForecast
    policy: SchedulingPolicy
    downlink: DownlinkSync | None
    elapsed: Callable[[], float]
