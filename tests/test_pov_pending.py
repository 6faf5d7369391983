"""A block whose header some members signed but that was never written is
proposed again, exactly, after a restart; a forged pending record is not; a
view the members gave up before the restart is passed over again, and several
with the view-change certificates the server recorded."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from flchain_flwr.cli import main as cli
from flchain_flwr.ledger import Block, Ledger, VoteContext
from flchain_flwr.ledger.canonical import HEADER_TAG, encode, sha256_hex
from flchain_flwr.ledger.statements import view_change_statement
from flchain_flwr.pov import (
    Committee,
    RefusedRequest,
    Rule,
    Threshold,
    Verifier,
    queries,
)
from flchain_flwr.pov.headers import cosign_header
from flchain_flwr.pov.remote import RemoteCommittee
from flchain_flwr.pov.views import sign_view_change
from flchain_flwr.sim import VirtualGrid, simulate

from .test_pov import verifiers
from .test_pov_chain import (
    _lead_statement,
    _remote_fedbuff,
    _verifier_grid,
    pov_run,
    state_before,
)
from .toy import initial_arrays

LOCKED_HEIGHT = 2


class ServerDied(Exception):
    """The server stops between the members' header signatures and the write."""


Locked = list[tuple[Block, list[dict[str, Any]]]]


def _dies_at_locked_height(
    monkeypatch: pytest.MonkeyPatch, kind: type[Committee]
) -> Locked:
    """Make ``kind``'s header requests at ``LOCKED_HEIGHT`` gather the
    signatures, keep them (and the block) for the test, then stop the server
    before the block is written (``monkeypatch.undo()`` restarts it whole)."""
    locked: Locked = []
    inner = kind.header_signatures

    def header_signatures(
        self: Committee, members: Sequence[str], ledger: Ledger, block: Block, view: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        signatures, problems = inner(self, members, ledger, block, view)
        if block.height == LOCKED_HEIGHT:
            locked.append((block, signatures))
            raise ServerDied(f"server died after {len(signatures)} header signatures")
        return signatures, problems

    monkeypatch.setattr(kind, "header_signatures", header_signatures)
    return locked


def _locked_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, list[Verifier], Block]:
    """A run that dies once every member of 4 signed block 2's header: the
    block that is not written, as its committee signed it."""
    pool = verifiers(4)
    locked = _dies_at_locked_height(monkeypatch, Committee)
    with pytest.raises(ServerDied):
        pov_run(tmp_path, pool, rounds=3)
    monkeypatch.undo()
    ((block, signatures),) = locked
    assert len(signatures) == 4  # more than n - quorum(n) = 1 locked: stuck
    path = tmp_path / "chain.db"
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT  # genesis and block 1
    return path, pool, block


