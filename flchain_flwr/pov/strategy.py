"""PoV for Flower's own synchronous strategies (FedAvg, Krum, FedMedian, ...)."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..arrays import to_ndarrays
from ..ledger import Ledger
from ..ledger.canonical import LATEST_FORMAT, encode, sender_update_digest, sha256_hex
from ..ledger.included import IncludedDigests
from ..runtime import Clock, clock_of
from ..strategies.claims import ClaimHistory
from ..strategies.decompress import DecompressReplies
from ..strategies.trainercheck import TrainerCheck
from ..strategies.updates import ParsedUpdate
from ..strategies.weighting import (
    DEFAULT_WEIGHTING,
    ExampleWeighting,
    WeightingError,
)
from .committee import Committee
from .decision import CommitteeDecision
from .headers import ViewGivenUp
from .syncblock import NextBlock, settings
from .syncclaims import counted, weigh_evaluations, weighed
from .syncintake import Taken, signed
from .syncretry import Before, stop_error
from .watch import CommitteeWatch


class PoVStrategy(DecompressReplies):
    """Wrap a Flower strategy so each round's updates pass a PoV committee first.

    Every train reply is validated against the model sent (dense or sparse, as
    by :class:`~flchain_flwr.strategies.DecompressReplies`, which this extends)
    and put before the committee; only updates approved by more than 2/3 of the
    round's committee reach the wrapped strategy's ``aggregate_train``, as full
    weights. Rejected updates are kept
    in :attr:`rejected` with their reason and votes, decisions in
    :attr:`decisions`; with a ``ledger`` every round with a new model is a block
    signed by the round's leader::

        strategy = PoVStrategy(FedAvg(fraction_evaluate=0.0), committee)

    Its decisions are watched as FedBuff's are (:mod:`~flchain_flwr.pov.watch`):
    5 rounds in a row that every member answered without a valid vote, or no
    quorum of valid voters for the committee's ``outage_limit`` on the grid's
    clock, stop the run with an error. The round count bounds a synchronous
    run's time but not its waste: past f < n/3 every remaining round would
    train every node and reject every update, and the run would end with the
    last approved model as if it had trained, with only warnings to tell.

    A block whose leader confirmed its lead but then signs no header has its
    view given up, and the round is decided again at the next view as FedBuff
    decides such a block again, the wrapped strategy from its state before the
    round (:mod:`~flchain_flwr.pov.syncretry`); the failed decision stays in
    :attr:`decisions` and counts for the committee watch.

    Train replies signed by their trainers (the client mod
    :func:`~flchain_flwr.mods.signreply_mod`) are held to FedBuff's rules
    before the committee sees them, a reply that breaks them rejected with its
    reason (:mod:`~flchain_flwr.pov.syncintake`). A reply's claimed example
    count (``weighted_by_key``) is bounded by ``example_weighting`` over the
    run's claim history, as FedBuff bounds it, before the committee votes:
    the votes, the wrapped strategy and the block take each reply at its
    effective count (:mod:`~flchain_flwr.pov.syncclaims`).

    With a ``ledger``, the settings are recorded in the genesis block and each
    included reply is stored as received (:mod:`~flchain_flwr.pov.syncblock`),
    so ``verify --replay`` checks each payload against its entry, its trainer
    signature and the block's contributions; the model, which the wrapped
    strategy aggregated, is not recomputed (:mod:`~flchain_flwr.ledger.replay`).

    Parameters
    ----------
    strategy : Strategy
        The strategy to wrap. The wrapper runs Flower's synchronous loop around
        its methods.
    committee : Committee
        The verifier pool and rules (:class:`~flchain_flwr.pov.Committee`).
    ledger : Ledger | str | Path | None (default: None)
        Record each round as a PoV block (a fresh ledger only: sync runs are not
        resumed from it).
    arrayrecord_key, weighted_by_key : str
        As in Flower's FedAvg.
    require_signed_replies : bool (default: False)
        Reject every train reply that is not signed by its trainer, as
        FedBuff's option of that name does.
    example_weighting : ExampleWeighting (default: capped at a multiple of the
        median recent claim, ``MedianCapped(4.0, 1000)``)
        How a reply's claimed example count becomes the count the committee
        judges it at and the wrapped strategy weighs it by, as FedBuff's
        option of that name; ``Claimed()`` hands claims on as sent (the
        behaviour before it, and its config digest).
    """

    def __init__(
        self,
        strategy: Strategy,
        committee: Committee,
        *,
        ledger: Ledger | str | Path | None = None,
        arrayrecord_key: str = "arrays",
        weighted_by_key: str = "num-examples",
        require_signed_replies: bool = False,
        example_weighting: ExampleWeighting | None = None,
    ) -> None:
        if committee.trust_weighting:
            raise ValueError(
                "PoVStrategy hands approved updates to the wrapped strategy's own "
                "aggregation, which cannot weigh them by trust: use FedBuff"
            )
        super().__init__(
            strategy, arrayrecord_key=arrayrecord_key, weighted_by_key=weighted_by_key
        )
        self.committee = committee
        committee.parse_keys = (arrayrecord_key, weighted_by_key)
        self.ledger = (
            ledger if ledger is None or isinstance(ledger, Ledger) else Ledger(ledger)
        )
        if self.ledger is not None and len(self.ledger):
            raise ValueError(f"ledger {self.ledger.path} is not empty")
        self.decisions: list[CommitteeDecision] = []
        self._watch = CommitteeWatch.of(committee)
        self._clock: Clock | None = None
        self._next = NextBlock()
        self.trainers = TrainerCheck(require_signed_replies)
        """The trainer keys pinning node ids, and whether replies must be
        signed."""
        self._included = IncludedDigests()
        self.example_weighting = example_weighting or DEFAULT_WEIGHTING
        self.claims = ClaimHistory()
        """Each node's latest claimed example count (what the weighting reads)."""
        self._height = 0
        """The height of the last block (without a ledger, that it would have)."""
        self._settings = settings(
            strategy,
            committee,
            (arrayrecord_key, weighted_by_key),
            require_signed_replies,
            self.example_weighting,
        )
        self._config_digest = (
            self.ledger.config_digest(self._settings)
            if self.ledger is not None
            else sha256_hex(encode(LATEST_FORMAT, self._settings))
        )

    def summary(self) -> None:
        """Log the committee and the wrapped strategy."""
        inner = type(self.strategy).__name__
        log(INFO, "\t├──> PoV %s around %s", self.committee, inner)
        log(INFO, "\t├──> Example weighting: %s", self.example_weighting.spec)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the model sent (and put it in the genesis block), delegate."""
        messages = super().configure_train(server_round, arrays, config, grid)
        self._clock = self._clock or clock_of(grid)
        if self.ledger is not None and self.ledger.head() is None:
            assert self._sent is not None
            self.ledger.append(
                model=self._sent,
                model_version=0,
                base_version=0,
                config_digest=self._config_digest,
                config=self._settings,
                extra=self.committee.genesis_fields(1.0),
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, let the committee vote, hand approved replies on; decide
        the round again when its block's leader signs no header (see the
        class docstring)."""
        errors, updates = self._decode(server_round, replies)
        candidates = self._candidates(server_round, updates)
        before = (
            Before.of(self._next, self.rejected, self.strategy)
            if self.ledger is not None
            else None
        )
        failures = 0
        while True:
            try:
                return self._decide(server_round, errors, candidates)
            except ViewGivenUp as exc:
                assert before is not None  # only a ledger's block is signed
                failures += 1
                stop = stop_error(exc, failures, before, self.committee)
                if stop is not None:
                    raise stop from exc
                self._next = before.restore(self.rejected, self.strategy)

    def _candidates(
        self, server_round: int, updates: list[tuple[Message, ParsedUpdate]]
    ) -> list[Taken]:
        """The round's valid updates as candidates at their effective counts
        (:mod:`.syncintake`, :mod:`.syncclaims`); the others rejected with
        their reason, every one if the counts cannot weigh a step."""
        assert self._sent is not None
        version = server_round - 1
        taken, refused = signed(updates, self._sent, self.trainers, self._included)
        for reply, reason, digest in refused:
            self._reject(reply, version, reason, digest=digest)
        try:
            return weighed(server_round, taken, self.example_weighting, self.claims)
        except WeightingError as exc:
            for t in taken:
                self._reject(t.reply, version, str(exc), digest=t.candidate.digest)
            return []

    def _decide(
        self, server_round: int, errors: list[Message], candidates: list[Taken]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One decision on the round's ``candidates`` and what follows it:
        the wrapped strategy's aggregation and, with a new model, the block."""
        assert self._sent is not None
        sent, version = self._sent, server_round - 1
        context = self.committee.position(
            self.ledger, sent, server_round, self._next.view
        )
        assert self._clock is not None
        asked = self._clock.now()
        decision = self.committee.decide(
            context=context,
            global_model=sent,
            candidates=[t.candidate for t in candidates],
            round_=version,
            ledger=self.ledger,
        )
        self.decisions.append(decision)
        self._watch.observe(decision, sent=asked, now=self._clock.now())
        self._next.decided(decision)
        accepted = []
        for taken, outcome in zip(candidates, decision.outcomes, strict=True):
            if outcome.accepted:
                accepted.append(taken)
            else:
                digest = taken.candidate.digest
                self._reject(
                    taken.reply,
                    version,
                    outcome.reason,
                    decision.votes_on(digest),
                    digest,
                )
        if not accepted:
            log(WARNING, "PoV rejected every update of round %d", server_round)
        arrays, metrics = self.strategy.aggregate_train(
            server_round, errors + [self._counted(t) for t in accepted]
        )
        if arrays is not None and accepted:  # a block: settle its votes, once
            block = self._next
            extra, signer = self.committee.seal(
                decision.committee,
                block.votes,
                block.view,
                block.view_changes,
                ledger=self.ledger,
            )
            if self.ledger is not None:
                self.ledger.append(
                    **block.body(
                        server_round,
                        accepted,
                        to_ndarrays(arrays),
                        sent,
                        self._config_digest,
                        self.claims,
                    ),
                    extra=extra,
                    signer=signer,
                )
            elif signer.on_quorum is not None:  # no ledger, no header to sign
                signer.on_quorum()
            self._height += 1  # the block is written: pin its trainers
            self.trainers.included(accepted)
            self._included.add(
                self._height, (t.candidate.digest for t in accepted if t.trainer)
            )
            self._next = NextBlock()
        else:  # no block: the next one carries the rejections and their votes
            self._next.carry()
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Drop malformed evaluate replies; hand the rest to the wrapped
        strategy with each claimed count through ``example_weighting``, as
        FedBuff weighs a federated evaluation
        (:func:`~flchain_flwr.strategies.metricweights.evaluation_counts`);
        counts that cannot weigh an average leave the round unevaluated."""
        valid = self._valid_evaluations(replies)
        answered = [r for r in valid if not r.has_error()]
        try:
            weigh_evaluations(answered, self.example_weighting, self.weighted_by_key)
        except WeightingError as exc:
            log(WARNING, "Federated evaluation not aggregated: %s", exc)
            return None
        return self.strategy.aggregate_evaluate(server_round, valid)

    def _counted(self, taken: Taken) -> Message:
        """An approved reply as the wrapped strategy takes it: full weights,
        ``weighted_by_key`` its effective count (:func:`.syncclaims.counted`)."""
        reply = self._as_weights(taken.reply, taken.update, taken.candidate.content)
        reply.content = counted(
            reply.content, self.weighted_by_key, taken.candidate.examples
        )
        return reply

    # pylint: disable=too-many-arguments
    def _reject(
        self,
        reply: Message,
        version: int,
        reason: str,
        votes: list[dict[str, Any]] | None = None,
        digest: str | None = None,
    ) -> None:
        """Record the rejection, also for this round's block."""
        super()._reject(reply, version, reason, votes)
        node = reply.metadata.src_node_id
        digest = digest or sender_update_digest(node, reply.content)
        self._next.reject(node, digest, version, reason)
