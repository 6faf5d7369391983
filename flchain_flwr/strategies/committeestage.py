"""The PoV committee as a block-pipeline stage, and its decisions' summary.

:class:`CommitteeStage` comes first among the stages
(:func:`~.runpipeline.block_pipeline`): it lets the committee vote on the
buffered updates, keeps the approved ones, and seals each committed block for
the ledger stage (:mod:`.ledgerstage`) to append. :func:`decision_summary` is
what the run's result keeps of each decision.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO, WARNING
from typing import Any

from flwr.supercore import log

from ..pov.committee import Committee
from ..pov.decision import Candidate, CommitteeDecision
from ..pov.trust import TrustError, weigh_by_trust
from ..pov.views import carried_votes
from ..pov.watch import CommitteeWatch
from ..runtime import Clock
from .block import Block, RejectFn, Rejection
from .ledgerstage import LedgerStage
from .pipeline import BlockStage


class CommitteeStage(BlockStage):
    """The PoV committee: votes on each update at the share it will have.

    Votes and the committee accumulate until a block is committed (a buffer
    whose every update is rejected makes no block); deposits settle once per
    committed block, and the block's leader and more than 2/3 of its
    committee sign it. A leader that is not
    ready hands the height over to the next view's (see
    :meth:`~flchain_flwr.pov.Committee.choose_view`); votes carried from an
    earlier view are dropped, since they sign their view.
    """

    needs_digest = True

    def __init__(
        self,
        committee: Committee,
        *,
        clock: Clock,
        server_lr: float,
        ledger: LedgerStage | None,
        on_decision: Callable[[CommitteeDecision], None] | None = None,
    ) -> None:
        self.committee = committee
        self.needs_payload = committee.needs_payloads  # a remote one sends them
        self.clock = clock
        self.server_lr = server_lr
        self.ledger = ledger
        self.on_decision = on_decision
        self._committee: list[str] = []
        self._votes: list[dict[str, Any]] = []
        self._view = 0
        self._view_changes: list[dict[str, Any]] = []
        self._watch = CommitteeWatch.of(committee)

    def filter(self, block: Block, reject: RejectFn) -> None:
        """Let the committee vote; keep the approved updates."""
        context = self.committee.position(
            self.ledger.ledger if self.ledger else None,
            block.parent,
            block.version,
            self._view,
        )
        sent = self.clock.now()
        decision = self.committee.decide(
            context=context,
            global_model=block.parent,
            candidates=[
                Candidate(
                    u.digest,
                    u.node_id,
                    u.update.delta,
                    u.weight,
                    u.examples,
                    u.content,
                    u.base,
                )
                for u in block.updates
            ],
            round_=block.version - 1,
            server_lr=self.server_lr,
            ledger=self.ledger.ledger if self.ledger else None,
        )
        advance = getattr(self.clock, "advance", None)
        if self.committee.consensus_delay > 0 and callable(advance):
            advance(self.committee.consensus_delay)
        for reason in decision.dropped_votes:
            log(WARNING, "PoV: %s", reason)
        # stops a run no member votes in, or no quorum votes in for too long
        self._watch.observe(decision, sent=sent, now=self.clock.now())
        self._votes = carried_votes(self._votes, self._view, decision)
        self._committee, self._view = decision.committee, decision.view
        self._view_changes += decision.view_changes
        if self.on_decision is not None:
            self.on_decision(decision)
        kept = []
        for u, outcome in zip(block.updates, decision.outcomes, strict=True):
            if outcome.accepted:
                kept.append(u)
            else:
                reject(
                    Rejection(
                        u.node_id,
                        u.trained_on,
                        outcome.reason,
                        u.digest,
                        decision.votes_on(u.digest),
                    )
                )
        if kept and self.committee.trust_weighting:
            try:  # with the votes the block will hold
                weigh_by_trust(kept, self._votes, len(self._committee))
            except TrustError as exc:
                # their approvals must not reach a block that leaves them out
                dropped = {u.digest for u in kept}
                self._votes = [v for v in self._votes if v["candidate"] not in dropped]
                for u in kept:
                    reason = f"trust weighting: {exc}"
                    reject(Rejection(u.node_id, u.trained_on, reason, u.digest))
                kept = []
        block.updates = kept
        if not kept:
            log(INFO, "PoV rejected every candidate; no new version")

    def redo(self, error: Exception, failures: int) -> bool:
        """Decide the block again (every candidate voted on again, see
        :meth:`~.pipeline.Pipeline.run`) when its leader did not sign the
        header and its view was given up, at most ``committee_size`` times
        (:meth:`~flchain_flwr.pov.Committee.decides_again`; a run that stops
        there resumes at the next view)."""
        return self.committee.decides_again(error, failures)

    def commit(self, block: Block) -> None:
        """Seal this block: its deposits settle once it has its header quorum
        (at once without a ledger); its leader and committee sign it."""
        sealed, signer = self.committee.seal(
            self._committee,
            self._votes,
            self._view,
            self._view_changes,
            ledger=self.ledger.ledger if self.ledger else None,
        )
        block.signer = signer
        if self.ledger is None and signer.on_quorum is not None:
            signer.on_quorum()  # no ledger, no header to sign
        block.extra = {**(block.extra or {}), **sealed}
        block.votes, self._votes, self._view = self._votes, [], 0
        self._view_changes = []


def decision_summary(decision: CommitteeDecision, time_: float) -> dict[str, object]:
    """A committee decision as a JSON-friendly summary for the run's result."""
    return {
        "height": decision.height,
        "view": decision.view,  # a view given up and the next share a height
        "time": time_,
        "committee": decision.committee,
        "needed": decision.needed,
        "accepted": sum(o.accepted for o in decision.outcomes),
        "rejected": sum(not o.accepted for o in decision.outcomes),
        "dropped_votes": decision.dropped_votes,
    }
