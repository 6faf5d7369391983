"""What a verifier node checks before it signs: a leader node signs a lead
statement only at a position it can hold, and one block header per height at
the position it holds (review finding 4: the server, holding no verifier key,
must not get two different blocks at one height signed by one leader)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from nacl.encoding import HexEncoder
from nacl.signing import VerifyKey

from flchain_flwr.ledger.canonical import HEADER_TAG, encode
from flchain_flwr.ledger.keys import load_or_create_key
from flchain_flwr.ledger.statements import view_change_statement
from flchain_flwr.pov import (
    Rule,
    Threshold,
    Verifier,
    queries,
    verifiernode,
    voterequest,
)
from flchain_flwr.pov.lockstate import STATEMENT_COLUMNS
from flchain_flwr.pov.runstate import columns_record, read_columns
from flchain_flwr.pov.verifier import RefusedRequest
from flchain_flwr.pov.views import LEAD_TAG, lead_statement, take_statement

from .pov_replies import reply_candidate
from .test_pov import CHAIN, context, key, model, toy_score
from .test_pov_chain import _verifier_grid

PREV = "ab" * 32  # the previous block of test_pov's context


def _header(leader: str, height: int = 5, prev: str = PREV, **extra: str) -> bytes:
    fields = {
        "format": "flchain-block/2",
        "chain_id": CHAIN,
        "height": height,
        "prev_hash": prev,
        "model_hash": "00" * 32,
        "leader": leader,
        **extra,
    }
    return HEADER_TAG + encode(2, fields)


def _sign(verifier: Verifier, data: bytes) -> bytes:
    """The node's signature over ``data`` (checked), or its refusal raised."""
    reply = verifiernode.signature_reply(
        RecordDict({"pov": ConfigRecord({"message": data})}), verifier
    )
    signature = reply.config_records["pov"]["signature"]
    assert isinstance(signature, bytes)
    VerifyKey(verifier.public_key.encode(), encoder=HexEncoder).verify(data, signature)
    return signature


def test_a_leader_node_signs_one_header_per_height_where_it_leads() -> None:
    """sign.py: two headers at height 5 after the same block, with different
    models, were both signed; now the second is refused."""
    leader = Verifier(toy_score, key(0))
    me = leader.public_key
    with pytest.raises(ValueError, match="holds nothing"):
        _sign(leader, _header(me))  # it has not voted on or led height 5
    _sign(leader, lead_statement(context(5), me))
    first = _header(me)
    _sign(leader, first)
    assert _sign(leader, first)  # the same header again: the same signature
    with pytest.raises(ValueError, match="already signed another header at 5"):
        _sign(leader, _header(me, model_hash="ff" * 32))
    with pytest.raises(ValueError, match="holds height 5"):
        _sign(leader, _header(me, prev="cd" * 32))  # another block before it
    with pytest.raises(ValueError, match="holds height 5"):
        _sign(leader, _header(me, height=6))  # a height it does not lead
    with pytest.raises(ValueError, match="holds nothing"):
        _sign(leader, _header(me).replace(CHAIN.encode(), b"other-chain"))
    with pytest.raises(ValueError, match="'height' must be a int"):
        _sign(leader, _header(me).replace(b'"height":5', b'"height":"5"'))
    assert leader.headers == {CHAIN: (5, hashlib.sha256(first).hexdigest())}


def test_a_leader_node_that_signed_a_header_leads_no_view_of_that_height() -> None:
    """review12 #1: it signed a header at height 5 (whose signature the server
    may never have got) and signs no other there, yet it signed a lead
    statement at 5 again, so a restarted server chose it and stopped when it
    then refused the header. Now it refuses to lead any view of 5 (the server
    passes it over as a leader that does not answer); at 6 it leads."""
    leader = Verifier(toy_score, key(0))
    me = leader.public_key
    _sign(leader, lead_statement(context(5), me))
    _sign(leader, _header(me))
    for view in (0, 1):
        with pytest.raises(ValueError, match="already signed a header at height 5"):
            _sign(leader, lead_statement(context(5, view=view), me))
    assert _sign(leader, _header(me))  # the header it signed: still the same
    assert _sign(leader, lead_statement(context(6), me))


