"""Review of ffa1606: a restarted server passes over one view its members gave
up, but not two in a row (each member keeps only its last statement, and
the server keeps no view-change certificate across a restart)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message

from flchain_flwr.ledger import Ledger, VoteContext
from flchain_flwr.pov.remote import RemoteCommittee
from flchain_flwr.pov.views import sign_view_change

from .test_pov import verifiers
from .test_pov_chain import _lead_statement, _verifier_grid, pov_run
from .test_pov_pending import LOCKED_HEIGHT, ServerDied, _pending, _remote_run


def test_in_process_members_that_gave_up_views_0_and_1_are_passed_over(
    tmp_path: Path,
) -> None:
    """Every member signed the view changes at (2, 0) and then (2, 1) (two
    leaders failed; the server then stopped before view 2's block). The next
    run should write block 2 at view 2; it stops at height 2 instead: no
    member can sign (2, 0)'s view change again, and no one kept the
    certificate."""
    pool = verifiers(4)
    path = pov_run(tmp_path, pool, rounds=1)
    with Ledger(path, create=False) as ledger:
        head = ledger.head()
        assert head is not None and head.height == LOCKED_HEIGHT - 1
        gave_up = VoteContext(ledger.chain_id, LOCKED_HEIGHT, head.hash)
    for view in (0, 1):
        for verifier in pool:
            sign_view_change(verifier, replace(gave_up, view=view))
    pov_run(tmp_path, pool, rounds=3)
    with Ledger(path, create=False) as ledger:
        assert ledger.block(LOCKED_HEIGHT).body["view"] == 2
        assert ledger.verify().ok


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
    state files with every leader willing, the run should write block 2; it
    stops at height 2 instead ("behind height 2 view 1")."""
    path = tmp_path / "remote.db"
    signed: list[int] = []
    inner = RemoteCommittee.view_change_signatures

    def view_change_signatures(
        self: RemoteCommittee, members: Sequence[str], context: VoteContext
    ) -> tuple[list[dict[str, Any]], list[str]]:
        signatures, problems = inner(self, members, context)
        if (context.height, context.view) == (LOCKED_HEIGHT, 1):
            signed.append(len(signatures))
            raise ServerDied(f"server died after {len(signatures)} view changes")
        return signatures, problems

    monkeypatch.setattr(
        RemoteCommittee, "view_change_signatures", view_change_signatures
    )
    first = _verifier_grid(
        tmp_path, [0, 1, 2, 3], mods=[_refuses_to_lead_views_0_and_1]
    )
    with pytest.raises(ServerDied):
        _remote_run(first, path)
    monkeypatch.undo()
    assert signed == [4]
    assert not _pending(path).exists()
    _remote_run(_verifier_grid(tmp_path, [0, 1, 2, 3]), path)
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == 5
        assert ledger.block(LOCKED_HEIGHT).body["view"] == 2
        assert ledger.verify().ok
