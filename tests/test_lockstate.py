"""A verifier node's locks (where it voted or led, what it voted on there,
what it signed) live in a file beside its key, not in the run's state: a new
``flwr run`` (a fresh Context) or a restarted SuperNode must not make it sign
against them."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from flchain_flwr.ledger import Block, PoVRules, PoVState, VoteContext, VoteRules
from flchain_flwr.ledger.canonical import (
    BODY_TAG,
    HEADER_TAG,
    MAX_SAFE_INTEGER,
    encode,
    sha256_hex,
)
from flchain_flwr.ledger.checkpoint import MAX_CHAIN_ID_CHARS
from flchain_flwr.ledger.keys import load_or_create_key
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.quorum import VIEW_CHANGES_FIELD
from flchain_flwr.ledger.statements import (
    VIEW_CHANGE_TAG,
    sign_statement,
    view_change_statement,
)
from flchain_flwr.pov import (
    Rule,
    Threshold,
    Verifier,
    lockstate,
    queries,
    verifiernode,
    voterequest,
)
from flchain_flwr.pov.lockstate import MAX_CHAINS, state_file_of
from flchain_flwr.pov.members import header_request
from flchain_flwr.pov.verifier import MAX_VOTED
from flchain_flwr.pov.views import lead_statement

from .pov_replies import reply_candidate
from .test_pov import CHAIN, context, model, toy_score
from .test_pov_requests import PREV, _header

RULE = Rule(Threshold(value=0.0))

Node = Callable[[str, RecordDict], Message]
"""One message to the node (kind, content): its reply, or its refusal raised."""


def _node_config(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"role": "verifier", "verifier-key": str(tmp_path / "v.key"), **extra}


def _node(
    node_config: dict[str, str],
    run_id: int,
    *,
    state_file: bool = True,
    max_voted: int | None = None,
) -> Node:
    """A verifier node in run ``run_id``: one Context (fresh state) for the
    run, a new Verifier per message, as a ClientApp process builds it
    (``state_file=False``: one an app builds without a state file)."""
    ctx = Context(run_id, 7, node_config, RecordDict(), {})

    def ask(kind: str, content: RecordDict) -> Message:
        metadata = Metadata(run_id, "m", 0, 7, "", "", 0.0, 60.0, kind)
        verifier = verifiernode.verifier_from_node_config(
            node_config, lambda key, _: Verifier(toy_score, key, rule=RULE)
        )
        assert verifier is not None
        if not state_file:
            verifier.state_file = None
        if max_voted is not None:
            verifier.max_voted = max_voted
        return verifiernode.answer_in_run(
            Message(content=content, metadata=metadata), ctx, verifier
        )

    return ask


def _sign(data: bytes, kind: str | None = None) -> RecordDict:
    cfg: dict[str, bytes | str] = {"message": data}
    if kind is not None:
        cfg["kind"] = kind
    return RecordDict({"pov": ConfigRecord(cfg)})


def _vote(height: int, node_id: int = 1) -> RecordDict:
    """A vote request at ``height`` on node ``node_id``'s reply."""
    return _vote_in_view(height, 0, node_id)


def _vote_in_view(height: int, view: int, node_id: int = 1) -> RecordDict:
    """A vote request at ``height`` in ``view`` on node ``node_id``'s reply."""
    return voterequest.vote_request(
        context(height, rule=RULE.digest, view=view),
        model(0.0),
        [reply_candidate(node_id, 0.5)],
        [1.0],
    )


def _digest(node_id: int) -> str:
    return reply_candidate(node_id, 0.5).digest


def _rejecting(tmp_path: Path, node_ids: list[int], view: int = 0) -> RecordDict:
    """The node's header request for a block at height 5 in ``view``
    (committee ``[me]``, no votes) that rejects the replies of ``node_ids``:
    it judges them and holds none of the member's votes on them."""
    rejected = [
        {"node_id": n, "digest": _digest(n), "trained_on": 4, "reason": "x"}
        for n in node_ids
    ]
    return _member_request(tmp_path, {"view": view, "rejected": rejected}, view)