def test_a_leader_node_signs_lead_statements_only_where_it_can_stand() -> None:
    leader = Verifier(toy_score, key(0))
    me = leader.public_key
    _sign(leader, lead_statement(context(5), me))
    _sign(leader, lead_statement(context(5, view=1), me))  # a later view
    for bad, why in [
        (replace(context(5), prev_hash="cd" * 32), "after another block"),
        (replace(context(5), parent_model="cd" * 32), "after another block"),
        (context(4), "behind height 5"),
    ]:
        with pytest.raises(ValueError, match=why):
            _sign(leader, lead_statement(bad, me))
    statement = json.loads(lead_statement(context(5), me)[len(LEAD_TAG) :])
    for extra in ({"model_hash": "ff" * 32}, {}):
        data = LEAD_TAG + json.dumps({**statement, **extra}, indent=1).encode()
        with pytest.raises(ValueError, match="canonical form"):
            _sign(leader, data)  # same position, other bytes: not signed
    other = Verifier(toy_score, key(1)).public_key
    with pytest.raises(ValueError, match="another leader"):
        _sign(leader, lead_statement(context(5), other))
    assert leader.seen[CHAIN][0] == 5


def test_a_leader_node_remembers_what_it_signed_between_messages(
    tmp_path: Path,
) -> None:
    """In a node's run state: it voted at height 3 and signed a header there;
    a second header at 3, or a lead statement at 2, is refused later."""
    grid = _verifier_grid(tmp_path, [0], trainers=0)
    (node,) = grid.get_node_ids()
    me = load_or_create_key(tmp_path / "verifier-0.key").verify_key
    leader = me.encode(HexEncoder).decode()

    def ask(kind: str, content: RecordDict) -> Message:
        (reply,) = grid.send_and_receive(
            [Message(content, node, kind, ttl=60)], timeout=60
        )
        return reply

    def sign(data: bytes) -> Message:
        return ask(queries.SIGN, RecordDict({"pov": ConfigRecord({"message": data})}))

    rule = Rule(Threshold(value=0.0)).digest
    vote = voterequest.vote_request(
        context(3, rule=rule), model(0.0), [reply_candidate(1, 0.5)], [1.0]
    )
    assert not ask(queries.VOTE, vote).has_error()
    assert not sign(_header(leader, height=3)).has_error()
    again = sign(_header(leader, height=3, model_hash="ff" * 32))
    assert again.has_error() and "another header at 3" in again.error.reason
    back = sign(lead_statement(context(2), leader))
    assert back.has_error() and "behind height 3" in back.error.reason


def test_a_member_node_signs_view_changes_only_in_canonical_form_and_keeps_them() -> (
    None
):
    """A view change over query.pov_sign: canonical only, never where the node
    signed a header, and what it signed survives in the node's run state."""
    member = Verifier(toy_score, key(1), rule=Rule(Threshold(value=0)))
    statement = view_change_statement(CHAIN, 5, 0, PREV)

    def ask(data: bytes) -> bytes:
        reply = verifiernode.signature_reply(
            RecordDict({"pov": ConfigRecord({"kind": "view-change", "message": data})}),
            member,
        )
        signature = reply.config_records["pov"]["signature"]
        assert isinstance(signature, bytes)
        return signature

    loose = statement.replace(b'"view":0', b'"view":0 ')
    with pytest.raises(ValueError, match="canonical"):
        ask(loose)
    VerifyKey(member.public_key.encode(), encoder=HexEncoder).verify(
        statement, ask(statement)
    )
    assert member.statements == {CHAIN: (5, 0, "view-change")}
    record = columns_record(member.statements, STATEMENT_COLUMNS)
    assert read_columns(record, STATEMENT_COLUMNS) == member.statements
    with pytest.raises(RefusedRequest, match="already signed a view change"):
        take_statement(member, CHAIN, 5, 0, "ab" * 32)
    with pytest.raises(RefusedRequest, match="is behind height 5"):
        ask(view_change_statement(CHAIN, 4, 0, PREV))
