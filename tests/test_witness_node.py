"""Witnesses on nodes of their own: discovery, and anchoring from FedBuff
through witness nodes on the virtual grid (the same messages as a deployment).

Here the witness nodes also train (the toy app trains on every node); the app
keeps the roles apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.anchorblock import AnchorPolicy
from flchain_flwr.ledger.anchorcheck import check_anchored
from flchain_flwr.ledger.anchoring import Anchorer
from flchain_flwr.ledger.checkpoint import ledger_origin
from flchain_flwr.ledger.mainchain import MainChain
from flchain_flwr.ledger.notes import VerifierKey
from flchain_flwr.ledger.witness import CosignRequest, Witness, WitnessRefused
from flchain_flwr.sim import DeviceProfile, VirtualGrid
from flchain_flwr.strategies import Constant, FedBuff
from flchain_flwr.witness_node import RemoteWitness, discover_witnesses, serve_witness

from .toy import constant_work, initial_arrays, toy_client_app

LOG_KEY = SigningKey(b"\x0c" * 32)
CHAIN = "witnessed-run"


def grid_with_witnesses(tmp_path: Path) -> tuple[VirtualGrid, list[Witness]]:
    log = VerifierKey(ledger_origin(CHAIN), bytes(LOG_KEY.verify_key))
    witnesses = [
        Witness.init(tmp_path / f"w{i}", f"w{i}.example", logs=[log]) for i in range(3)
    ]
    app = toy_client_app({})
    serve_witness(app)
    configs: list[dict[str, int | float | str | bool]] = [
        {"partition-id": i, "num-partitions": 6} for i in range(6)
    ]
    for config, witness in zip(configs[3:], witnesses, strict=True):
        config.update({"role": "witness", "witness-dir": str(witness.folder)})
    grid = VirtualGrid(
        app,
        [DeviceProfile() for _ in configs],
        node_configs=configs,
        work_fn=constant_work(1.0),
    )
    return grid, witnesses


def test_fedbuff_anchors_through_witness_nodes(tmp_path: Path) -> None:
    grid, witnesses = grid_with_witnesses(tmp_path)
    keys = [w.key for w in witnesses]
    nodes = discover_witnesses(grid, keys, timeout=30)
    assert sorted(nodes) == sorted(k.encode() for k in keys)
    assert len(set(nodes.values())) == 3
    remote = [RemoteWitness(grid, nodes[k.encode()], k) for k in keys]
    main = MainChain.create(
        tmp_path / "main.db",
        chain_id="main",
        policy=AnchorPolicy(tuple(keys), 2),
        signing_key=SigningKey(b"\x09" * 32),
    )
    ledger = Ledger(tmp_path / "run.db", chain_id=CHAIN, signing_key=LOG_KEY)
    anchorer = Anchorer(main, remote, every_blocks=2)
    strategy = FedBuff(
        buffer_size=2, staleness_fn=Constant(), ledger=ledger, seed=0, anchor=anchorer
    )
    strategy.start(grid, initial_arrays(), num_rounds=4, timeout=60.0)
    sizes = [b.checkpoint.size for b in anchorer.anchored]
    assert not anchorer.failures and len(anchorer.anchored) >= 2, (sizes, len(ledger))
    report = check_anchored(ledger, main.path, main_key=main.public_key)
    assert report.ok, report
    for witness in witnesses:  # each node's own state holds the last anchor
        latest = Witness(witness.folder).latest(ledger.origin)
        assert latest is not None and latest.size == len(ledger)
    # A node's answer is checked against the key expected of it.
    impostor = RemoteWitness(grid, nodes[keys[0].encode()], keys[1])
    request = anchorer.anchored[-1]
    note = (
        str(request.note).split("\n\n")[0] + "\n\n" + request.note.signatures[0].line()
    )
    with pytest.raises(WitnessRefused, match="no valid cosignature") as refused:
        impostor.add_checkpoint(CosignRequest(len(ledger), note))
    assert refused.value.status == 502
    ledger.close()


def test_discovery_ignores_trainers_and_times_out_on_missing_keys(
    tmp_path: Path,
) -> None:
    grid, witnesses = grid_with_witnesses(tmp_path)
    stranger = Witness.init(tmp_path / "stranger", "stranger.example").key
    with pytest.raises(TimeoutError, match=r"stranger\.example"):
        discover_witnesses(grid, [witnesses[0].key, stranger], timeout=5)
