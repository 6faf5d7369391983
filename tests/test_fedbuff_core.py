"""FedBuff's reshaped core: memory bound, reply paths, weighting, drop-in use."""

from __future__ import annotations

import math
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg

from flchain_flwr.ledger import Ledger
from flchain_flwr.pov import Committee, Threshold
from flchain_flwr.protocol import (
    TRAINED_ON_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
    UPDATE_KIND_KEY,
)
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import (
    Claimed,
    DecompressReplies,
    FedBuff,
    MedianCapped,
    RandomSample,
    ShuffleAll,
    scheduling_policy,
)
from flchain_flwr.strategies.nodes import NodePool

from .test_pov import verifiers
from .toy import constant_work, initial_arrays, toy_client_app


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail instead of hanging."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds}s: a busy loop?")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def grid_of(
    app: ClientApp, speeds: list[float], work: float = 1.0, **kwargs: object
) -> VirtualGrid:
    return VirtualGrid(
        app,
        [DeviceProfile(speed=s) for s in speeds],
        work_fn=constant_work(work),
        **kwargs,  # type: ignore[arg-type]
    )


# ------------------------------------------------------------ memory bound
def spread(n: int) -> list[float]:
    """``n`` speeds spread log-uniformly over 100x."""
    return [float(10 ** (-2 * i / (n - 1))) for i in range(n)]


@pytest.mark.parametrize("delta_replies", [False, True])
def test_full_copies_stay_within_their_bound_with_200_nodes(
    delta_replies: bool,
) -> None:
    behaviours = dict.fromkeys(range(200), "delta") if delta_replies else {}
    grid = grid_of(toy_client_app(behaviours), spread(200))
    strategy = FedBuff(buffer_size=5, fraction_evaluate=0.0, seed=0)
    result = strategy.start(grid, initial_arrays(), num_rounds=120, timeout=1e4)
    assert len(result.versions) == 120
    bound = result.versions[-1].full_copy_bound
    # "auto": max(20, 4 * ceil(200 training nodes / K = 5)) + 1
    assert bound == 4 * 40 + 1
    assert all(v.full_copy_bound == bound for v in result.versions)
    kept = [v.kept_versions for v in result.versions]
    assert max(kept) <= bound
    if delta_replies:
        # Deltas need no old version. Only version 0 is kept past its time,
        # for nodes not yet heard from (they might send full weights).
        assert max(kept) == 2
    else:
        assert max(kept) > 1  # full weights do need them
    stale = [r for r in result.rejected if r.reason.startswith("stale")]
    assert all(int(r.reason.split()[2]) > 160 for r in stale)


def test_max_staleness_none_keeps_every_version_in_flight() -> None:
    grid = grid_of(toy_client_app(), [1.0, 0.1, 0.05])
    strategy = FedBuff(buffer_size=1, fraction_evaluate=0.0, max_staleness=None, seed=0)
    result = strategy.start(grid, initial_arrays(), num_rounds=30, timeout=1e3)
    assert all(v.full_copy_bound is None for v in result.versions)
    assert max(v.kept_versions for v in result.versions) <= 3
    assert not result.rejected


# --------------------------------------------------- slow aggregation (#2)
def test_replies_that_arrive_during_a_slow_aggregation_are_not_lost() -> None:
    # Replies at t = 1, 2, 3; K = 1; each version's evaluation takes 5 s of
    # grid time, and messages live 4 s. Replies 2 and 3 arrived in time.
    grid = grid_of(toy_client_app(), [1.0, 0.5, 1 / 3])

    def slow_evaluation(version: int, arrays: ArrayRecord) -> MetricRecord:
        if version:
            grid.clock.advance(5.0)
        return MetricRecord({"version": version})

    strategy = FedBuff(buffer_size=1, fraction_evaluate=0.0, message_ttl=4.0, seed=0)
    with time_limit(60):
        result = strategy.start(
            grid,
            initial_arrays(),
            num_rounds=3,
            timeout=100.0,
            evaluate_fn=slow_evaluation,
        )
    assert result.failures == []
    assert [v.num_updates for v in result.versions] == [1, 1, 1]
    assert result.stop_reason == "completed"


