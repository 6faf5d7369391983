"""Signed replies and a block decided again (two features, one run).

The leader at ``LEADER_HEIGHT`` signs no header, so FedBuff decides the block
again at view 1 from the same buffered, signed updates. Nothing the failed
attempt saw may count against them: the trainer pins, the signed updates the
chain included and the buffered-digest rule are updated only once a block is
written, so the retried block includes them; a resumed run (which reads the
recorded view change and the chain's pins) goes on signing.
"""

from __future__ import annotations

from pathlib import Path

from flchain_flwr.ledger import Ledger
from flchain_flwr.ledger.trainers import TRAINER_FIELD
from flchain_flwr.pov import Committee, Threshold

from .test_header_retry import LEADER_HEIGHT, _Faults, _NoHeaderCommittee
from .test_pov import verifiers
from .test_replay import flchain
from .test_signreply import included_entries, signed_run


def test_a_retried_block_includes_its_signed_updates_and_a_resume_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.db"
    pool = verifiers(4)
    result = signed_run(
        tmp_path,
        versions=LEADER_HEIGHT + 1,
        committee=_NoHeaderCommittee(pool, _Faults()),
        require_signed_replies=True,
    )
    assert not result.rejected, [r.reason for r in result.rejected]
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LEADER_HEIGHT + 2
        retried = ledger.block(LEADER_HEIGHT).body
    assert retried["view"] == 1 and retried["included"]
    assert all(TRAINER_FIELD in u for u in retried["included"])
    code, text = flchain("verify", str(path), "--replay")
    assert code == 0, text
    resumed = signed_run(
        tmp_path,
        versions=LEADER_HEIGHT + 3,
        committee=Committee(pool, threshold=Threshold(value=0)),
        require_signed_replies=True,
    )
    assert not resumed.rejected, [r.reason for r in resumed.rejected]
    with Ledger(path, create=False) as ledger:
        assert len(ledger) == LEADER_HEIGHT + 4
    entries = included_entries(path)
    digests = [u["digest"] for u in entries]
    assert len(digests) == len(set(digests))
    assert all(TRAINER_FIELD in u for u in entries)
    code, text = flchain("verify", str(path), "--replay")
    assert code == 0, text
    n = len(entries)
    assert f"trainers: {n} of {n} included updates in the replayed" in text
