"""Queued dispatch holds back a message forecast to land over max_staleness.

A queued message cannot be withdrawn (Flower's Grid has no call for it), so
one that goes too stale costs the node a round trip and is dropped on arrival.
The forecast (:mod:`flchain_flwr.strategies.queue_forecast`) keeps such
messages from being queued. The grid tests compare against the same run with
the forecast switched off (every queue allowed, as before it existed).
"""

from __future__ import annotations

import pytest

from flchain_flwr.strategies import AsyncResult
from flchain_flwr.strategies.queue_forecast import QueueForecast

from .test_queued_dispatch import run, slow_node_staleness, spy_grid


# ------------------------------------------------------------- the forecast
def test_no_forecast_before_a_version_or_a_round_trip() -> None:
    forecast = QueueForecast(start=10.0)
    forecast.started(1, 10.0)
    assert forecast.version_rate() is None
    assert forecast.staleness(1, 11.0) is None  # no version, no service time
    forecast.replied(1, 14.0)
    forecast.new_version(14.0)
    forecast.started(1, 14.0)
    assert forecast.version_rate() == pytest.approx(0.25)  # 1 version in 4 s
    assert forecast.staleness(2, 15.0) is None  # node 2 never trained
    assert forecast.fits(2, 15.0, 0)  # nothing to forecast from: allowed


def test_forecast_is_rate_times_time_until_the_queued_update_lands() -> None:
    forecast = QueueForecast(start=0.0)
    for t in (1.0, 2.0, 3.0, 4.0):  # 4 versions in 4 s
        forecast.new_version(t)
    forecast.started(7, 0.0)
    forecast.replied(7, 4.0)  # service time 4 s
    forecast.started(7, 4.0)  # current message ends at 8, a queued one at 12
    assert forecast.staleness(7, 5.0) == pytest.approx(7.0)
    assert forecast.fits(7, 5.0, 7)
    assert not forecast.fits(7, 5.0, 6)
    assert forecast.fits(7, 5.0, None)  # no limit: always
    # a current message running over its service time is taken to end now
    assert forecast.staleness(7, 10.0) == pytest.approx(4.0)


def test_rate_counts_only_the_latest_versions() -> None:
    forecast = QueueForecast(start=0.0, window=2)
    for t in (10.0, 11.0, 12.0):  # slow at first, then 1 per second
        forecast.new_version(t)
    assert forecast.version_rate() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="window"):
        QueueForecast(start=0.0, window=0)


def test_a_failed_message_forgets_the_nodes_timing() -> None:
    forecast = QueueForecast(start=0.0)
    forecast.new_version(1.0)
    forecast.started(3, 0.0)
    forecast.replied(3, 2.0)
    forecast.started(3, 2.0)
    assert forecast.staleness(3, 2.0) is not None
    forecast.forget(3)
    assert forecast.staleness(3, 2.0) is None


# ------------------------------------------------------------ on the grid
def stale_drops(result: AsyncResult) -> int:
    return sum(1 for r in result.rejected if r.reason.startswith("stale"))


def without_forecast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(QueueForecast, "fits", lambda *_: True)


def test_a_slow_node_is_queued_only_when_its_update_lands_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A makes a version per second, B takes 4 s (K = 1). Queued as soon as it
    # may be, B's queued updates land 7-8 versions stale and are dropped;
    # held back until the forecast fits, B is still queued behind, and every
    # one of its updates lands within max_staleness.
    grid = spy_grid([1.0, 0.25])
    slow = grid.node_ids[1]
    held = run(grid, queued=True, rounds=20, max_staleness=5)
    assert stale_drops(held) == 0
    assert grid.pairs  # B was queued behind
    assert all(staleness <= 5 for _, staleness in slow_node_staleness(held, slow))
    assert len(slow_node_staleness(held, slow)) == 4

    without_forecast(monkeypatch)
    eager_grid = spy_grid([1.0, 0.25])
    eager = run(eager_grid, queued=True, rounds=20, max_staleness=5)
    assert stale_drops(eager) > 0
    assert len(slow_node_staleness(eager, slow)) < 4


@pytest.mark.parametrize(
    ("speeds", "limit"),
    [([1.0, 0.5, 0.25, 0.2], 4), ([1.0, 0.9, 0.3, 0.15, 0.1], 6)],
)
def test_queueing_adds_no_stale_drops_over_dispatch_on_reply(
    monkeypatch: pytest.MonkeyPatch, speeds: list[float], limit: int
) -> None:
    # Nodes of different speeds: some updates go over the limit even when sent
    # on reply. Queueing with the forecast adds no such drop; queueing without
    # it does.
    plain = run(spy_grid(speeds), queued=False, rounds=40, max_staleness=limit)
    grid = spy_grid(speeds)
    held = run(grid, queued=True, rounds=40, max_staleness=limit)
    assert grid.pairs  # it did queue
    assert stale_drops(held) <= stale_drops(plain)

    without_forecast(monkeypatch)
    eager = run(spy_grid(speeds), queued=True, rounds=40, max_staleness=limit)
    assert stale_drops(eager) > stale_drops(plain)
