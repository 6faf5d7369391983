"""A Flower ``Grid`` that runs the real ClientApp in-process on a virtual clock.

Each pushed message is executed at once by the node's ClientApp (on a copy, as if
it had crossed the network), and its reply is stamped with a simulated completion
time::

    dispatch time + download time + compute time + upload time

Replies are released to ``pull_messages`` only when the virtual clock has reached
that time, in time order. The clock only moves when someone waits on it, and then
jumps straight to the next event, so a run costs the real time of training and
nothing else, and is deterministic for a seed.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from .devices import DeviceProfile

WorkFn = Callable[[Message, Message], float]
"""Work of one message in seconds at speed 1, from (instruction, reply)."""


def payload_bytes(content: RecordDict) -> int:
    """Bytes a RecordDict occupies on the wire (array data, configs, metrics)."""
    return sum(record.count_bytes() for record in content.values())


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


@dataclass(order=True)
class _Pending:
    ready_at: float
    seq: int
    reply: Message = field(compare=False)


@dataclass
class NodeStats:
    """Traffic and work of one simulated node."""

    messages: int = 0
    replies: int = 0
    errors: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    busy_seconds: float = 0.0


# pylint: disable=too-many-instance-attributes
class VirtualGrid(Grid):
    """In-process Flower Grid with per-node device profiles and simulated time.

    Parameters
    ----------
    client_app : ClientApp
        The real ClientApp every node runs.
    devices : Sequence[DeviceProfile]
        One profile per node.
    node_configs : Sequence[dict], optional
        Per-node ``node_config``; default ``partition-id`` / ``num-partitions``.
    run_config : dict, optional
        The run config every node's Context carries.
    seed : int (default: 0)
        Seeds node ids, jitter and hangs.
    work_fn : callable, optional
        Work of a message at speed 1 in seconds; default 1 ms per example.
    failure_detection_s : float (default: 60.0)
        Delay before a node that went offline mid-message is reported (error code
        NODE_UNAVAILABLE), like Flower's heartbeat timeout.
    run_id : int (default: 1)
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

        ids = sorted(
            {int(x) for x in self.rng.integers(1, 2**63 - 1, size=len(devices))}
        )
        if len(ids) != len(devices):  # pragma: no cover - 1 in 2**60 collision
            raise RuntimeError("node id collision; pick another seed")
        self.node_ids: list[int] = ids
        self.devices: dict[int, DeviceProfile] = dict(zip(ids, devices, strict=True))
        self.partition_of: dict[int, int] = {nid: i for i, nid in enumerate(ids)}
        self.contexts: dict[int, Context] = {}
        for i, nid in enumerate(ids):
            node_config = dict(
                node_configs[i]
                if node_configs is not None
                else {"partition-id": i, "num-partitions": len(devices)}
            )
            self.contexts[nid] = Context(
                run_id=run_id,
                node_id=nid,
                node_config=node_config,
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
        self.stats: dict[int, NodeStats] = {nid: NodeStats() for nid in ids}
        self._transitions = sorted(
            {t for d in devices for window in (d.online or ()) for t in window}
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
        """Ids of the nodes online at the current simulated time."""
        now = self.clock.time
        return [nid for nid in self.node_ids if self.devices[nid].is_online(now)]

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
        """Replies to the given ids that are complete by now, in time order."""
        self._release()
        ready = sorted(
            self._ready.pop(mid) for mid in message_ids if mid in self._ready
        )
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
        """Time of the next reply or availability change after now (inf if none)."""
        now = self.clock.time
        candidates = [p.ready_at for p in self._pending[:1]]
        candidates += [t for t in self._transitions if t > now][:1]
        return min(candidates, default=math.inf)

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
        self.stats[message.metadata.dst_node_id].errors += 1
        self._enqueue(Message(Error(code=code, reason=reason), reply_to=message), at)

    def _schedule(self, message: Message) -> None:
        now = self.clock.time
        node_id = message.metadata.dst_node_id
        device = self.devices.get(node_id)
        ttl_end = now + message.metadata.ttl
        if device is None or not device.is_online(now):
            self._error(
                message, ErrorCode.NODE_UNAVAILABLE, "node is not connected", now
            )
            return
        stats = self.stats[node_id]
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
        done = (
            now
            + device.transfer_seconds(down, device.downlink_bps)
            + compute
            + device.transfer_seconds(up, device.uplink_bps)
        )
        stats.busy_seconds += done - now
        leaves = device.offline_at(now)
        if context is not None and leaves >= done:
            self.contexts[node_id] = context  # state persists when the work finished
        if leaves < done:
            self._error(
                message,
                ErrorCode.NODE_UNAVAILABLE,
                "node disconnected while processing the message",
                min(leaves + self.failure_detection_s, ttl_end),
            )
        elif done > ttl_end:
            self._error(
                message, ErrorCode.MESSAGE_UNAVAILABLE, "message expired (TTL)", ttl_end
            )
        else:
            if reply.has_content():
                stats.replies += 1
                stats.bytes_up += up
            else:
                stats.errors += 1
            self._enqueue(reply, done)

    def _execute(self, message: Message) -> tuple[Message, Context | None]:
        """Run the ClientApp on private copies, as Flower's runtimes do.

        Returns the reply and the node's updated Context (``None`` when the
        ClientApp raised: its state changes are dropped, as Flower does).
        """
        delivered = copy.deepcopy(message)
        working = copy.deepcopy(self.contexts[message.metadata.dst_node_id])
        try:
            reply = self.client_app(delivered, working)
        except Exception as exc:  # the runtime turns exceptions into error replies
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
        return {
            "messages": sum(s.messages for s in self.stats.values()),
            "errors": sum(s.errors for s in self.stats.values()),
            "bytes_down": sum(s.bytes_down for s in self.stats.values()),
            "bytes_up": sum(s.bytes_up for s in self.stats.values()),
            "busy_seconds": sum(s.busy_seconds for s in self.stats.values()),
            "simulated_seconds": self.clock.time,
        }
