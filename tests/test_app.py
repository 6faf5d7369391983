"""The digits app: a real ServerApp + ClientApp federation, in simulated time."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from flchain_flwr.sim import app_run_config, run_federation, tiered
from flchain_flwr.strategies import AsyncResult

pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def quiet() -> None:
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)


def test_app_learns_non_iid_digits_in_the_virtual_clock_simulator(
    tmp_path: Path,
) -> None:
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app

    results = tmp_path / "history.json"
    config = app_run_config(
        "apps/flchain_cnn", {"num-server-rounds": 40, "results-path": str(results)}
    )
    run = run_federation(
        server_app, client_app, devices=tiered(20), run_config=config, seed=0
    )
    result = run.result
    assert isinstance(result, AsyncResult)
    assert len(result.versions) == 40
    accuracy = result.evaluate_metrics_serverapp[40]["accuracy"]
    initial = result.evaluate_metrics_serverapp[0]["accuracy"]
    assert initial < 0.2  # an untrained model guesses
    assert accuracy > 0.85, f"accuracy after 40 versions: {accuracy}"
    # every speed tier (1x, 4x, 10x slower) contributes, not just the fast one
    tiers = {round(1 / run.grid.devices[n].speed) for n in result.participation}
    assert tiers == {1, 4, 10}
    saved = json.loads(results.read_text())
    assert len(saved["versions"]) == 40


def test_app_run_config_rejects_unknown_keys() -> None:
    with pytest.raises(KeyError, match="num-rounds"):
        app_run_config("apps/flchain_cnn", {"num-rounds": 3})
    with pytest.raises(FileNotFoundError):
        app_run_config("apps/missing")


def test_app_config_builds_the_strategy_and_records_a_ledger(tmp_path: Path) -> None:
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app

    from flchain_flwr.ledger import Ledger
    from flchain_flwr.strategies import fedbuff_from_run_config

    strategy = fedbuff_from_run_config(
        {"buffer-size": 3, "max-wait": 0.0, "staleness": "hinge", "max-staleness": -1}
    )
    assert strategy.buffer_size == 3 and strategy.max_wait is None
    assert strategy.max_staleness is None and "Hinge" in repr(strategy.staleness_fn)

    ledger_path = tmp_path / "ledger.db"
    config = app_run_config(
        "apps/flchain_cnn", {"num-server-rounds": 3, "ledger-path": str(ledger_path)}
    )
    run_federation(server_app, client_app, devices=tiered(6), run_config=config)
    run_federation(
        server_app,
        client_app,
        devices=tiered(6),
        run_config={**config, "num-server-rounds": 5},
    )  # resumes
    with Ledger(ledger_path, create=False) as ledger:
        assert ledger.verify().ok
        assert [b.header["model_version"] for b in ledger.blocks()] == [
            0,
            1,
            2,
            3,
            4,
            5,
        ]
