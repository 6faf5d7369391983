"""FedBuff with its old defaults set explicitly reproduces runs of the old code.

``data/fedbuff_golden.json`` holds fingerprints (versions, their times and
triggers, staleness, node ids, a SHA-256 of the final model, counts of
rejections and failures, federated evaluation metrics) of four virtual-grid runs
made with FedBuff as of commit bdd605d, before its core was split into an event
loop, a block pipeline and a scheduling policy. The split must not change them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import (
    AsyncResult,
    Claimed,
    Constant,
    FedBuff,
    Polynomial,
    ShuffleAll,
)

from .toy import constant_work, initial_arrays, toy_client_app

GOLDEN = json.loads(
    (Path(__file__).parent / "data" / "fedbuff_golden.json").read_text()
)

# FedBuff's defaults before the split, which have changed since.
OLD_DEFAULTS: dict[str, Any] = {
    "fraction_evaluate": 0.0,
    "min_evaluate_nodes": 1,
    "evaluate_every": 1,
    "max_staleness": None,
    "example_weighting": Claimed(),
    "scheduling": ShuffleAll(),
    "state_rule": "delta",
}


def fingerprint(result: AsyncResult) -> dict[str, Any]:
    digest = hashlib.sha256()
    for name, arr in result.arrays.items():
        a = arr.numpy()
        digest.update(name.encode())
        digest.update(str(a.dtype).encode())
        digest.update(str(a.shape).encode())
        digest.update(a.tobytes())
    return {
        "versions": [v.version for v in result.versions],
        "times": [round(v.time, 9) for v in result.versions],
        "triggers": [v.trigger for v in result.versions],
        "staleness": [
            [list(p) for p in sorted(v.staleness_histogram.items())]
            for v in result.versions
        ],
        "node_ids": [v.node_ids for v in result.versions],
        "model_sha256": digest.hexdigest(),
        "rejected": len(result.rejected),
        "failures": len(result.failures),
        "stop_reason": result.stop_reason,
        "eval": {str(k): dict(v) for k, v in result.evaluate_metrics_clientapp.items()},
    }


def scenario(
    name: str,
) -> tuple[list[DeviceProfile], dict[int, str], dict[str, Any], int, float]:
    if name == "k3":
        devices = [DeviceProfile(speed=s) for s in [1.0, 1.0, 0.5, 0.1]]
        return devices, {}, {"buffer_size": 3, "seed": 0}, 6, 1.0
    if name == "mix":
        speeds = [1, 1, 0.5, 0.5, 0.25, 0.25, 0.1, 0.1, 1, 0.5, 0.2, 0.05]
        devices = [DeviceProfile(speed=s, jitter=0.3) for s in speeds]
        kwargs = {
            "buffer_size": 4,
            "max_wait": 0.7,
            "server_lr": 0.5,
            "server_momentum": 0.9,
            "concurrency": 7,
            "max_staleness": 3,
            "fraction_evaluate": 0.5,
            "seed": 5,
            "staleness_fn": Polynomial(a=0.5),
        }
        return devices, {}, kwargs, 25, 0.3
    if name == "faults":
        devices = [
            DeviceProfile(speed=1.0, hang_probability=0.1),
            DeviceProfile(speed=0.7),
            DeviceProfile(speed=0.4, online=((0.0, 3.0), (6.0, 50.0))),
            DeviceProfile(speed=0.9),
            DeviceProfile(speed=0.3),
            DeviceProfile(speed=0.6),
        ]
        kwargs = {
            "buffer_size": 2,
            "seed": 2,
            "membership_refresh": 0.5,
            "retry_backoff": 1.0,
            "message_ttl": 8.0,
        }
        return devices, {3: "nan", 4: "raise"}, kwargs, 20, 1.0
    devices = [DeviceProfile(speed=s) for s in [1.0, 0.5, 0.3]]
    kwargs = {"buffer_size": 2, "seed": 1, "staleness_fn": Constant()}
    return devices, {0: "delta", 1: "delta"}, kwargs, 10, 1.0


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_old_defaults_reproduce_the_old_runs_bit_for_bit(name: str) -> None:
    devices, behaviours, kwargs, rounds, work = scenario(name)
    grid = VirtualGrid(
        toy_client_app(behaviours), devices, work_fn=constant_work(work), seed=7
    )
    strategy = FedBuff(**{**OLD_DEFAULTS, **kwargs})
    result = strategy.start(grid, initial_arrays(), num_rounds=rounds, timeout=60.0)
    expected = GOLDEN[name]
    got = json.loads(json.dumps(fingerprint(result)))
    for key in expected:
        assert got[key] == expected[key], key
