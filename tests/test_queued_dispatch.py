"""Queued dispatch: one more train message per node, on the virtual grid.

The grid runs a node's messages one at a time (as a SuperNode does), so a
queued message starts when the node's current one is done. A spy on the grid
counts what each node holds between push and pulled reply.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Message
from flwr.common.constant import ErrorCode
from flwr.superlink.grid.http_grid import HttpGrid

from flchain_flwr.protocol import MODEL_VERSION_KEY
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import (
    AsyncResult,
    FedBuff,
    RandomSample,
    fedbuff_from_run_config,
)
from flchain_flwr.strategies.loop import queued_on
from flchain_flwr.strategies.nodes import NodeTracker

from .toy import constant_work, initial_arrays, toy_client_app


class SpyGrid(VirtualGrid):
    """A virtual grid that records, per node, the messages it holds."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.held: dict[int, dict[str, int]] = {}  # node -> message id -> version
        self.most_held = 0
        self.pairs: list[tuple[int, int]] = []  # versions a node held at once

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for message, msg_id in zip(messages, ids, strict=True):
            node = message.metadata.dst_node_id
            version = int(message.content["config"][MODEL_VERSION_KEY])  # type: ignore[arg-type]
            held = self.held.setdefault(node, {})
            held[msg_id] = version
            self.most_held = max(self.most_held, len(held))
            if len(held) == 2:
                first, second = held.values()
                self.pairs.append((first, second))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        for reply in replies:
            for held in self.held.values():
                held.pop(reply.metadata.reply_to_message_id, None)
        return replies


def spy_grid(speeds: list[float], **profile: object) -> SpyGrid:
    devices = [DeviceProfile(speed=s, **profile) for s in speeds]  # type: ignore[arg-type]
    return SpyGrid(toy_client_app(), devices, work_fn=constant_work(1.0))


def run(
    grid: VirtualGrid, queued: bool, rounds: int = 12, **kwargs: object
) -> AsyncResult:
    strategy = FedBuff(
        buffer_size=1,
        fraction_evaluate=0.0,
        max_staleness=None,
        seed=0,
        queued_dispatch=queued,
        **kwargs,  # type: ignore[arg-type]
    )
    return strategy.start(grid, initial_arrays(), num_rounds=rounds, timeout=100.0)


def slow_node_staleness(result: AsyncResult, slow: int) -> list[tuple[int, int]]:
    """(version, staleness) of each version made from the slow node's update."""
    return [
        (v.version, next(iter(v.staleness_histogram)))
        for v in result.versions
        if v.node_ids == [slow]
    ]


# ------------------------------------------------------------ on the grid
def test_a_node_holds_at_most_two_messages_the_queued_one_newer() -> None:
    grid = spy_grid([1.0, 0.5, 0.25, 0.2])
    result = run(grid, queued=True, rounds=40)
    assert result.stop_reason == "completed"
    assert grid.most_held == 2
    assert grid.pairs and all(first < second for first, second in grid.pairs)


def test_without_queueing_a_node_holds_one_message() -> None:
    grid = spy_grid([1.0, 0.5, 0.25, 0.2])
    result = run(grid, queued=False, rounds=40)
    assert result.stop_reason == "completed"
    assert grid.most_held == 1


def test_staleness_of_a_queued_update_counts_from_its_own_version() -> None:
    # A (1 s per message) makes a version per second, K = 1; B takes 4 s.
    # On reply, B's second message is sent at t = 4 on version 5 and lands at
    # t = 8 when version 8 is current: staleness 3. Queued, it was sent at
    # t = 1 on version 1 and runs 4 -> 8: staleness 7.
    plain_grid = spy_grid([1.0, 0.25])
    slow = plain_grid.node_ids[1]
    plain = run(plain_grid, queued=False)
    queued_grid = spy_grid([1.0, 0.25])
    queued = run(queued_grid, queued=True)
    assert slow_node_staleness(plain, slow) == [(4, 3), (9, 3)]
    assert slow_node_staleness(queued, slow) == [(4, 3), (9, 7)]
    # the same versions at the same times: on this grid a queue saves nothing
    assert [v.time for v in plain.versions] == [v.time for v in queued.versions]
    assert queued_grid.pairs[0] == (0, 1)


def test_a_queued_message_that_outlives_its_ttl_expires_once() -> None:
    # B's queued message (sent at t = 1, TTL 5) waits for its first (until
    # t = 4) and would be done at t = 8: it expires at t = 6, once.
    grid = spy_grid([1.0, 0.25])
    slow = grid.node_ids[1]
    result = run(grid, queued=True, message_ttl=5.0, retry_backoff=1.0)
    assert result.stop_reason == "completed"
    first = result.failures[0]
    assert (first.node_id, first.version, first.time) == (slow, 1, 6.0)
    assert first.error_code == ErrorCode.MESSAGE_UNAVAILABLE
    keys = [(f.node_id, f.version) for f in result.failures]
    assert len(keys) == len(set(keys))  # each message fails once
    assert grid.most_held == 2
    assert all(f.node_id == slow for f in result.failures)


def test_a_node_that_leaves_with_a_queued_message_fails_both_once() -> None:
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile(speed=1.0), DeviceProfile(speed=0.25, online=((0.0, 5.0),))],
        work_fn=constant_work(1.0),
        failure_detection_s=2.0,
    )
    slow = grid.node_ids[1]
    result = run(grid, queued=True, rounds=12, membership_refresh=1.0)
    assert result.stop_reason == "completed"
    lost = [(f.node_id, f.version) for f in result.failures]
    assert lost and all(node == slow for node, _ in lost)
    assert len(lost) == len(set(lost)) <= 2
    assert slow_node_staleness(result, slow) == [(4, 3)]  # its v0 update only


