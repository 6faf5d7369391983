"""Deciding a batch: the members vote, and the view's leader confirms.

Each candidate is scored as the current global model plus the step it would
contribute to the aggregate (``share * delta``, its share of the block's
weighted sum over the candidates approved with it, see
:func:`~flchain_flwr.ledger.consensus.judged_shares`; ``scoring="full"``
applies the whole delta instead), against the
current global model on the same verifier's data. With non-IID data a single
honest update applied in full is often worse on balanced test data than the
global model (measured: a median 11 points on Fashion-MNIST, Dirichlet 0.5), so
scoring the full delta rejects honest work; its share is what the block would
actually do. Each vote signs that share, so when some candidates are
rejected the others (whose shares grow) are judged again at their new shares,
until every approved candidate was approved at the share the block applies
(before trust weighting, see :mod:`~flchain_flwr.pov.trust`).
Candidate models are built once per pass and shared by the committee; each
verifier scores the global model once and every candidate once per pass.

A decision is taken in the first view whose leader is ready
(:meth:`~.views.Views.choose_view`); when it approves some candidates (a
block will follow) that leader must confirm it still leads once the votes
are in, or the members certify a view change and the decision is taken again
in the next view; so it is when the votes say that too few members can
still sign a header in that view (:func:`~.views.passed_over`: a restarted
server starts each height at view 0, where its members may have signed view
changes before), and they sign that view change again. Each view change
is recorded beside the ledger, and a restarted server goes on after the
views recorded as given up at the height (:mod:`.viewrecord`). The tally is
:mod:`.tally`'s; in-process members vote through :mod:`.localvotes` (a remote
committee asks its nodes instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..arrays import NDArrays
from ..ledger import Ledger, PoVRules, VoteContext
from .decision import Candidate, Cast, CommitteeDecision
from .filters import Prefilter
from .judging import Rule
from .localvotes import in_process_votes
from .tally import decide_batch
from .viewrecord import recorded_view_changes
from .views import Views, passed_over, view_stays


class Deciding(Views):
    """How a committee decides a batch (mixed into
    :class:`~flchain_flwr.pov.Committee`): ask the members for votes, tally
    them, and move to the next view when the leader cannot lead."""

    rules: PoVRules
    rule: Rule
    prefilters: tuple[Prefilter, ...]

    def cast_votes(
        self,
        members: Sequence[str],
        *,
        context: VoteContext,
        global_model: NDArrays,
        candidates: Sequence[Candidate],
        weights: Sequence[float],
    ) -> Cast:
        """Ask each member to vote on ``candidates`` at ``weights`` (their
        shares); in-process members always answer (a raise is a refusal).

        Votes come back unchecked; :meth:`decide` keeps only valid ones. A
        member that fails or refuses simply has no votes (which costs it nothing:
        only a signed vote contradicting the outcome is slashed).
        """
        return in_process_votes(
            self.verifiers,
            members,
            context=context,
            global_model=global_model,
            candidates=candidates,
            weights=weights,
            rule=self.rule,
        )

    # pylint: disable=too-many-arguments,too-many-locals
    def decide(
        self,
        *,
        context: VoteContext,
        global_model: NDArrays,
        candidates: Sequence[Candidate],
        round_: int,
        server_lr: float = 1.0,
        ledger: Ledger | None = None,
    ) -> CommitteeDecision:
        """Filter, score and vote on ``candidates`` for the block in ``context``
        (from :meth:`~flchain_flwr.pov.Committee.position`; its view is where
        the search for a ready leader starts). Each candidate is judged at the
        share the block would apply with ``server_lr`` over the candidates
        approved with it.

        When some are approved (a block will follow) the view's leader must
        confirm it still leads (:meth:`leader_ready`) once the votes are in;
        if it cannot, or too few members can still sign a header in this
        view (:func:`~.views.passed_over`: after a restart, members that
        gave it up before), the decision is taken again in the next view, at
        most ``committee_size`` times: the last view tried is not given up
        (:func:`~.views.view_stays`), so the certificates the decision carries
        are exactly those of the views before its own. With the chain's
        ``ledger``, each view change is recorded beside it, and views it
        records as given up at this height (by a server that then stopped)
        are skipped with their certificates (:mod:`.viewrecord`).
        """
        if context.prev_hash is None:
            raise ValueError("a committee decides in a format-2 vote context")
        certificates: list[dict[str, Any]] = []
        if ledger is not None:
            recorded = recorded_view_changes(ledger, self.state, context)
            if len(recorded) > context.view:
                certificates = recorded[context.view :]
                context = replace(context, view=len(recorded))
        attempts = max(1, self.rules.committee_size)
        for attempt in range(attempts):
            decision = self._decide_in_view(
                context, global_model, candidates, round_, server_lr, ledger
            )
            certificates += decision.view_changes
            decision.view_changes = list(certificates)
            if not decision.committee or not any(o.accepted for o in decision.outcomes):
                return decision
            assert decision.context is not None
            problem = passed_over(
                decision.committee, decision.moved_past
            ) or self.leader_ready(decision.committee[0], decision.context)
            if problem is None:
                return decision
            if attempt == attempts - 1:
                view_stays(
                    decision.context, decision.committee, f"{problem} after the votes"
                )
                return decision
            certificate = self.give_up(
                decision.context,
                decision.committee,
                f"{problem} after the votes",
                ledger,
            )
            if certificate is None:
                return decision
            certificates.append(certificate)
            context = replace(decision.context, view=decision.view + 1)
        raise AssertionError("unreachable: the last attempt returns")

    # pylint: disable=too-many-arguments,too-many-locals
    def _decide_in_view(
        self,
        context: VoteContext,
        global_model: NDArrays,
        candidates: Sequence[Candidate],
        round_: int,
        server_lr: float,
        ledger: Ledger | None,
    ) -> CommitteeDecision:
        """One decision: the first ready leader's view from ``context.view``."""
        members: list[str] = []
        certificates: list[dict[str, Any]] = []
        if self.state.pool:
            context, members, certificates = self.choose_view(context, ledger)

        def ask(batch: Sequence[Candidate], weights: Sequence[float]) -> Cast:
            return self.cast_votes(
                members,
                context=context,
                global_model=global_model,
                candidates=batch,
                weights=weights,
            )

        return decide_batch(
            context,
            members,
            certificates,
            candidates,
            prefilters=self.prefilters,
            round_=round_,
            server_lr=server_lr,
            ask=ask,
            trust_weighting=self.rule.trust_weighting,
        )
