"""FedBuff's event loop: membership, dispatch, pulls, deadlines, on one clock.

The loop keeps nodes busy and hands what comes back to the buffer and the
federated evaluation. It knows nothing about PoV, ledgers or compression: those
live in the block pipeline behind :class:`~.buffer.UpdateBuffer`.

Cost per event is independent of the population: message deadlines sit in a
heap, free nodes are tracked per event (:class:`~.nodes.NodeTracker`), and the
only O(N) step is reading the membership list every ``membership_refresh``
seconds. At most one message is in flight per node, or, with queued dispatch,
one more train message on a newer version behind a node's current one (a
deployed SuperNode then pulls it as soon as it replies instead of sleeping in
its idle poll; see :class:`~.nodes.NodeTracker`).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from logging import WARNING
from typing import Literal

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.superlink.grid.http_grid import HttpGrid

from ..runtime import Clock
from .buffer import TRIGGER_BUFFER_FULL, UpdateBuffer
from .downlink import DownlinkSync
from .evaluation import FederatedEvaluation
from .nodes import NodeTracker
from .queue_forecast import QueueForecast
from .result import AsyncResult, NodeFailure, VersionRecord
from .scheduling import SchedulingPolicy
from .traffic import content_bytes

ContentFn = Callable[[ArrayRecord, ConfigRecord, int], RecordDict]
QueuedDispatch = bool | Literal["auto"]


def queued_on(setting: QueuedDispatch, grid: Grid) -> bool:
    """Whether to queue: ``"auto"`` is on only over Flower's deployment grid
    (``HttpGrid``), whose SuperNodes sleep when they find no message; off in
    simulation, where a node runs its messages at once and side by side."""
    return isinstance(grid, HttpGrid) if setting == "auto" else bool(setting)


@dataclass(frozen=True)
class LoopSettings:
    """How the loop dispatches and waits (see :class:`~.fedbuff.FedBuff`)."""

    concurrency: int | None
    fraction_train: float
    min_train_nodes: int
    min_available_nodes: int
    ttl: float
    timeout: float
    membership_refresh: float
    retry_backoff: float
    time_budget: float | None
    reserved_nodes: frozenset[int] = frozenset()
    queued_dispatch: bool = False


@dataclass(frozen=True)
class Flight:
    """A message in flight."""

    node_id: int
    message_type: str
    version: int
    deadline: float

    @property
    def train(self) -> bool:
        """Whether it is a train message."""
        return self.message_type == MessageType.TRAIN


# pylint: disable=too-many-instance-attributes
class EventLoop:
    """One :meth:`FedBuff.start` call's loop over its grid."""

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        *,
        grid: Grid,
        clock: Clock,
        settings: LoopSettings,
        buffer: UpdateBuffer,
        evaluation: FederatedEvaluation,
        policy: SchedulingPolicy,
        rng: random.Random,
        train_content: ContentFn,
        evaluate_content: ContentFn,
        train_config: ConfigRecord,
        evaluate_config: ConfigRecord,
        result: AsyncResult,
        on_version: Callable[[VersionRecord], None],
        downlink: DownlinkSync | None = None,
    ) -> None:
        self.grid = grid
        self.clock = clock
        self.s = settings
        self.buffer = buffer
        self.evaluation = evaluation
        self.policy = policy
        self.rng = rng
        self.train_content = train_content
        self.evaluate_content = evaluate_content
        self.train_config = train_config
        self.evaluate_config = evaluate_config
        self.result = result
        self.on_version = on_version
        self.downlink = downlink

        self.nodes = NodeTracker(queue_depth=2 if settings.queued_dispatch else 1)
        self.nodes.version = buffer.version
        self.in_flight: dict[str, Flight] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        self._seq = 0
        # node -> (message id, version) of a queued train message that has not
        # started: the policy is told of it when the node's current one settles
        self._queued: dict[int, tuple[str, int]] = {}
        self.t0 = clock.now()
        self.forecast = QueueForecast(self.t0)
        self.next_refresh = self.t0
        self.idle_deadline = self.t0 + settings.timeout  # pushed back by usable replies
        self.last_version_at = self.t0
        budget = settings.time_budget
        self.budget_deadline = self.t0 + (budget if budget is not None else math.inf)
        self.stop_requested = False
        self._last_node_ids: object = None

    def now(self) -> float:
        """Seconds since the loop started, on its clock."""
        return self.clock.now() - self.t0

    # ------------------------------------------------------------------- run
    def run(self) -> str:
        """Run until done; return why it stopped."""
        while (reason := self._finished()) is None:
            self._refresh_nodes()
            if not self._waiting_for_nodes():
                self._dispatch()
            progressed = self._collect() > 0
            if (trigger := self._trigger()) is not None:
                self._aggregate(trigger)
                progressed = True
            if not progressed:
                self._wait()  # else: dispatch to freed nodes first
        return reason

    def _finished(self) -> str | None:
        if self.buffer.complete and not self.evaluation.busy:
            return "stopped by should_stop" if self.stop_requested else "completed"
        now = self.clock.now()
        idle = now >= self.idle_deadline and not self.buffer.complete
        if idle and not self.in_flight:
            return f"no usable reply for {self.s.timeout:g}s"
        if now >= self.budget_deadline:
            return "time budget reached"
        return None

    def _waiting_for_nodes(self) -> bool:
        return (
            not self.result.versions
            and not self.in_flight
            and len(self.nodes.online) < self.s.min_available_nodes
        )

    def _refresh_nodes(self) -> None:
        if self.clock.now() < self.next_refresh:
            return
        try:
            node_ids = self.grid.get_node_ids()
        except Exception as exc:  # transport trouble: keep the last known nodes
            log(WARNING, "get_node_ids failed: %s", exc)
        else:
            if node_ids is not self._last_node_ids:  # the same object: unchanged
                self._last_node_ids = node_ids
                online = set(node_ids) - self.s.reserved_nodes
                left, joined = self.nodes.set_online(online)
                self.evaluation.forget(left)
                self.evaluation.freed(joined)
        self.next_refresh = self.clock.now() + self.s.membership_refresh

    # -------------------------------------------------------------- dispatch
    def train_limit(self) -> int:
        """How many nodes may train at once."""
        if self.s.concurrency is not None:
            return self.s.concurrency
        online = len(self.nodes.online)
        return max(self.s.min_train_nodes, math.ceil(self.s.fraction_train * online))

    def _release_backoffs(self, now: float) -> None:
        self.evaluation.freed(self.nodes.release_backoffs(now))

    def _dispatch(self) -> None:
        now = self.clock.now()
        self._release_backoffs(now)
        deadline = now + self.s.ttl
        outgoing: list[tuple[Message, Flight]] = []
        for node_id, version in self.evaluation.ready(self.nodes.is_free):
            content = self.evaluate_content(
                self.evaluation.arrays_of(version), self.evaluate_config, version
            )
            message = Message(
                content,
                node_id,
                MessageType.EVALUATE,
                ttl=self.s.ttl,
                group_id=str(version),
            )
            outgoing.append(
                (message, Flight(node_id, MessageType.EVALUATE, version, deadline))
            )
        self._push(outgoing)

        if self.buffer.complete or now >= self.idle_deadline:
            return  # idle: no usable reply for `timeout`, let what is in flight settle
        capacity = self.train_limit() - self.nodes.training_online
        if capacity > 0 and self.nodes.eligible:
            self._push(self._train_messages(self._chosen(capacity), deadline))
        if self.nodes.queueable and not self.nodes.eligible:
            # Queue only when no free node is left for the version: queued
            # messages must not keep a free node waiting for a slot. A node
            # with an evaluation pending is not queued behind: it must come
            # free to be sent it.
            # A message forecast to land over max_staleness is held back: it
            # could not be withdrawn later (see queue_forecast).
            pending = self.evaluation.pending
            limit = self.buffer.max_staleness()
            behind = sorted(
                n
                for n in self.nodes.queueable
                if n not in pending and self.forecast.fits(n, now, limit)
            )
            self._push(self._train_messages(behind, deadline))

    def _train_messages(
        self, node_ids: list[int], deadline: float
    ) -> list[tuple[Message, Flight]]:
        """Train messages on the current version to ``node_ids``."""
        if not node_ids:
            return []
        version = self.buffer.version
        shared = self.train_content(
            self.buffer.model_record, self.train_config, version
        )
        outgoing = []
        for node_id in node_ids:
            config = self.policy.train_config(node_id, version, self.train_config)
            content = (
                shared
                if config is None
                else self.train_content(self.buffer.model_record, config, version)
            )
            if self.downlink is not None:
                content = self.downlink.content(node_id, content)
            message = Message(
                content,
                node_id,
                MessageType.TRAIN,
                ttl=self.s.ttl,
                group_id=str(version + 1),
            )
            outgoing.append(
                (message, Flight(node_id, MessageType.TRAIN, version, deadline))
            )
        return outgoing

    def _chosen(self, capacity: int) -> list[int]:
        """The policy's choice, keeping only distinct nodes free to train."""
        chosen: dict[int, None] = {}  # ordered, O(1) membership
        for node_id in self.policy.select(self.nodes.eligible, capacity, self.rng):
            if len(chosen) == capacity:
                break
            fresh = self.nodes.last_trained.get(node_id, -1) < self.nodes.version
            if node_id not in chosen and self.nodes.is_free(node_id) and fresh:
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
                self._record_failure(flight, ErrorCode.UNKNOWN, f"push failed: {exc}")
            return
        sizes: dict[int, int] = {}  # messages may share one content
        for message, flight in messages:
            msg_id = message.metadata.message_id
            if not msg_id or msg_id not in accepted:
                self._record_failure(flight, ErrorCode.UNKNOWN, "push was refused")
                continue
            if flight.train:
                key = id(message.content)
                if key not in sizes:
                    sizes[key] = content_bytes(message.content)
                self.buffer.traffic.sent(sizes[key])
            self.in_flight[msg_id] = flight
            self._seq += 1
            heapq.heappush(self._deadlines, (flight.deadline, self._seq, msg_id))
            if len(self._deadlines) > 2 * len(self.in_flight) + 64:
                self._deadlines = [d for d in self._deadlines if d[2] in self.in_flight]
                heapq.heapify(self._deadlines)
            queued = flight.train and flight.node_id in self.nodes.trains
            self.nodes.sent(flight.node_id, flight.train)
            if flight.train:
                self.evaluation.trained(flight.node_id)
                self.buffer.store.dispatched(flight.node_id, flight.version)
                if queued:  # it starts when the node's current message settles
                    self._queued[flight.node_id] = (msg_id, flight.version)
                else:
                    self.policy.on_dispatch(flight.node_id, flight.version, self.now())
                    self.forecast.started(flight.node_id, self.clock.now())

    # --------------------------------------------------------------- replies
    def _collect(self) -> int:
        """Take every reply that is in, one at a time; return how many.

        The buffer is checked after each update, so an aggregation never holds
        more than K updates. Only messages due by the time of the pull expire:
        an aggregation that takes time (a committee vote, a consensus delay)
        must not turn replies that arrived meanwhile into failures.
        """
        replies: list[Message] = []
        pulled_at = self.clock.now()
        if self.in_flight:
            try:
                replies = list(self.grid.pull_messages(self.in_flight.keys()))
            except Exception as exc:  # transport trouble: try again next poll
                log(WARNING, "pull_messages failed: %s", exc)
                replies = []
            for reply in replies:
                self._take_reply(reply)
                if self.buffer.full:
                    self._aggregate(TRIGGER_BUFFER_FULL)
        expired = self._expire(pulled_at)
        self.buffer.store.prune()
        return len(replies) + expired

    def _take_reply(self, reply: Message) -> None:
        msg_id = reply.metadata.reply_to_message_id
        flight = self.in_flight.get(msg_id)
        if flight is None:
            return  # expired or unknown: already accounted for
        sender = reply.metadata.src_node_id
        # The SuperLink answers for a message it gave up on (expired, node
        # gone): that error is the message's own outcome, once.
        from_link = sender == SUPERLINK_NODE_ID and reply.has_error()
        if sender != flight.node_id and not from_link:
            # the addressee's own reply may still come
            reason = f"sent a reply to a message addressed to node {flight.node_id}"
            log(WARNING, "Node %d failed: %s", sender, reason)
            self.result.failures.append(
                NodeFailure(
                    sender, flight.version, self.now(), ErrorCode.UNKNOWN, reason
                )
            )
            return
        del self.in_flight[msg_id]
        if flight.train:  # queue behind it only if two round trips fit its TTL
            round_trip = self.clock.now() - (flight.deadline - self.s.ttl)
            self.nodes.allow_queue(flight.node_id, 2 * round_trip <= self.s.ttl)
            self.forecast.replied(flight.node_id, self.clock.now())
        if flight.train and reply.has_content():
            self.buffer.traffic.received(content_bytes(reply.content))
            if self.downlink is not None:
                self.downlink.observe(flight.node_id, reply.content)
        self.nodes.done(flight.node_id, flight.train)
        self.evaluation.freed((flight.node_id,))
        if reply.has_error():
            self._settle_failure(flight, reply.error.code, reply.error.reason or "")
        elif not flight.train:
            self.evaluation.done(flight.node_id, flight.version, reply.content)
        elif self.buffer.complete:  # a late update has nowhere to go
            self.buffer.store.settled(flight.node_id, flight.version, None)
        elif self.buffer.take(
            flight.node_id, flight.version, reply.content, self.clock.now()
        ):
            self.idle_deadline = self.clock.now() + self.s.timeout
            staleness = self.buffer.version - flight.version
            self.policy.on_update(flight.node_id, staleness, self.now())
        if flight.train:
            self._queued_starts(flight.node_id, msg_id)

    def _expire(self, until: float) -> int:
        count = 0
        while self._deadlines and self._deadlines[0][0] <= until:
            _, _, msg_id = heapq.heappop(self._deadlines)
            flight = self.in_flight.pop(msg_id, None)
            if flight is None:
                continue  # answered before its deadline
            if flight.train:  # its round trip outgrew the TTL: queue no more
                self.nodes.allow_queue(flight.node_id, False)
            self.nodes.done(flight.node_id, flight.train)
            self.evaluation.freed((flight.node_id,))
            reason = f"no reply within the message TTL ({self.s.ttl:g}s)"
            self._settle_failure(flight, ErrorCode.MESSAGE_UNAVAILABLE, reason)
            if flight.train:
                self._queued_starts(flight.node_id, msg_id)
            count += 1
        return count

    def _queued_starts(self, node_id: int, settled: str) -> None:
        """The train message ``settled`` of ``node_id`` is settled: a queued one
        behind it starts now, so the policy (round-trip timing, e.g. BAFL's)
        counts its dispatch from here, not from when it was queued."""
        queued = self._queued.pop(node_id, None)
        if queued is not None and queued[0] != settled:
            self.policy.on_dispatch(node_id, queued[1], self.now())
            self.forecast.started(node_id, self.clock.now())

    def _settle_failure(self, flight: Flight, code: int, reason: str) -> None:
        if flight.train:
            self.buffer.store.settled(flight.node_id, flight.version, None)
        self._record_failure(flight, code, reason)

    def _record_failure(self, flight: Flight, code: int, reason: str) -> None:
        log(WARNING, "Node %d failed (%s): %s", flight.node_id, code, reason)
        self.result.failures.append(
            NodeFailure(flight.node_id, flight.version, self.now(), code, reason)
        )
        until = self.clock.now() + self.s.retry_backoff
        self.nodes.failed(flight.node_id, until, flight.train, flight.version)
        if flight.train and self.downlink is not None:
            self.downlink.forget(flight.node_id, reason)
        if flight.train:
            self.policy.on_failure(flight.node_id, self.now())
            self.forecast.forget(flight.node_id)
        else:
            self.evaluation.done(flight.node_id, flight.version, None)

    # ----------------------------------------------------------- aggregation
    def _trigger(self) -> str | None:
        """Why the buffer should be aggregated now, if it should.

        "drained": nothing is in flight and nothing more will be sent (no
        eligible node, or no usable reply for ``timeout``).
        """
        now = self.clock.now()
        self._release_backoffs(now)
        idle = now >= self.idle_deadline
        drained = not self.in_flight and (not self.nodes.eligible or idle)
        return self.buffer.trigger(now, drained)

    def _aggregate(self, trigger: str) -> None:
        record = self.buffer.aggregate(trigger)
        if record is None:
            # Its nodes may train on this version again, but replies that made
            # no version were not usable: the idle clock runs from the last
            # version, so a buffer rejected again and again cannot run forever.
            self.nodes.retrain(self.buffer.unused_nodes)
            self.idle_deadline = self.last_version_at + self.s.timeout
            return
        self.nodes.new_version(self.buffer.version)
        self.forecast.new_version(self.clock.now())
        if self.downlink is not None:
            self.downlink.advance(self.buffer.version, self.buffer.store.model)
        # a version is activity: a slow aggregation must not count as idle time
        self.last_version_at = self.clock.now()
        self.idle_deadline = max(
            self.idle_deadline, self.last_version_at + self.s.timeout
        )
        self.on_version(record)

    # ------------------------------------------------------------------ wait
    def _wait(self) -> None:
        """Wait for the next reply, or the next deadline that is still ahead.

        Only future deadlines count: one that is due but cannot act (the idle
        timeout while messages are in flight) must not pin a virtual clock.
        """
        now = self.clock.now()
        self._release_backoffs(now)
        while self._deadlines and self._deadlines[0][2] not in self.in_flight:
            heapq.heappop(self._deadlines)
        candidates = [
            self.next_refresh,
            self.idle_deadline,
            self.budget_deadline,
            self._deadlines[0][0] if self._deadlines else math.inf,
            self.nodes.next_backoff_end(),
        ]
        if self.buffer.updates and not self.buffer.complete:
            candidates.append(self.buffer.deadline)
        self.clock.wait(
            min((t for t in candidates if t > now), default=now + self.s.timeout)
        )
