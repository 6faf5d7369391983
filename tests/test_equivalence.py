"""With K = all nodes, tau = infinity and constant staleness, FedBuff is FedAvg."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from flchain_flwr.sim import (
    DeviceProfile,
    VirtualGrid,
    app_run_config,
    simulate,
    tiered,
)
from flchain_flwr.strategies import Constant, FedBuff

from .toy import initial_arrays, toy_client_app


def fedavg() -> FedAvg:
    return FedAvg(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1)


def fedbuff_as_sync(num_nodes: int) -> FedBuff:
    return FedBuff(
        fraction_evaluate=0.0,
        buffer_size=num_nodes,
        max_wait=None,
        staleness_fn=Constant(),
        server_lr=1.0,
        seed=0,
    )


def assert_same_arrays(a: ArrayRecord, b: ArrayRecord, atol: float) -> None:
    assert list(a.keys()) == list(b.keys())
    for name in a:
        np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=atol, rtol=0)


def test_toy_app_matches_fedavg() -> None:
    devices = [DeviceProfile(speed=s) for s in (1.0, 0.5, 0.2, 0.1)]
    ours = simulate(
        fedbuff_as_sync(4),
        VirtualGrid(toy_client_app(), devices),
        initial_arrays(),
        num_rounds=5,
    )
    theirs = simulate(
        fedavg(), VirtualGrid(toy_client_app(), devices), initial_arrays(), num_rounds=5
    )
    assert_same_arrays(ours.result.arrays, theirs.result.arrays, atol=1e-6)
    # same simulated time too: each version waits for the slowest node
    assert ours.simulated_seconds == pytest.approx(theirs.simulated_seconds)


def test_digits_app_matches_fedavg_on_the_same_seed_and_data() -> None:
    """One FedBuff version equals one FedAvg round from every point of a run.

    Real training amplifies float rounding (FedAvg sums float32 weights, FedBuff
    float64 deltas): measured here, the two runs differ by 3e-8 after one round,
    6e-8 after two and 1e-4 after three. So the comparison is made in lockstep:
    from each model of a 4-round FedAvg trajectory, one more FedAvg round and one
    FedBuff version must agree to float32 rounding.
    """
    pytest.importorskip("torch")
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.task import new_model
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)
    config = app_run_config("apps/flchain_cnn", {"local-epochs": 1})

    def grid() -> VirtualGrid:
        return VirtualGrid(client_app, tiered(6), run_config=config, seed=7)

    trajectory: list[ArrayRecord] = []
    simulate(
        fedavg(),
        grid(),
        ArrayRecord(new_model("digits", 1).state_dict()),
        num_rounds=3,
        evaluate_fn=lambda _r, arrays: trajectory.append(arrays),
    )  # type: ignore[arg-type,func-returns-value]
    assert len(trajectory) == 4  # initial model + 3 rounds
    for start in trajectory:
        ours = simulate(fedbuff_as_sync(6), grid(), start, num_rounds=1)
        theirs = simulate(fedavg(), grid(), start, num_rounds=1)
        assert_same_arrays(ours.result.arrays, theirs.result.arrays, atol=1e-6)
        # and training did move the model
        assert not np.allclose(
            ours.result.arrays["classifier.3.weight"].numpy(),
            start["classifier.3.weight"].numpy(),
        )
