import math

import numpy as np
import pytest
import torch
from flwr.app import MetricRecord, RecordDict

from flchain_flwr.arrays import NDArrays, apply_step, to_arrayrecord, to_ndarrays
from flchain_flwr.strategies.staleness import FedBuffStaleness
from flchain_flwr.strategies.state import (
    STATE_RULES,
    StateRule,
    aggregate_state,
    average_reported,
    state_names,
    state_rule,
)
from flchain_flwr.strategies.updates import parse_update, weighted_delta


def bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with torch.no_grad():  # identity layer: BN sees the data's own variance
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    return model


def as_numpy(model: torch.nn.Module) -> NDArrays:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def load(model: torch.nn.Module, arrays: NDArrays) -> None:
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})


def train_on(global_model: NDArrays, scale: float, seed: int) -> RecordDict:
    """A client: load the global model, run 50 training batches, reply weights."""
    model = bn_model()
    load(model, to_ndarrays(to_arrayrecord(global_model)))  # as sent: 0-dim kept
    model.train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(50):
            model(scale * torch.randn(32, 4, generator=gen))
    return RecordDict(
        {
            "arrays": to_arrayrecord(as_numpy(model)),
            "metrics": MetricRecord({"num-examples": 1600}),
        }
    )


def fedbuff_k1(rule: StateRule) -> list[float]:
    """FedBuff with K = 1: two clients train on version 0; the second is stale.

    Returns the smallest ``running_var`` entry of versions 0, 1 and 2.
    """
    v0 = as_numpy(bn_model())
    names = state_names(v0)
    replies = [train_on(v0, scale=0.3, seed=1), train_on(v0, scale=0.3, seed=2)]
    model, history = v0, [v0["1.running_var"].min()]
    for staleness, content in enumerate(replies):
        update = parse_update(content, v0)  # both trained on version 0
        n, w = update.num_examples, FedBuffStaleness()(staleness)
        new = apply_step(model, weighted_delta([update.delta], [n], [w]), 1.0)
        new.update(aggregate_state(model, names, [v0], [update.delta], [n * w], rule))
        model = new
        history.append(model["1.running_var"].min())
    return [float(v) for v in history]


def test_running_var_stays_positive_under_stale_updates_with_average() -> None:
    first, after_one, after_two = fedbuff_k1("average")
    assert first == 1.0
    assert 0.05 < after_one < 0.2  # the clients measured about 0.3**2
    assert 0.05 < after_two < 0.2


def test_running_var_goes_negative_with_the_old_delta_rule() -> None:
    first, after_one, after_two = fedbuff_k1("delta")
    assert first == 1.0 and 0.05 < after_one < 0.2
    assert after_two < 0  # 0.09 - (1 - 0.09) / sqrt(2)


def test_a_negative_running_var_makes_the_model_output_nan() -> None:
    for rule, expect_nan in (("delta", True), ("average", False)):
        v0 = as_numpy(bn_model())
        names = state_names(v0)
        model = v0
        for staleness, seed in enumerate((1, 2)):
            update = parse_update(train_on(v0, 0.3, seed), v0)
            w = FedBuffStaleness()(staleness)
            new = apply_step(model, weighted_delta([update.delta], [1.0], [w]), 1.0)
            new.update(aggregate_state(model, names, [v0], [update.delta], [w], rule))
            model = new
        net = bn_model()
        load(net, model)
        net.eval()
        out = net(torch.ones(2, 4))
        assert bool(torch.isnan(out).any()) == expect_nan, rule


def test_state_names_of_a_pytorch_model() -> None:
    arrays = as_numpy(bn_model())
    assert state_names(arrays) == {
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }
    assert arrays["1.num_batches_tracked"].shape == ()
    assert state_names(arrays, patterns=["0.b*"]) >= {"0.bias"}
    assert state_names({"mask": np.ones(3, bool), "w": np.ones(3)}) == {"mask"}


def test_the_average_stays_in_the_hull_of_what_was_reported() -> None:
    reported = [
        np.array([0.1, 2.0], np.float32),
        np.array([0.3, 4.0], np.float32),
    ]
    got = average_reported(reported, [3.0, 1.0])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [0.15, 2.5], rtol=1e-6)
    same = [np.full(3, 0.1, np.float32)] * 7  # rounding cannot leave [min, max]
    assert (average_reported(same, [0.1] * 7) == np.float32(0.1)).all()


def test_integer_counters_take_the_rounded_weighted_average() -> None:
    counts = [np.array(10, np.int64), np.array(21, np.int64)]
    got = average_reported(counts, [1.0, 1.0])
    assert got.shape == () and got.dtype == np.int64
    assert int(got) == 16  # rint(15.5) = 16
    top = np.iinfo(np.int64).max
    extreme = [np.array([top], np.int64)] * 3  # float64 rounds it to 2**63
    assert average_reported(extreme, [1.0, 2.0, 3.0]).tolist() == [top]
    flags = [np.array([True, False]), np.array([False, False])]
    assert average_reported(flags, [3.0, 1.0]).tolist() == [True, False]


def test_reported_values_use_each_updates_own_base() -> None:
    current = {"rv": np.array([9.0], np.float32), "w": np.array([0.0], np.float32)}
    bases = [{"rv": np.array([1.0], np.float32)}, {"rv": np.array([5.0], np.float32)}]
    deltas = [{"rv": np.array([1.0])}, {"rv": np.array([-1.0])}]  # reported 2 and 4
    got = aggregate_state(current, {"rv"}, bases, deltas, [1.0, 1.0])
    assert list(got) == ["rv"]
    assert got["rv"].tolist() == [3.0]
    keep = aggregate_state(current, {"rv"}, bases, deltas, [1.0, 1.0], "keep")
    assert keep["rv"].tolist() == [9.0]
    assert aggregate_state(current, {"rv"}, bases, deltas, [1.0, 1.0], "delta") == {}


def test_rules_and_weights_are_checked() -> None:
    assert STATE_RULES == ("average", "delta", "keep")
    assert state_rule("keep") == "keep"
    with pytest.raises(ValueError, match="unknown state rule 'fedbn'"):
        state_rule("fedbn")
    with pytest.raises(ValueError, match="sum to a finite total"):
        average_reported([np.zeros(1)], [0.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        average_reported([np.zeros(1)], [math.inf])
