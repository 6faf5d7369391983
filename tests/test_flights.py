"""The event loop's table of messages in flight: deadlines, lazy deletion, queue."""

from __future__ import annotations

import math

from flwr.app import MessageType

from flchain_flwr.strategies.flights import Flight, InFlight


def flight(node_id: int, deadline: float, train: bool = True) -> Flight:
    kind = MessageType.TRAIN if train else MessageType.EVALUATE
    return Flight(node_id, kind, 0, deadline)


def test_messages_expire_earliest_first_and_settled_ones_never() -> None:
    table = InFlight()
    table.add("a", flight(1, 3.0))
    table.add("b", flight(2, 1.0))
    table.add("c", flight(3, 2.0))
    table.remove("c")  # settled: its deadline stays in the heap, unseen
    assert len(table) == 2 and table.get("c") is None
    assert table.next_deadline() == 1.0
    assert [m for m, _ in table.expired(2.5)] == ["b"]
    assert sorted(table.ids()) == ["a"]
    assert table.next_deadline() == 3.0
    assert [(m, f.node_id) for m, f in table.expired(3.0)] == [("a", 1)]
    assert len(table) == 0 and table.next_deadline() == math.inf


def test_rebuilding_the_heap_keeps_the_message_still_in_flight() -> None:
    table = InFlight()
    for i in range(500):
        table.add(str(i), flight(i, float(i)))
        if i:
            table.remove(str(i - 1))
    assert len(table) == 1
    assert [m for m, _ in table.expired(math.inf)] == ["499"]


def test_a_queued_message_starts_when_another_message_settles() -> None:
    table = InFlight()
    second = Flight(7, MessageType.TRAIN, 4, 9.0, work=3.0)
    table.queue("second", second)
    assert table.start_queued(7, "first") == second  # its version and work
    assert table.start_queued(7, "first") is None  # started once
    table.queue("third", Flight(7, MessageType.TRAIN, 5, 9.0))
    assert table.start_queued(7, "third") is None  # it settled itself
