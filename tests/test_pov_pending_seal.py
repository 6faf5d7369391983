"""The sealed pending-block record: the ledger key that seals it, what a
resume does when that key is not the one that sealed it, and records whose
block no member will sign again."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from nacl.encoding import HexEncoder
from nacl.signing import SigningKey

from flchain_flwr.ledger import Ledger, LedgerError
from flchain_flwr.ledger.pending import (
    PendingError,
    pending_path,
    pending_problem,
    read_pending,
    record_pending,
)

from .test_pov import model, verifiers
from .test_pov_chain import pov_run
from .test_pov_pending import LOCKED_HEIGHT, _forge, _locked_run
from .test_pov_pending_attacks import _died_before_asking, _empty_block


def test_a_missing_ledger_key_does_not_lose_the_locked_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member signed block 2, the server died. The ledger key is then
    missing on the restart (a volume not mounted, a ``ledger-key`` path
    mistyped). The resume must not make a new key, find the record "not
    sealed by this ledger's key", ignore it and overwrite it with a fallback
    block no locked member signs: once the key is back, the locked block must
    still be written."""
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    key = path.with_name(path.name + ".key")
    saved = key.read_bytes()
    key.unlink()
    with pytest.raises((RuntimeError, ValueError, LedgerError)):
        pov_run(tmp_path, pool, rounds=3)
    key.unlink(missing_ok=True)  # the restored key replaces any new one
    key.write_bytes(saved)
    key.chmod(0o600)
    with Ledger(path, create=False) as ledger:
        pending = read_pending(ledger)
        assert pending is not None and pending.block.hash == locked.hash, (
            "the locked block's record was replaced while the ledger key was missing"
        )
    pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).hash == locked.hash


def test_the_folder_alone_cannot_replace_the_key_beside_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``test_one_leader_key_and_the_folder_cannot_write_an_unchecked_model``
    (no member signed anything at (2, 0); the forger holds the view-0 leader's
    key and can write the ledger's folder), with the ledger key where a
    simulation keeps it: ``<ledger>.key``, in that folder. The forger does not
    read the key: it replaces the file with a key of its own and seals its
    record with that. The resumed server must not propose (and write) the
    forger's block, a rollback to the genesis model."""
    pool = verifiers(4)
    path, proposed = _died_before_asking(tmp_path, monkeypatch, pool)
    key = path.with_name(path.name + ".key")
    key.unlink()  # write access to the folder: no need to read the key
    own = SigningKey.generate()
    key.write_bytes(own.encode(HexEncoder))
    key.chmod(0o600)
    with Ledger(path, create=False, signing_key=own) as ledger:
        forged = _empty_block(ledger, proposed, pool, 0)
        record_pending(ledger, forged, 0)
    # a refusal to resume under a key that is not the ledger's is fine
    with contextlib.suppress(RuntimeError, ValueError, LedgerError):
        pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LOCKED_HEIGHT or (
            ledger.block(LOCKED_HEIGHT).hash != forged.hash
        ), "the forger's block (the genesis model again) was written"


def test_members_that_lost_their_run_state_do_not_wedge_the_height(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every member signed block 2, the server died, and so did every member
    (in-process members keep their position and what they signed in memory
    only; verifier nodes keep them in their state file, which an operator
    might still lose): they come back with the same keys and no state. None
    is locked on block 2 any more, and none can sign it again (each holds no
    position at height 2: it has not voted there). The resume falls back to
    a new block, which they vote on and sign: the run is not wedged (an
    intermediate design that stopped on a failed re-proposal, keeping the
    record, was)."""
    path, _, _ = _locked_run(tmp_path, monkeypatch)
    for _ in range(2):  # a second restart does no better than the first
        try:
            pov_run(tmp_path, verifiers(4), rounds=3)
        except RuntimeError as exc:
            pytest.fail(f"members without state wedge the run: {exc}")
    with Ledger(path, create=False) as ledger:
        assert len(ledger) > LOCKED_HEIGHT
        assert ledger.verify().ok


def test_the_seal_is_checked_against_an_explicit_ledger_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger opened with ``key_path`` (run config ``ledger-key``) seals and
    checks its record with that key; opened with the key beside it (another
    key), the same record is refused, and a record moved to another ledger
    sealed by the same key names another chain."""
    path, _, locked = _locked_run(tmp_path, monkeypatch)
    beside = path.with_name(path.name + ".key")
    elsewhere = tmp_path / "secure" / "ledger.key"
    elsewhere.parent.mkdir()
    beside.rename(elsewhere)
    with Ledger(path, create=False, key_path=elsewhere) as ledger:
        pending = read_pending(ledger)
        assert pending is not None and pending.block.hash == locked.hash
    with Ledger(path, create=False) as ledger, pytest.raises(PendingError):
        read_pending(ledger)  # a new key beside the ledger: not the seal's
    other = tmp_path / "other" / "chain.db"
    other.parent.mkdir()
    with Ledger(other, key_path=elsewhere) as ledger:
        ledger.append(
            model=model(), model_version=0, base_version=0, config_digest="0" * 64
        )
        record = path.with_name(path.name + ".pending")
        pending_path(ledger).write_bytes(record.read_bytes())
        replayed = read_pending(ledger)
        head = ledger.head()
        assert replayed is not None and head is not None
        assert pending_problem(ledger, head, replayed) == "it belongs to another chain"


def test_a_record_left_at_the_head_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server died between the COMMIT of block 2 and removing its record:
    the resume ignores it (already written) and goes on."""
    path, pool, locked = _locked_run(tmp_path, monkeypatch)
    pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None
        record_pending(ledger, head, int(head.body.get("view", 0)))
        height = head.height
    pov_run(tmp_path, pool, rounds=5)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) > height + 1 and ledger.verify().ok
        assert ledger.block(LOCKED_HEIGHT).hash == locked.hash


def test_a_recorded_block_no_member_signed_does_not_wedge_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server recorded block 2 (its own record, sealed with the ledger
    key) and every member refused it: its model is not what they replay (a
    server fault). No member is locked on it: the resume falls back to a new
    block, and the run goes on."""
    pool = verifiers(4)
    path, proposed = _died_before_asking(tmp_path, monkeypatch, pool)
    with Ledger(path, create=False) as ledger:
        wrong = _forge(proposed, pool, model_hash=ledger.block(0).header["model_hash"])
        record_pending(ledger, wrong, 0)  # the server's own record, sealed
    for _ in range(2):
        try:
            pov_run(tmp_path, pool, rounds=3)
        except RuntimeError as exc:
            pytest.fail(f"a block no member signed wedges the run: {exc}")
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).hash != wrong.hash
        assert ledger.verify().ok