# ------------------------------------------------------------- the tracker
def test_tracker_queues_only_behind_a_train_message_on_an_older_version() -> None:
    nodes = NodeTracker(queue_depth=2)
    nodes.set_online([7])
    nodes.sent(7, train=True)  # on version 0
    assert 7 not in nodes.queueable  # its message is on the current version
    nodes.new_version(1)
    assert 7 in nodes.queueable
    nodes.sent(7, train=True)  # queued, on version 1
    assert 7 not in nodes.queueable and nodes.messages[7] == 2
    assert nodes.training_online == 1  # a node, not its messages
    nodes.done(7, train=True)
    assert 7 not in nodes.queueable  # what it runs now is on version 1
    nodes.new_version(2)
    assert 7 in nodes.queueable
    nodes.done(7, train=True)
    assert 7 in nodes.eligible and nodes.training_online == 0


def test_tracker_without_queueing_never_queues() -> None:
    nodes = NodeTracker()
    nodes.set_online([7])
    nodes.sent(7, train=True)
    nodes.new_version(1)
    assert not nodes.queueable and not nodes.eligible


def test_tracker_does_not_queue_behind_an_evaluation() -> None:
    nodes = NodeTracker(queue_depth=2)
    nodes.set_online([7])
    nodes.sent(7, train=False)
    nodes.new_version(1)
    assert 7 not in nodes.queueable


def test_tracker_membership_loss_with_a_queued_message_counts_once() -> None:
    nodes = NodeTracker(queue_depth=2)
    nodes.set_online([7, 8])
    nodes.sent(7, train=True)
    nodes.new_version(1)
    nodes.sent(7, train=True)
    assert nodes.training_online == 1
    nodes.set_online([8])  # 7 left, holding two train messages
    assert nodes.training_online == 0
    nodes.done(7, train=True)
    nodes.done(7, train=True)
    assert nodes.training_online == 0 and 7 not in nodes.messages
    nodes.set_online([7, 8])  # back, holding nothing
    assert nodes.training_online == 0 and 7 in nodes.waiting  # had version 1


def test_tracker_failure_of_the_older_message_keeps_the_queued_version() -> None:
    nodes = NodeTracker(queue_depth=2)
    nodes.set_online([7])
    nodes.sent(7, train=True)  # version 0
    nodes.new_version(1)
    nodes.sent(7, train=True)  # queued, version 1
    nodes.done(7, train=True)
    nodes.failed(7, until=5.0, train=True, version=0)
    assert nodes.last_trained[7] == 1  # it must not be sent version 1 again
    nodes.release_backoffs(5.0)
    assert 7 not in nodes.queueable  # still running version 1
    nodes.done(7, train=True)
    nodes.failed(7, until=6.0, train=True, version=1)
    assert 7 not in nodes.last_trained  # the failed latest may be retried
    nodes.release_backoffs(6.0)
    assert 7 in nodes.eligible


def test_tracker_backing_off_node_is_not_queueable() -> None:
    nodes = NodeTracker(queue_depth=2)
    nodes.set_online([7])
    nodes.sent(7, train=True)
    nodes.sent(7, train=False)
    nodes.new_version(1)
    nodes.done(7, train=False)
    nodes.failed(7, until=3.0, train=False)
    assert 7 not in nodes.queueable
    nodes.release_backoffs(3.0)
    assert 7 in nodes.queueable


# ------------------------------------------------------------ configuration
def test_run_config_key() -> None:
    assert fedbuff_from_run_config({"queued-dispatch": True}).queued_dispatch is True
    assert fedbuff_from_run_config({"queued-dispatch": "auto"}).queued_dispatch == (
        "auto"
    )
    assert fedbuff_from_run_config({}).queued_dispatch is False
    for bad in ("yes", 1, 0.0):
        with pytest.raises(ValueError, match="'queued-dispatch'"):
            fedbuff_from_run_config({"queued-dispatch": bad})


def test_queued_dispatch_refuses_downlink_unless_auto() -> None:
    with pytest.raises(ValueError, match="downlink"):
        FedBuff(queued_dispatch=True, downlink=True)
    FedBuff(queued_dispatch="auto", downlink=True)  # auto: off with downlink


def test_auto_is_on_over_flowers_deployment_grid_only() -> None:
    virtual = spy_grid([1.0])
    deployed = HttpGrid.__new__(HttpGrid)  # no connection is needed to ask
    assert not queued_on("auto", virtual)
    assert queued_on("auto", deployed)
    assert queued_on(True, virtual) and not queued_on(False, deployed)


def test_the_setting_enters_the_config_digest_only_when_on() -> None:
    assert "queued_dispatch" not in FedBuff().config_dict()
    assert FedBuff(queued_dispatch=True).config_dict()["queued_dispatch"] is True


class TimingSpy(RandomSample):
    """Records when the loop tells the policy a train message was dispatched."""

    def __init__(self) -> None:
        self.dispatches: list[tuple[int, int, float]] = []

    def on_dispatch(self, node_id: int, version: int, now: float) -> None:
        self.dispatches.append((node_id, version, now))


def test_the_policy_times_a_queued_message_from_when_it_starts() -> None:
    # B's queued messages are sent at t = 1 and 4 but start at t = 4 and 8,
    # when its previous one is done: round-trip policies (BAFL) must see that.
    grid = spy_grid([1.0, 0.25])
    slow = grid.node_ids[1]
    spy = TimingSpy()
    run(grid, queued=True, scheduling=spy)
    assert [(v, t) for n, v, t in spy.dispatches if n == slow] == [
        (0, 0.0),
        (1, 4.0),
        (5, 8.0),
    ]