def _cli_verify(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    code = cli(["ledger", "verify", str(path)], out=out)
    return code, out.getvalue()


def test_the_locked_block_is_written_again_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member signed block 2's header, then the server died: today no
    other header or view change at (2, 0) can get a quorum. The restart
    proposes that very block again, writes it (same hash) and goes on."""
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    pov_run(tmp_path, pool, rounds=5)  # up to version 5 (height 5)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 6, "the restart wrote blocks 2 to 5"
        written = ledger.block(LOCKED_HEIGHT)
        assert written.hash == locked.hash
        assert written.header_bytes == locked.header_bytes
        assert written.body_bytes == locked.body_bytes
        assert len(ledger.header_signatures(LOCKED_HEIGHT) or []) >= 3
        assert not path.with_name(path.name + ".pending").exists()
        report = ledger.verify()
        assert report.ok and report.pov, report
    code, text = _cli_verify(path)
    assert code == 0 and "ok" in text, text


def _forge(block: Block, pool: list[Verifier], **changes: Any) -> Block:
    """``block`` with its header changed, re-signed by its leader (the forger
    holds that key), with a hash matching its header."""
    header = {**block.header, **changes}
    header_bytes = encode(block.format_version, header)
    leader = next(v for v in pool if v.public_key == header["leader"])
    return replace(
        block,
        height=int(header["height"]),
        hash=sha256_hex(HEADER_TAG, header_bytes),
        header_bytes=header_bytes,
        header=header,
        signature=leader.key.sign(HEADER_TAG + header_bytes).signature.hex(),
    )


def test_members_refuse_another_header_at_the_locked_height_and_view(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    with Ledger(path, create=False) as ledger:
        other = _forge(locked, pool, model_hash=ledger.block(1).header["model_hash"])
        state = state_before(ledger, locked.height)
    sign = {
        "view": 0,
        "rule_digest": Rule(Threshold(value=0)).digest,  # the committee's
        "replayed": True,
        "state": state,
    }
    for verifier in pool:
        with pytest.raises(RefusedRequest, match="already signed header"):
            cosign_header(verifier, other, **sign)  # type: ignore[arg-type]
        again = cosign_header(verifier, locked, **sign)  # type: ignore[arg-type]
        assert again["verifier"] == verifier.public_key


def _pending(path: Path) -> Path:
    return path.with_name(path.name + ".pending")


def test_a_forged_pending_record_is_not_written_and_the_resume_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a ledger whose members are locked on nothing, a pending record that
    is garbage, at another height, the head copied one height up (re-signed
    with its leader's key) or whose hash is not its header's is ignored, for
    the reason logged: each resume writes a block of its own and the chain
    verifies. (Another model at the locked height: the test below.)"""
    pool = verifiers(4)
    path = tmp_path / "chain.db"
    pov_run(tmp_path, pool, rounds=2)
    from flchain_flwr.ledger.pending import record_pending  # the new module

    def moved(head: Block) -> Block:  # the head, signed again one height up
        return _forge(head, pool, height=head.height + 1, prev_hash=head.hash)

    forgeries: list[tuple[Callable[[Block], bytes | Block], str]] = [
        (lambda head: b"\x00garbage{", "is not canonical JSON"),
        (lambda head: _forge(head, pool, height=head.height + 5), "not the next"),
        # the head's committee; 1 draw in 24 (the chain id is random) equals it,
        # and the members then refuse the block: either way it is not written
        (moved, "committee is not the one drawn|was not written"),
        (lambda head: replace(moved(head), hash=head.hash), "hash is not its"),
        (lambda head: head, "already written"),  # died before clearing it
    ]
    for height, (forge, reason) in enumerate(forgeries, start=3):
        with Ledger(path, create=False) as ledger:
            head = ledger.head()
            assert head is not None and head.height == height - 1
            forged = forge(head)
            if isinstance(forged, bytes):
                _pending(path).write_bytes(forged)
            else:
                record_pending(ledger, forged, 0)
        caplog.clear()
        pov_run(tmp_path, pool, rounds=height)
        assert re.search(reason, caplog.text), reason
        with Ledger(path, create=False) as ledger:
            assert len(ledger) == height + 1
            written = ledger.block(height).header_bytes
            assert isinstance(forged, bytes) or forged.header_bytes != written
    code, text = _cli_verify(path)
    assert code == 0, text


def test_a_forged_record_at_the_locked_height_is_refused_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record at the locked height with another model, validly hashed and
    signed by the leader, passes the record's own checks but no member signs
    it: it is not written, the height stays stuck (the fallback block is
    refused too). The genuine record then unsticks it."""
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    from flchain_flwr.ledger.pending import clear_pending, record_pending

    with Ledger(path, create=False) as ledger:
        genuine = _pending(path).read_bytes()
        other = _forge(locked, pool, model_hash=ledger.block(1).header["model_hash"])
        clear_pending(ledger)  # else the genuine record is kept
        record_pending(ledger, other, 0)
    # refused by every member; the fallback block too (they are locked)
    with pytest.raises(RuntimeError, match="committee members signed its header"):
        pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT
    _pending(path).write_bytes(genuine)
    pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).hash == locked.hash
        assert ledger.verify().ok


def _remote_run(grid: VirtualGrid, path: Path) -> None:
    """A FedBuff run of ``grid``'s three trainers and its committee of four
    verifier nodes, up to version 4."""
    strategy = _remote_fedbuff(grid, path, None)
    simulate(strategy, grid, initial_arrays(), num_rounds=4)


def test_verifier_nodes_sign_the_locked_block_again_for_a_restarted_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four verifier SuperNodes (their state kept between messages, as a
    node's run state is) sign block 2's header; the server dies before the
    write. A new server process on the same nodes writes that very block."""
    grid = _verifier_grid(tmp_path, [0, 1, 2, 3])
    path = tmp_path / "remote.db"
    locked = _dies_at_locked_height(monkeypatch, RemoteCommittee)
    with pytest.raises(ServerDied):
        _remote_run(grid, path)
    monkeypatch.undo()
    ((block, signatures),) = locked
    assert len(signatures) == 4
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT
    _remote_run(grid, path)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 5
        assert ledger.block(LOCKED_HEIGHT).hash == block.hash
        report = ledger.verify()
        assert report.ok and report.pov, report
    code, text = _cli_verify(path)
    assert code == 0, text


def test_restarted_verifier_nodes_still_hold_the_locked_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the verifier SuperNodes restart too (or the server is
    started with a new ``flwr run``): fresh Contexts, the same key files.
    Their locks are in the state file beside each key, so they sign block 2
    again and nothing else at its height; kept in the run's state, they had
    forgotten it and signed a second block at height 2 (equivocation by
    honest members)."""
    path = tmp_path / "remote.db"
    locked = _dies_at_locked_height(monkeypatch, RemoteCommittee)
    with pytest.raises(ServerDied):
        _remote_run(_verifier_grid(tmp_path, [0, 1, 2, 3]), path)
    monkeypatch.undo()
    ((block, signatures),) = locked
    assert len(signatures) == 4
    restarted = _verifier_grid(tmp_path, [0, 1, 2, 3])
    view_change = view_change_statement(
        block.header["chain_id"],
        LOCKED_HEIGHT,
        block.body.get("view", 0),
        block.header["prev_hash"],
    )
    request = ConfigRecord({"kind": "view-change", "message": view_change})
    replies = restarted.send_and_receive(
        [
            Message(RecordDict({"pov": request}), node, queries.SIGN, ttl=60)
            for node in restarted.get_node_ids()[3:]
        ],
        timeout=60,
    )
    assert len(replies) == 4
    for reply in replies:  # a view change where each signed block 2's header
        assert reply.has_error() and "already signed header" in reply.error.reason
    _remote_run(restarted, path)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 5
        assert ledger.block(LOCKED_HEIGHT).hash == block.hash
        report = ledger.verify()
        assert report.ok and report.pov, report


def _refuses_to_lead_at_the_locked_height(
    msg: Message, context_: Context, call_next: Any
) -> Message:
    """A node mod: the view-0 leader of ``LOCKED_HEIGHT`` refuses to lead."""
    statement = _lead_statement(msg)
    if statement and (statement["height"], statement["view"]) == (LOCKED_HEIGHT, 0):
        raise ValueError("this leader refuses to sign")
    reply: Message = call_next(msg, context_)
    return reply


def _dies_after_the_view_change(
    monkeypatch: pytest.MonkeyPatch, view: int = 0
) -> list[int]:
    """Stop the server once members have signed the view change at
    (``LOCKED_HEIGHT``, ``view``), before anything at the next view; how
    many signed."""
    signed: list[int] = []
    inner = RemoteCommittee.view_change_signatures

    def view_change_signatures(
        self: RemoteCommittee, members: Sequence[str], context: VoteContext
    ) -> tuple[list[dict[str, Any]], list[str]]:
        signatures, problems = inner(self, members, context)
        if (context.height, context.view) == (LOCKED_HEIGHT, view):
            signed.append(len(signatures))
            raise ServerDied(f"server died after {len(signatures)} view changes")
        return signatures, problems

    monkeypatch.setattr(
        RemoteCommittee, "view_change_signatures", view_change_signatures
    )
    return signed


def test_a_restarted_server_passes_over_a_view_its_members_gave_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block 2's view-0 leader refuses; every member signs the view change
    at (2, 0) (a certificate: more than 2/3); the server stops before
    anything at view 1. Restarted, on the same verifier nodes' state files,
    the view-0 leader answers again, but the members never sign a view-0
    header now: the server must pass over view 0 again (its members re-sign
    the same view change) and write block 2 at a later view."""
    path = tmp_path / "remote.db"
    signed = _dies_after_the_view_change(monkeypatch)
    first = _verifier_grid(
        tmp_path, [0, 1, 2, 3], mods=[_refuses_to_lead_at_the_locked_height]
    )
    with pytest.raises(ServerDied):
        _remote_run(first, path)
    monkeypatch.undo()
    assert signed == [4]  # the refusing leader gave up its view too
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT
    assert not _pending(path).exists()
    _remote_run(_verifier_grid(tmp_path, [0, 1, 2, 3]), path)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 5
        block = ledger.block(LOCKED_HEIGHT)
        assert block.body.get("view", 0) >= 1
        report = ledger.verify()
        assert report.ok and report.pov, report
    code, text = _cli_verify(path)
    assert code == 0, text


@pytest.mark.parametrize("views_lost", [False, True])
def test_members_locked_at_a_later_view_on_a_lost_block_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, views_lost: bool
) -> None:
    """Block 2's view-0 leader refuses, the members sign the view change and
    then view 1's header; the server dies before the write, and its pending
    record is lost. No view-0 header, no second view-1 header and no view
    change in view 1 can be signed now (each member keeps only its last
    statement). With the view-change record the restarted server goes on at
    view 1, whose leader will not sign another header and whose members will
    not give it up: it stops with the leader's reason. Without that record
    too it tries to pass over view 0, is refused, and stops with the
    members' reasons. Either way the chain verifies."""
    path = tmp_path / "remote.db"
    locked = _dies_at_locked_height(monkeypatch, RemoteCommittee)
    first = _verifier_grid(
        tmp_path, [0, 1, 2, 3], mods=[_refuses_to_lead_at_the_locked_height]
    )
    with pytest.raises(ServerDied):
        _remote_run(first, path)
    monkeypatch.undo()
    ((block, signatures),) = locked
    assert block.body["view"] == 1 and len(signatures) == 4
    _pending(path).unlink()
    if views_lost:
        _views(path).unlink()
    for _ in range(2):  # every restart
        with pytest.raises(RuntimeError) as err:
            _remote_run(_verifier_grid(tmp_path, [0, 1, 2, 3]), path)
        if views_lost:
            assert "0 of 4 committee members" in str(err.value)
            assert str(err.value).count("behind height 2 view 1") == 4
        else:
            assert "already signed another header at 2" in str(err.value)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT and ledger.verify().ok


