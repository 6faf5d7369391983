"""A committee that stays unreachable stops the run, instead of asking on.

:mod:`.silence` stops a run whose members answer without voting, and ignores
members that give no answer at all (no reply in time, node gone, message
unavailable): an outage may pass. Without a bound, a FedBuff run whose
verifier nodes are all gone for good asks again at every full buffer until
its idle ``timeout`` (3600 s by default) ends it with a warning and a result
that looks like a short run. :class:`OutageWatch` bounds the outage on the
grid's clock (virtual in simulation, monotonic wall time in deployment): once
no vote request has been answered by a quorum of the committee for more than
``limit`` seconds, it raises :class:`CommitteeUnreachableError` naming the
members that did not answer. A request that a quorum answered with valid
votes ends the outage, and so does one that every member answered (refusals
alike: that is :mod:`.silence`'s business); one that some member missed while
too few of the others voted validly to approve anything does not. The ledger
is then valid up to its last block, and a restart resumes from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .committee import CommitteeDecision

OUTAGE_LIMIT = 1800.0
"""Default seconds of grid time without a quorum answering before the run
stops. Long enough for a host restart or a partition that heals (minutes),
and 15 vote rounds at the default ``pov-remote-timeout`` of 120 s; half of
FedBuff's default idle ``timeout`` (3600 s), so a permanent outage ends with
this error rather than the quiet idle stop."""


class CommitteeUnreachableError(RuntimeError):
    """No vote request reached a quorum of the committee for too long."""


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
    """Times the stretch of vote requests that fewer than a quorum answered."""

    limit: float | None = OUTAGE_LIMIT
    nodes: Mapping[str, int] = field(default_factory=dict)
    """Each remote member's node id, to name it (none for in-process ones)."""
    since: float | None = None
    """When the first request of the current outage was sent (grid clock)."""

    def observe(self, decision: CommitteeDecision, *, sent: float, now: float) -> None:
        """Account for ``decision``, asked at ``sent`` and decided by ``now``
        (grid clock); raise :class:`CommitteeUnreachableError` once the outage
        has lasted more than ``limit``. A decision that asked nobody (every
        candidate filtered before the vote) leaves the outage as it is; an
        empty pool is one."""
        members = decision.committee
        if members:
            if not (decision.votes or decision.dropped_votes or decision.unreachable):
                return  # no request was sent
            # a quorum could approve, or all answered (then see .silence)
            if self._voters(decision) >= decision.needed or not decision.unreachable:
                self.since = None
                return
        if self.since is None:
            self.since = sent
        if self.limit is not None and now - self.since > self.limit:
            raise CommitteeUnreachableError(self._message(decision, now))

    @staticmethod
    def _answered(decision: CommitteeDecision) -> int:
        return len(set(decision.committee) - set(decision.unreachable))

    @staticmethod
    def _voters(decision: CommitteeDecision) -> int:
        return len({str(v["verifier"]) for v in decision.votes})

    def _name(self, key: str) -> str:
        node = self.nodes.get(key)
        return f"{key[:12]}…" + ("" if node is None else f" (node {node})")

    def _message(self, decision: CommitteeDecision, now: float) -> str:
        assert self.since is not None
        if decision.committee:
            gone = dict.fromkeys(decision.unreachable)
            reasons = "; ".join(dict.fromkeys(decision.dropped_votes))
            who = (
                f"{self._answered(decision)} of {len(decision.committee)} members "
                f"answered, quorum {decision.needed}; unreachable: "
                f"{', '.join(self._name(k) for k in gone)}; valid votes from "
                f"{self._voters(decision)}; last answers: {reasons}"
            )
        else:
            who = "no verifier is left in the pool"
        return (
            f"PoV: no vote request has reached a quorum of the committee since "
            f"grid time {self.since:.1f} s, {now - self.since:.0f} s ago, past "
            f"the outage limit of {self.limit:g} s ({who}). The run stops: the "
            "ledger is valid up to its last block, and a restart resumes from "
            "it once the verifier nodes are back."
        )
