"""review12: one request from the server (which holds no verifier key) makes a
verifier node write a state file that it then refuses to read: from the next
query on it answers nothing (votes, signatures, identity, in every chain)
until an operator edits the file by hand, which its refusal tells them never
to delete."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from flchain_flwr.ledger import VoteContext
from flchain_flwr.pov import queries
from flchain_flwr.pov.views import lead_statement

from .test_lockstate import _me, _node, _node_config, _sign, _vote, _vote_in_view


@pytest.mark.xfail(
    strict=True,
    reason="review12 #3: a vote request at view -1 is answered and its view "
    "written as key '-1', which read_state then refuses",
)
def test_a_vote_request_at_a_negative_view_leaves_the_node_usable(
    tmp_path: Path,
) -> None:
    ask = _node(_node_config(tmp_path), run_id=1)
    with contextlib.suppress(ValueError):  # refusing it is fine
        ask(queries.VOTE, _vote_in_view(5, -1))
    assert ask(queries.VOTE, _vote(6)).has_content()


@pytest.mark.xfail(
    strict=True,
    reason="review12 #4: a lead statement (or vote request) with a 18 MiB "
    "prev_hash is taken as the node's position; the file then exceeds "
    "MAX_STATE_BYTES and every later query is refused",
)
def test_a_huge_previous_hash_leaves_the_node_usable(tmp_path: Path) -> None:
    ask = _node(_node_config(tmp_path), run_id=1)
    huge = VoteContext("c", 3, "ab" * (9 << 20), "cd" * 32, "", 0)
    with contextlib.suppress(ValueError):  # refusing it is fine
        ask(queries.SIGN, _sign(lead_statement(huge, _me(tmp_path))))
    assert ask(queries.VOTE, _vote(6)).has_content()