def _member_request(tmp_path: Path, fields: dict[str, Any], view: int) -> RecordDict:
    """The node's header request, in ``view``, for a block at height 5 after
    ``PREV`` whose committee is the node alone (pool ``[me]``): no updates or
    votes but for the body ``fields``, signed by the node's key as its leader,
    with the view changes of the views before ``view`` signed by that key."""
    key = load_or_create_key(tmp_path / "v.key")
    me = key.verify_key.encode().hex()
    body: dict[str, Any] = {
        "committee": [me],
        "included": [],
        "rejected": [],
        "votes": [],
        "contributions": [],
        "deposits": [],
        **fields,
    }
    if view:
        body[VIEW_CHANGES_FIELD] = [
            {
                "view": earlier,
                "signatures": [
                    {
                        "verifier": me,
                        "signature": sign_statement(
                            key, view_change_statement(CHAIN, 5, earlier, PREV)
                        ),
                    }
                ],
            }
            for earlier in range(view)
        ]
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
        key.sign(HEADER_TAG + header_bytes).signature.hex(),
        header,
        body,
    )
    state = PoVState(PoVRules((me,), 1), votes=VoteRules(RULE.to_json(), 1.0))
    return RecordDict({"pov": header_request(block, view, state)})


def _me(tmp_path: Path) -> str:
    return load_or_create_key(tmp_path / "v.key").verify_key.encode().hex()


@pytest.mark.parametrize("later", ["another run", "a restarted node"])
def test_a_leader_keeps_its_locks_across_runs_and_restarts(
    tmp_path: Path, later: str
) -> None:
    """Run 1: it votes at height 5, leads it and signs its header. Later (a
    new ``flwr run``, or the same run on a restarted SuperNode: a fresh
    Context either way) a second header at 5, a lead statement or a vote
    behind 5 are refused: before, each was signed."""
    node_config = _node_config(tmp_path)
    first = _node(node_config, run_id=1)
    me = _me(tmp_path)
    first(queries.VOTE, _vote(5))
    first(queries.SIGN, _sign(lead_statement(context(5), me)))
    first(queries.SIGN, _sign(_header(me)))
    second = _node(node_config, run_id=2 if later == "another run" else 1)
    with pytest.raises(ValueError, match="behind height 5"):
        second(queries.SIGN, _sign(lead_statement(context(4), me)))
    with pytest.raises(ValueError, match="behind height 5"):
        second(queries.VOTE, _vote(4))
    second(queries.VOTE, _vote(5))  # where it stands: asked again, it votes
    with pytest.raises(ValueError, match="already signed a header at height 5"):
        second(queries.SIGN, _sign(lead_statement(context(5, view=1), me)))
    with pytest.raises(ValueError, match="already signed another header at 5"):
        second(queries.SIGN, _sign(_header(me, model_hash="ff" * 32)))
    assert second(queries.SIGN, _sign(_header(me))).content  # the same header


def test_a_member_keeps_what_it_signed_across_runs(tmp_path: Path) -> None:
    """A view change signed at (5, 1) in run 1: in run 2 one behind it is
    refused, the same one signed again."""
    node_config = _node_config(tmp_path)
    first = _node(node_config, run_id=1)
    first(queries.VOTE, _vote(5))
    statement = view_change_statement(CHAIN, 5, 1, PREV)
    first(queries.SIGN, _sign(statement, "view-change"))
    second = _node(node_config, run_id=2)
    with pytest.raises(ValueError, match="is behind height 5 view 1"):
        second(
            queries.SIGN, _sign(view_change_statement(CHAIN, 5, 0, PREV), "view-change")
        )
    assert second(queries.SIGN, _sign(statement, "view-change")).content


