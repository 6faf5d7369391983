"""review12: a server holding no key at all makes honest verifier nodes sign
the header of a block that ``verify`` rejects (its committee is not the draw
for its previous hash and view, its leader never signed it). The members
check only that they are in the block's ``committee``; once more than
``n - quorum(n)`` of them signed it they are locked at that (height, view):
no other header there, no view change there, nothing at an earlier view. The
block itself can never be written, so an honest server, restarted with every
record it has, stops at that height for good."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from flchain_flwr.ledger import Block, Ledger, VoteContext
from flchain_flwr.ledger.canonical import BODY_TAG, HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.pov import Committee, Threshold, discovery, queries
from flchain_flwr.pov.members import header_request
from flchain_flwr.pov.views import lead_statement
from flchain_flwr.sim import VirtualGrid, simulate

from .test_pov_chain import _remote_fedbuff, _verifier_grid
from .toy import initial_arrays

HEIGHT = 2


def _ask(
    grid: VirtualGrid, nodes: dict[str, int], cfg: dict[str, ConfigRecord]
) -> dict[str, Message]:
    """One ``query.pov_sign`` message per member (its own request); replies by key."""
    by_node = {node: key for key, node in nodes.items()}
    replies = grid.send_and_receive(
        [
            Message(RecordDict({"pov": cfg[key]}), node, queries.SIGN, ttl=60)
            for key, node in nodes.items()
        ],
        timeout=60,
    )
    return {by_node[r.metadata.src_node_id]: r for r in replies}


def _forged_block(ledger: Ledger, committee: list[str]) -> Block:
    """An empty view-0 block at ``HEIGHT`` whose committee is ``committee``
    (the view-1 draw) and whose leader never signed it."""
    head = ledger.head()
    assert head is not None
    body = {
        "view": 0,
        "committee": committee,
        "included": [],
        "rejected": [],
        "votes": [],
        "contributions": [],
        "deposits": [],
    }
    body_bytes = encode(2, body)
    header = {
        "format": "flchain-block/2",
        "chain_id": ledger.chain_id,
        "height": HEIGHT,
        "prev_hash": head.hash,
        "sim_time": 0.0,
        "model_version": 2,
        "base_version": 1,
        "config_digest": head.header["config_digest"],
        "model_hash": head.header["model_hash"],
        "updates_root": merkle_root([]),
        "body_hash": sha256_hex(BODY_TAG, body_bytes),
        "leader": committee[0],
    }
    header_bytes = encode(2, header)
    return Block(
        HEIGHT,
        sha256_hex(HEADER_TAG, header_bytes),
        header_bytes,
        body_bytes,
        "",
        header,
        body,
    )


def _forge(tmp_path: Path, path: Path) -> tuple[Block, dict[str, Message], str | None]:
    """Height 1 written honestly; then the server (no key) asks each verifier
    node to take the position at height 2 (a lead statement naming itself)
    and to sign the forged block's header. The members' replies, and what
    ``verify``'s own PoV check says of the block."""
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3])
    simulate(_remote_fedbuff(grid, path, None), grid, initial_arrays(), num_rounds=1)
    nodes = discovery.discover_verifiers(grid, expected=4, timeout=30)
    check = Committee(
        (), remote_members=tuple(sorted(nodes)), threshold=Threshold(value=0.0)
    )
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == HEIGHT
        check.resume(ledger, server_lr=0.3)  # _remote_fedbuff's
        head = ledger.head()
        assert head is not None
        block = _forged_block(ledger, check.state.committee(head.hash, 1))
        position = VoteContext(
            ledger.chain_id, HEIGHT, head.hash, head.header["model_hash"], "", 0
        )
    leads = {
        key: ConfigRecord({"message": lead_statement(position, key)}) for key in nodes
    }
    assert all(not r.has_error() for r in _ask(grid, nodes, leads).values())
    signed = _ask(grid, nodes, {key: header_request(block, 0) for key in nodes})
    problem = check.state.check_block(str(head.hash), block.header, block.body)
    return block, signed, problem


@pytest.mark.xfail(
    strict=True,
    reason="review12 #2: members sign a header whose committee is not the draw "
    "(and which its leader never signed); verify rejects that block",
)
def test_members_refuse_a_header_whose_committee_is_not_the_draw(
    tmp_path: Path,
) -> None:
    _, signed, problem = _forge(tmp_path, tmp_path / "remote.db")
    assert problem is not None and "committee is not the one drawn" in problem
    assert all(reply.has_error() for reply in signed.values()), [
        key[:8] for key, reply in signed.items() if not reply.has_error()
    ]


@pytest.mark.xfail(
    strict=True,
    reason="review12 #2: once members signed that block, an honest server "
    "stops at its height on every restart",
)
def test_an_honest_restart_after_the_forged_header_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "remote.db"
    _forge(tmp_path, path)
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3])
    simulate(_remote_fedbuff(grid, path, None), grid, initial_arrays(), num_rounds=4)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 5 and ledger.verify().ok