def test_in_process_members_that_gave_up_view_0_are_passed_over_too(
    tmp_path: Path,
) -> None:
    """The same with in-process members: every member has signed the view
    change at (2, 0) (a server that then stopped); the next run's view-0
    leader is ready, but the members pass view 0 over again and block 2 is
    written at view 1."""
    pool = verifiers(4)
    path = pov_run(tmp_path, pool, rounds=1)
    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None and head.height == LOCKED_HEIGHT - 1
        gave_up = VoteContext(ledger.chain_id, LOCKED_HEIGHT, head.hash)
    for verifier in pool:
        sign_view_change(verifier, gave_up)
    pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).body["view"] == 1
        report = ledger.verify()
        assert report.ok and report.pov, report


def _views(path: Path) -> Path:
    return path.with_name(path.name + ".viewchanges")


def _gave_up_views_0_and_1(path: Path, pool: list[Verifier]) -> None:
    """What a server that then stopped did at ``LOCKED_HEIGHT``: both
    leaders failed, and every member signed the view changes at view 0, then
    view 1 (the server recording each certificate as it completed it)."""
    committee = Committee(pool, threshold=Threshold(value=0))
    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None and head.height == LOCKED_HEIGHT - 1
        for view in (0, 1):
            context = VoteContext(ledger.chain_id, LOCKED_HEIGHT, head.hash, view=view)
            members = committee.state.committee(head.hash, view)
            certificate = committee.give_up(context, members, "failed", ledger)
            assert certificate is not None and len(certificate["signatures"]) == 4


