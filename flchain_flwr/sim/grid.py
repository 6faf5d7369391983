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
"""

from __future__ import annotations

import copy
import heapq
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from itertools import compress
from typing import TypeVar
from uuid import UUID

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from ..strategies.traffic import content_bytes
from .devices import DeviceProfile

WorkFn = Callable[[Message, Message], float]
"""Work of one message in seconds at speed 1, from (instruction, reply)."""

V = TypeVar("V")


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


class VirtualClock:
    """Simulated seconds, advanced by :meth:`wait` to the grid's next event."""

    def __init__(self, grid: VirtualGrid) -> None:
        self._grid = grid
        self.time = 0.0

    def now(self) -> float:
        """Current simulated time."""
        return self.time

    def wait(self, deadline: float) -> None:
        """Jump to the next event, or to ``deadline`` if that comes first."""
        target = min(deadline, self._grid.next_event_time())
        if target > self.time and math.isfinite(target):
            self.time = target

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (e.g. a consensus delay)."""
        if seconds < 0:
            raise ValueError("cannot move the clock backwards")
        self.time += seconds


@dataclass(order=True, slots=True)
class _Pending:
    ready_at: float
    seq: int
    reply: Message = field(compare=False)


@dataclass(slots=True)
class NodeStats:
    """Traffic and work of one simulated node."""

    messages: int = 0
    replies: int = 0
    errors: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    busy_seconds: float = 0.0
    free_at: float = 0.0  # when its last reply is done: messages run one at a time


def _position(node_ids: Sequence[int], node_id: object) -> int:
    """Index of ``node_id`` in the sorted ``node_ids``, or -1 if absent."""
    if not isinstance(node_id, int | np.integer):
        return -1
    i = bisect_left(node_ids, node_id)
    return i if i < len(node_ids) and node_ids[i] == node_id else -1


class NodeMap(Mapping[int, V]):
    """A read-only mapping from every node id to a value made on demand.

    It reads like a dict built for every node (iteration yields all node ids in
    order), but a node's value is only made when asked for, by
    ``default(node_id, index)``, so untouched nodes take no memory. With
    ``keep_reads`` a value made on a read is kept (and later reads return that
    same object, so changes to it persist); otherwise a read of a node without an
    entry returns a fresh default and keeps nothing. Values the grid records
    itself are in :attr:`made`.
    """

    def __init__(
        self,
        node_ids: Sequence[int],
        default: Callable[[int, int], V],
        *,
        keep_reads: bool,
    ) -> None:
        self._node_ids = node_ids
        self._default = default
        self._keep_reads = keep_reads
        self.made: dict[int, V] = {}
        """The entries made so far (kept ones only), by node id."""

    def __getitem__(self, node_id: int) -> V:
        return self._lookup(node_id, keep=self._keep_reads)

    def entry(self, node_id: int) -> V:
        """The node's value, made and kept if it has none yet (KeyError if unknown)."""
        return self._lookup(node_id, keep=True)

    def _lookup(self, node_id: int, keep: bool) -> V:
        if node_id in self.made:
            return self.made[node_id]
        index = _position(self._node_ids, node_id)
        if index < 0:
            raise KeyError(node_id)
        value = self._default(node_id, index)
        if keep:
            self.made[node_id] = value
        return value

    def __contains__(self, node_id: object) -> bool:
        return _position(self._node_ids, node_id) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._node_ids)

    def __len__(self) -> int:
        return len(self._node_ids)


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
        self._seq = 0
        self._pending: list[_Pending] = []
        self._ready: dict[str, _Pending] = {}

        draws = self.rng.integers(1, 2**63 - 1, size=len(devices))
        ids: list[int] = np.unique(draws).tolist()  # sorted, distinct
        if len(ids) != len(devices):  # pragma: no cover - 1 in 2**60 collision
            raise RuntimeError("node id collision; pick another seed")
        self.node_ids: list[int] = ids

        # Each distinct profile once, and per node the index of its profile.
        self._profiles: list[DeviceProfile] = []
        slot_of: dict[int, int] = {}
        slots: list[int] = []
        for device in devices:
            slot = slot_of.get(id(device))
            if slot is None:
                slot = slot_of[id(device)] = len(self._profiles)
                self._profiles.append(device)
            slots.append(slot)
        self._profile_of = np.array(slots, dtype=np.int32)
        del slots, slot_of

        self._context_run_id = run_id
        self._node_configs = list(node_configs) if node_configs is not None else None
        self._run_config = dict(run_config or {})
        self.devices: NodeMap[DeviceProfile] = NodeMap(
            ids, self._device_at, keep_reads=False
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

        # Availability: every window boundary (start or end) of every distinct
        # profile, sorted by time, with the profile it belongs to. Membership is
        # constant between two boundaries.
        times: list[float] = []
        owners: list[int] = []
        for slot, profile in enumerate(self._profiles):
            for window in profile.online or ():
                times.extend(window)
                owners.extend((slot, slot))
        order = np.argsort(np.array(times, dtype=np.float64), kind="stable")
        self._bound_times = np.array(times, dtype=np.float64)[order]
        self._bound_slots = np.array(owners, dtype=np.int32)[order]
        del times, owners, order
        self._profile_online: np.ndarray | None = None  # per profile, at _epoch
        self._epoch = 0  # boundaries at or before the time _online_ids is for
        self._online_ids: tuple[int, ...] = ()

    def _device_at(self, _: int, index: int) -> DeviceProfile:
        return self._profiles[int(self._profile_of[index])]

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
        boundary, so a call costs O(log B) in the B boundaries; after a
        crossing, only the profiles whose windows begin or end in between are
        re-evaluated, and the tuple is rebuilt (one O(N) pass in C) only if one
        of them changed. With no online windows the tuple is built once.
        """
        now = self.clock.time
        epoch = self._boundaries_until(now)
        if self._profile_online is None:  # first call: every profile
            self._profile_online = np.fromiter(
                (p.is_online(now) for p in self._profiles),
                dtype=bool,
                count=len(self._profiles),
            )
            self._online_ids = self._online_tuple(self._profile_online)
        elif epoch != self._epoch:  # only profiles with a boundary in between
            low, high = sorted((self._epoch, epoch))
            changed = False
            for slot in np.unique(self._bound_slots[low:high]).tolist():
                online = self._profiles[slot].is_online(now)
                if online != self._profile_online[slot]:
                    self._profile_online[slot] = online
                    changed = True
            if changed:
                self._online_ids = self._online_tuple(self._profile_online)
        self._epoch = epoch
        return self._online_ids

    def _boundaries_until(self, t: float) -> int:
        """How many window boundaries lie at or before ``t`` (O(log B))."""
        if not self._bound_times.size:
            return 0
        return int(np.searchsorted(self._bound_times, t, side="right"))

    def _online_tuple(self, profile_online: np.ndarray) -> tuple[int, ...]:
        if profile_online.all():
            return tuple(self.node_ids)
        mask = profile_online[self._profile_of].tolist()
        return tuple(compress(self.node_ids, mask))

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
        self._release()
        wanted: Iterable[str] = message_ids
        if isinstance(message_ids, AbstractSet) and len(self._ready) < len(message_ids):
            wanted = [mid for mid in self._ready if mid in message_ids]
        ready = sorted(self._ready.pop(mid) for mid in wanted if mid in self._ready)
        return [item.reply for item in ready]

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
        self._release()
        now = self.clock.time
        i = self._boundaries_until(now)
        upcoming = (
            float(self._bound_times[i]) if i < len(self._bound_times) else math.inf
        )
        if self._pending:
            upcoming = min(upcoming, self._pending[0].ready_at)
        return upcoming

    def _ready_any(self, ids: set[str]) -> bool:
        self._release()
        return any(mid in self._ready for mid in ids)

    def _release(self) -> None:
        now = self.clock.time
        while self._pending and self._pending[0].ready_at <= now:
            item = heapq.heappop(self._pending)
            self._ready[item.reply.metadata.reply_to_message_id] = item

    def _enqueue(self, reply: Message, ready_at: float) -> None:
        reply.metadata.__dict__["_message_id"] = str(
            UUID(bytes=self.rng.bytes(16), version=4)
        )
        reply.metadata.created_at = ready_at  # sim time: orders pulled replies
        self._seq += 1
        heapq.heappush(self._pending, _Pending(ready_at, self._seq, reply))

    def _error(self, message: Message, code: int, reason: str, at: float) -> None:
        node_id = message.metadata.dst_node_id
        if node_id in self.stats:  # a message to an unknown node counts nowhere
            self.stats.entry(node_id).errors += 1
        self._enqueue(Message(Error(code=code, reason=reason), reply_to=message), at)

    def _schedule(self, message: Message) -> None:
        now = self.clock.time
        node_id = message.metadata.dst_node_id
        index = _position(self.node_ids, node_id)
        device = self._device_at(node_id, index) if index >= 0 else None
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
        hang = (
            device.hang_probability > 0 and self.rng.random() < device.hang_probability
        )
        jitter = math.exp(self.rng.normal(0.0, device.jitter)) if device.jitter else 1.0
        if hang:
            self._error(
                message, ErrorCode.MESSAGE_UNAVAILABLE, "message expired (TTL)", ttl_end
            )
            return

        reply, context = self._execute(message)
        compute = self.work_fn(message, reply) / device.speed * jitter
        up = payload_bytes(reply.content) if reply.has_content() else 0
        # Like a SuperNode, a node handles one message at a time: a message
        # queued behind another starts when that one is done.
        start = max(now, stats.free_at)
        done = (
            start
            + device.transfer_seconds(down, device.downlink_bps)
            + compute
            + device.transfer_seconds(up, device.uplink_bps)
        )
        stats.busy_seconds += done - start
        leaves = device.offline_at(now)
        if context is not None and leaves >= done:
            # State persists when the work finished. An unchanged run config is
            # shared again rather than kept once per node.
            if context.run_config == self._run_config:
                context.run_config = self._run_config
            self.contexts.made[node_id] = context
        if leaves < done:
            self._error(
                message,
                ErrorCode.NODE_UNAVAILABLE,
                "node disconnected while processing the message",
                min(leaves + self.failure_detection_s, ttl_end),
            )
        elif done > ttl_end:
            stats.free_at = done  # it still works on the message until then
            self._error(
                message, ErrorCode.MESSAGE_UNAVAILABLE, "message expired (TTL)", ttl_end
            )
        else:
            if reply.has_content():
                stats.replies += 1
                stats.bytes_up += up
            else:
                stats.errors += 1
            stats.free_at = done
            self._enqueue(reply, done)

    def _execute(self, message: Message) -> tuple[Message, Context | None]:
        """Run the ClientApp on private copies, as Flower's runtimes do.

        Returns the reply and the node's updated Context (``None`` when the
        ClientApp raised: its state changes are dropped, as Flower does). Any
        exception, ``KeyboardInterrupt`` and ``SystemExit`` included, becomes an
        error reply: in Flower a ClientApp runs in its own process, and its crash
        is the node's error, not the server's.
        """
        delivered = copy.deepcopy(message)
        working = copy.deepcopy(self.contexts[message.metadata.dst_node_id])
        try:
            reply = self.client_app(delivered, working)
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

    # ---------------------------------------------------------------- reports
    def totals(self) -> dict[str, float]:
        """Messages, bytes and busy time summed over all nodes."""
        # In node order, as float sums depend on it; nodes never messaged add zeros.
        used = [stats for _, stats in sorted(self.stats.made.items())]
        return {
            "messages": sum(s.messages for s in used),
            "errors": sum(s.errors for s in used),
            "bytes_down": sum(s.bytes_down for s in used),
            "bytes_up": sum(s.bytes_up for s in used),
            "busy_seconds": sum(s.busy_seconds for s in used),
            "simulated_seconds": self.clock.time,
        }
