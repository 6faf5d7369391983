"""Which nodes are online, busy, backing off or free to train: tracked per event.

A population can hold 100,000 nodes of which a thousand train at once, so nothing
here scans every node per event. Each node is in at most one of three places
while it is online and not busy: ``eligible`` (free to train on the current
version), ``waiting`` (free, but already trained on the current version) or the
backoff heap (resting after a failure). A new version moves ``waiting`` into
``eligible``: O(nodes that replied since the last version). With queued
dispatch, a training node may also be in ``queueable`` or ``queue_waiting``,
kept the same way (a new version moves O(nodes sent a message since the last
version)); messages in flight are counted per node, so a node with two is
still one training node for the capacity and for membership.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Iterator


class NodePool:
    """A set of node ids with O(1) add, remove and uniform random pick.

    Iteration order is deterministic: it depends only on the sequence of
    operations, never on hashing.
    """

    def __init__(self) -> None:
        self._items: list[int] = []
        self._index: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._index

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._items))

    def add(self, node_id: int) -> None:
        """Add ``node_id`` (no-op if present)."""
        if node_id not in self._index:
            self._index[node_id] = len(self._items)
            self._items.append(node_id)

    def discard(self, node_id: int) -> None:
        """Remove ``node_id`` if present: the last item takes its slot."""
        pos = self._index.pop(node_id, None)
        if pos is None:
            return
        last = self._items.pop()
        if pos < len(self._items):
            self._items[pos] = last
            self._index[last] = pos

    def pick(self, rng: random.Random) -> int:
        """Remove and return a uniformly random member."""
        node_id = self._items[rng.randrange(len(self._items))]
        self.discard(node_id)
        return node_id


class NodeTracker:
    """Membership, busy nodes, backoffs and training eligibility, kept per event.

    ``version`` is the current global version; a node is eligible to train when
    it is online, not busy, not backing off and has not yet been sent the
    current version (a failed message lets it retrain its version).

    With ``queue_depth=2`` (queued dispatch) a node that is training may hold
    one more train message: it is *queueable* when its only message in flight
    is a train message on an older version than the current one. Queueable
    nodes are kept like free ones (``queueable`` and ``queue_waiting`` mirror
    ``eligible`` and ``waiting``), so nothing scans the population.
    """

    def __init__(self, queue_depth: int = 1) -> None:
        if queue_depth not in (1, 2):
            raise ValueError(f"queue_depth must be 1 or 2, got {queue_depth}")
        self.queue_depth = queue_depth
        self.online: set[int] = set()
        self.messages: dict[int, int] = {}  # messages in flight per node
        self.trains: dict[int, int] = {}  # ... of which train messages
        self.training_online = 0  # nodes online with a train message in flight
        self.eligible = NodePool()
        self.waiting: set[int] = set()
        self.queueable = NodePool()
        self.queue_waiting: set[int] = set()
        self.last_trained: dict[int, int] = {}  # version of the latest train sent
        self.queue_ok: set[int] = set()  # nodes fast enough to queue behind
        self.backoff_until: dict[int, float] = {}
        self._backoffs: list[tuple[float, int]] = []
        self.version = 0

    # ------------------------------------------------------------ membership
    def set_online(self, node_ids: Iterable[int]) -> tuple[set[int], set[int]]:
        """Adopt a fresh membership list (O(N) per refresh, not per event).

        Returns the nodes that left and the nodes that joined.
        """
        online = set(node_ids)
        left, joined = self.online - online, online - self.online
        for node_id in left:
            self.online.discard(node_id)
            if node_id in self.trains:
                self.training_online -= 1
            self._unclassify(node_id)
        for node_id in joined:
            self.online.add(node_id)
            if node_id in self.trains:
                self.training_online += 1
            self._classify(node_id)
        return left, joined

    # ------------------------------------------------------------- messages
    def sent(self, node_id: int, train: bool) -> None:
        """A message to ``node_id`` is in flight."""
        self._unclassify(node_id)
        self.messages[node_id] = self.messages.get(node_id, 0) + 1
        if train:
            count = self.trains.get(node_id, 0)
            self.trains[node_id] = count + 1
            self.last_trained[node_id] = self.version
            if count == 0 and node_id in self.online:
                self.training_online += 1
        self._classify(node_id)

    def done(self, node_id: int, train: bool) -> None:
        """A message to ``node_id`` is answered or given up on."""
        self._unclassify(node_id)
        _decrement(self.messages, node_id)
        if train:
            _decrement(self.trains, node_id)
            if node_id not in self.trains and node_id in self.online:
                self.training_online -= 1
        self._classify(node_id)

    def failed(
        self, node_id: int, until: float, train: bool, version: int | None = None
    ) -> None:
        """Leave ``node_id`` alone until ``until``; a failed train may be retried.

        Only the latest train message's version is retried: a node whose
        queued message on a newer version is still in flight keeps it.
        """
        latest = self.last_trained.get(node_id)
        if train and (version is None or latest == version):
            self.last_trained.pop(node_id, None)
        self._unclassify(node_id)
        self.backoff_until[node_id] = until
        heapq.heappush(self._backoffs, (until, node_id))

    def release_backoffs(self, now: float) -> list[int]:
        """Return nodes whose backoff ended by ``now`` to the free pools."""
        released = []
        while self._backoffs and self._backoffs[0][0] <= now:
            until, node_id = heapq.heappop(self._backoffs)
            if self.backoff_until.get(node_id) == until:
                del self.backoff_until[node_id]
                self._classify(node_id)
                released.append(node_id)
        return released

    def next_backoff_end(self) -> float:
        """The earliest pending backoff end (inf if none); stale entries dropped."""
        heap = self._backoffs
        while heap and self.backoff_until.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def new_version(self, version: int) -> None:
        """Nodes that trained on the previous version may train again."""
        self.version = version
        for node_id in sorted(self.waiting):
            self.eligible.add(node_id)
        self.waiting.clear()
        for node_id in sorted(self.queue_waiting):
            self.queueable.add(node_id)
        self.queue_waiting.clear()

    def retrain(self, node_ids: Iterable[int]) -> None:
        """Let nodes whose updates made no version train on this version again."""
        for node_id in node_ids:
            if self.last_trained.get(node_id) == self.version:
                del self.last_trained[node_id]
                self._unclassify(node_id)
                self._classify(node_id)

    # --------------------------------------------------------------- queries
    def is_free(self, node_id: int) -> bool:
        """Online, not busy and not backing off."""
        return (
            node_id in self.online
            and node_id not in self.messages
            and node_id not in self.backoff_until
        )

    def allow_queue(self, node_id: int, allowed: bool) -> None:
        """Whether ``node_id`` may be queued behind (its last round trip was
        short enough for a queued message to outlive its TTL); before its
        first round trip it may not. Call before :meth:`done`."""
        if allowed:
            self.queue_ok.add(node_id)
        else:
            self.queue_ok.discard(node_id)

    def can_queue(self, node_id: int) -> bool:
        """Online, not backing off, allowed to queue, and its only message in
        flight is a train message (with queued dispatch)."""
        return (
            self.queue_depth > 1
            and node_id in self.queue_ok
            and node_id in self.online
            and node_id not in self.backoff_until
            and self.messages.get(node_id) == 1
            and self.trains.get(node_id) == 1
        )

    def _classify(self, node_id: int) -> None:
        fresh = self.last_trained.get(node_id, -1) < self.version
        if self.is_free(node_id):
            (self.eligible.add if fresh else self.waiting.add)(node_id)
        elif self.can_queue(node_id):
            (self.queueable.add if fresh else self.queue_waiting.add)(node_id)

    def _unclassify(self, node_id: int) -> None:
        self.eligible.discard(node_id)
        self.waiting.discard(node_id)
        self.queueable.discard(node_id)
        self.queue_waiting.discard(node_id)


def _decrement(counts: dict[int, int], key: int) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]
