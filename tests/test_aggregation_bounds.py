"""What one node can do to an aggregate with replies that each pass validation.

An inflated example claim, capped in the step, must not set the reported train
or federated-evaluation metrics either; Flower's synchronous path must never
hand its loop a non-finite model, and steps non-trainable state as the async
path does; ``aggregate_train`` called on its own must not allocate from a forged
array's layout; a stale update weighs in the train metrics as in the step;
the synchronous path caps a reply's metrics as the async one does; and extra
MetricRecords buy no say. (From the adversarial audit and reviews.)
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flchain_flwr.protocol import (
    MODEL_VERSION_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
    UPDATE_KIND_KEY,
)
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import Constant, FedBuff, Polynomial
from flchain_flwr.strategies.metrics import MAX_METRIC_KEYS, aggregate_metrics

from .crafted import Shape, crafted_app, crafted_grid, honest_reply
from .toy import constant_work, examples_of, initial_arrays


# ------------------------------------------------- Flower's synchronous path
def _delta_reply(value: float) -> Shape:
    def shape(msg: Message, pid: int) -> Message:
        delta = {
            k: Array(np.full_like(v.numpy(), value))
            for k, v in msg.content["arrays"].items()
        }
        content = RecordDict(
            {
                "arrays": ArrayRecord(delta),
                "metrics": MetricRecord({"num-examples": 10}),
                UPDATE_INFO_KEY: ConfigRecord({UPDATE_KIND_KEY: UPDATE_KIND_DELTA}),
            }
        )
        return Message(content=content, reply_to=msg)

    return shape


def test_the_synchronous_path_never_returns_a_non_finite_model() -> None:
    """``FedBuff.start`` rejects a buffer whose step would overflow the model
    (``OVERFLOW_REASON``); ``aggregate_train`` applies the same step and must
    not return Inf to Flower's loop. Every reply here is finite and valid."""
    grid = crafted_grid({pid: _delta_reply(3e38) for pid in range(3)})
    strategy = FedBuff(server_lr=2.0, seed=0)
    messages = strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None or all(np.isfinite(a.numpy()).all() for a in arrays.values())


def test_the_synchronous_step_is_still_taken_when_finite() -> None:
    """The finiteness check leaves a finite step as it was: lr times the mean."""
    grid = crafted_grid({pid: _delta_reply(1.0) for pid in range(3)})
    strategy = FedBuff(server_lr=2.0, seed=0)
    messages = strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert all(np.allclose(a.numpy(), 2.0) for a in arrays.values())


def _batchnorm_reply(msg: Message, pid: int) -> Message:
    """Full weights shifted by 0.1, and a running variance of 0.4 measured."""
    sent = msg.content["arrays"]
    trained = {
        "w": Array(sent["w"].numpy() + np.float32(0.1)),
        "bn.running_var": Array(np.full(3, 0.4, np.float32)),
    }
    content = RecordDict(
        {
            "arrays": ArrayRecord(trained),
            "metrics": MetricRecord({"num-examples": 10}),
        }
    )
    return Message(content=content, reply_to=msg)


def test_the_synchronous_step_averages_running_statistics_as_the_async_one() -> None:
    """The async step sets BatchNorm running statistics to the average the
    nodes reported (``state_rule="average"``); stepped like weights,
    ``1 + 2 * (0.4 - 1)``, the variance would be -0.2, a corrupted model."""
    grid = crafted_grid({pid: _batchnorm_reply for pid in range(3)})
    start = ArrayRecord(
        {
            "w": Array(np.zeros(3, np.float32)),
            "bn.running_var": Array(np.ones(3, np.float32)),
        }
    )
    strategy = FedBuff(server_lr=2.0, seed=0)
    messages = strategy.configure_train(1, start, ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert np.allclose(arrays["bn.running_var"].numpy(), 0.4)
    assert np.allclose(arrays["w"].numpy(), 0.2)  # weights: lr times the mean


@pytest.mark.parametrize(
    "forged",
    [
        Array(dtype="bogus", shape=(1,), stype="numpy.ndarray", data=b"x"),
        Array(dtype="float32", shape=(2**62,), stype="numpy.ndarray", data=b"x"),
    ],
)
def test_aggregate_train_on_its_own_rejects_a_forged_layout(forged: Array) -> None:
    """Without ``configure_train`` the reference layout is the replies' most
    common one; a forged Array's dtype or shape must not reach ``np.zeros``."""
    grid = crafted_grid({})
    sender = FedBuff(seed=0)
    messages = sender.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)[:1]))
    replies[0].content["arrays"] = ArrayRecord({"w": forged})
    arrays, _ = FedBuff(seed=0).aggregate_train(1, replies)
    assert arrays is None


