"""A committee that cannot reach a quorum stops the run, instead of asking on.

A vote request approves nothing unless more than 2/3 of the committee cast a
valid vote on it. Members fall short of that in three ways: they do not
answer (no reply in time, node gone, message unavailable), they answer with a
refusal, a failure or no vote at all, or their votes are invalid (bad
signature, wrong context). Past f < n/3 faulty members (2 of 4, say) no
request can reach the quorum; without a bound, a FedBuff run then asks again
at every full buffer until its idle ``timeout`` (3600 s by default) ends it
with a warning and a result that looks like a short run, and a synchronous
:class:`~.PoVStrategy` rejects every update of every remaining round.

:class:`OutageWatch` bounds that stretch on the grid's clock (virtual in
simulation, monotonic wall time in deployment), whatever its cause: once no
vote request has been answered by a quorum of valid voters for more than
``limit`` seconds, it raises :class:`CommitteeStalledError` naming the members
that voted, those that refused or voted invalidly (with their last answers)
and those that did not answer, or :class:`CommitteeUnreachableError` (a
subclass, the older name) when some member did not answer the last request.
A request with a quorum of valid voters ends the stretch, whatever their
verdicts (a committee rejecting poison is working). One that every member
answered without a single valid vote counts, but is left to :mod:`.silence` to
stop (after 5 in a row, however long the limit), so this watch never raises on
it. A short outage (shorter than ``limit``) passes, and so do flaky members as
long as each request still reaches a quorum.

What the watch cannot tell apart: members that are faulty for good from ones
that will come back just after the limit, and a refusal by a faulty member
from one by an honest member that was sent an inconsistent request; the
message lists the answers so that an operator can. A third or more of the
members signing a rejection of every update is no stall to it: each request
has its quorum of valid voters, as a committee rejecting poison has. The
ledger is then valid up to its last block, and a restart resumes from it once
more than 2/3 of the committee answer with valid votes again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .decision import CommitteeDecision

OUTAGE_LIMIT = 1800.0
"""Default seconds of grid time without a quorum of valid voters before the
run stops. Long enough for a host restart or a partition that heals
(minutes), and 15 vote rounds at the default ``pov-remote-timeout`` of 120 s;
half of FedBuff's default idle ``timeout`` (3600 s), so a committee that
cannot approve anything ends the run with this error rather than the quiet
idle stop."""


class CommitteeStalledError(RuntimeError):
    """No vote request reached a quorum of valid voters for too long."""


class CommitteeUnreachableError(CommitteeStalledError):
    """A stall in which some member did not answer the last request at all
    (or no verifier was left in the pool)."""


def checked_outage_limit(limit: float | None) -> float | None:
    """``limit`` in seconds, or ``None`` to wait for ever (``None``, 0 or inf).

    Raises
    ------
    ValueError
        If ``limit`` is negative or NaN.
    """
    if limit is None:
        return None
    if math.isnan(limit) or limit < 0:
        raise ValueError(
            f"outage_limit must be seconds >= 0 (0 or None: wait for ever), "
            f"not {limit!r}"
        )
    return float(limit) if 0 < limit < math.inf else None


@dataclass
class OutageWatch:
    """Times the stretch of vote requests without a quorum of valid voters."""

    limit: float | None = OUTAGE_LIMIT
    nodes: Mapping[str, int] = field(default_factory=dict)
    """Each remote member's node id, to name it (none for in-process ones)."""
    since: float | None = None
    """When the first request of the current stretch was sent (grid clock)."""

    def observe(self, decision: CommitteeDecision, *, sent: float, now: float) -> None:
        """Account for ``decision``, asked at ``sent`` and decided by ``now``
        (grid clock); raise :class:`CommitteeStalledError` once the stretch
        has lasted more than ``limit``. A decision that asked nobody (every
        candidate filtered before the vote) leaves the stretch as it is; an
        empty pool is one."""
        members = decision.committee
        if members:
            if not vote_requested(decision):
                return
            if len(_voters(decision)) >= decision.needed:
                self.since = None
                return
        if self.since is None:
            self.since = sent
        if self.limit is None or now - self.since <= self.limit:
            return
        if members and not (decision.votes or decision.unreachable):
            return  # every member answered, none validly: .silence stops it
        error = (
            CommitteeUnreachableError
            if decision.unreachable or not members
            else CommitteeStalledError
        )
        raise error(self._message(decision, now))

    def _names(self, keys: Iterable[str]) -> str:
        names = []
        for key in keys:
            node = self.nodes.get(key)
            names.append(f"{key[:12]}…" + ("" if node is None else f" (node {node})"))
        return ", ".join(names) or "none"

    def _message(self, decision: CommitteeDecision, now: float) -> str:
        assert self.since is not None
        cause = "Nothing can be approved"
        who = "no verifier is left in the pool"
        if decision.committee:
            unreachable, voting = set(decision.unreachable), _voters(decision)
            gone = [k for k in decision.committee if k in unreachable]
            voters = [k for k in decision.committee if k in voting]
            refused = [k for k in decision.committee if k not in unreachable | voting]
            reasons = "; ".join(dict.fromkeys(decision.dropped_votes))
            who = (
                f"{len(decision.committee) - len(gone)} of "
                f"{len(decision.committee)} members answered, quorum "
                f"{decision.needed}; valid votes from {len(voters)}: "
                f"{self._names(voters)}; refused or voted invalidly: "
                f"{self._names(refused)}; unreachable: {self._names(gone)}; "
                f"last answers: {reasons or 'none'}"
            )
            cause = (
                "At least a third of the members cast no valid vote, more than "
                "a committee tolerates, so nothing can be approved"
            )
        return (
            f"PoV: no vote request has reached a quorum of valid voters since "
            f"grid time {self.since:.1f} s, {now - self.since:.0f} s ago, past "
            f"the outage limit of {self.limit:g} s ({who}). {cause}; the run "
            "stops: the ledger is valid up to its last block, and a restart "
            "resumes from it once more than 2/3 of the committee answer with "
            "valid votes again."
        )


def vote_requested(decision: CommitteeDecision) -> bool:
    """Whether ``decision`` asked its members to vote: the committee counted a
    request, or the decision holds votes, reasons or members that did not
    answer (decisions built without the count). Members that answer with no
    vote and no reason at all leave only the count; a decision whose
    candidates were all ruled out before the vote (duplicates, a prefilter)
    or that had no member asked nobody."""
    if not decision.committee:
        return False
    return decision.requests > 0 or bool(
        decision.votes or decision.dropped_votes or decision.unreachable
    )


def _voters(decision: CommitteeDecision) -> set[str]:
    """The members with at least one valid vote in ``decision``."""
    return {str(v["verifier"]) for v in decision.votes}
