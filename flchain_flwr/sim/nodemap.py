"""Per-node values over a large population, made only for the nodes used.

A :class:`NodeMap` reads like a dict over every node id, but holds only the
entries that were made; :class:`NodeStats` is the traffic and work the grid
records per node in one, and :func:`sum_stats` their totals.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

V = TypeVar("V")


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


def sum_stats(stats: Mapping[int, NodeStats]) -> dict[str, float]:
    """Messages, errors, bytes and busy time summed over nodes.

    Sums in node-id order, as float sums depend on it; nodes without an entry
    would add zeros.
    """
    used = [entry for _, entry in sorted(stats.items())]
    return {
        "messages": sum(s.messages for s in used),
        "errors": sum(s.errors for s in used),
        "bytes_down": sum(s.bytes_down for s in used),
        "bytes_up": sum(s.bytes_up for s in used),
        "busy_seconds": sum(s.busy_seconds for s in used),
    }


def node_position(node_ids: Sequence[int], node_id: object) -> int:
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
        index = node_position(self._node_ids, node_id)
        if index < 0:
            raise KeyError(node_id)
        value = self._default(node_id, index)
        if keep:
            self.made[node_id] = value
        return value

    def __contains__(self, node_id: object) -> bool:
        return node_position(self._node_ids, node_id) >= 0

    def __iter__(self) -> Iterator[int]:
        return iter(self._node_ids)

    def __len__(self) -> int:
        return len(self._node_ids)
