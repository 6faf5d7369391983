"""Anchoring through witness SuperNodes from run config (``anchor-witness-nodes``),
on the virtual grid: the same discovery and messages as ``flwr run`` on a
deployment, where the app's ServerApp passes its grid."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchorblock import AnchorPolicy
from flchain_flwr.ledger.anchorcheck import check_anchored
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.witness import Witness
from flchain_flwr.strategies import Constant, fedbuff_from_run_config
from flchain_flwr.strategies.anchor import anchorer_from_run_config, witness_nodes
from flchain_flwr.witness_node import RemoteWitness

from .test_witness_node import CHAIN, LOG_KEY, grid_with_witnesses
from .toy import initial_arrays

MAIN_KEY = SigningKey(b"\x19" * 32)


def _setup(tmp_path: Path, quorum: int = 2):  # type: ignore[no-untyped-def]
    grid, witnesses = grid_with_witnesses(tmp_path)
    main = MainChain.create(
        tmp_path / "main.db",
        chain_id="main",
        policy=AnchorPolicy(tuple(w.key for w in witnesses), quorum),
        signing_key=MAIN_KEY,
    )
    main.close()
    key_file = tmp_path / "main.key"
    key_file.write_bytes(MAIN_KEY.encode().hex().encode())
    key_file.chmod(0o600)
    cfg: dict[str, int | float | str | bool] = {
        "ledger-path": str(tmp_path / "run.db"),
        "anchor-main": str(tmp_path / "main.db"),
        "anchor-key": str(key_file),
        "anchor-witness-nodes": 3,
        "anchor-every": 2,
        "anchor-discovery-timeout": 30.0,
    }
    return grid, witnesses, cfg


def test_a_run_anchors_through_the_witness_nodes_it_finds(tmp_path: Path) -> None:
    grid, witnesses, cfg = _setup(tmp_path)
    anchorer = anchorer_from_run_config(cfg, grid)
    assert anchorer is not None
    assert all(isinstance(w, RemoteWitness) for w in anchorer.witnesses)
    found = witness_nodes(anchorer)
    assert len(found) == 3 and found < set(grid.get_node_ids())
    ledger = Ledger(cfg["ledger-path"], chain_id=CHAIN, signing_key=LOG_KEY)
    strategy = fedbuff_from_run_config(
        {**cfg, "buffer-size": 2, "seed": 0},
        anchor=anchorer,
        ledger=ledger,
        staleness_fn=Constant(),
    )
    result = strategy.start(grid, initial_arrays(), num_rounds=4, timeout=60.0)
    # Witness nodes are reserved: the toy app would train on them otherwise.
    trained = {int(node) for node in result.history_dict()["participation"]}
    assert trained and not trained & found, (trained, found)
    assert not anchorer.failures and len(anchorer.anchored) >= 2
    report = check_anchored(
        ledger, anchorer.main.path, main_key=anchorer.main.public_key
    )
    assert report.ok, report
    for witness in witnesses:
        latest = Witness(witness.folder).latest(ledger.origin)
        assert latest is not None and latest.size == len(ledger)
    ledger.close()


def test_fewer_witness_nodes_than_the_policy_names_are_enough(tmp_path: Path) -> None:
    grid, _, cfg = _setup(tmp_path)
    anchorer = anchorer_from_run_config({**cfg, "anchor-witness-nodes": 2}, grid)
    assert anchorer is not None and len(witness_nodes(anchorer)) == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"anchor-witness-nodes": 1}, "quorum of 2"),
        ({"anchor-witness-nodes": 4}, "policy has 3 witnesses"),
        ({"anchor-witness-nodes": "3"}, "'anchor-witness-nodes': expected an integer"),
        ({"anchor-witnesses": "/somewhere"}, "not both"),
        ({"anchor-witness-nodes": 0}, "anchor-witnesses .folders. or"),
        ({"anchor-discovery-timeout": 0.0}, "'anchor-discovery-timeout': expected"),
    ],
)
def test_bad_witness_node_keys_are_named(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    grid, _, cfg = _setup(tmp_path)
    with pytest.raises(ValueError, match=message):
        anchorer_from_run_config({**cfg, **change}, grid)  # type: ignore[dict-item]


def test_witness_nodes_need_the_grid(tmp_path: Path) -> None:
    _, _, cfg = _setup(tmp_path)
    with pytest.raises(ValueError, match="needs the ServerApp's grid"):
        fedbuff_from_run_config(cfg)


def test_a_missing_witness_node_times_out(tmp_path: Path) -> None:
    grid, _, cfg = _setup(tmp_path)
    stranger = Witness.init(tmp_path / "stranger", "stranger.example").key
    main = MainChain.create(
        tmp_path / "main2.db",
        chain_id="main2",
        policy=AnchorPolicy((stranger,), 1),
        signing_key=MAIN_KEY,
    )
    main.close()
    cfg = {**cfg, "anchor-main": str(main.path), "anchor-witness-nodes": 1}
    with pytest.raises(TimeoutError, match=r"stranger\.example"):
        anchorer_from_run_config({**cfg, "anchor-discovery-timeout": 5.0}, grid)