# ------------------------------------------------ identical replies (#4)
def test_identical_honest_replies_from_different_nodes_all_count() -> None:
    # Four nodes on partition 0 send byte-identical replies.
    grid = VirtualGrid(
        toy_client_app(),
        [DeviceProfile() for _ in range(4)],
        node_configs=[{"partition-id": 0, "num-partitions": 1}] * 4,
        work_fn=constant_work(1.0),
    )
    committee = Committee(verifiers(4), threshold=Threshold(value=0))
    strategy = FedBuff(
        buffer_size=4, fraction_evaluate=0.0, committee=committee, seed=0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=2, timeout=100.0)
    assert result.rejected == []
    assert [v.num_updates for v in result.versions] == [4, 4]


# ------------------------------------------------ example inflation (#1)
def inflating_app(claims: dict[int, float], shift: float = 1.0) -> ClientApp:
    """Node ``p`` adds ``shift`` (p + 1) / 10 to every weight; some lie about n."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        arrays = ArrayRecord(
            {
                k: Array(v.numpy() + np.float32(shift * (pid + 1) / 10))
                for k, v in msg.content["arrays"].items()
            }
        )
        n = claims.get(pid, 100)
        content = RecordDict({"arrays": arrays, "m": MetricRecord({"num-examples": n})})
        return Message(content, reply_to=msg)

    return app


def one_version(strategy: FedBuff, claims: dict[int, float]) -> np.ndarray:
    grid = grid_of(inflating_app(claims), [1.0] * 4)
    result = strategy.start(grid, initial_arrays(), num_rounds=1, timeout=100.0)
    return result.arrays["w"].numpy()


def test_an_inflated_example_count_buys_bounded_influence() -> None:
    honest = one_version(FedBuff(buffer_size=4, fraction_evaluate=0.0), {})
    claimed = one_version(
        FedBuff(buffer_size=4, fraction_evaluate=0.0, example_weighting=Claimed()),
        {3: 1e12},
    )
    capped = one_version(FedBuff(buffer_size=4, fraction_evaluate=0.0), {3: 1e12})
    np.testing.assert_allclose(honest, 0.25, rtol=1e-6)  # mean of .1 .2 .3 .4
    np.testing.assert_allclose(claimed, 0.4, rtol=1e-6)  # the liar takes it all
    # MedianCapped(4): the liar counts 4 medians (400) against 3 x 100
    np.testing.assert_allclose(capped, (0.1 + 0.2 + 0.3 + 4 * 0.4) / 7, rtol=1e-6)


def test_claims_that_overflow_the_total_never_freeze_the_model() -> None:
    strategy = FedBuff(
        buffer_size=4, fraction_evaluate=0.0, example_weighting=Claimed(), seed=0
    )
    grid = grid_of(inflating_app({2: 1.7e308, 3: 1.7e308}), [1.0] * 4)
    result = strategy.start(grid, initial_arrays(), num_rounds=1, timeout=20.0)
    assert result.versions == []
    assert len(result.rejected) >= 4
    assert all(np.isfinite(a.numpy()).all() for a in result.arrays.values())
    assert MedianCapped().spec == "median:4:1000"


# ------------------------------------------------------ reply paths (#5)
def reply(content: RecordDict, node_id: int = 7) -> Message:
    grid_of(toy_client_app(), [1.0])  # sets the task identity Message() reads
    message = Message(content, dst_node_id=node_id, message_type="train")
    answer = Message(RecordDict(dict(content)), reply_to=message)
    answer.metadata.__dict__["_src_node_id"] = node_id
    return answer


def train_content(value: float, n: object, trained_on: int | None = None) -> RecordDict:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(np.full(3, value, np.float32))}),
            "metrics": MetricRecord({"num-examples": n}),  # type: ignore[dict-item]
        }
    )
    if trained_on is not None:
        content[UPDATE_INFO_KEY] = ConfigRecord({TRAINED_ON_KEY: trained_on})
    return content


def test_aggregate_train_on_its_own_averages_like_fedavg() -> None:
    replies = [reply(train_content(1.0, 10)), reply(train_content(3.0, 30), 8)]
    ours, _ = FedBuff().aggregate_train(1, replies)
    theirs, _ = FedAvg().aggregate_train(1, replies)
    assert ours is not None and theirs is not None
    np.testing.assert_allclose(ours["w"].numpy(), theirs["w"].numpy(), rtol=1e-6)


def test_the_synchronous_path_checks_the_claimed_version_and_huge_counts() -> None:
    strategy = FedBuff(fraction_evaluate=0.0)
    sent = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    strategy.configure_train(1, sent, ConfigRecord(), grid_of(toy_client_app(), [1.0]))
    replies = [
        reply(train_content(1.0, 10, trained_on=99), 1),
        reply(train_content(1.0, 10**400), 2),
        reply(train_content(2.0, 10, trained_on=0), 3),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)  # only node 3 counts


def test_a_huge_integer_count_is_a_rejection_for_wrapped_fedavg_too() -> None:
    wrapped = DecompressReplies(FedAvg(fraction_evaluate=0.0))
    sent = ArrayRecord({"w": Array(np.zeros(3, np.float32))})
    two_nodes = grid_of(toy_client_app(), [1.0, 1.0])  # FedAvg waits for 2
    wrapped.configure_train(1, sent, ConfigRecord(), two_nodes)
    arrays, _ = wrapped.aggregate_train(
        1, [reply(train_content(1.0, 10**400), 1), reply(train_content(2.0, 5), 2)]
    )
    assert arrays is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    assert len(wrapped.rejected) == 1


def evaluate_reply(metrics: dict[str, object], node_id: int) -> Message:
    record = MetricRecord(metrics)  # type: ignore[arg-type]
    return reply(RecordDict({"metrics": record}), node_id)


@pytest.mark.parametrize(
    "strategy", [FedBuff(), DecompressReplies(FedAvg())], ids=["fedbuff", "fedavg"]
)
def test_evaluate_replies_are_validated_on_every_path(strategy: object) -> None:
    replies = [
        evaluate_reply({"loss": 0.5, "acc": 0.8, "num-examples": 10}, 1),
        evaluate_reply({"loss": 1000.0, "acc": 0.0, "num-examples": -39}, 2),
        evaluate_reply({"loss": float("nan"), "acc": 0.1, "num-examples": 10}, 3),
        evaluate_reply({"loss": 0.7, "acc": 0.6, "num-examples": 10}, 4),
    ]
    metrics = strategy.aggregate_evaluate(1, replies)  # type: ignore[attr-defined]
    assert metrics is not None
    assert metrics["loss"] == pytest.approx(0.6)
    assert metrics["acc"] == pytest.approx(0.7)


def test_a_missing_metric_does_not_drop_the_versions_metrics() -> None:
    replies = [
        evaluate_reply({"loss": 0.5, "acc": 0.8, "num-examples": 10}, 1),
        evaluate_reply({"loss": 0.7, "num-examples": 10}, 2),
    ]
    metrics = FedBuff().aggregate_evaluate(1, replies)
    assert metrics is not None
    assert metrics["loss"] == pytest.approx(0.6)
    assert metrics["acc"] == pytest.approx(0.8)


class ForgingGrid(VirtualGrid):
    """Rewrites the sender of every reply from partition 0's node."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(super().pull_messages(message_ids))
        victim = self.node_ids[0]
        for r in replies:
            if r.metadata.src_node_id == victim:
                r.metadata.__dict__["_src_node_id"] = self.node_ids[1]
        return replies


