"""Regression: a block that does not get its quorum changes no stakes, and
members that did not answer are asked again.

Forges the review's case: members time out on the header request, so the
block is not written; before, ``seal`` had already applied its deposits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flchain_flwr.ledger import Block, Ledger
from flchain_flwr.pov import Committee

from .test_pov import digest, pov_chain
from .test_quorum import _outsider, _two_headers, decide_zero_update


class Flaky:
    """A committee whose members ``silent`` do not answer the first
    ``misses`` header requests (a timeout)."""

    def __init__(self, committee: Committee, silent: set[str], misses: int) -> None:
        self.committee, self.silent, self.misses = committee, silent, misses

    def header_signatures(
        self, members: list[str], ledger: Ledger, block: Block, view: int
    ) -> tuple[list[dict[str, Any]], list[str]]:
        answering = [k for k in members if self.misses <= 0 or k not in self.silent]
        self.misses -= 1
        signed, problems = self.committee.header_signatures(
            answering, ledger, block, view
        )
        return signed, problems + ["timed out"] * (len(members) - len(answering))


def _attempt(tmp_path: Path, misses: int) -> tuple[Ledger, Committee, bool]:
    ledger, committee = pov_chain(tmp_path)
    head, parent, decision = decide_zero_update(ledger, committee)
    d = digest(70)
    # equivocation evidence against an outsider: the block takes its stake
    accused = committee.verifiers[_outsider(ledger, committee)].key
    record = _two_headers(accused, ledger.chain_id)
    committee.report_equivocation(record)
    members = decision.committee
    fields, signer = committee.seal(members, decision.votes)
    assert fields["deposits"]  # the block would slash
    signer.committee = Flaky(committee, set(members[1:]), misses)  # type: ignore[assignment]
    before = dict(committee.state.stakes)
    entry = {"digest": d, "node_id": 1, "weight": 1.0, "num_examples": 1}
    try:
        ledger.append(
            model=parent,
            model_version=head.height + 1,
            base_version=head.height,
            config_digest="",
            included=[entry],
            votes=decision.votes,
            extra=fields,
            signer=signer,
        )
    except RuntimeError:
        assert committee.state.stakes == before
        return ledger, committee, False
    return ledger, committee, True


def test_a_block_without_its_quorum_changes_no_stake(tmp_path: Path) -> None:
    _, committee, written = _attempt(tmp_path, misses=3)
    assert not written
    fields, _ = committee.seal(committee.state.committee("ab" * 32), [])
    assert fields["evidence"]  # still queued for the next block


@pytest.mark.parametrize("misses", [1, 2])
def test_members_that_timed_out_are_asked_again(tmp_path: Path, misses: int) -> None:
    ledger, _, written = _attempt(tmp_path, misses=misses)
    assert written and ledger.verify().ok
