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
    assert isinstance(accuracy, float) and isinstance(initial, float)
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


def test_run_config_keys_set_fedbuffs_options() -> None:
    from flchain_flwr.strategies import (
        Claimed,
        MedianCapped,
        RandomSample,
        ShuffleAll,
        fedbuff_from_run_config,
    )

    strategy = fedbuff_from_run_config(
        {
            "example-weighting": "median:4",
            "scheduling": "shuffle",
            "state-rule": "keep",
            "fraction-evaluate": 0.25,
            "fraction-train": 0.5,
            "concurrency": 7,
            "max-staleness": "auto",
            "evaluate-every": 3,
        }
    )
    assert strategy.example_weighting == MedianCapped(4.0, 1000)
    assert isinstance(strategy.scheduling, ShuffleAll)
    assert strategy.state_rule == "keep"
    assert strategy.fraction_evaluate == 0.25
    assert strategy.fraction_train == 0.5
    assert strategy.concurrency == 7
    assert strategy.max_staleness == "auto"
    assert strategy.evaluate_every == 3

    other = fedbuff_from_run_config(
        {
            "example-weighting": "claimed",
            "scheduling": "random",
            "state-rule": "delta",
            "fraction-evaluate": 0,  # an int is a number too
            "concurrency": 0,  # <= 0: none (from fraction-train)
            "evaluate-every": -1,  # <= 0: once per FedAvg round's worth
        }
    )
    assert other.example_weighting == Claimed()
    assert isinstance(other.scheduling, RandomSample)
    assert other.state_rule == "delta"
    assert other.fraction_evaluate == 0.0
    assert other.concurrency is None
    assert other.evaluate_every is None


def test_max_staleness_key_keeps_its_int_meaning() -> None:
    from flchain_flwr.strategies import fedbuff_from_run_config

    assert fedbuff_from_run_config({"max-staleness": 50}).max_staleness == 50
    assert fedbuff_from_run_config({"max-staleness": 0}).max_staleness == 0
    assert fedbuff_from_run_config({"max-staleness": -1}).max_staleness is None
    assert fedbuff_from_run_config({"max-staleness": 8.0}).max_staleness == 8
    assert fedbuff_from_run_config({"max-staleness": "auto"}).max_staleness == "auto"
    assert fedbuff_from_run_config({}).max_staleness == "auto"  # FedBuff's default


def test_absent_keys_keep_fedbuffs_defaults_and_overrides_win() -> None:
    from flchain_flwr.strategies import FedBuff, fedbuff_from_run_config

    built, default = fedbuff_from_run_config({}), FedBuff()
    assert built.config_dict() == default.config_dict()
    assert built.fraction_evaluate == default.fraction_evaluate
    assert built.evaluate_every == default.evaluate_every
    overridden = fedbuff_from_run_config(
        {"state-rule": "keep", "concurrency": 3}, state_rule="delta"
    )
    assert overridden.state_rule == "delta" and overridden.concurrency == 3


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("example-weighting", "median:x", "bad example weighting"),
        ("example-weighting", "mean", "unknown example weighting"),
        ("example-weighting", "capped:0", "max_examples must be"),
        ("example-weighting", 4, "expected a string"),
        ("scheduling", "round-robin", "unknown scheduling policy"),
        ("scheduling", True, "expected a string"),
        ("state-rule", "avg", "unknown state rule"),
        ("state-rule", 1, "expected a string"),
        ("fraction-evaluate", 1.5, r"in \[0, 1\]"),
        ("fraction-evaluate", -0.1, r"in \[0, 1\]"),
        ("fraction-evaluate", "all", "a finite number"),
        ("fraction-evaluate", float("nan"), "a finite number"),
        ("fraction-train", 0.0, r"in \(0, 1\]"),
        ("fraction-train", 1.01, r"in \(0, 1\]"),
        ("fraction-train", True, "a finite number"),
        ("concurrency", 2.5, "an integer"),
        ("concurrency", "4", "an integer"),
        ("concurrency", False, "an integer"),
        ("max-staleness", "none", "'auto' or an integer"),
        ("max-staleness", "AUTO", "'auto' or an integer"),
        ("max-staleness", 2.5, "'auto' or an integer"),
        ("max-staleness", True, "'auto' or an integer"),
        ("evaluate-every", 1.5, "an integer"),
        ("evaluate-every", "10", "an integer"),
        ("buffer-size", 0, "an integer >= 1"),
        ("server-lr", 0.0, "> 0"),
        ("server-momentum", 1.0, r"in \[0, 1\)"),
        ("staleness", "linear", "unknown staleness function"),
        ("max-wait", float("nan"), "a number"),
        ("membership-refresh", 0, "> 0"),
        ("ledger-path", 1, "expected a string"),
    ],
)
def test_a_bad_run_config_value_names_its_key(
    key: str, value: int | float | str | bool, match: str
) -> None:
    from flchain_flwr.strategies import fedbuff_from_run_config

    with pytest.raises(ValueError, match=match) as raised:
        fedbuff_from_run_config({key: value})
    assert f"run config key {key!r}" in str(raised.value)
    assert repr(value) in str(raised.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [("personal-alpha", 1.5), ("dgc-momentum", 1.0), ("dgc-masking", "false")],
)
def test_the_app_refuses_a_bad_client_mod_key_before_the_run(
    key: str, value: int | float | str | bool
) -> None:
    """The nodes' mods read these keys; the ServerApp did not, so a bad one
    started the run, every node's mod raised on every message, and the run
    ended only at its timeout ('no usable reply for 3600s')."""
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app

    config = app_run_config(
        "apps/flchain_cnn",
        {"num-server-rounds": 2, "dgc-density": 0.01, key: value},
    )
    with pytest.raises(ValueError, match=f"run config key {key!r}"):
        run_federation(server_app, client_app, devices=tiered(4), run_config=config)


