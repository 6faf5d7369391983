"""Faults and bad replies are recorded; the run goes on; the model stays clean."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

from flchain_flwr.quoting import REASON_CHARS
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import AsyncResult, Constant, FedBuff

from .crafted import crafted_grid
from .toy import constant_work, examples_of, initial_arrays, shift_of, toy_client_app

GOOD = [0, 1]
BAD = 2


def run_with(
    behaviour: str | None = None,
    *,
    devices: list[DeviceProfile] | None = None,
    num_rounds: int = 4,
    timeout: float = 50.0,
    **grid_kwargs: float,
) -> tuple[AsyncResult, VirtualGrid]:
    grid = VirtualGrid(
        toy_client_app({BAD: behaviour} if behaviour else None),
        devices or [DeviceProfile()] * 3,
        work_fn=constant_work(1.0),
        **grid_kwargs,  # type: ignore[arg-type]
    )
    strategy = FedBuff(
        fraction_evaluate=0.0, buffer_size=3, staleness_fn=Constant(), retry_backoff=5.0
    )
    result = strategy.start(
        grid, initial_arrays(), num_rounds=num_rounds, timeout=timeout
    )
    return result, grid


def honest_only_model(num_rounds: int) -> float:
    """What the model is when only nodes 0 and 1 ever count (sync, K drained)."""
    n = [examples_of(p) for p in GOOD]
    step = sum(ni * shift_of(p) for ni, p in zip(n, GOOD, strict=True)) / sum(n)
    return num_rounds * step


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("nan", "holds NaN or Inf"),
        ("inf", "holds NaN or Inf"),
        ("shape", "has shape (4,), expected (3,)"),
        ("dtype", "has dtype float64, expected float32"),
        ("missing", "missing arrays: ['b']"),
        ("extra", "unexpected arrays: ['z']"),
        ("no-metrics", "no MetricRecord with 'num-examples'"),
        ("zero-examples", "must be finite and > 0"),
        ("nan-examples", "must be finite and > 0"),
        ("corrupt-bytes", "cannot be decoded"),
    ],
)
def test_bad_reply_is_rejected_and_never_reaches_the_model(
    behaviour: str, reason: str
) -> None:
    result, grid = run_with(behaviour)
    assert result.stop_reason == "completed"
    bad_node = grid.node_ids[BAD]
    rejected = [r for r in result.rejected if r.node_id == bad_node]
    assert len(rejected) == 4  # one per version, none accepted
    assert all(reason in r.reason for r in rejected)
    assert bad_node not in result.participation
    np.testing.assert_allclose(
        result.arrays["w"].numpy(), honest_only_model(4), rtol=1e-6
    )
    assert np.isfinite(result.arrays["b"].numpy()).all()


@pytest.mark.parametrize(
    ("behaviour", "code", "reason"),
    [
        ("raise", ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "scripted client failure"),
        ("error-reply", 42, "scripted error reply"),
    ],
)
def test_client_errors_are_recorded_and_the_run_goes_on(
    behaviour: str, code: int, reason: str
) -> None:
    result, grid = run_with(behaviour)
    assert result.stop_reason == "completed"
    failures = [f for f in result.failures if f.node_id == grid.node_ids[BAD]]
    assert failures and all(
        f.error_code == code and reason in f.reason for f in failures
    )
    np.testing.assert_allclose(
        result.arrays["w"].numpy(), honest_only_model(4), rtol=1e-6
    )


def test_a_node_that_never_replies_times_out_by_ttl() -> None:
    devices = [DeviceProfile(), DeviceProfile(), DeviceProfile(hang_probability=1.0)]
    grid = VirtualGrid(toy_client_app(), devices, work_fn=constant_work(1.0))
    strategy = FedBuff(
        fraction_evaluate=0.0, buffer_size=2, message_ttl=20.0, staleness_fn=Constant()
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=30, timeout=100.0)
    assert result.stop_reason == "completed"
    hung = [f for f in result.failures if f.node_id == grid.node_ids[BAD]]
    assert hung and hung[0].error_code == ErrorCode.MESSAGE_UNAVAILABLE
    assert hung[0].time == pytest.approx(20.0)


def test_strategy_side_ttl_frees_a_node_even_if_the_grid_never_answers() -> None:
    class SilentGrid(VirtualGrid):
        def _error(self, message, code, reason, at):  # type: ignore[no-untyped-def]
            if message.metadata.dst_node_id != self.node_ids[BAD]:
                super()._error(message, code, reason, at)

    devices = [DeviceProfile(), DeviceProfile(), DeviceProfile(hang_probability=1.0)]
    grid = SilentGrid(toy_client_app(), devices, work_fn=constant_work(1.0))
    strategy = FedBuff(
        fraction_evaluate=0.0, buffer_size=2, message_ttl=10.0, retry_backoff=1.0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=30, timeout=100.0)
    assert result.stop_reason == "completed"
    expired = [f for f in result.failures if f.node_id == grid.node_ids[BAD]]
    assert expired and "no reply within the message TTL (10s)" in expired[0].reason
    assert len(expired) >= 2  # freed and re-dispatched after each expiry


def test_a_node_that_leaves_is_recorded_and_the_run_finishes() -> None:
    devices = [DeviceProfile(), DeviceProfile(), DeviceProfile(online=((0.0, 2.5),))]
    result, grid = run_with(devices=devices, num_rounds=6, failure_detection_s=3.0)
    assert result.stop_reason == "completed"
    left = [f for f in result.failures if f.node_id == grid.node_ids[BAD]]
    assert left and left[0].error_code == ErrorCode.NODE_UNAVAILABLE
    assert left[0].time == pytest.approx(5.5)
    assert result.participation[grid.node_ids[BAD]] == 2  # versions 1 and 2


def test_all_nodes_bad_stops_after_timeout_without_touching_the_model() -> None:
    grid = VirtualGrid(
        toy_client_app({0: "nan", 1: "shape"}),
        [DeviceProfile()] * 2,
        work_fn=constant_work(1.0),
    )
    result = FedBuff(fraction_evaluate=0.0, buffer_size=1).start(
        grid, initial_arrays(), num_rounds=3, timeout=30.0
    )
    assert result.stop_reason == "no usable reply for 30s"
    assert result.versions == []
    assert not result.arrays["w"].numpy().any()


def test_no_nodes_at_all_stops_after_timeout() -> None:
    devices = [DeviceProfile(online=((1000.0, math.inf),))]
    grid = VirtualGrid(toy_client_app(), devices, work_fn=constant_work(1.0))
    result = FedBuff(fraction_evaluate=0.0, min_available_nodes=1).start(
        grid, initial_arrays(), 2, timeout=60.0
    )
    assert result.stop_reason == "no usable reply for 60s"


def test_an_aggregate_that_would_overflow_the_model_is_refused() -> None:
    grid = VirtualGrid(
        toy_client_app(), [DeviceProfile()] * 2, work_fn=constant_work(1.0)
    )
    big = FedBuff(
        fraction_evaluate=0.0, buffer_size=2, server_lr=1e40, staleness_fn=Constant()
    )
    result = big.start(grid, initial_arrays(), num_rounds=2, timeout=20.0)
    assert result.versions == []
    assert {r.reason for r in result.rejected} == {"aggregate would overflow the model"}
    assert np.isfinite(result.arrays["w"].numpy()).all()


def _long_error_reply(msg: Message, pid: int) -> Message:
    """A training node's error reply with a reason of 100,000 characters."""
    return Message(Error(code=0, reason="x" * 100_000), reply_to=msg)


def test_a_training_nodes_error_reason_is_recorded_clipped() -> None:
    # what a node says goes into the log and the result once per message:
    # quoted through quoting.clip, as a verifier's or a witness's reason is
    grid = crafted_grid({0: _long_error_reply})
    strategy = FedBuff(buffer_size=2, staleness_fn=Constant(), seed=0)
    result = strategy.start(grid, initial_arrays(), num_rounds=2, timeout=60.0)
    reasons = [f.reason for f in result.failures if f.node_id == grid.node_ids[0]]
    assert reasons
    assert max(len(r) for r in reasons) <= 2 * REASON_CHARS
