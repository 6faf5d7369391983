"""The event loop's send side: evaluations, train messages, queued ones.

:class:`Dispatcher` chooses the nodes, builds each message (the app's content
function, the scheduling policy's per-node train config, the downlink's delta),
pushes it to the grid and records it: in :class:`~.flights.InFlight`, in the
node tracker, with the policy and the queue forecast. When to send, and how
many may train, is the loop's to say (:class:`~.loop.EventLoop`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from .flights import Flight
from .loopparts import LoopParts
from .nova import asked_work
from .traffic import content_bytes

ContentFn = Callable[[ArrayRecord, ConfigRecord, int], RecordDict]
FailureFn = Callable[[Flight, int, str], None]


# pylint: disable=too-many-instance-attributes
class Dispatcher:
    """Sends an event loop's messages and records each one sent.

    A message the grid refuses, or a push that fails, is handed to ``failed``
    (the loop's failure bookkeeping) in the order of the messages.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        parts: LoopParts,
        *,
        grid: Grid,
        rng: random.Random,
        train_content: ContentFn,
        evaluate_content: ContentFn,
        train_config: ConfigRecord,
        evaluate_config: ConfigRecord,
        failed: FailureFn,
    ) -> None:
        self.parts = parts
        self.grid = grid
        self.rng = rng
        self.train_content = train_content
        self.evaluate_content = evaluate_content
        self.train_config = train_config
        self.evaluate_config = evaluate_config
        self.failed = failed

    def evaluations(self, deadline: float) -> None:
        """Send every evaluation whose node is free."""
        outgoing: list[tuple[Message, Flight]] = []
        for node_id, version in self.parts.evaluation.ready(self.parts.nodes.is_free):
            content = self.evaluate_content(
                self.parts.evaluation.arrays_of(version), self.evaluate_config, version
            )
            message = Message(
                content,
                node_id,
                MessageType.EVALUATE,
                ttl=self.parts.ttl,
                group_id=str(version),
            )
            outgoing.append(
                (message, Flight(node_id, MessageType.EVALUATE, version, deadline))
            )
        self._push(outgoing)

    def train(self, now: float, deadline: float, capacity: int) -> None:
        """Send train messages on the current version: to up to ``capacity``
        free nodes the policy chooses, then, once no free node is left for the
        version, queued behind nodes still training."""
        if capacity > 0 and self.parts.nodes.eligible:
            self._push(self._train_messages(self._chosen(capacity), deadline))
        if self.parts.nodes.queueable and not self.parts.nodes.eligible:
            # Queue only when no free node is left for the version: queued
            # messages must not keep a free node waiting for a slot. A node
            # with an evaluation pending is not queued behind: it must come
            # free to be sent it.
            # A message forecast to land over max_staleness is held back: it
            # could not be withdrawn later (see queue_forecast).
            pending = self.parts.evaluation.pending
            limit = self.parts.buffer.max_staleness()
            behind = sorted(
                n
                for n in self.parts.nodes.queueable
                if n not in pending and self.parts.forecast.fits(n, now, limit)
            )
            self._push(self._train_messages(behind, deadline))

    def _train_messages(
        self, node_ids: list[int], deadline: float
    ) -> list[tuple[Message, Flight]]:
        """Train messages on the current version to ``node_ids``."""
        if not node_ids:
            return []
        version = self.parts.buffer.version
        shared = self.train_content(
            self.parts.buffer.model_record, self.train_config, version
        )
        outgoing = []
        for node_id in node_ids:
            config = self.parts.policy.train_config(node_id, version, self.train_config)
            work = asked_work(  # the server's record, never the client's word
                self.train_config if config is None else config,
                self.parts.policy.work_key,
            )
            content = (
                shared
                if config is None
                else self.train_content(self.parts.buffer.model_record, config, version)
            )
            if self.parts.downlink is not None:
                content = self.parts.downlink.content(node_id, content)
            message = Message(
                content,
                node_id,
                MessageType.TRAIN,
                ttl=self.parts.ttl,
                group_id=str(version + 1),
            )
            outgoing.append(
                (message, Flight(node_id, MessageType.TRAIN, version, deadline, work))
            )
        return outgoing

    def _chosen(self, capacity: int) -> list[int]:
        """The policy's choice, keeping only distinct nodes free to train."""
        chosen: dict[int, None] = {}  # ordered, O(1) membership
        for node_id in self.parts.policy.select(
            self.parts.nodes.eligible, capacity, self.rng
        ):
            if len(chosen) == capacity:
                break
            fresh = (
                self.parts.nodes.last_trained.get(node_id, -1)
                < self.parts.nodes.version
            )
            if node_id not in chosen and self.parts.nodes.is_free(node_id) and fresh:
                chosen[node_id] = None
        return list(chosen)

    def _push(self, messages: list[tuple[Message, Flight]]) -> None:
        if not messages:
            return
        try:
            pushed = self.grid.push_messages([m for m, _ in messages])
            accepted = {str(i) for i in pushed if i}
        except Exception as exc:  # transport trouble: count as failures, go on
            for _, flight in messages:
                self.failed(flight, ErrorCode.UNKNOWN, f"push failed: {exc}")
            return
        sizes: dict[int, int] = {}  # messages may share one content
        for message, flight in messages:
            msg_id = message.metadata.message_id
            if not msg_id or msg_id not in accepted:
                self.failed(flight, ErrorCode.UNKNOWN, "push was refused")
                continue
            if flight.train:
                key = id(message.content)
                if key not in sizes:
                    sizes[key] = content_bytes(message.content)
                self.parts.buffer.traffic.sent(sizes[key])
            self.parts.in_flight.add(msg_id, flight)
            self._sent(msg_id, flight)

    def _sent(self, msg_id: str, flight: Flight) -> None:
        """Record that ``msg_id`` is on its way."""
        queued = flight.train and flight.node_id in self.parts.nodes.trains
        self.parts.nodes.sent(flight.node_id, flight.train)
        if flight.train:
            self.parts.evaluation.trained(flight.node_id)
            self.parts.buffer.store.dispatched(flight.node_id, flight.version)
            if queued:  # it starts when the node's current message settles
                self.parts.in_flight.queue(msg_id, flight)
            else:
                self.parts.policy.on_dispatch(
                    flight.node_id, flight.version, self.parts.elapsed(), flight.work
                )
                self.parts.forecast.started(flight.node_id, self.parts.clock.now())
