"""review12: a member node signs, at view 1, a header whose body says
``"view": true``: its check ``body.get("view", 0) != view`` takes ``True``
for 1, ``verify`` (``check_signed_block``) does not ("view must be an integer
>= 0"). The member is then locked at (height, 1) on a block that can never be
written. The server needs no key (it asks for the member's own view change
at view 0 to fill the certificate)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import RecordDict

from flchain_flwr.ledger import Block
from flchain_flwr.ledger.canonical import BODY_TAG, HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.quorum import check_signed_block
from flchain_flwr.ledger.statements import view_change_statement
from flchain_flwr.pov import queries
from flchain_flwr.pov.members import header_request

from .test_lockstate import _me, _node, _node_config, _sign, _vote
from .test_pov import CHAIN
from .test_pov_requests import PREV


@pytest.mark.xfail(
    strict=True,
    reason="review12 #2b: a body view of true passes the member's view check "
    "(True == 1) and fails verify",
)
def test_a_member_refuses_a_header_whose_body_view_is_a_boolean(
    tmp_path: Path,
) -> None:
    ask = _node(_node_config(tmp_path), run_id=1)
    me = _me(tmp_path)
    ask(queries.VOTE, _vote(5))  # its position: height 5 after PREV
    change = view_change_statement(CHAIN, 5, 0, PREV)
    reply = ask(queries.SIGN, _sign(change, "view-change"))
    signature = reply.content.config_records["pov"]["signature"]
    assert isinstance(signature, bytes)
    body = {
        "view": True,
        "committee": [me],
        "included": [],
        "rejected": [],
        "votes": [],
        "deposits": [],
        "view_changes": [
            {"view": 0, "signatures": [{"verifier": me, "signature": signature.hex()}]}
        ],
    }
    body_bytes = encode(2, body)
    header = {
        "format": "flchain-block/2",
        "chain_id": CHAIN,
        "height": 5,
        "prev_hash": PREV,
        "body_hash": sha256_hex(BODY_TAG, body_bytes),
        "updates_root": merkle_root([]),
        "model_hash": "00" * 32,
        "leader": me,
    }
    header_bytes = encode(2, header)
    block = Block(
        5,
        sha256_hex(HEADER_TAG, header_bytes),
        header_bytes,
        body_bytes,
        "",
        header,
        body,
    )
    problem, _ = check_signed_block([me], CHAIN, 5, PREV, block.hash, body, [])
    assert problem == "view must be an integer >= 0"  # verify's verdict
    with pytest.raises(ValueError, match="view"):
        ask(queries.SIGN, RecordDict({"pov": header_request(block, 1)}))
