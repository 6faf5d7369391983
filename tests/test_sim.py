"""The virtual-clock grid: timing, ordering, availability, determinism, presets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode

from flchain_flwr.sim import (
    DeviceProfile,
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