def test_the_apps_config_exposes_the_new_keys_at_the_library_defaults() -> None:
    from flchain_flwr.strategies import FedBuff, fedbuff_from_run_config

    config = app_run_config("apps/flchain_cnn")
    for key in (
        "example-weighting",
        "scheduling",
        "state-rule",
        "fraction-train",
        "fraction-evaluate",
        "concurrency",
        "evaluate-every",
        "max-staleness",
    ):
        assert key in config, key
    app, default = fedbuff_from_run_config(config), FedBuff()
    assert app.example_weighting == default.example_weighting
    assert repr(app.scheduling) == repr(default.scheduling)
    assert app.state_rule == default.state_rule
    assert app.fraction_train == default.fraction_train
    assert app.concurrency == default.concurrency
    assert app.evaluate_every == default.evaluate_every
    # deliberately not the library's: the app measures the server's test set
    # (as its FedAvg run does), and keeps the staleness limit its runs use
    assert app.fraction_evaluate == 0.0
    assert app.max_staleness == 50


def test_fedavg_refuses_the_keys_only_fedbuff_reads() -> None:
    from flchain_cnn.server_app import FEDBUFF_ONLY, strategy_name

    config = app_run_config("apps/flchain_cnn")
    assert strategy_name(config) == "fedbuff"
    assert strategy_name({**config, "strategy": "fedavg"}) == "fedavg"
    for key, value in (
        ("adaptive-lr", "fedsa"),
        ("adaptive-work", "bafl"),
        ("fairness", "inverse:4"),
        ("update-memory", "mifa"),
        ("buffer-tuning", "staleness:1.5"),
        ("downlink", True),
        ("ledger-path", "runs/l.db"),
        ("pov-verifiers", 7),
        ("server-momentum", 0.9),
        ("personal-alpha", 0.5),
    ):
        assert key in FEDBUFF_ONLY
        assert strategy_name({**config, key: value}) == "fedbuff"
        with pytest.raises(ValueError, match=f"does not read {key}; they are FedBuff"):
            strategy_name({**config, "strategy": "fedavg", key: value})
    with pytest.raises(ValueError, match="'strategy' is 'fedbuf'"):
        strategy_name({**config, "strategy": "fedbuf"})


def test_ledgers_from_the_run_config_are_durable_unless_told(tmp_path: Path) -> None:
    from flchain_flwr.ledger import Ledger
    from flchain_flwr.strategies import fedbuff_from_run_config

    def opened(**cfg: object) -> Ledger:
        ledger = fedbuff_from_run_config(
            {"ledger-path": str(tmp_path / "l.db"), **cfg}  # type: ignore[dict-item]
        ).ledger
        assert isinstance(ledger, Ledger)
        return ledger

    for cfg, durable in (({}, True), ({"ledger-durable": False}, False)):
        ledger = opened(**cfg)
        synchronous = ledger.db.execute("PRAGMA synchronous").fetchone()[0]
        assert ledger.blobs.durable is durable
        assert synchronous == (2 if durable else 1)  # FULL, NORMAL
        ledger.close()
    with pytest.raises(ValueError, match="ledger-durable"):
        opened(**{"ledger-durable": "yes"})


def test_the_apps_nodes_build_the_initial_model_so_first_models_go_as_deltas() -> None:
    import torch
    from flchain_cnn.client_app import app as client_app
    from flchain_cnn.server_app import app as server_app
    from flchain_cnn.task import initial_arrays

    config = app_run_config(
        "apps/flchain_cnn",
        {
            "num-server-rounds": 4,
            "downlink": True,
            "downlink-from-initial": True,
            "dgc-density": 0.01,
        },
    )
    rng = torch.random.get_rng_state()
    built = initial_arrays(config)
    assert torch.equal(rng, torch.random.get_rng_state())  # the node's RNG untouched
    assert built.count_bytes() == initial_arrays(config).count_bytes()
    run = run_federation(
        server_app, client_app, devices=tiered(6), run_config=config, seed=0
    )
    result = run.result
    assert isinstance(result, AsyncResult)
    assert result.failures == [] and len(result.versions) == 4
    first = result.downlink[0]  # messages on version 0, to nodes with no model
    assert first["offered"] == first["sent"] >= 6
    assert result.versions[0].bytes_down < 0.05 * 6 * built.count_bytes()
