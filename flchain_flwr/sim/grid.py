"""A Flower ``Grid`` that runs the real ClientApp in-process on a virtual clock.

Each pushed message is executed at once by the node's ClientApp (on a copy, as if
it had crossed the network), and its reply is stamped with a simulated completion
time::

    dispatch time + download time + compute time + upload time

Replies are released to ``pull_messages`` only when the virtual clock has reached
that time, in time order. The clock only moves when someone waits on it, and then
jumps straight to the next event, so a run costs the real time of training and
nothing else, and is deterministic for a seed.

It scales to large populations: per-node state (a ``Context`` and ``NodeStats``)
is made on a node's first message, devices are shared profiles indexed per node,
membership is recomputed only when the clock crosses an availability
transition, and every event (push, release, pull, next event) costs O(log N) in
the number of nodes or better.

The parts live beside it: the clock in :mod:`.clock`, per-node maps and stats in
:mod:`.nodemap`, each node's profile and who is online in :mod:`.membership`,
replies held until their time in :mod:`.replies`, and a node's work on one
message (the ClientApp run, its cost, its outcome) in :mod:`.work`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from uuid import UUID

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from .clock import VirtualClock
from .devices import DeviceProfile
from .membership import Membership
from .nodemap import NodeMap, NodeStats, node_position, sum_stats
from .replies import ReplyQueue
from .work import (
    TTL_EXPIRED,
    WorkFn,
    draw_delays,
    examples_work,
    finish_time,
    late_failure,
    payload_bytes,
    run_client_app,
)


# pylint: disable=too-many-instance-attributes
class VirtualGrid(Grid):
    """In-process Flower Grid with per-node device profiles and simulated time.

    Parameters
    ----------
    client_app : ClientApp
        The real ClientApp every node runs.
    devices : Sequence[DeviceProfile]
        One profile per node. Nodes may share a profile object (the presets do);
        the grid keeps each distinct profile once.
    node_configs : Sequence[dict], optional
        Per-node ``node_config``; default ``partition-id`` / ``num-partitions``.
        Each is copied into the node's Context when the node is first used.
    run_config : dict, optional
        The run config every node's Context carries (one shared copy; a ClientApp
        always gets its own copy with the Context it runs on).
    seed : int (default: 0)
        Seeds node ids, jitter and hangs.
    work_fn : callable, optional
        Work of a message at speed 1 in seconds; default 1 ms per example.
    failure_detection_s : float (default: 60.0)
        Delay before a node that went offline mid-message is reported (error code
        NODE_UNAVAILABLE), like Flower's heartbeat timeout.
    run_id : int (default: 1)

    Attributes
    ----------
    node_ids : list[int]
        Every node's id, sorted.
    devices, partition_of, contexts, stats : NodeMap
        Per node: its profile, its index (partition), its Context (made on first
        use and kept, so state persists) and its traffic (zero until it gets a
        message). They read like dicts over every node.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        client_app: ClientApp,
        devices: Sequence[DeviceProfile],
        *,
        node_configs: Sequence[dict[str, int | float | str | bool]] | None = None,
        run_config: dict[str, int | float | str | bool] | None = None,
        seed: int = 0,
        work_fn: WorkFn | None = None,
        failure_detection_s: float = 60.0,
        run_id: int = 1,
    ) -> None:
        if not devices:
            raise ValueError("a federation needs at least one device")
        if node_configs is not None and len(node_configs) != len(devices):
            raise ValueError("node_configs and devices differ in length")
        self.client_app = client_app
        self.rng = np.random.default_rng(seed)
        self.work_fn = work_fn or examples_work(1e-3)
        self.failure_detection_s = failure_detection_s
        self.clock = VirtualClock(self)
        self._run = Run.create_empty(run_id)
        # Flower's runtimes set the process's task identity before a ServerApp
        # runs; Message() reads it. This grid is the runtime here.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._replies = ReplyQueue()

        draws = self.rng.integers(1, 2**63 - 1, size=len(devices))
        ids: list[int] = np.unique(draws).tolist()  # sorted, distinct
        if len(ids) != len(devices):  # pragma: no cover - 1 in 2**60 collision
            raise RuntimeError("node id collision; pick another seed")
        self.node_ids: list[int] = ids

        self._membership = Membership(ids, devices)
        self._context_run_id = run_id
        self._node_configs = list(node_configs) if node_configs is not None else None
        self._run_config = dict(run_config or {})
        self.devices: NodeMap[DeviceProfile] = NodeMap(
            ids, lambda _, index: self._membership.profile_at(index), keep_reads=False
        )
        self.partition_of: NodeMap[int] = NodeMap(
            ids, lambda _, index: index, keep_reads=False
        )
        self.contexts: NodeMap[Context] = NodeMap(
            ids, self._new_context, keep_reads=True
        )
        self.stats: NodeMap[NodeStats] = NodeMap(
            ids, lambda _, __: NodeStats(), keep_reads=False
        )

    def _new_context(self, node_id: int, index: int) -> Context:
        node_config = dict(
            self._node_configs[index]
            if self._node_configs is not None
            else {"partition-id": index, "num-partitions": len(self.node_ids)}
        )
        return Context(
            run_id=self._context_run_id,
            node_id=node_id,
            node_config=node_config,
            state=RecordDict(),
            run_config=self._run_config,
        )

    # --------------------------------------------------------------- Grid API
    def set_run(self, run: Run) -> None:
        """Adopt a run (the simulator creates its own by default)."""
        if not isinstance(run, Run):
            raise TypeError(
                f"`run` must be an instance of Run, got {type(run).__name__}"
            )
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid operates in."""
        return self._run

    def create_message(  # pylint: disable=too-many-arguments
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message (kept for Grid API compatibility)."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Ids of the nodes online at the current simulated time, sorted.

        Returns a tuple, and the same tuple object for as long as membership is
        unchanged. Membership only changes when the clock crosses a window
        boundary, so a call costs O(log B) in the B boundaries (see
        :meth:`Membership.online_ids`). With no online windows the tuple is
        built once.
        """
        return self._membership.online_ids(self.clock.time)

    def get_nodes(self) -> Iterable[NodeInfo]:
        """Online nodes as NodeInfo."""
        return [NodeInfo(node_id=nid) for nid in self.get_node_ids()]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Execute each message on its node now; schedule its reply in sim time."""
        ids: list[str] = []
        for message in messages:
            msg_id = str(UUID(bytes=self.rng.bytes(16), version=4))
            message.metadata.__dict__["_message_id"] = msg_id
            self._schedule(message)
            ids.append(msg_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Replies to the given ids that are complete by now, in time order.

        Costs O(len(message_ids)), or, when ``message_ids`` is a set (e.g. a
        dict's ``keys()``) larger than the replies that are in, O(replies in).
        """
        return self._replies.take(message_ids, self.clock.time)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push, then advance simulated time until every reply is in or timeout."""
        waiting = set(self.push_messages(messages))
        end = self.clock.time + (timeout if timeout is not None else math.inf)
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies.extend(got)
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or self.clock.time >= end:
                break
            before = self.clock.time
            self.clock.wait(end)
            if self.clock.time == before and not self._ready_any(waiting):
                break  # nothing left that could ever arrive
        return replies

    # ------------------------------------------------------------- simulation
    def next_event_time(self) -> float:
        """Time of the next reply or availability change after now (inf if none).

        Always later than now: replies that fell due while the clock moved on
        without a pull (e.g. :meth:`VirtualClock.advance` during a slow
        aggregation) are released first, so they can no longer hold the clock in
        the past. O(log) in pending replies and availability transitions.
        """
        now = self.clock.time
        return min(self._membership.next_change(now), self._replies.next_after(now))

    def _ready_any(self, ids: set[str]) -> bool:
        """Whether a reply to one of ``ids`` is in by now (subclasses poll it)."""
        return self._replies.any_ready(ids, self.clock.time)

    def _enqueue(self, reply: Message, ready_at: float) -> None:
        reply.metadata.__dict__["_message_id"] = str(
            UUID(bytes=self.rng.bytes(16), version=4)
        )
        reply.metadata.created_at = ready_at  # sim time: orders pulled replies
        self._replies.add(reply, ready_at)

    def _error(self, message: Message, code: int, reason: str, at: float) -> None:
        node_id = message.metadata.dst_node_id
        if node_id in self.stats:  # a message to an unknown node counts nowhere
            self.stats.entry(node_id).errors += 1
        self._enqueue(Message(Error(code=code, reason=reason), reply_to=message), at)

    def _schedule(self, message: Message) -> None:
        now = self.clock.time
        node_id = message.metadata.dst_node_id
        index = node_position(self.node_ids, node_id)
        device = self._membership.profile_at(index) if index >= 0 else None
        ttl_end = now + message.metadata.ttl
        if device is None or not device.is_online(now):
            self._error(
                message, ErrorCode.NODE_UNAVAILABLE, "node is not connected", now
            )
            return
        stats = self.stats.entry(node_id)
        stats.messages += 1
        down = payload_bytes(message.content)
        stats.bytes_down += down
        hang, jitter = draw_delays(self.rng, device)
        if hang:
            self._error(message, ErrorCode.MESSAGE_UNAVAILABLE, TTL_EXPIRED, ttl_end)
            return

        reply, context = run_client_app(
            self.client_app, message, self.contexts[node_id]
        )
        compute = self.work_fn(message, reply) / device.speed * jitter
        up = payload_bytes(reply.content) if reply.has_content() else 0
        # Like a SuperNode, a node handles one message at a time: a message
        # queued behind another starts when that one is done.
        start = max(now, stats.free_at)
        done = finish_time(device, start, down, compute, up)
        stats.busy_seconds += done - start
        leaves = device.offline_at(now)
        if leaves >= done:  # still connected when done, even past the TTL
            stats.free_at = done
            if context is not None:
                # State persists when the work finished. An unchanged run config
                # is shared again rather than kept once per node.
                if context.run_config == self._run_config:
                    context.run_config = self._run_config
                self.contexts.made[node_id] = context
        failure = late_failure(done, leaves, ttl_end, self.failure_detection_s)
        if failure is not None:
            self._error(message, *failure)
            return
        if reply.has_content():
            stats.replies += 1
            stats.bytes_up += up
        else:
            stats.errors += 1
        self._enqueue(reply, done)

    # ---------------------------------------------------------------- reports
    def totals(self) -> dict[str, float]:
        """Messages, bytes and busy time summed over all nodes."""
        return {**sum_stats(self.stats.made), "simulated_seconds": self.clock.time}
