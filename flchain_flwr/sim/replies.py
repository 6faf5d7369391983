"""Replies on their way: held until the virtual clock reaches their time.

Pending replies sit in a heap by completion time (ties in push order). Each
query names the current time and first moves the replies complete by then into
a dict keyed by the id of the message they answer; a pull takes them from there.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from flwr.app import Message


@dataclass(order=True, slots=True)
class Pending:
    """A reply and the simulated time it is complete."""

    ready_at: float
    seq: int
    reply: Message = field(compare=False)


class ReplyQueue:
    """Replies not yet pulled: pending until their time, then released."""

    def __init__(self) -> None:
        self._seq = 0
        self._pending: list[Pending] = []
        self._ready: dict[str, Pending] = {}

    def add(self, reply: Message, ready_at: float) -> None:
        """Hold ``reply`` until the clock reaches ``ready_at``."""
        self._seq += 1
        heapq.heappush(self._pending, Pending(ready_at, self._seq, reply))

    def _release(self, now: float) -> None:
        while self._pending and self._pending[0].ready_at <= now:
            item = heapq.heappop(self._pending)
            self._ready[item.reply.metadata.reply_to_message_id] = item

    def next_after(self, now: float) -> float:
        """When the next reply still pending after ``now`` is complete (inf if none)."""
        self._release(now)
        return self._pending[0].ready_at if self._pending else math.inf

    def take(self, message_ids: Iterable[str], now: float) -> list[Message]:
        """Remove and return the replies to ``message_ids`` complete by ``now``.

        In time order. Costs O(len(message_ids)), or, when ``message_ids`` is a
        set larger than the released replies, O(released replies).
        """
        self._release(now)
        wanted: Iterable[str] = message_ids
        if isinstance(message_ids, AbstractSet) and len(self._ready) < len(message_ids):
            wanted = [mid for mid in self._ready if mid in message_ids]
        ready = sorted(self._ready.pop(mid) for mid in wanted if mid in self._ready)
        return [item.reply for item in ready]

    def any_ready(self, message_ids: Iterable[str], now: float) -> bool:
        """Whether a reply to one of ``message_ids`` is complete by ``now``."""
        self._release(now)
        return any(mid in self._ready for mid in message_ids)
