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
its idle poll; see :class:`~.nodes.NodeTracker`). The loop says when to send
and how many may train, and when to pull, aggregate and wait;
:class:`~.dispatch.Dispatcher` sends, :class:`~.outcomes.MessageOutcomes`
settles what comes back (or expires), and :class:`~.flights.InFlight` holds
what is in flight.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from logging import WARNING
from typing import Literal

from flwr.app import ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.supercore import log
from flwr.superlink.grid.http_grid import HttpGrid

from ..runtime import Clock
from .buffer import TRIGGER_BUFFER_FULL, UpdateBuffer
from .dispatch import ContentFn, Dispatcher
from .downlink import DownlinkSync
from .evaluation import FederatedEvaluation
from .flights import InFlight
from .loopparts import LoopParts
from .nodes import NodeTracker
from .outcomes import MessageOutcomes
from .queue_forecast import QueueForecast
from .result import AsyncResult, VersionRecord
from .scheduling import SchedulingPolicy

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
        self.result = result
        self.on_version = on_version
        self.downlink = downlink

        self.nodes = NodeTracker(queue_depth=2 if settings.queued_dispatch else 1)
        self.nodes.version = buffer.version
        self.in_flight = InFlight()
        self.t0 = clock.now()
        self.forecast = QueueForecast(self.t0)
        parts = LoopParts(
            clock=clock,
            ttl=settings.ttl,
            nodes=self.nodes,
            in_flight=self.in_flight,
            buffer=buffer,
            evaluation=evaluation,
            forecast=self.forecast,
            policy=policy,
            downlink=downlink,
            elapsed=self.now,
        )
        self.outcomes = MessageOutcomes(
            parts,
            retry_backoff=settings.retry_backoff,
            result=result,
            on_usable=self._usable,
        )
        self.dispatcher = Dispatcher(
            parts,
            grid=grid,
            rng=rng,
            train_content=train_content,
            evaluate_content=evaluate_content,
            train_config=train_config,
            evaluate_config=evaluate_config,
            failed=self.outcomes.failed,
        )
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
        self.dispatcher.evaluations(deadline)
        if self.buffer.complete or now >= self.idle_deadline:
            return  # idle: no usable reply for `timeout`, let what is in flight settle
        capacity = self.train_limit() - self.nodes.training_online
        self.dispatcher.train(now, deadline, capacity)

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
                replies = list(self.grid.pull_messages(self.in_flight.ids()))
            except Exception as exc:  # transport trouble: try again next poll
                log(WARNING, "pull_messages failed: %s", exc)
                replies = []
            for reply in replies:
                self.outcomes.take(reply)
                if self.buffer.full:
                    self._aggregate(TRIGGER_BUFFER_FULL)
        expired = self.outcomes.expire(pulled_at)
        self.buffer.store.prune()
        return len(replies) + expired

    def _usable(self) -> None:
        """A reply's update was accepted: the idle clock starts again."""
        self.idle_deadline = self.clock.now() + self.s.timeout

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
        candidates = [
            self.next_refresh,
            self.idle_deadline,
            self.budget_deadline,
            self.in_flight.next_deadline(),
            self.nodes.next_backoff_end(),
        ]
        if self.buffer.updates and not self.buffer.complete:
            candidates.append(self.buffer.deadline)
        self.clock.wait(
            min((t for t in candidates if t > now), default=now + self.s.timeout)
        )
