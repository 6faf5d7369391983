"""The two liveness rules a run applies to each committee decision.

:mod:`.silence` stops a run after :data:`~.silence.SILENT_DECISIONS` vote
requests in a row that every member answered without a valid vote;
:mod:`.outage` stops it once no request has had a quorum of valid voters for
``pov-outage-limit`` seconds of grid time.
FedBuff's committee stage and the synchronous :class:`~.PoVStrategy` both
watch their decisions through :class:`CommitteeWatch`, so the same committee
failure ends either kind of run the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .committee import Committee
from .decision import CommitteeDecision
from .outage import OutageWatch
from .silence import SilenceWatch


@dataclass
class CommitteeWatch:
    """Silence and outage watches over one run's committee decisions."""

    outage: OutageWatch
    silence: SilenceWatch = field(default_factory=SilenceWatch)

    @classmethod
    def of(cls, committee: Committee) -> CommitteeWatch:
        """The watches for ``committee``: its outage limit, its members' nodes."""
        return cls(OutageWatch(committee.outage_limit, getattr(committee, "nodes", {})))

    def observe(self, decision: CommitteeDecision, *, sent: float, now: float) -> None:
        """Account for ``decision``, asked at ``sent`` and decided by ``now``
        on the grid's clock.

        Raises
        ------
        CommitteeSilentError
            The 5th request in a row that every member answered without a
            valid vote.
        CommitteeStalledError
            No request had a quorum of valid voters for more than the limit
            (:class:`~.outage.CommitteeUnreachableError` if a member did not
            answer the last one).
        """
        self.silence.observe(decision)
        self.outage.observe(decision, sent=sent, now=now)
