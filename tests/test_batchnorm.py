"""BatchNorm end to end: a real PyTorch ClientApp under stale FedBuff updates (#11).

A small CNN with BatchNorm2d and BatchNorm1d on scikit-learn's digits, split
label-skewed (Dirichlet alpha = 0.3) over six nodes of speeds 1, 1, 0.5, 0.5,
0.2 and 0.1, and FedBuff with K = 3, so that most updates are stale. Each node
loads the global ``state_dict``, trains one epoch of momentum SGD on its part
and replies with its full ``state_dict`` (running statistics and the 0-dim
``num_batches_tracked`` counters included), as a new user's ClientApp would.

Under the old rule (stale deltas applied to the running statistics, now
``state_rule="delta"``) this setup drives a ``running_var`` negative and the
global model's loss to NaN; under the default ``"average"`` it trains.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from flchain_flwr.data import dirichlet_partition, load_digits_split
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import AsyncResult, FedBuff
from flchain_flwr.strategies.state import StateRule
from flchain_flwr.training import evaluate, train

from .toy import constant_work

SPEEDS = (1.0, 1.0, 0.5, 0.5, 0.2, 0.1)
BUFFER_SIZE = 3
VERSIONS = 30
ALPHA = 0.3
EVALUATE_EVERY = 10
"""Federated evaluation every 10 versions, not FedBuff's default (once per FedAvg
round's worth of updates, here every 2 versions): at that rate the two slowest
nodes, whose evaluation takes 5 and 10 s, would find a newer evaluation waiting
each time they come back and train only once in the whole run."""
COUNTERS = ("1.num_batches_tracked", "6.num_batches_tracked")
RUNNING_VARS = ("1.running_var", "6.running_var")


@pytest.fixture(autouse=True)
def quiet() -> None:
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.ERROR)


def bn_net() -> nn.Sequential:
    """Conv + BatchNorm2d, then dense + BatchNorm1d: 2 x 3 state arrays."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),  # 0
        nn.BatchNorm2d(8),  # 1
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),  # 5
        nn.BatchNorm1d(32),  # 6
        nn.ReLU(),
        nn.Linear(32, 10),
    )


@cache
def partitions() -> tuple[np.ndarray, ...]:
    _, y_train, _, _ = load_digits_split()
    return tuple(dirichlet_partition(y_train, len(SPEEDS), ALPHA, seed=0))


def local_data(context: Context) -> tuple[np.ndarray, np.ndarray]:
    x_train, y_train, _, _ = load_digits_split()
    idx = partitions()[int(context.node_config["partition-id"])]
    return x_train[idx], y_train[idx]


def received_net(msg: Message) -> nn.Sequential:
    net = bn_net()
    net.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    return net


