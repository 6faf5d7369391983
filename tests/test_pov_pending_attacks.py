"""The locked-block re-proposal under attack and failure (review of issue 12's
:mod:`flchain_flwr.pov.pending` / :mod:`flchain_flwr.ledger.pending`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flchain_flwr.ledger import Block, Ledger, viewchanges
from flchain_flwr.ledger.canonical import (
    BODY_TAG,
    LATEST_FORMAT,
    encode,
    parse_canonical,
    sha256_hex,
)
from flchain_flwr.ledger.merkle import merkle_root
from flchain_flwr.ledger.pending import (
    SEAL_TAG,
    PendingError,
    clear_pending,
    pending_path,
    read_pending,
    record_pending,
)
from flchain_flwr.ledger.sealedrecord import sealed_bytes, write_sealed
from flchain_flwr.ledger.statements import sign_statement
from flchain_flwr.ledger.viewchanges import (
    ViewChangesError,
    read_view_changes,
    view_changes_path,
)
from flchain_flwr.pov import Committee, Threshold, Verifier

from .test_pov import verifiers
from .test_pov_chain import pov_run
from .test_pov_pending import LOCKED_HEIGHT, ServerDied, _forge, _locked_run


def _record_without_the_ledger_key(ledger: Ledger, block: Block, view: int) -> None:
    """What someone who can write the ledger's folder, but holds not the
    ledger's key, can record: ``block``, sealed with a key of their own."""
    from nacl.signing import SigningKey

    record_pending(ledger, block, view)
    path = pending_path(ledger)
    record = parse_canonical(path.read_bytes(), LATEST_FORMAT)
    assert isinstance(record, dict)
    record["sealed"] = sign_statement(
        SigningKey.generate(), sealed_bytes(SEAL_TAG, record)
    )
    path.write_bytes(encode(LATEST_FORMAT, record))


def test_a_failed_reproposal_keeps_the_locked_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member signed block 2 at view 0 and the server died. On the first
    restart the members do not answer the re-proposal in time (a transient
    outage: nodes still reconnecting). The run falls back to a new block at
    height 2, which no locked member signs, but that block does not replace
    the record; the next restart, with every member back, writes the locked
    block."""
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    inner = Committee.header_signatures

    def outage(
        self: Committee, members: Sequence[str], ledger: Ledger, block: Block, view: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        if block.hash == locked.hash:
            return [], [f"verifier {k[:12]}…: no reply in time" for k in members]
        return inner(self, members, ledger, block, view)

    monkeypatch.setattr(Committee, "header_signatures", outage)
    # the fallback block at (2, 0) is refused by the members locked on it
    with pytest.raises(RuntimeError, match="committee members signed its header"):
        pov_run(tmp_path, pool, rounds=3)
    monkeypatch.undo()
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT
        pending = read_pending(ledger)
        assert pending is not None
        assert pending.block.hash == locked.hash, (
            "the record of the block the members are locked on was replaced "
            f"by the fallback block {pending.block.hash[:16]}… that none of "
            "them will sign"
        )
    pov_run(tmp_path, pool, rounds=3)  # every member answers now
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).hash == locked.hash


def _leader_signed(block: Block, pool: list[Verifier], **body: Any) -> Block:
    """``block`` with its body changed, its header naming the new body and
    re-signed by its leader (the forger holds that key, no member's)."""
    new_body = {**block.body, **body}
    body_bytes = encode(block.format_version, new_body)
    changed = replace(block, body_bytes=body_bytes, body=new_body)
    return _forge(changed, pool, body_hash=sha256_hex(BODY_TAG, body_bytes))


@pytest.mark.parametrize(
    "body",
    [
        {"included": "abc"},  # AttributeError in headers.proposal_problem
        {"included": [1]},  # TypeError in ledger.replay (PendingReplay.check)
        {"included": [{"digest": 5}]},  # ValueError in ledger.merkle
        # ValueError in blobs.path_of, from pending_problem's own blob check
        {"included": [{"digest": "a" * 64, "payload": "z" * 64}]},
    ],
    ids=["included-text", "included-number", "digest-number", "payload-not-hex"],
)
def test_a_malformed_leader_signed_record_does_not_crash_the_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]
) -> None:
    """A record at the locked height whose body is malformed, with a header
    naming that body and the leader's valid signature, passes
    ``pending_problem`` (it checks the blobs, not the body's shape). The
    resume must refuse it as it refuses any forged record (no member signs
    it: the error names the failed re-proposal), not end in a traceback
    from the server's own checks; today every restart crashes on it."""
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    with Ledger(path, create=False) as ledger:
        clear_pending(ledger)  # else the genuine record is kept
        record_pending(ledger, _leader_signed(locked, pool, **body), 0)
    # proposed and refused by every member, or ignored (a payload digest that
    # is no digest); then the locked members refuse the fallback block too
    with pytest.raises(RuntimeError, match="committee members signed its header"):
        pov_run(tmp_path, pool, rounds=3)


