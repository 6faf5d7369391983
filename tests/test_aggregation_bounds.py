"""What one node can do to an aggregate with replies that each pass validation.

An inflated example claim, capped in the step, must not set the reported train
or federated-evaluation metrics either; Flower's synchronous path must never
hand its loop a non-finite model; and ``aggregate_train`` called on its own must
not allocate from a forged array's layout. (From the adversarial audit.)
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

from flchain_flwr.protocol import UPDATE_INFO_KEY, UPDATE_KIND_DELTA, UPDATE_KIND_KEY
from flchain_flwr.strategies import Constant, FedBuff

from .crafted import Shape, crafted_grid, honest_reply
from .toy import initial_arrays


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
