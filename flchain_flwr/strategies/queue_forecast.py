"""Forecast how stale a queued train message's update would arrive.

Flower's ``Grid`` has no call to withdraw a message once pushed (1.42: only
``push_messages``, ``pull_messages``, ``send_and_receive`` and membership), so
a queued message that goes too stale cannot be replaced: its update is dropped
on arrival and the node's round trip is lost. Queued dispatch therefore holds
such a message back instead: before queueing behind a node, the loop asks this
forecast when the update would land and how many versions would be made by
then, and queues only when that is within ``max_staleness``. A node held back
is asked about again at the next event; as its current message nears its end
the forecast falls, so it may be queued later, or be sent a message on reply.

The forecast is made on the loop's clock (virtual on the virtual grid, so
deterministic there):

- a node's *service time* is the time from when its last train message started
  (dispatch, or for a queued one the moment the message ahead of it settled)
  to its reply;
- the *version rate* is the number of versions over the span of the last few
  (the run's start counting as version 0). A stall does not lower it: the
  forecast then errs towards holding back, which is dispatch on reply;
- a message queued now starts when the node's current one ends (its start plus
  one service time, or now if that is already past) and lands one service time
  later; the forecast staleness is the rate times the time until then.
"""

from __future__ import annotations

from collections import deque

RATE_WINDOW = 8
"""Versions over which the version rate is measured."""


class QueueForecast:
    """Per-node service times and the run's version rate, kept per event."""

    def __init__(self, start: float, window: int = RATE_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        # times of the latest versions, the run's start standing for version 0
        self._version_times: deque[float] = deque([start], maxlen=window + 1)
        self._started: dict[int, float] = {}  # node -> start of its current train
        self._service: dict[int, float] = {}  # node -> its last service time

    def new_version(self, now: float) -> None:
        """A version was made at ``now``."""
        self._version_times.append(now)

    def started(self, node_id: int, now: float) -> None:
        """A train message of ``node_id`` started at ``now``."""
        self._started[node_id] = now

    def replied(self, node_id: int, now: float) -> None:
        """``node_id`` replied to its started train message at ``now``."""
        start = self._started.pop(node_id, None)
        if start is not None:
            self._service[node_id] = now - start

    def forget(self, node_id: int) -> None:
        """Drop what is known of ``node_id`` (its message expired or failed)."""
        self._started.pop(node_id, None)
        self._service.pop(node_id, None)

    def version_rate(self) -> float | None:
        """Versions per second over the window (None: unknown)."""
        times = self._version_times
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else None

    def staleness(self, node_id: int, now: float) -> float | None:
        """Forecast staleness of a train message queued behind ``node_id`` now.

        ``None`` when there is nothing to forecast from: no service time yet,
        no started message, or no version made.
        """
        service = self._service.get(node_id)
        start = self._started.get(node_id)
        rate = self.version_rate()
        if service is None or start is None or rate is None:
            return None
        current_ends = max(start + service, now)
        return rate * (current_ends + service - now)

    def fits(self, node_id: int, now: float, limit: int | None) -> bool:
        """Whether a message queued behind ``node_id`` now is forecast to land
        within ``limit`` versions (always, with no limit or no forecast)."""
        if limit is None:
            return True
        forecast = self.staleness(node_id, now)
        return forecast is None or forecast <= limit
