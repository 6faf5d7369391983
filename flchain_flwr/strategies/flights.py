"""The event loop's messages in flight: by id, by deadline, and queued behind.

Deadlines sit in a heap with lazy deletion: a message that settles early stays
in the heap until it reaches the top (or the heap outgrows the messages in
flight and is rebuilt), so settling costs O(1) and expiring O(log n).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, KeysView
from dataclasses import dataclass

from flwr.app import MessageType


@dataclass(frozen=True)
class Flight:
    """A message in flight."""

    node_id: int
    message_type: str
    version: int
    deadline: float
    work: float = 1.0
    """The local work a train message asked for (1 when none was set)."""

    @property
    def train(self) -> bool:
        """Whether it is a train message."""
        return self.message_type == MessageType.TRAIN


class InFlight:
    """Messages in flight by message id, with their deadlines.

    With queued dispatch it also holds, per node, the train message queued
    behind the node's current one, which has not started yet.
    """

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0
        # node -> (message id, flight) of a queued train message that has not
        # started: the policy is told of it when the node's current one settles
        self._queued: dict[int, tuple[str, Flight]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def ids(self) -> KeysView[str]:
        """The ids of the messages in flight (a live view)."""
        return self._flights.keys()

    def get(self, msg_id: str) -> Flight | None:
        """The message ``msg_id`` if it is in flight."""
        return self._flights.get(msg_id)

    def add(self, msg_id: str, flight: Flight) -> None:
        """Track ``msg_id`` until it settles or its deadline passes."""
        self._flights[msg_id] = flight
        self._seq += 1
        heapq.heappush(self._deadlines, (flight.deadline, self._seq, msg_id))
        if len(self._deadlines) > 2 * len(self._flights) + 64:
            self._deadlines = [d for d in self._deadlines if d[2] in self._flights]
            heapq.heapify(self._deadlines)

    def remove(self, msg_id: str) -> None:
        """``msg_id`` has settled (its deadline leaves the heap lazily)."""
        del self._flights[msg_id]

    def expired(self, until: float) -> Iterator[tuple[str, Flight]]:
        """Remove and yield, earliest first, each message due by ``until``."""
        while self._deadlines and self._deadlines[0][0] <= until:
            _, _, msg_id = heapq.heappop(self._deadlines)
            flight = self._flights.pop(msg_id, None)
            if flight is not None:  # else answered before its deadline
                yield msg_id, flight

    def next_deadline(self) -> float:
        """The earliest deadline of a message still in flight (``inf`` if none)."""
        while self._deadlines and self._deadlines[0][2] not in self._flights:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else math.inf

    def queue(self, msg_id: str, flight: Flight) -> None:
        """``msg_id`` (``flight``) waits behind its node's current message."""
        self._queued[flight.node_id] = (msg_id, flight)

    def start_queued(self, node_id: int, settled: str) -> Flight | None:
        """``node_id``'s train message ``settled`` is settled: the message
        queued behind it, which starts now, if there is one."""
        queued = self._queued.pop(node_id, None)
        if queued is None or queued[0] == settled:
            return None
        return queued[1]