def test_the_state_file_is_written_before_the_reply_leaves(tmp_path: Path) -> None:
    """Missing: a first use, started fresh. Written (canonical JSON) once the
    node answers; ``verifier-state`` puts it elsewhere."""
    beside = tmp_path / "v.key.state"
    _node(_node_config(tmp_path), run_id=1)(queries.VOTE, _vote(5))
    state = json.loads(beside.read_bytes())
    assert state["public_key"] == _me(tmp_path)
    assert state["seen"] == {
        CHAIN: {"height": 5, "prev_hash": PREV, "parent_model": context(5).parent_model}
    }
    assert beside.read_bytes() == json.dumps(state, sort_keys=True, indent=1).encode()
    elsewhere = tmp_path / "states" / "v.state"
    elsewhere.parent.mkdir()
    moved = _node(_node_config(tmp_path, **{"verifier-state": str(elsewhere)}), 2)
    moved(queries.VOTE, _vote(3))  # a fresh file: height 3 is not behind there
    assert json.loads(elsewhere.read_bytes())["seen"][CHAIN]["height"] == 3
    for bad in (3, ""):
        with pytest.raises(ValueError, match="verifier-state"):
            verifiernode.verifier_from_node_config(
                {**_node_config(tmp_path), "verifier-state": bad},
                lambda key, _: Verifier(toy_score, key),
            )


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"format": "flchain-verifier-state/0"}',
        b"<seen as a string>",
        b"<height as a string>",
        b"<a digest as a number>",
        b"<a view not a number>",
        b"<another key>",
        b"[" * 100_000,
    ],
)
def test_a_malformed_state_file_is_refused_naming_it(
    tmp_path: Path, text: bytes
) -> None:
    """Starting fresh over a state it cannot read is the defect itself: the
    node refuses every query, naming the file, and leaves it as it is."""
    node_config = _node_config(tmp_path)
    path = tmp_path / "v.key.state"
    _node(node_config, run_id=1)(queries.VOTE, _vote(5))
    state = json.loads(path.read_bytes())
    if text == b"<seen as a string>":
        state["seen"] = "everything"
    elif text == b"<height as a string>":
        state["seen"][CHAIN]["height"] = "5"
    elif text == b"<a digest as a number>":
        state["voted"][CHAIN]["views"]["0"] = [5]
    elif text == b"<a view not a number>":
        state["voted"][CHAIN]["views"] = {"01": [_digest(1)]}
    elif text == b"<another key>":
        state["public_key"] = "00" * 32
    if text.startswith(b"<"):
        text = json.dumps(state).encode()
    path.write_bytes(text)
    with pytest.raises(ValueError, match=str(path)):
        _node(node_config, run_id=2)(queries.VOTE, _vote(6))
    assert path.read_bytes() == text


def test_a_state_file_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    """A FIFO as the state file is refused naming it; reading it would wait
    for a writer for ever."""
    path = tmp_path / "v.key.state"
    os.mkfifo(path)
    with pytest.raises(ValueError, match=str(path)):
        _node(_node_config(tmp_path), run_id=1)(queries.VOTE, _vote(5))