def test_a_forged_layout_does_not_outvote_the_replies_that_decode() -> None:
    """Two forged replies share a layout; the one honest reply's is used."""
    grid = crafted_grid({})
    sender = FedBuff(seed=0)
    messages = sender.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    forged = Array(dtype="float32", shape=(2**62,), stype="numpy.ndarray", data=b"x")
    for reply in replies[1:]:
        reply.content["arrays"] = ArrayRecord({"w": forged})
    arrays, _ = FedBuff(seed=0).aggregate_train(1, replies)
    assert arrays is not None
    honest = replies[0].content["arrays"]
    assert set(arrays) == set(honest)
    for name, value in arrays.items():
        np.testing.assert_array_equal(value.numpy(), honest[name].numpy())


# ------------------------------------------------------- inflated example counts
def _inflated(msg: Message, pid: int) -> Message:
    reply = honest_reply(msg, pid)
    reply.content["metrics"] = MetricRecord(
        {"num-examples": 10**12, "train-loss": 1000.0}
    )
    return reply


def honest_reply_loss(msg: Message, pid: int) -> Message:
    reply = honest_reply(msg, pid)
    reply.content["metrics"] = MetricRecord({"num-examples": 10, "train-loss": 1.0})
    return reply


def test_an_inflated_claim_capped_in_the_step_is_not_uncapped_in_train_metrics() -> (
    None
):
    """The weighting policy caps a claim of 1e12 at 4x the median (40 of 60
    examples in the step); the version's train metrics are averaged by the
    same effective counts, not by the raw claims."""
    grid = crafted_grid({0: _inflated, 1: honest_reply_loss, 2: honest_reply_loss})
    strategy = FedBuff(
        buffer_size=3, staleness_fn=Constant(), fraction_evaluate=0.0, seed=0
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=1, timeout=60.0)
    assert result.versions[0].num_examples == pytest.approx(60.0)  # capped
    loss = float(result.train_metrics_clientapp[1]["train-loss"])  # type: ignore[arg-type]
    # with the step's own weights: (40 * 1000 + 20 * 1) / 60 = 667
    assert loss == pytest.approx((40 * 1000 + 20 * 1) / 60)


def test_the_synchronous_train_metrics_use_the_step_weights() -> None:
    """``aggregate_train`` averages its metrics by the step's counts too."""
    grid = crafted_grid({0: _inflated, 1: honest_reply_loss, 2: honest_reply_loss})
    strategy = FedBuff(seed=0)
    messages = strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None
    assert float(metrics["train-loss"]) == pytest.approx((40 * 1000 + 20) / 60)  # type: ignore[arg-type]


def test_an_inflated_claim_does_not_dictate_the_federated_evaluation() -> None:
    """Evaluate replies' ``num-examples`` go through the weighting policy: one
    node of three claiming 1e12 does not set the federated metric alone."""
    evaluations = {0: MetricRecord({"num-examples": 10**12, "loss": 1000.0})}
    grid = crafted_grid({}, evaluations=evaluations)
    strategy = FedBuff(buffer_size=3, staleness_fn=Constant(), seed=0)
    result = strategy.start(grid, initial_arrays(), num_rounds=2, timeout=60.0)
    losses = [float(m["loss"]) for m in result.evaluate_metrics_clientapp.values()]  # type: ignore[arg-type]
    assert losses and max(losses) < 700.0, losses