def test_one_leader_key_and_the_folder_cannot_write_an_unchecked_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server dies after the votes on block 2, before any header request
    (so there is no record, and no member signed anything at (2, 0)). A
    forger holding only the view-0 leader's key (one verifier, no other
    member's) and write access to the ledger's folder writes a record: an
    empty block whose model is the genesis model (a rollback; any blob it
    puts in the store would do) and whose ``config_digest`` names no known
    config, so the members' replay would say "not replayable" and they would
    sign it with ``replayed: false``. Without the ledger's key the record has
    no valid seal: the resumed server ignores it and writes a block of its
    own. (The ledger key's holder, the server, could propose such a block
    anyway: the record adds nothing to what it can do.)"""
    pool = verifiers(4)
    path, proposed = _died_before_asking(tmp_path, monkeypatch, pool)
    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None and head.height == LOCKED_HEIGHT - 1
        forged = _empty_block(ledger, proposed, pool, 0)
        _record_without_the_ledger_key(ledger, forged, 0)
    pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).hash != forged.hash
        assert ledger.verify().ok


def test_a_record_at_a_later_view_needs_its_view_change_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member is locked on block 2 at view 0 (no view change at (2, 0)
    can get a quorum). A forger holding the view-1 leader's key and write
    access to the folder records an empty block at view 1 with no view-change
    certificate (there can be none), over the genuine record. Without the
    ledger's key it has no valid seal and is ignored: the height is then
    stuck (the genuine record is gone), but nothing is written that fails
    ``verify``."""
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    with Ledger(path, create=False) as ledger:
        forged = _empty_block(ledger, locked, pool, 1)
        _record_without_the_ledger_key(ledger, forged, 1)
    with contextlib.suppress(ValueError, RuntimeError):  # stuck or refused
        pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT or (
            ledger.block(LOCKED_HEIGHT).hash != forged.hash
        ), "a view-1 block without its certificates was written: verify fails"
        assert ledger.verify().ok


def _empty_block(
    ledger: Ledger, block: Block, pool: list[Verifier], view: int
) -> Block:
    """What the forger records: ``block`` emptied (no votes, no updates), at
    ``view`` with that view's committee and leader (whose key it holds), the
    genesis model, and a ``config_digest`` naming no known config."""
    committee = Committee(pool, threshold=Threshold(value=0))  # pov_run's
    committee.resume(ledger, 0.5)
    drawn = committee.state.committee(str(block.header["prev_hash"]), view)
    body: dict[str, Any] = {"committee": drawn, "contributions": [], "deposits": []}
    body |= {"included": [], "rejected": [], "votes": []}
    if view:
        body |= {"view": view, "view_changes": []}  # no certificate: none exists
    return _forge(
        _leader_signed(block, pool, **body),
        pool,
        leader=drawn[0],
        model_hash=ledger.block(0).header["model_hash"],
        config_digest="0" * 64,
        updates_root=merkle_root([]),
    )


def _died_before_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pool: list[Verifier]
) -> tuple[Path, Block]:
    """A run whose server dies after the votes on block 2, before its first
    header request (no record, no member signed anything at (2, 0)): the
    ledger and the block it was about to ask for."""
    inner = Committee.header_signatures
    proposed: list[Block] = []

    def dies(
        self: Committee, members: Sequence[str], ledger: Ledger, block: Block, view: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        if block.height == LOCKED_HEIGHT:
            proposed.append(block)
            raise ServerDied("the server died before its first header request")
        return inner(self, members, ledger, block, view)

    monkeypatch.setattr(Committee, "header_signatures", dies)
    with pytest.raises(ServerDied):
        pov_run(tmp_path, pool, rounds=3)
    monkeypatch.undo()
    return tmp_path / "chain.db", proposed[0]


def test_a_server_record_that_is_not_a_regular_file_is_refused(
    tmp_path: Path,
) -> None:
    """A FIFO in place of ``<ledger>.pending`` or ``<ledger>.viewchanges`` is
    refused with a reason (and so ignored): reading it would wait for a
    writer for ever, at every resume and every committee decision."""
    with Ledger(tmp_path / "l.db") as ledger:
        os.mkfifo(pending_path(ledger))
        os.mkfifo(view_changes_path(ledger))
        with pytest.raises(PendingError, match="not a regular file"):
            read_pending(ledger)
        with pytest.raises(ViewChangesError, match="not a regular file"):
            read_view_changes(ledger, 1, "00" * 32)


def test_a_sealed_malformed_view_change_record_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review12 #5: a view-change record sealed with the ledger key whose
    signature entry names its verifier as a JSON list was not "ignored with
    the reason logged": ``check_view_changes`` looked the list up in a set
    and the resume died with a TypeError, on every restart."""
    pool = verifiers(4)
    path = pov_run(tmp_path, pool, rounds=1)
    with Ledger(path, create=False) as ledger:  # the ledger key's holder
        head = ledger.head()
        assert head is not None
        record = {
            "format": "flchain-view-changes/1",
            "chain_id": ledger.chain_id,
            "height": head.height + 1,
            "prev_hash": head.hash,
            "view_changes": [
                {"view": 0, "signatures": [{"verifier": ["x"], "signature": "00"}]}
            ],
        }
        write_sealed(ledger, view_changes_path(ledger), viewchanges.SEAL_TAG, record)
    pov_run(tmp_path, pool, rounds=3)
    assert "ignoring the view-change record" in caplog.text
    assert "verifier and signature must be text" in caplog.text
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 4 and ledger.verify().ok