def test_a_reply_from_another_node_than_addressed_is_a_failure() -> None:
    grid = ForgingGrid(
        toy_client_app(),
        [DeviceProfile(speed=s) for s in (1.0, 0.5, 0.4)],
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(buffer_size=2, fraction_evaluate=0.0, seed=0)
    result = strategy.start(grid, initial_arrays(), num_rounds=2, timeout=100.0)
    forged = [f for f in result.failures if "addressed to node" in f.reason]
    # recorded against the node that sent it, not the addressee it claims
    assert forged and all(f.node_id == grid.node_ids[1] for f in forged)
    assert all(str(grid.node_ids[0]) in f.reason for f in forged)
    assert grid.node_ids[0] not in result.participation


def test_a_5000_digit_metric_with_a_ledger_is_handled(tmp_path: Path) -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = ArrayRecord(
            {
                k: Array(v.numpy() + np.float32(0.1))
                for k, v in msg.content["arrays"].items()
            }
        )
        metrics = MetricRecord({"num-examples": 10, "huge": 10**5000})
        content = RecordDict({"arrays": arrays, "metrics": metrics})
        return Message(content, reply_to=msg)

    grid = grid_of(app, [1.0, 0.5])
    strategy = FedBuff(
        buffer_size=2, fraction_evaluate=0.0, ledger=tmp_path / "l.db", seed=0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=1, timeout=100.0)
    assert result.stop_reason == "completed"
    with Ledger(tmp_path / "l.db", create=False) as ledger:
        assert ledger.verify().ok


# -------------------------------------------------------------- drop-in
def test_fedavgs_constructor_arguments_are_accepted() -> None:
    strategy = FedBuff(0.5, 0.25, 3, 4, 5, "n", "a", "c")
    assert (strategy.fraction_train, strategy.fraction_evaluate) == (0.5, 0.25)
    assert (strategy.min_train_nodes, strategy.min_evaluate_nodes) == (3, 4)
    assert strategy.min_available_nodes == 5
    assert (strategy.weighted_by_key, strategy.arrayrecord_key) == ("n", "a")
    assert FedBuff().fraction_evaluate == FedAvg().fraction_evaluate == 1.0


def test_fraction_train_sets_how_many_nodes_train_at_once() -> None:
    grid = grid_of(toy_client_app(), [1.0] * 10)
    strategy = FedBuff(fraction_train=0.3, buffer_size=1, fraction_evaluate=0.0)
    strategy.start(grid, initial_arrays(), num_rounds=9, timeout=100.0)
    # ceil(0.3 * 10) = 3 nodes train at once: 3 messages at t = 0
    assert sum(s.messages for s in grid.stats.values()) <= 9 + 3


def test_bare_fedbuff_evaluates_on_the_nodes_like_bare_fedavg() -> None:
    grid = grid_of(toy_client_app(), [1.0, 0.8, 0.6, 0.4])
    result = FedBuff(buffer_size=2).start(grid, initial_arrays(), num_rounds=4)
    # one FedAvg round's worth (4 updates) every 2 versions, and the last
    assert sorted(result.evaluate_metrics_clientapp) == [2, 4]


def test_should_stop_ends_the_run_early() -> None:
    grid = grid_of(toy_client_app(), [1.0, 0.5])
    result = FedBuff(buffer_size=1, fraction_evaluate=0.0).start(
        grid,
        initial_arrays(),
        num_rounds=50,
        should_stop=lambda version, _result: version >= 3,
    )
    assert len(result.versions) == 3
    assert result.stop_reason == "stopped by should_stop"


# ------------------------------------------------------------ scheduling
def test_node_pool_picks_uniformly_and_stays_consistent() -> None:
    import random

    pool = NodePool()
    for i in range(100):
        pool.add(i)
    pool.discard(5)
    pool.discard(99)
    assert len(pool) == 98 and 5 not in pool and 99 not in pool
    rng = random.Random(0)
    picked = [pool.pick(rng) for _ in range(98)]
    assert sorted(picked) == [i for i in range(100) if i not in (5, 99)]
    assert len(pool) == 0


def test_scheduling_policies_by_name() -> None:
    assert isinstance(scheduling_policy("random"), RandomSample)
    assert isinstance(scheduling_policy("shuffle"), ShuffleAll)
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        scheduling_policy("fifo")


def test_concurrency_bounds_training_in_a_large_population() -> None:
    grid = VirtualGrid(
        toy_client_app(behaviours=None),
        [DeviceProfile(speed=1.0 + (i % 7) / 7) for i in range(2000)],
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(buffer_size=10, concurrency=50, fraction_evaluate=0.0, seed=1)
    result = strategy.start(grid, initial_arrays(), num_rounds=20, timeout=100.0)
    assert len(result.versions) == 20
    assert sum(s.messages for s in grid.stats.values()) <= 20 * 10 + 50
    assert math.isfinite(float(result.arrays["w"].numpy()[0]))


# ------------------------------------------------ liveness (review cases)
def test_nodes_that_never_answer_end_the_run_after_timeout() -> None:
    devices = [
        DeviceProfile(hang_probability=1.0),
        DeviceProfile(hang_probability=1.0, online=((5.0, 1e9),)),
    ]
    grid = VirtualGrid(toy_client_app(), devices, work_fn=constant_work(1.0))
    strategy = FedBuff(
        buffer_size=2,
        retry_backoff=1.0,
        message_ttl=10.0,
        membership_refresh=0.5,
        min_available_nodes=1,
        fraction_evaluate=0.0,
        seed=0,
    )
    with time_limit(60):
        result = strategy.start(grid, initial_arrays(), num_rounds=1, timeout=20)
    assert result.stop_reason == "no usable reply for 20s"
    assert grid.clock.time < 60


def test_an_aggregation_slower_than_timeout_is_not_idleness() -> None:
    committee = Committee(
        verifiers(4), threshold=Threshold(value=0), consensus_delay=25.0
    )
    grid = grid_of(toy_client_app(), [1.0, 1.0])
    strategy = FedBuff(
        buffer_size=2, committee=committee, fraction_evaluate=0.0, seed=0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=3, timeout=20)
    assert result.stop_reason == "completed"
    assert len(result.versions) == 3


def test_a_rejected_buffer_lets_its_nodes_train_again() -> None:
    # Deltas of 3e38: version 1 is 3e38, every later step would overflow
    # float32. No further version, but the nodes keep trying until the idle
    # timeout, counted from the last version, ends the run.
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        delta = ArrayRecord(
            {
                k: Array(np.full_like(v.numpy(), 3e38))
                for k, v in msg.content["arrays"].items()
            }
        )
        content = RecordDict({"arrays": delta, "m": MetricRecord({"num-examples": 10})})
        content[UPDATE_INFO_KEY] = ConfigRecord({UPDATE_KIND_KEY: UPDATE_KIND_DELTA})
        return Message(content, reply_to=msg)

    grid = grid_of(app, [1.0, 1.0])
    strategy = FedBuff(buffer_size=2, fraction_evaluate=0.0, seed=0)
    with time_limit(60):
        result = strategy.start(grid, initial_arrays(), num_rounds=5, timeout=10)
    assert result.stop_reason == "no usable reply for 10s"
    assert len(result.versions) == 1
    overflow = [r for r in result.rejected if "overflow" in r.reason]
    assert len(overflow) > 2  # retried, not stuck after the first buffer


def test_zero_staleness_weights_with_integer_state_do_not_crash() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        a = msg.content["arrays"]
        out = ArrayRecord(
            {
                "w": Array(a["w"].numpy() + np.float32(0.1)),
                "n": Array(np.asarray(a["n"].numpy() + 1)),
            }
        )
        metrics = MetricRecord({"num-examples": 10})
        return Message(RecordDict({"arrays": out, "m": metrics}), reply_to=msg)

    start = ArrayRecord(
        {"w": Array(np.zeros(3, np.float32)), "n": Array(np.zeros((), np.int64))}
    )
    grid = grid_of(app, [1.0, 1.0, 0.5])
    strategy = FedBuff(
        buffer_size=1,
        staleness_fn=lambda s: 1.0 if s <= 1 else 0.0,
        fraction_evaluate=0.0,
        seed=0,
    )
    result = strategy.start(grid, start, num_rounds=12, timeout=50)
    assert result.stop_reason == "completed"
    assert result.arrays["n"].numpy().shape == ()


def test_should_stop_still_evaluates_the_last_version() -> None:
    grid = grid_of(toy_client_app(), [1.0, 0.9, 0.8])
    result = FedBuff(buffer_size=1).start(
        grid, initial_arrays(), num_rounds=10, should_stop=lambda v, _: v >= 2
    )
    assert result.stop_reason == "stopped by should_stop"
    assert 2 in result.evaluate_metrics_clientapp


def test_a_finished_run_waits_for_its_last_evaluation() -> None:
    grid = grid_of(toy_client_app({2: "raise"}), [1.0, 1.0, 1.0])
    result = FedBuff(buffer_size=2, seed=0).start(
        grid, initial_arrays(), num_rounds=2, timeout=5
    )
    assert result.stop_reason == "completed"
    assert 2 in result.evaluate_metrics_clientapp


def test_slow_nodes_are_not_kept_evaluating_instead_of_training() -> None:
    # evaluation as slow as training; the slow nodes must still train
    grid = grid_of(toy_client_app(), [1.0, 1.0, 1.0, 1.0, 0.2, 0.1])
    result = FedBuff(buffer_size=2, seed=0).start(
        grid, initial_arrays(), num_rounds=80, timeout=100
    )
    slow = grid.node_ids[4:]
    assert all(result.participation.get(n, 0) >= 2 for n in slow)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"concurrency": 2.5},
        {"min_train_nodes": 1.5},
        {"buffer_size": True},
        {"retry_backoff": 0.0},
    ],
)
def test_malformed_settings_are_refused_at_construction(
    kwargs: dict[str, object],
) -> None:
    with pytest.raises(ValueError):
        FedBuff(**kwargs)  # type: ignore[arg-type]


class Careless(RandomSample):
    """A policy that names the same node twice."""

    def select(self, pool: NodePool, capacity: int, rng: object) -> list[int]:
        first = sorted(pool)[0]
        return [first, first, *sorted(pool)]


def test_a_policy_cannot_put_two_messages_in_flight_to_one_node() -> None:
    from .test_fedbuff import StrictGrid

    grid = StrictGrid(
        toy_client_app(),
        [DeviceProfile(speed=s) for s in (1.0, 0.7, 0.5)],
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(
        buffer_size=2, scheduling=Careless(), fraction_evaluate=0.0, seed=0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=4, timeout=100)
    assert len(result.versions) == 4