def test_the_synchronous_evaluation_caps_an_inflated_claim() -> None:
    """``aggregate_evaluate`` applies the same policy to the replies' claims."""
    evaluations = {0: MetricRecord({"num-examples": 10**12, "loss": 1000.0})}
    grid = crafted_grid({}, evaluations=evaluations)
    strategy = FedBuff(seed=0)
    messages = strategy.configure_evaluate(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics is not None
    assert float(metrics["loss"]) == pytest.approx((40 * 1000 + 20) / 60)  # type: ignore[arg-type]


# ---------------------------------------------------------------- stale updates
def _tagged_reply(msg: Message, pid: int) -> Message:
    """The toy node's reply, its metrics naming its partition and base version."""
    reply = honest_reply(msg, pid)
    reply.content["metrics"] = MetricRecord(
        {
            "num-examples": examples_of(pid),
            "partition": pid,
            "trained-on": msg.content["config"][MODEL_VERSION_KEY],
        }
    )
    return reply


def test_a_stale_update_weighs_in_the_train_metrics_as_in_the_step() -> None:
    """The step weighs update i by its staleness weight times its examples
    (times its trust under trust weighting); the train metrics must too, or a
    node that delays its replies sways the reported metrics more than the
    step. The slow node's update (staleness 3, ``Polynomial`` weight 0.5, 30
    examples) must count 15 beside a fresh node's 10, not 30."""
    staleness = Polynomial()
    calls: list[list[tuple[int, int, float]]] = []  # staleness, partition, count

    def recorder(contents: list[RecordDict], key: str) -> MetricRecord:
        parent = len(calls)  # called once per version, in order
        seen = []
        for content in contents:
            record = content["metrics"]
            trained_on = int(record["trained-on"])  # type: ignore[arg-type]
            pid = int(record["partition"])  # type: ignore[arg-type]
            seen.append((parent - trained_on, pid, float(record[key])))  # type: ignore[arg-type]
        calls.append(seen)
        return aggregate_metrics(contents, key)

    grid = VirtualGrid(
        crafted_app({pid: _tagged_reply for pid in range(3)}),
        [DeviceProfile(speed=1.0), DeviceProfile(speed=1.0), DeviceProfile(speed=0.3)],
        work_fn=constant_work(1.0),
    )
    strategy = FedBuff(
        buffer_size=2,
        staleness_fn=staleness,
        fraction_evaluate=0.0,
        seed=0,
        train_metrics_aggr_fn=recorder,
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=6, timeout=60.0)
    assert len(calls) == len(result.versions)
    handed = [update for version in calls for update in version]
    assert (3, 2, 15.0) in handed, handed
    for stale, pid, count in handed:
        assert count == pytest.approx(examples_of(pid) * staleness(stale))


def _many_metrics(keys: int) -> Shape:
    def shape(msg: Message, pid: int) -> Message:
        reply = honest_reply(msg, pid)
        reply.content["metrics"] = MetricRecord(
            {"num-examples": 10, **{f"m{i}": 1.0 for i in range(keys)}}
        )
        return reply

    return shape


def test_the_synchronous_path_bounds_a_replys_metrics_as_the_async_one() -> None:
    """FedBuff.start caps each train reply's metrics (buffer.py keeps
    bounded_metrics: MAX_METRIC_KEYS keys, lists of MAX_METRIC_LIST values);
    sync.py hands the raw reply content to the metrics aggregation, so one
    node's 2,000 keys all land in the round's train metrics."""
    grid = crafted_grid({0: _many_metrics(2000)})
    strategy = FedBuff(seed=0)
    messages = strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert len(metrics) <= MAX_METRIC_KEYS


def _accuracy(acc: float, copies: int) -> Shape:
    """A reply reporting ``acc``; ``copies - 1`` extra MetricRecords repeat it."""

    def shape(msg: Message, pid: int) -> Message:
        reply = honest_reply(msg, pid)
        reply.content["metrics"] = MetricRecord({"num-examples": 10, "acc": acc})
        for i in range(copies - 1):
            reply.content[f"more{i}"] = MetricRecord({"acc": acc})
        return reply

    return shape


def test_extra_metricrecords_buy_no_say_with_flowers_own_aggregation() -> None:
    """Flower's own aggregate_metricrecords (FedAvg's default) reads the weight
    from the first MetricRecord and sums every MetricRecord's values (Flower's
    FedAvg only ever hands it replies with one MetricRecord). parse_update
    accepts extra records, so only the one holding the count may reach the
    aggregation: one node of three, reporting its acc in 10 MetricRecords,
    must not move the average above every value any node reported."""
    crafted = {0: _accuracy(1.0, 10), 1: _accuracy(0.0, 1), 2: _accuracy(0.0, 1)}
    grid = crafted_grid(crafted)
    strategy = FedBuff(seed=0, train_metrics_aggr_fn=aggregate_metricrecords)
    messages = strategy.configure_train(1, initial_arrays(), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(list(messages)))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert float(metrics["acc"]) <= 1.0  # type: ignore[arg-type]
