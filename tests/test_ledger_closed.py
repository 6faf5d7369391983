"""The ledger a run config opens is closed when the run ends, also on error."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from flwr.common.logger import FLOWER_LOGGER

from flchain_flwr.ledger import Ledger
from flchain_flwr.sim import app_run_config, run_federation, tiered
from flchain_flwr.strategies import FedBuff, closing_ledger, fedbuff_from_run_config
from flchain_flwr.strategies import config as config_module

FLOWER_LOGGER.setLevel(logging.WARNING)


def _is_open(ledger: Ledger) -> bool:
    try:
        ledger.db.execute("SELECT 1")
    except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
        return False
    return True


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Ledger]:
    """Every Ledger that fedbuff_from_run_config opens, in order."""
    made: list[Ledger] = []

    class Recorded(Ledger):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(config_module, "Ledger", Recorded)
    return made


def test_closing_ledger_closes_it_on_error(tmp_path: Path) -> None:
    strategy = fedbuff_from_run_config({"ledger-path": str(tmp_path / "l.db")})
    assert isinstance(strategy.ledger, Ledger) and _is_open(strategy.ledger)
    with pytest.raises(RuntimeError), closing_ledger(strategy):
        raise RuntimeError("the run failed")
    assert not _is_open(strategy.ledger)


def test_a_refused_config_closes_the_ledger_it_opened(
    tmp_path: Path, opened: list[Ledger]
) -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        fedbuff_from_run_config({"ledger-path": str(tmp_path / "l.db")}, buffer_size=0)
    assert len(opened) == 1 and not _is_open(opened[0])


def _app_run(tmp_path: Path) -> None:
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app

    config = app_run_config(
        "apps/flchain_cnn",
        {"num-server-rounds": 2, "ledger-path": str(tmp_path / "ledger.db")},
    )
    run_federation(server_app, client_app, devices=tiered(4), run_config=config)


def test_the_apps_serverapp_closes_its_ledger(
    tmp_path: Path, opened: list[Ledger]
) -> None:
    _app_run(tmp_path)
    assert len(opened) == 1 and not _is_open(opened[0])
    with Ledger(tmp_path / "ledger.db", create=False) as ledger:
        assert len(ledger) == 3 and ledger.verify().ok  # genesis + 2 versions


def test_the_apps_serverapp_closes_its_ledger_when_the_run_fails(
    tmp_path: Path, opened: list[Ledger], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: FedBuff, **kwargs: object) -> None:
        assert self.ledger is opened[0] and _is_open(opened[0])
        raise RuntimeError("the run failed")

    monkeypatch.setattr(FedBuff, "start", fail)
    with pytest.raises(RuntimeError, match="the run failed"):
        _app_run(tmp_path)
    assert len(opened) == 1 and not _is_open(opened[0])