def test_in_process_members_that_gave_up_views_0_and_1_are_passed_over(
    tmp_path: Path,
) -> None:
    """Every member signed the view changes at (2, 0) and then (2, 1), and
    the server stopped before view 2's block. No member signs (2, 0)'s view
    change again: the next run takes its certificate from the server's
    view-change record, passes view 1 over (the members re-sign it) and
    writes block 2 at view 2; the record goes with that block."""
    pool = verifiers(4)
    path = pov_run(tmp_path, pool, rounds=1)
    _gave_up_views_0_and_1(path, pool)
    assert _views(path).exists()
    pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).body["view"] == 2
        report = ledger.verify()
        assert report.ok and report.pov, report
    assert not _views(path).exists()


def _tamper_signature(path: Path) -> None:
    """Re-seal the record with the ledger's key after swapping two
    signatures of view 0's certificate (each then signs for the other)."""
    from flchain_flwr.ledger.sealedrecord import write_sealed
    from flchain_flwr.ledger.viewchanges import SEAL_TAG, read_view_changes

    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None
        certificates = read_view_changes(ledger, head.height + 1, head.hash)
        signatures = certificates[0]["signatures"]
        signatures[0]["signature"], signatures[1]["signature"] = (
            signatures[1]["signature"],
            signatures[0]["signature"],
        )
        record = {
            "format": "flchain-view-changes/1",
            "chain_id": ledger.chain_id,
            "height": head.height + 1,
            "prev_hash": head.hash,
            "view_changes": certificates,
        }
        write_sealed(ledger, _views(path), SEAL_TAG, record)


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda path: _views(path).write_bytes(b"{}"), "must have the fields"),
        (  # the right fields, sealed by another key
            lambda path: _views(path).write_bytes(
                _views(path).read_bytes().replace(b'"height":2', b'"height":3')
            ),
            "not sealed by this ledger's key",
        ),
        (_tamper_signature, "view-0 change signature 0 is invalid"),
    ],
)
def test_a_view_change_record_that_fails_its_checks_is_ignored(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    tamper: Callable[[Path], None],
    reason: str,
) -> None:
    """A record that is not the server's, or whose certificates do not prove
    what they claim (as ``verify`` checks them), is ignored for the reason
    logged: the run cannot rebuild view 0's certificate and stops at
    height 2, as without a record."""
    pool = verifiers(4)
    path = pov_run(tmp_path, pool, rounds=1)
    _gave_up_views_0_and_1(path, pool)
    tamper(path)
    caplog.clear()
    with pytest.raises(RuntimeError, match="0 of 4 committee members"):
        pov_run(tmp_path, pool, rounds=3)
    assert "ignoring the view-change record" in caplog.text
    assert reason in caplog.text
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT and ledger.verify().ok


