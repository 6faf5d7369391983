"""The virtual-clock grid: timing, ordering, availability, determinism, presets."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from flchain_flwr.sim import (
    DeviceProfile,
    NodeStats,
    VirtualGrid,
    lognormal,
    payload_bytes,
    simulate,
    spread,
    tiered,
    uniform,
)
from flchain_flwr.strategies import FedBuff

from .toy import constant_work, examples_of, initial_arrays, toy_client_app


def train_message(grid: VirtualGrid, node: int, ttl: float | None = None) -> Message:
    content = RecordDict({"arrays": initial_arrays()})
    return Message(content, node, MessageType.TRAIN, ttl=ttl)


def test_completion_time_is_download_compute_upload() -> None:
    device = DeviceProfile(
        speed=0.5, uplink_bps=8_000.0, downlink_bps=16_000.0, latency_s=0.25
    )
    grid = VirtualGrid(toy_client_app(), [device], work_fn=constant_work(2.0))
    node = grid.node_ids[0]
    msg = train_message(grid, node)
    down = payload_bytes(msg.content)
    [mid] = grid.push_messages([msg])
    assert list(grid.pull_messages([mid])) == []  # not before its time
    grid.clock.wait(math.inf)
    [reply] = grid.pull_messages([mid])
    up = payload_bytes(reply.content)
    expected = (0.25 + 8 * down / 16_000) + 2.0 / 0.5 + (0.25 + 8 * up / 8_000)
    assert grid.clock.now() == pytest.approx(expected)
    assert grid.stats[node].bytes_down == down and grid.stats[node].bytes_up == up
    assert up > 0 and down > 0


def test_replies_are_released_in_simulated_time_order() -> None:
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile(speed=s) for s in (0.1, 1.0, 0.5)],
        work_fn=constant_work(1.0),
    )
    ids = list(grid.push_messages([train_message(grid, n) for n in grid.node_ids]))
    order = []
    while len(order) < 3:
        grid.clock.wait(math.inf)
        order += [r.metadata.src_node_id for r in grid.pull_messages(ids)]
    assert order == [grid.node_ids[1], grid.node_ids[2], grid.node_ids[0]]
    assert grid.clock.now() == pytest.approx(10.0)


def test_send_and_receive_waits_for_the_slowest_node() -> None:
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile(speed=s) for s in (1.0, 0.25)],
        work_fn=constant_work(1.0),
    )
    replies = list(
        grid.send_and_receive([train_message(grid, n) for n in grid.node_ids])
    )
    assert len(replies) == 2 and grid.clock.now() == pytest.approx(4.0)


def test_clientapp_gets_a_copy_and_state_persists_only_on_success() -> None:
    calls: list[int] = []

    def on_train(msg: Message, context: object) -> None:
        state = context.state  # type: ignore[attr-defined]
        from flwr.app import ConfigRecord

        count = int(state["seen"]["n"]) + 1 if "seen" in state else 1
        state["seen"] = ConfigRecord({"n": count})
        calls.append(count)
        msg.content["arrays"]["w"] = msg.content["arrays"]["b"]  # vandalise the copy

    grid = VirtualGrid(
        toy_client_app(on_train=on_train), [DeviceProfile()], work_fn=constant_work(1.0)
    )
    node = grid.node_ids[0]
    sent = train_message(grid, node)
    grid.send_and_receive([sent])
    grid.send_and_receive([train_message(grid, node)])
    assert calls == [1, 2]  # Context.state survived across messages
    assert sent.content["arrays"]["w"].numpy().shape == (3,)  # sender's copy untouched


def test_offline_nodes_are_hidden_and_refuse_messages() -> None:
    devices = [DeviceProfile(), DeviceProfile(online=((5.0, 10.0),))]
    grid = VirtualGrid(toy_client_app(), devices, work_fn=constant_work(1.0))
    late = grid.node_ids[1]
    assert list(grid.get_node_ids()) == [grid.node_ids[0]]
    [reply] = grid.send_and_receive([train_message(grid, late)])
    assert reply.error.code == ErrorCode.NODE_UNAVAILABLE
    grid.clock.wait(math.inf)  # next event: the node joining at t=5
    assert grid.clock.now() == 5.0
    assert late in grid.get_node_ids()


def test_ttl_expiry_is_an_error_reply() -> None:
    grid = VirtualGrid(
        toy_client_app(), [DeviceProfile(speed=0.1)], work_fn=constant_work(1.0)
    )
    [reply] = grid.send_and_receive([train_message(grid, grid.node_ids[0], ttl=3.0)])
    assert reply.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    assert grid.clock.now() == pytest.approx(3.0)


def test_default_work_is_proportional_to_examples() -> None:
    grid = VirtualGrid(toy_client_app(), [DeviceProfile()] * 2)
    grid.send_and_receive([train_message(grid, n) for n in grid.node_ids])
    assert grid.clock.now() == pytest.approx(1e-3 * examples_of(1))


def _fingerprint(seed: int) -> tuple[list[object], bytes]:
    devices = lognormal(8, sigma=1.0, seed=3, uplink_bps=1e6)
    devices = [
        DeviceProfile(
            speed=d.speed, uplink_bps=d.uplink_bps, jitter=0.3, hang_probability=0.1
        )
        for d in devices
    ]
    grid = VirtualGrid(toy_client_app(), devices, seed=seed)
    run = simulate(
        FedBuff(buffer_size=3, message_ttl=50.0, seed=seed),
        grid,
        initial_arrays(),
        num_rounds=25,
    )
    result = run.result
    assert result is not None
    history = [(v.time, v.node_ids, v.staleness_histogram) for v in result.versions]  # type: ignore[attr-defined]
    history += [(f.node_id, f.time) for f in result.failures]  # type: ignore[attr-defined]
    return history, result.arrays["w"].numpy().tobytes()


def test_runs_are_deterministic_for_a_seed() -> None:
    a, b = _fingerprint(11), _fingerprint(11)
    assert a == b
    assert _fingerprint(12) != a


def test_presets() -> None:
    assert spread(tiered(20)) == pytest.approx(10.0)
    assert [round(1 / d.speed) for d in tiered(6, (1, 4, 10))] == [1, 4, 10, 1, 4, 10]
    assert spread(lognormal(20, sigma=1.0, seed=0)) >= 10.0
    assert lognormal(5, seed=4) == lognormal(5, seed=4)
    assert all(d.speed == 1.0 for d in uniform(3))
    with pytest.raises(ValueError):
        DeviceProfile(speed=0)
    with pytest.raises(ValueError):
        DeviceProfile(online=((3.0, 1.0),))
    with pytest.raises(ValueError, match="at least one device"):
        VirtualGrid(toy_client_app(), [])


def test_payload_bytes_counts_array_data() -> None:
    content = RecordDict({"arrays": initial_arrays()})
    assert payload_bytes(content) >= 4 * (3 + 4)
    assert np.isfinite(payload_bytes(content))


def _count_messages(msg: Message, context: Context) -> None:
    state = context.state
    count = int(state["seen"]["n"]) + 1 if "seen" in state else 1  # type: ignore[arg-type]
    state["seen"] = ConfigRecord({"n": count})


def test_contexts_are_made_on_first_use_and_state_persists() -> None:
    grid = VirtualGrid(
        toy_client_app(on_train=_count_messages),
        [DeviceProfile()] * 3,
        run_config={"lr": 0.1},
        work_fn=constant_work(1.0),
    )
    first, second, third = grid.node_ids
    assert grid.contexts.made == {} and grid.stats.made == {}
    for _ in range(3):
        grid.send_and_receive([train_message(grid, first)])
    assert set(grid.contexts.made) == {first}  # only the node that got messages
    assert int(grid.contexts[first].state["seen"]["n"]) == 3  # type: ignore[arg-type]
    assert grid.stats[first].messages == 3 and grid.stats[first].replies == 3
    # Nodes never messaged read as if built up front: a fresh Context, zero stats.
    untouched = grid.contexts[second]
    assert untouched.node_id == second and untouched.run_config == {"lr": 0.1}
    assert untouched.node_config == {"partition-id": 1, "num-partitions": 3}
    assert grid.contexts[second] is untouched  # a read is kept: changes persist
    assert grid.stats[third] == NodeStats() and third not in grid.stats.made
    assert list(grid.contexts) == grid.node_ids and len(grid.stats) == 3
    assert dict(grid.partition_of) == {first: 0, second: 1, third: 2}
    with pytest.raises(KeyError):
        grid.contexts[12345]
    assert 12345 not in grid.stats and first in grid.devices


def test_node_configs_are_given_to_contexts_and_run_config_is_shared() -> None:
    configs: list[dict[str, int | float | str | bool]] = [{"k": i} for i in range(3)]
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile()] * 3,
        node_configs=configs,
        run_config={"lr": 0.1},
    )
    contexts = [grid.contexts[n] for n in grid.node_ids]
    assert [c.node_config for c in contexts] == configs
    assert contexts[0].node_config is not configs[0]  # a copy, as before
    assert contexts[0].run_config is contexts[2].run_config  # one shared copy


def test_get_node_ids_without_online_windows_is_one_cached_tuple() -> None:
    grid = VirtualGrid(toy_client_app(), tiered(50), work_fn=constant_work(1.0))
    ids = grid.get_node_ids()
    assert ids == tuple(grid.node_ids)
    grid.send_and_receive([train_message(grid, grid.node_ids[0])])
    grid.clock.advance(1e6)
    assert grid.get_node_ids() is ids  # nothing to re-evaluate, ever


def test_get_node_ids_changes_only_at_availability_transitions() -> None:
    rng = np.random.default_rng(0)
    shared = DeviceProfile(online=((2.0, 4.0), (6.0, 9.0)))
    devices = [shared] * 10 + [DeviceProfile(), DeviceProfile(online=())]
    for _ in range(20):
        starts = np.sort(rng.uniform(0.0, 20.0, size=2))
        windows = ((starts[0], starts[0] + 1.0), (starts[1] + 1.5, math.inf))
        devices.append(DeviceProfile(online=windows))
    grid = VirtualGrid(toy_client_app(), devices)

    def brute_force(t: float) -> tuple[int, ...]:
        return tuple(n for n in grid.node_ids if grid.devices[n].is_online(t))

    transitions = sorted(
        {t for d in devices for w in d.online or () for t in w if math.isfinite(t)}
    )
    times = [0.0, *transitions, *(t + 0.25 for t in transitions)]
    seen: list[tuple[int, ...]] = []
    for t in [*sorted(times), *rng.permutation(times)]:  # forward, then any order
        grid.clock.time = float(t)
        ids = grid.get_node_ids()
        assert ids == brute_force(t), t
        assert grid.get_node_ids() is ids  # cached until the next transition
        seen.append(tuple(ids))
    assert len(set(seen)) > 10  # membership did change along the way
    never = grid.node_ids[11]
    assert all(never not in ids for ids in seen)


def test_get_node_ids_keeps_its_tuple_across_a_boundary_that_changes_nothing() -> None:
    devices = [DeviceProfile(online=((0.0, 5.0), (5.0, 10.0))), DeviceProfile()]
    grid = VirtualGrid(toy_client_app(), devices)
    ids = grid.get_node_ids()
    grid.clock.time = 7.0  # crossed t=5: one window ends as the next begins
    assert grid.get_node_ids() is ids
    grid.clock.time = 10.0
    assert list(grid.get_node_ids()) == [grid.node_ids[1]]


def test_next_event_time_is_never_in_the_past() -> None:
    """A reply that fell due unseen must not pin the clock (the old busy loop).

    A strategy gave up on a node's message, then a slow aggregation moved the
    clock past that reply's time. The reply sat at the top of the grid's heap, so
    the next event was in the past, ``wait`` never moved, and the strategy's loop
    spun for ever.
    """
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile(speed=1.0), DeviceProfile(speed=0.2)],
        work_fn=constant_work(1.0),
    )
    fast, slow = grid.node_ids
    [forgotten] = grid.push_messages([train_message(grid, fast)])  # due at t=1
    [tracked] = grid.push_messages([train_message(grid, slow)])  # due at t=5
    grid.clock.advance(2.0)  # e.g. a consensus delay while aggregating
    assert grid.next_event_time() == pytest.approx(5.0)

    # A strategy-like loop: pull what it tracks, else wait for its deadline.
    in_flight, got, deadline = {tracked}, [], 8.0
    for _ in range(100):  # guard: a regression fails here instead of hanging
        if grid.clock.now() >= deadline:
            break
        replies = list(grid.pull_messages(in_flight))
        in_flight -= {r.metadata.reply_to_message_id for r in replies}
        got += replies
        if not replies:
            grid.clock.wait(deadline)
    else:
        pytest.fail("the clock is stuck behind a reply that fell due unseen")
    assert grid.clock.now() == deadline and len(got) == 1
    assert got[0].metadata.created_at == pytest.approx(5.0)
    # The forgotten reply is still there for whoever asks, stamped with its time.
    [late] = grid.pull_messages([forgotten])
    assert late.metadata.created_at == pytest.approx(1.0)
    assert grid.next_event_time() == math.inf


def test_a_strategy_with_nothing_in_flight_moves_past_an_overdue_reply() -> None:
    grid = VirtualGrid(toy_client_app(), [DeviceProfile()], work_fn=constant_work(1.0))
    grid.push_messages([train_message(grid, grid.node_ids[0])])  # due at t=1
    grid.clock.advance(3.0)
    for _ in range(100):  # guard: the old grid never got past t=3 here
        if grid.clock.now() >= 10.0:
            break
        assert grid.next_event_time() > grid.clock.now()
        grid.clock.wait(10.0)
    else:
        pytest.fail("the clock is stuck behind an overdue reply")


@pytest.mark.parametrize(
    "raised", [KeyboardInterrupt("stop"), SystemExit(3), GeneratorExit()]
)
def test_any_base_exception_in_the_clientapp_is_an_error_reply(
    raised: BaseException,
) -> None:
    def crash(msg: Message, context: Context) -> None:
        _count_messages(msg, context)
        if int(context.node_config["partition-id"]) == 0:
            raise raised

    grid = VirtualGrid(
        toy_client_app(on_train=crash),
        [DeviceProfile()] * 2,
        work_fn=constant_work(1.0),
    )
    crashing, healthy = grid.node_ids
    replies = grid.send_and_receive(
        [train_message(grid, crashing), train_message(grid, healthy)]
    )
    by_node = {r.metadata.src_node_id: r for r in replies}
    assert by_node[crashing].error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert type(raised).__name__ in by_node[crashing].error.reason
    assert by_node[healthy].has_content()
    assert "seen" not in grid.contexts[crashing].state  # its changes are dropped
    assert grid.stats[crashing].errors == 1


def test_a_message_to_an_unknown_node_is_an_error_reply() -> None:
    grid = VirtualGrid(toy_client_app(), [DeviceProfile()])
    [reply] = grid.send_and_receive([train_message(grid, 424242)])
    assert reply.error.code == ErrorCode.NODE_UNAVAILABLE
    assert grid.totals()["errors"] == 0  # counted against no node


def test_pulling_with_a_set_of_ids_equals_pulling_with_a_list() -> None:
    def replies_by(kind: str) -> list[tuple[int, float]]:
        grid = VirtualGrid(
            toy_client_app(), lognormal(12, seed=1), work_fn=constant_work(1.0)
        )
        ids = list(grid.push_messages([train_message(grid, n) for n in grid.node_ids]))
        in_flight = dict.fromkeys(ids[::2], "tracked")  # half of them, as a dict
        out: list[tuple[int, float]] = []
        while in_flight:
            grid.clock.wait(math.inf)
            wanted = in_flight.keys() if kind == "set" else list(in_flight)
            for reply in grid.pull_messages(wanted):
                del in_flight[reply.metadata.reply_to_message_id]
                out.append((reply.metadata.src_node_id, reply.metadata.created_at))
        return out

    assert replies_by("set") == replies_by("list")
    assert len(replies_by("set")) == 6


def test_presets_share_profiles() -> None:
    assert len({id(d) for d in tiered(1000, (1, 4, 10))}) == 3
    assert len({id(d) for d in uniform(1000, speed=0.5)}) == 1
    devices = tiered(9)
    grid = VirtualGrid(toy_client_app(), devices)
    assert [grid.devices[n] for n in grid.node_ids] == devices
    assert all(
        grid.devices[n] is d for n, d in zip(grid.node_ids, devices, strict=True)
    )


def test_a_100k_node_grid_is_small_and_answers_membership_fast() -> None:
    num_nodes = 100_000
    devices = tiered(num_nodes)
    app = toy_client_app()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        grid = VirtualGrid(app, devices, work_fn=constant_work(1.0))
        built = time.perf_counter() - started
        per_node = tracemalloc.get_traced_memory()[0] / num_nodes
    finally:
        tracemalloc.stop()
    # Measured 46 B per node (an id and a profile index); a Context per node
    # would be over 500.
    assert per_node < 128, per_node
    assert built < 30.0  # about 1 s here under tracemalloc; a sanity bound
    ids = grid.get_node_ids()
    assert len(ids) == num_nodes
    started = time.perf_counter()
    for _ in range(1000):
        assert grid.get_node_ids() is ids
    assert time.perf_counter() - started < 0.5  # ~1 us per call here
    node = grid.node_ids[54_321]
    [reply] = grid.send_and_receive([train_message(grid, node)])
    assert reply.has_content() and grid.clock.now() == pytest.approx(1.0)
    assert list(grid.contexts.made) == [node] and list(grid.stats.made) == [node]
    assert grid.partition_of[node] == 54_321
