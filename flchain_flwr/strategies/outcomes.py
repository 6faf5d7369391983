"""The event loop's receive side: what becomes of each message it sent.

A message settles once: with its reply, with an error (the node's, or the
SuperLink's for a message it gave up on), at its deadline, or when its push
fails. :class:`MessageOutcomes` frees the node, hands an update to the buffer
and an evaluation to the federated evaluation, records a failure with its
reason (an evaluate reply the evaluation rejects is one; a node's error
reason is quoted through :func:`~flchain_flwr.quoting.clip`), and starts a train
message queued behind the settled one.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore import log

from ..quoting import clip
from .flights import Flight
from .loopparts import LoopParts
from .result import AsyncResult, NodeFailure
from .traffic import content_bytes


# pylint: disable=too-many-instance-attributes
class MessageOutcomes:
    """Settles an event loop's messages and records what came of them.

    ``on_usable`` is called when a reply's update is accepted by the buffer
    (the loop's idle clock starts again); ``elapsed`` is the loop's time.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        parts: LoopParts,
        *,
        retry_backoff: float,
        result: AsyncResult,
        on_usable: Callable[[], None],
    ) -> None:
        self.parts = parts
        self.retry_backoff = retry_backoff
        self.result = result
        self.on_usable = on_usable

    def take(self, reply: Message) -> None:
        """Settle the message ``reply`` answers, if it is still in flight."""
        msg_id = reply.metadata.reply_to_message_id
        flight = self.parts.in_flight.get(msg_id)
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
                    sender,
                    flight.version,
                    self.parts.elapsed(),
                    ErrorCode.UNKNOWN,
                    reason,
                )
            )
            return
        self.parts.in_flight.remove(msg_id)
        if flight.train:  # queue behind it only if two round trips fit its TTL
            round_trip = self.parts.clock.now() - (flight.deadline - self.parts.ttl)
            self.parts.nodes.allow_queue(
                flight.node_id, 2 * round_trip <= self.parts.ttl
            )
            self.parts.forecast.replied(flight.node_id, self.parts.clock.now())
        if flight.train and reply.has_content():
            self.parts.buffer.traffic.received(content_bytes(reply.content))
            if self.parts.downlink is not None:
                self.parts.downlink.observe(flight.node_id, reply.content)
        self.parts.nodes.done(flight.node_id, flight.train)
        self.parts.evaluation.freed((flight.node_id,))
        if reply.has_error():
            # the node's (or the SuperLink's) text: quoted clipped, as it goes
            # into the log and the result once per message
            self._settle_failure(flight, reply.error.code, clip(reply.error.reason))
        elif not flight.train:
            content = reply.content
            rejected = self.parts.evaluation.done(
                flight.node_id, flight.version, content
            )
            if rejected is not None:
                self._record_failure(flight, ErrorCode.UNKNOWN, rejected)
        elif self.parts.buffer.complete:  # a late update has nowhere to go
            self.parts.buffer.store.settled(flight.node_id, flight.version, None)
        elif self.parts.buffer.take(
            flight.node_id,
            flight.version,
            reply.content,
            self.parts.clock.now(),
            flight.work,
        ):
            self.on_usable()
            staleness = self.parts.buffer.version - flight.version
            self.parts.policy.on_update(flight.node_id, staleness, self.parts.elapsed())
        if flight.train:
            self._queued_starts(flight.node_id, msg_id)

    def expire(self, until: float) -> int:
        """Settle every message due by ``until`` as failed; return how many."""
        count = 0
        for msg_id, flight in self.parts.in_flight.expired(until):
            if flight.train:  # its round trip outgrew the TTL: queue no more
                self.parts.nodes.allow_queue(flight.node_id, False)
            self.parts.nodes.done(flight.node_id, flight.train)
            self.parts.evaluation.freed((flight.node_id,))
            reason = f"no reply within the message TTL ({self.parts.ttl:g}s)"
            self._settle_failure(flight, ErrorCode.MESSAGE_UNAVAILABLE, reason)
            if flight.train:
                self._queued_starts(flight.node_id, msg_id)
            count += 1
        return count

    def failed(self, flight: Flight, code: int, reason: str) -> None:
        """Record that ``flight`` failed: the node backs off for a while."""
        self._record_failure(flight, code, reason)
        until = self.parts.clock.now() + self.retry_backoff
        self.parts.nodes.failed(flight.node_id, until, flight.train, flight.version)
        if flight.train and self.parts.downlink is not None:
            self.parts.downlink.forget(flight.node_id, reason)
        if flight.train:
            self.parts.policy.on_failure(flight.node_id, self.parts.elapsed())
            self.parts.forecast.forget(flight.node_id)
        else:
            self.parts.evaluation.done(flight.node_id, flight.version, None)

    def _queued_starts(self, node_id: int, settled: str) -> None:
        """The train message ``settled`` of ``node_id`` is settled: a queued one
        behind it starts now, so the policy (round-trip timing, e.g. BAFL's)
        counts its dispatch from here, not from when it was queued."""
        queued = self.parts.in_flight.start_queued(node_id, settled)
        if queued is not None:
            self.parts.policy.on_dispatch(
                node_id, queued.version, self.parts.elapsed(), queued.work
            )
            self.parts.forecast.started(node_id, self.parts.clock.now())

    def _record_failure(self, flight: Flight, code: int, reason: str) -> None:
        """Log and record in the result that ``flight`` gave no usable reply."""
        log(WARNING, "Node %d failed (%s): %s", flight.node_id, code, reason)
        self.result.failures.append(
            NodeFailure(
                flight.node_id, flight.version, self.parts.elapsed(), code, reason
            )
        )

    def _settle_failure(self, flight: Flight, code: int, reason: str) -> None:
        if flight.train:
            self.parts.buffer.store.settled(flight.node_id, flight.version, None)
        self.failed(flight, code, reason)