def _refuses_to_lead_views_0_and_1(
    msg: Message, context_: Context, call_next: Any
) -> Message:
    """A node mod: the leaders of (``LOCKED_HEIGHT``, 0) and (.., 1) refuse."""
    statement = _lead_statement(msg)
    if statement and statement["height"] == LOCKED_HEIGHT and statement["view"] < 2:
        raise ValueError("this leader refuses to sign")
    reply: Message = call_next(msg, context_)
    return reply


def test_a_restarted_server_passes_over_two_views_its_members_gave_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verifier nodes: block 2's view-0 and view-1 leaders refuse; every
    member signs both view changes; the server stops before anything at
    view 2 (no pending record: no header was signed). Restarted on the same
    state files with every leader willing, it takes view 0's certificate
    from its record, has view 1's signed again, and writes block 2 at
    view 2."""
    path = tmp_path / "remote.db"
    signed = _dies_after_the_view_change(monkeypatch, view=1)
    first = _verifier_grid(
        tmp_path, [0, 1, 2, 3], mods=[_refuses_to_lead_views_0_and_1]
    )
    with pytest.raises(ServerDied):
        _remote_run(first, path)
    monkeypatch.undo()
    assert signed == [4]
    assert not _pending(path).exists() and _views(path).exists()
    _remote_run(_verifier_grid(tmp_path, [0, 1, 2, 3]), path)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 5
        assert ledger.block(LOCKED_HEIGHT).body["view"] == 2
        report = ledger.verify()
        assert report.ok and report.pov, report
    code, text = _cli_verify(path)
    assert code == 0, text
