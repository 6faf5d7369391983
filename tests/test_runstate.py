"""A verifier node's run state survives a restart in its stored layout."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from flchain_flwr.ledger.statements import view_change_statement
from flchain_flwr.pov import Rule, Threshold, Verifier, queries, verifiernode
from flchain_flwr.pov.lockstate import STATEMENT_COLUMNS
from flchain_flwr.pov.runstate import columns_record, read_columns
from flchain_flwr.pov.verifier import RefusedRequest

from .test_pov import CHAIN, key, toy_score

PREV = "ab" * 32
# the run-state records as nodes have stored them: chain ids sorted, one
# parallel list per field
STORED = {
    "pov-seen": {
        "chain_id": ["a", "b"],
        "height": [4, 7],
        "prev_hash": ["11" * 32, "22" * 32],
        "parent_model": ["33" * 32, "44" * 32],
    },
    "pov-headers": {"chain_id": ["a"], "height": [3], "sha256": ["55" * 32]},
    "pov-statements": {
        "chain_id": ["a", "b"],
        "height": [4, 7],
        "view": [1, 0],
        "what": ["view-change", "ee" * 32],
    },
}


def _node(state: RecordDict) -> tuple[Context, Verifier]:
    """A (re)started verifier node: a fresh verifier over the run state."""
    context = Context(1, 1, {}, state, {})
    return context, Verifier(toy_score, key(1), rule=Rule(Threshold(value=0)))


def _message(kind: str, cfg: dict[str, bytes | str]) -> Message:
    content = RecordDict({"pov": ConfigRecord(cfg)})
    metadata = Metadata(1, "m", 0, 1, "", "", 0.0, 60.0, kind)
    return Message(content=content, metadata=metadata)


def test_a_restarted_node_reads_and_keeps_the_stored_layout() -> None:
    state = RecordDict({name: ConfigRecord(dict(v)) for name, v in STORED.items()})
    context, verifier = _node(state)
    challenge = _message(queries.IDENTITY, {"challenge": b"\x01" * 32})
    verifiernode.answer_in_run(challenge, context, verifier)
    assert verifier.seen == {
        "a": (4, "11" * 32, "33" * 32),
        "b": (7, "22" * 32, "44" * 32),
    }
    assert verifier.headers == {"a": (3, "55" * 32)}
    assert verifier.statements == {"a": (4, 1, "view-change"), "b": (7, 0, "ee" * 32)}
    for name, lists in STORED.items():
        assert dict(context.state.config_records[name]) == lists


def test_a_statement_signed_before_a_restart_is_not_contradicted() -> None:
    state = RecordDict()
    statement = view_change_statement(CHAIN, 5, 0, PREV)
    sign = _message(queries.SIGN, {"kind": "view-change", "message": statement})
    verifiernode.answer_in_run(sign, *_node(state))
    assert "pov-statements" in state.config_records
    older = view_change_statement(CHAIN, 4, 0, PREV)
    with pytest.raises(RefusedRequest, match="is behind height 5"):
        verifiernode.answer_in_run(
            _message(queries.SIGN, {"kind": "view-change", "message": older}),
            *_node(state),
        )


def test_a_malformed_record_is_refused() -> None:
    record = ConfigRecord({"chain_id": ["a"], "height": 3, "view": [0], "what": ["x"]})
    with pytest.raises(ValueError, match="'height' must be a list"):
        read_columns(record, STATEMENT_COLUMNS)
    short = ConfigRecord({"chain_id": ["a", "b"], "height": [3], "view": [0]})
    with pytest.raises(ValueError):
        read_columns(ConfigRecord({**short, "what": ["x"]}), STATEMENT_COLUMNS)
    assert read_columns(None, STATEMENT_COLUMNS) == {}
    rows = {"b": (2, 0, "x"), "a": (1, 1, "y")}
    assert (
        read_columns(columns_record(rows, STATEMENT_COLUMNS), STATEMENT_COLUMNS) == rows
    )