def bn_client_app(counter_shapes: list[tuple[int, ...]]) -> ClientApp:
    """A plain ClientApp; ``counter_shapes`` collects the received counters' shapes."""
    app = ClientApp()

    @app.train()
    def train_fn(msg: Message, context: Context) -> Message:
        for name in COUNTERS:
            counter_shapes.append(
                tuple(msg.content.array_records["arrays"][name].shape)
            )
        x, y = local_data(context)
        net = received_net(msg)
        server_round = msg.content.config_records["config"]["server-round"]
        assert isinstance(server_round, int)
        partition = int(context.node_config["partition-id"])
        loss = train(
            net,
            x,
            y,
            epochs=1,
            lr=0.05,
            batch_size=32,
            seed=zlib.crc32(f"{partition}/{server_round}".encode()),
            momentum=0.9,
        )
        metrics = MetricRecord({"train-loss": loss, "num-examples": len(y)})
        content = RecordDict(
            {"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_fn(msg: Message, context: Context) -> Message:
        x, y = local_data(context)
        loss, accuracy = evaluate(received_net(msg), x, y)
        metrics = MetricRecord(
            {"eval-loss": loss, "eval-acc": accuracy, "num-examples": len(y)}
        )
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def number(record: MetricRecord, key: str) -> float:
    value = record[key]
    assert isinstance(value, int | float), (key, value)
    return float(value)


@dataclass(frozen=True)
class Seen:
    """What the server's ``evaluate_fn`` saw of one version."""

    min_running_var: float
    counter_shapes: tuple[tuple[int, ...], ...]
    counter_dtypes: tuple[str, ...]
    loss: float
    accuracy: float


@dataclass(frozen=True)
class BNRun:
    result: AsyncResult
    seen: dict[int, Seen]
    counter_shapes: list[tuple[int, ...]]  # as received by the nodes


@cache
def run_bn(rule: StateRule) -> BNRun:
    """The federation under ``rule`` (cached: one run per rule per session)."""
    _, _, x_test, y_test = load_digits_split()
    seen: dict[int, Seen] = {}

    def central_evaluate(version: int, arrays: ArrayRecord) -> MetricRecord:
        values = {name: arrays[name].numpy() for name in RUNNING_VARS}
        net = bn_net()
        net.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(net, x_test, y_test)
        seen[version] = Seen(
            min_running_var=min(float(v.min()) for v in values.values()),
            counter_shapes=tuple(tuple(arrays[name].shape) for name in COUNTERS),
            counter_dtypes=tuple(arrays[name].dtype for name in COUNTERS),
            loss=loss,
            accuracy=accuracy,
        )
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    counter_shapes: list[tuple[int, ...]] = []
    grid = VirtualGrid(
        bn_client_app(counter_shapes),
        [DeviceProfile(speed=s) for s in SPEEDS],
        work_fn=constant_work(1.0),
        seed=0,
    )
    strategy = FedBuff(
        buffer_size=BUFFER_SIZE,
        state_rule=rule,
        evaluate_every=EVALUATE_EVERY,
        seed=0,
    )
    result = strategy.start(
        grid,
        ArrayRecord(bn_net().state_dict()),
        num_rounds=VERSIONS,
        evaluate_fn=central_evaluate,
    )
    return BNRun(result, seen, counter_shapes)


def test_the_federation_really_is_label_skewed_and_stale() -> None:
    _, y_train, _, _ = load_digits_split()
    for part in partitions():
        counts = np.bincount(y_train[part], minlength=10)
        assert counts.max() > 0.3 * counts.sum()  # one label dominates each node
    result = run_bn("average").result
    staleness = [s for v in result.versions for s in v.staleness_histogram]
    assert max(staleness) >= 4
    fresh = sum(v.staleness_histogram.get(0, 0) for v in result.versions)
    assert fresh < BUFFER_SIZE * VERSIONS / 2  # most updates are stale
    # every node contributes more than once, the slowest (10x) included
    assert len(result.participation) == len(SPEEDS)
    assert min(result.participation.values()) >= 2


def test_batchnorm_cnn_trains_under_stale_updates_with_the_average_rule() -> None:
    run = run_bn("average")
    result = run.result
    assert result.stop_reason == "completed"
    assert len(result.versions) == VERSIONS
    # every reply accepted: no shape (or any other) rejection, no failure
    assert result.rejected == []
    assert result.failures == []
    # num_batches_tracked stays 0-dim: in every version, every train message,
    # and the final model
    assert sorted(run.seen) == list(range(VERSIONS + 1))
    for version, seen in run.seen.items():
        assert seen.counter_shapes == ((), ()), version
        assert seen.counter_dtypes == ("int64", "int64"), version
    assert run.counter_shapes and set(run.counter_shapes) == {()}
    for name in COUNTERS:
        assert tuple(result.arrays[name].shape) == ()
        assert result.arrays[name].numpy().shape == ()
        assert int(result.arrays[name].numpy()) > 0  # the counters counted
    # running variances stay positive in every version
    minima = [run.seen[v].min_running_var for v in range(VERSIONS + 1)]
    assert all(m > 0 for m in minima), minima
    # central evaluation: finite losses, accuracy far above chance (0.1)
    central = result.evaluate_metrics_serverapp
    assert all(math.isfinite(number(m, "loss")) for m in central.values())
    final_accuracy = number(central[VERSIONS], "accuracy")
    assert final_accuracy > 0.8, final_accuracy
    # federated evaluation: every EVALUATE_EVERY versions, every reply finite
    # (a NaN reply would be dropped, leaving a gap)
    federated = result.evaluate_metrics_clientapp
    assert sorted(federated) == list(
        range(EVALUATE_EVERY, VERSIONS + 1, EVALUATE_EVERY)
    )
    assert all(math.isfinite(number(m, "eval-loss")) for m in federated.values())
    assert number(federated[VERSIONS], "eval-acc") > 0.8


def test_the_old_delta_rule_drives_running_var_negative_on_the_same_run() -> None:
    """Regression demonstration: the same seed and data under the old rule."""
    run = run_bn("delta")
    result = run.result
    assert result.rejected == []  # no train update is refused: nothing catches it
    negative = [v for v, s in sorted(run.seen.items()) if s.min_running_var < 0]
    assert negative, [s.min_running_var for s in run.seen.values()]
    # a negative variance makes BatchNorm's sqrt NaN: the central loss is NaN
    # and the accuracy is chance
    for version in negative:
        assert math.isnan(run.seen[version].loss), version
        assert run.seen[version].accuracy < 0.2, version
    # the nodes' evaluations of those versions are NaN too, and are dropped,
    # each recorded as its node's failure (the only failures of the run)
    federated = result.evaluate_metrics_clientapp
    due = range(EVALUATE_EVERY, VERSIONS + 1, EVALUATE_EVERY)
    assert any(v in negative and v not in federated for v in due)
    assert result.failures
    assert all(
        f.version in negative and f.reason.startswith("evaluate reply rejected")
        for f in result.failures
    )
    # the first version has no stale update: both rules agree there
    first = run_bn("average").seen[1].min_running_var
    assert run.seen[1].min_running_var == pytest.approx(first, rel=1e-6)