def test_one_query_at_a_time_per_state_file(tmp_path: Path) -> None:
    """Two runs' ClientApp processes on one SuperNode: the read-answer-write
    is taken under an exclusive lock on ``<state>.lock``."""
    node_config = _node_config(tmp_path)
    ask = _node(node_config, run_id=1)
    ask(queries.VOTE, _vote(5))  # creates the key and the state
    done = threading.Event()

    def answer() -> None:
        ask(queries.VOTE, _vote(6))
        done.set()

    with open(tmp_path / "v.key.state.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        worker = threading.Thread(target=answer)
        worker.start()
        assert not done.wait(0.5), "answered while another held the lock"
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    worker.join(10)
    assert done.is_set()
    assert (
        json.loads((tmp_path / "v.key.state").read_bytes())["seen"][CHAIN]["height"]
        == 6
    )


@pytest.mark.parametrize("kept", ["state file", "run state"])
def test_a_member_node_refuses_a_header_that_leaves_out_its_vote(
    tmp_path: Path, kept: str
) -> None:
    """It votes at height 5 on node 1's reply, is asked again there (as after
    a timeout) and votes on node 2's: a header judging either without its
    vote is refused, naming the vote, in a later message, and with the state
    file in a later run too. Before, a new Verifier per message had no votes
    to miss, and it signed."""
    node_config = _node_config(tmp_path)
    ask = _node(node_config, run_id=1, state_file=kept == "state file")
    ask(queries.VOTE, _vote(5, node_id=1))
    ask(queries.VOTE, _vote(5, node_id=2))  # the same position: both are kept
    later = ask
    if kept == "state file":
        later = _node(node_config, run_id=2)
        voted = json.loads((tmp_path / "v.key.state").read_bytes())["voted"]
        assert voted == {
            CHAIN: {
                "height": 5,
                "prev_hash": PREV,
                "views": {"0": sorted([_digest(1), _digest(2)])},
            }
        }
    for left_out in (1, 2):
        with pytest.raises(ValueError, match=f"vote on {_digest(left_out)[:16]}"):
            later(queries.SIGN, _rejecting(tmp_path, [left_out]))
    assert later(queries.SIGN, _rejecting(tmp_path, [])).content  # it judges neither


def test_voting_at_a_new_position_replaces_the_votes_kept(tmp_path: Path) -> None:
    """Only the votes of its current position are kept."""
    node_config = _node_config(tmp_path)
    ask = _node(node_config, run_id=1)
    ask(queries.VOTE, _vote(5, node_id=1))
    ask(queries.VOTE, _vote(6, node_id=2))
    voted = json.loads((tmp_path / "v.key.state").read_bytes())["voted"]
    assert voted[CHAIN]["height"] == 6 and voted[CHAIN]["views"] == {"0": [_digest(2)]}


def test_a_vote_past_the_bound_on_votes_kept_is_refused(tmp_path: Path) -> None:
    """Past ``max_voted`` digests at one position the node votes on nothing
    new there (it drops none it holds): asked again on what it voted on, it
    votes."""
    ask = _node(_node_config(tmp_path), run_id=1, max_voted=1)
    ask(queries.VOTE, _vote(5, node_id=1))
    with pytest.raises(ValueError, match="more than 1 votes at height 5"):
        ask(queries.VOTE, _vote(5, node_id=2))
    with pytest.raises(ValueError, match="more than 1 votes at height 5"):
        ask(queries.VOTE, _vote_in_view(5, 1, node_id=1))  # all views count
    assert ask(queries.VOTE, _vote(5, node_id=1)).content
    voted = json.loads((tmp_path / "v.key.state").read_bytes())["voted"]
    assert voted[CHAIN]["views"] == {"0": [_digest(1)]}
    ask(queries.VOTE, _vote(6, node_id=2))  # a new position: room again


def test_only_a_verifier_node_bounds_the_votes_it_keeps(tmp_path: Path) -> None:
    """A node writes its votes to its state file, so it bounds them; an
    in-process member keeps them in memory and votes on every candidate."""
    node = verifiernode.verifier_from_node_config(
        _node_config(tmp_path), lambda key, _: Verifier(toy_score, key, rule=RULE)
    )
    assert node is not None and node.max_voted == MAX_VOTED
    assert Verifier(toy_score, rule=RULE).max_voted is None


@pytest.mark.parametrize("kept", ["state file", "run state"])
@pytest.mark.parametrize("hop", [1, 7])
def test_a_vote_in_another_view_does_not_free_a_header_that_leaves_out_its_vote(
    tmp_path: Path, hop: int, kept: str
) -> None:
    """It votes at height 5 view 0 on node 1's reply, then (a request names
    any view) at view ``hop`` on node 2's: a view-0 header that judges node
    1's reply without its vote is still refused, and one in view ``hop``
    that leaves out its vote on node 2's. Before, the later view's votes
    replaced the earlier's and it signed. (Review h-review.)"""
    ask = _node(_node_config(tmp_path), run_id=1, state_file=kept == "state file")
    ask(queries.VOTE, _vote_in_view(5, 0, node_id=1))
    with pytest.raises(ValueError, match="leaves out this verifier's vote"):
        ask(queries.SIGN, _rejecting(tmp_path, [1]))
    ask(queries.VOTE, _vote_in_view(5, hop, node_id=2))
    with pytest.raises(ValueError, match=f"vote on {_digest(1)[:16]}"):
        ask(queries.SIGN, _rejecting(tmp_path, [1]))
    with pytest.raises(ValueError, match=f"vote on {_digest(2)[:16]}"):
        ask(queries.SIGN, _rejecting(tmp_path, [2], view=hop))
    assert ask(
        queries.SIGN, _rejecting(tmp_path, [2])
    ).content  # not voted on in view 0
    if kept == "state file":
        voted = json.loads((tmp_path / "v.key.state").read_bytes())["voted"]
        assert voted[CHAIN]["views"] == {"0": [_digest(1)], str(hop): [_digest(2)]}


def test_a_state_file_reached_through_a_symlink_stays_the_file_written(
    tmp_path: Path,
) -> None:
    """``verifier-state`` names a symlink into a kept volume: the file it
    names is written (the link stays a link) and locked, under either
    spelling of its path. Before, the first write replaced the link with a
    regular file and the lock was taken beside the link. (Review h-review.)"""
    kept = tmp_path / "volume" / "v.state"
    kept.parent.mkdir()
    link = tmp_path / "v.state.link"
    link.symlink_to(kept)
    via_link = _node_config(tmp_path, **{"verifier-state": str(link)})
    ask = _node(via_link, run_id=1)
    ask(queries.VOTE, _vote(5))
    assert link.is_symlink(), "the link was replaced by a regular file"
    assert json.loads(kept.read_bytes())["seen"][CHAIN]["height"] == 5
    direct = _node_config(tmp_path, **{"verifier-state": str(kept)})
    assert state_file_of(Path(), via_link) == state_file_of(Path(), direct)
    done = threading.Event()

    def answer() -> None:
        ask(queries.VOTE, _vote(6))
        done.set()

    lock = os.open(f"{kept}.lock", os.O_RDWR)  # the target's lock, by its name
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = threading.Thread(target=answer)
        worker.start()
        assert not done.wait(0.5), "answered while the target's lock was held"
        fcntl.flock(lock, fcntl.LOCK_UN)
    finally:
        os.close(lock)
    worker.join(10)
    assert done.is_set() and not Path(f"{link}.lock").exists()


def _in_chain(chain_id: str) -> RecordDict:
    base = context(5, rule=RULE.digest)
    return voterequest.vote_request(
        VoteContext(chain_id, 5, base.prev_hash, base.parent_model, RULE.digest, 0),
        model(0.0),
        [reply_candidate(1, 0.5)],
        [1.0],
    )


@pytest.mark.parametrize("kept", ["state file", "run state"])
def test_a_node_takes_locks_in_a_bounded_number_of_short_chain_ids(
    tmp_path: Path, kept: str
) -> None:
    """The server names the chain id: one longer than MAX_CHAIN_ID_CHARS, or
    a chain past MAX_CHAINS, is refused and the locks kept are left as they
    were (none dropped: that would let it sign twice in that chain); chains
    it holds still vote. Before, each was kept forever and one vote in a
    chain with a 100 kB id made a 100 kB state file. (Review h-review.)"""
    ask = _node(_node_config(tmp_path), run_id=1, state_file=kept == "state file")
    path = tmp_path / "v.key.state"
    with pytest.raises(ValueError, match="longer than 128"):
        ask(queries.VOTE, _in_chain("c" * 100_000))
    assert not path.exists()
    ask(queries.VOTE, _in_chain("c" * MAX_CHAIN_ID_CHARS))
    for n in range(1, MAX_CHAINS):
        ask(queries.VOTE, _in_chain(f"chain-{n}"))
    if kept == "state file":
        before = path.read_bytes()
        assert len(json.loads(before)["seen"]) == MAX_CHAINS
    with pytest.raises(ValueError, match="another verifier-key and verifier-state"):
        ask(queries.VOTE, _in_chain("one-too-many"))
    with pytest.raises(ValueError, match="most it keeps is 64"):
        ask(
            queries.SIGN,
            _sign(view_change_statement("other", 5, 1, PREV), "view-change"),
        )
    if kept == "state file":
        assert path.read_bytes() == before
    assert ask(queries.VOTE, _in_chain("chain-1")).content


@pytest.mark.parametrize(
    "view",
    [-1, True, MAX_SAFE_INTEGER + 1, 10**5000],
    ids=["negative", "bool", "past 2**53", "over 4300 digits"],
)
def test_a_vote_or_view_change_at_a_view_not_in_its_shape_is_refused(
    tmp_path: Path, view: int
) -> None:
    """review12 #3: a vote request at view -1 was answered and its view
    written as key ``"-1"``, which the node then refused to read: it
    answered nothing more, in any chain. Now such a view (and a bool, or an
    integer canonical JSON cannot hold) is refused before anything is
    written, and the node goes on."""
    ask = _node(_node_config(tmp_path), run_id=1)
    with pytest.raises(ValueError, match="view"):
        ask(queries.VOTE, _vote_in_view(5, view))
    assert not (tmp_path / "v.key.state").exists()
    assert ask(queries.VOTE, _vote(5)).has_content()
    if view.bit_length() < 64:  # no JSON text of the others can be written
        change = VIEW_CHANGE_TAG + json.dumps(
            {"chain_id": CHAIN, "height": 5, "prev_hash": PREV, "view": view},
            separators=(",", ":"),
            sort_keys=True,
        ).encode("utf-8")
        with pytest.raises(ValueError, match="view"):
            ask(queries.SIGN, _sign(change, "view-change"))
    assert ask(queries.VOTE, _vote(6)).has_content()
    state = json.loads((tmp_path / "v.key.state").read_bytes())
    assert state["statements"] == {} and state["voted"][CHAIN]["views"].keys() == {"0"}


def test_a_position_whose_hashes_are_not_sha256_is_refused(tmp_path: Path) -> None:
    """review12 #4: a lead statement with an 18 MiB previous hash was taken
    as the node's position and written: the state file passed the 16 MiB
    the node reads, and it refused every later query. Now a position's
    hashes must be 64 lower-case hex digits, refused before anything is
    written."""
    ask = _node(_node_config(tmp_path), run_id=1)
    me = _me(tmp_path)
    huge = VoteContext(CHAIN, 3, "ab" * (9 << 20), "cd" * 32, "", 0)
    for bad in (huge, replace(huge, prev_hash="AB" * 32), replace(huge, prev_hash="")):
        with pytest.raises(ValueError, match="not a SHA-256"):
            ask(queries.SIGN, _sign(lead_statement(bad, me)))
    upper = replace(huge, prev_hash=PREV, parent_model="CD" * 32)
    with pytest.raises(ValueError, match="not a SHA-256"):
        ask(queries.SIGN, _sign(lead_statement(upper, me)))
    assert not (tmp_path / "v.key.state").exists()
    assert ask(queries.VOTE, _vote(6)).has_content()


def test_a_state_the_node_could_not_read_back_is_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """review12 #4: the writer had no bound, so a state past
    ``MAX_STATE_BYTES`` was written and then refused at every query. Now the
    request that would write it is refused and the file stays as it was."""
    ask = _node(_node_config(tmp_path), run_id=1)
    ask(queries.VOTE, _vote(5))
    before = (tmp_path / "v.key.state").read_bytes()
    monkeypatch.setattr(lockstate, "MAX_STATE_BYTES", len(before) + 10)
    with pytest.raises(ValueError, match="not written"):
        ask(queries.VOTE, _vote(5, node_id=2))  # one more digest kept
    assert (tmp_path / "v.key.state").read_bytes() == before
    assert ask(queries.VOTE, _vote(5)).has_content()  # what it holds: unchanged


def test_a_member_refuses_a_header_whose_body_view_is_a_boolean(
    tmp_path: Path,
) -> None:
    """review12 #2b: the member's check ``body.get("view", 0) != view`` took
    ``True`` for 1, where ``verify`` refuses it ("view must be an integer
    >= 0"): the member was then locked at (height, 1) on a block that can
    never be written."""
    ask = _node(_node_config(tmp_path), run_id=1)
    ask(queries.VOTE, _vote(5))  # its position: height 5 after PREV
    with pytest.raises(ValueError, match="the body says view True"):
        ask(queries.SIGN, _member_request(tmp_path, {"view": True}, 1))
    assert ask(queries.SIGN, _member_request(tmp_path, {"view": 1}, 1)).content
