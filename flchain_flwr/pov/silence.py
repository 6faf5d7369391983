"""A committee that casts no vote stops the run, instead of idling for ever.

Members that all refuse every vote request (a server and verifiers judging by
different rules, a chain they do not recognise) or answer with invalid votes
leave every update unapproved: FedBuff would keep training and asking. After
:data:`SILENT_DECISIONS` vote requests in a row that every member answered
without one valid vote, :class:`SilenceWatch` raises
:class:`CommitteeSilentError` with the members' answers. A request that some
member did not answer at all (no reply, node or message unavailable: an outage,
which may pass) neither counts nor resets the count: :mod:`.outage` bounds any
stretch without a quorum of valid voters on the grid's clock instead. The
ledger is then valid up to its last block, and a restart (with the cause
fixed) resumes from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .decision import CommitteeDecision
from .outage import vote_requested

SILENT_DECISIONS = 5
"""Vote requests in a row, each answered by every member without one valid
vote, before the run stops."""


class CommitteeSilentError(RuntimeError):
    """No committee member cast a valid vote for several requests in a row."""


@dataclass
class SilenceWatch:
    """Counts the vote requests in a row that every member answered without
    a valid vote."""

    limit: int = SILENT_DECISIONS
    in_a_row: int = 0

    def observe(self, decision: CommitteeDecision) -> None:
        """Count ``decision`` (reset by any valid vote; one that asked nobody,
        its candidates all filtered out before the vote, or that a member did
        not answer leaves the count as it is); raise
        :class:`CommitteeSilentError` at ``limit``."""
        if decision.votes:
            self.in_a_row = 0
            return
        if not vote_requested(decision) or decision.unreachable:
            return
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            reasons = "; ".join(dict.fromkeys(decision.dropped_votes)) or (
                "none (they answered with no vote and no reason)"
            )
            raise CommitteeSilentError(
                f"PoV: every committee member answered {self.in_a_row} vote "
                "requests in a row without a valid vote, so nothing can be "
                "approved; the run "
                "stops (the ledger is valid up to its last block and a restart "
                f"resumes from it). The members' last answers: {reasons}"
            )
