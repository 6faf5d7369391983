"""PoV for Flower's own synchronous strategies (FedAvg, Krum, FedMedian, ...)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from ..arrays import NDArrays, to_ndarrays
from ..ledger import Ledger, contributions
from ..ledger.canonical import (
    LATEST_FORMAT,
    encode,
    model_hash,
    sender_update_digest,
    sha256_hex,
)
from ..ledger.included import IncludedDigests
from ..ledger.rewards import model_step
from ..ledger.serverstate import ServerState
from ..ledger.trainers import TRAINER_FIELD
from ..ledger.wrapper import POV_WRAPPER, WRAPPER_FIELD
from ..protocol import TRAINER_RECORD
from ..runtime import Clock, clock_of
from ..strategies.claims import ClaimHistory
from ..strategies.decompress import DecompressReplies
from ..strategies.metricweights import evaluation_counts, with_counts
from ..strategies.snapshot import Snapshot
from ..strategies.trainercheck import TrainerCheck
from ..strategies.updates import ParsedUpdate, UpdateRejected, counted_metrics
from ..strategies.weighting import (
    DEFAULT_WEIGHTING,
    Claimed,
    ExampleWeighting,
    WeightingError,
    effective_examples,
)
from .committee import Committee
from .decision import Candidate, CommitteeDecision
from .headers import ViewGivenUp
from .views import carried_votes
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
    view given up (:class:`~.headers.ViewGivenUp`), and the round is decided
    again at the next view as FedBuff decides such a block again
    (:meth:`~.committee.Committee.decides_again`: at most ``committee_size``
    times per height, then the run stops): every candidate of the round is
    voted on again, as received (the wrapped strategy is handed copies it may
    change), and the wrapped strategy aggregates the newly approved replies
    from its state before the round (a deep copy of its attributes,
    taken before each round's decision; a strategy that cannot be copied
    stops the run there instead). The failed decision stays in
    :attr:`decisions` and counts for the committee watch.

    Train replies signed by their trainers (the client mod
    :func:`~flchain_flwr.mods.signreply_mod`) are held to FedBuff's rules
    (:mod:`~flchain_flwr.strategies.trainercheck`) before the committee sees
    them: a signature must verify over the sender's node id and the model the
    round sent, a node id whose signed update was included must sign with
    that key from then on, and a signed update is included once in the run;
    a reply that breaks them is rejected with its reason. Each included
    entry of a signed reply records its key as ``trainer``, which ``verify``
    checks.

    With a ``ledger``, each included reply is stored as received
    (:mod:`~flchain_flwr.ledger.payload`, as FedBuff stores them) and the
    settings are recorded in the genesis block, so ``verify --replay``
    checks each payload against its entry, its trainer signature and the
    block's contributions; the model, which the wrapped strategy
    aggregated, is not recomputed (:mod:`~flchain_flwr.ledger.replay`).

    A reply's ``weighted_by_key`` (its claimed example count) is bounded
    as FedBuff bounds it, by ``example_weighting`` over the run's claim
    history (:mod:`~flchain_flwr.strategies.weighting`), before the
    committee votes: the votes sign each candidate's share at its
    effective count, an approved reply reaches the wrapped strategy with
    ``weighted_by_key`` set to that count, and a block's entries
    (``num_examples``) and contributions use it; the block records the
    claim history (``server_state``) and each bounded claim is logged.

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
        self._round_rejected: list[dict[str, Any]] = []
        self._votes: list[dict[str, Any]] = []
        """Votes since the last block (carried over rounds that write none)."""
        self._view = 0
        self._view_changes: list[dict[str, Any]] = []
        self.trainers = TrainerCheck(require_signed_replies)
        """The trainer keys pinning node ids, and whether replies must be
        signed."""
        self._included = IncludedDigests()
        self.example_weighting = example_weighting or DEFAULT_WEIGHTING
        self.claims = ClaimHistory()
        """Each node's latest claimed example count (what the weighting reads)."""
        self._height = 0
        """The height of the last block (without a ledger, that it would have)."""
        self._settings: dict[str, Any] = {
            "strategy": type(strategy).__name__,
            WRAPPER_FIELD: POV_WRAPPER,  # a replay checks payloads, not the model
            "committee": repr(committee),
            "arrayrecord_key": arrayrecord_key,
            "weighted_by_key": weighted_by_key,
        }
        if require_signed_replies:  # as FedBuff records it: only when on
            self._settings["require_signed_replies"] = True
        if not isinstance(self.example_weighting, Claimed):  # Claimed: the old digest
            self._settings["example_weighting"] = self.example_weighting.spec
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
        candidates = self._signed(server_round, updates)
        before = self._saved() if self.ledger is not None else None
        failures = 0
        while True:
            try:
                return self._decide(server_round, errors, candidates)
            except ViewGivenUp as exc:
                assert before is not None  # only a ledger's block is signed
                failures += 1
                stop = before.strategy.problem or (
                    None
                    if self.committee.decides_again(exc, failures)
                    else f"{failures} views of the height were given up"
                )
                if stop is not None:
                    raise RuntimeError(
                        f"block {exc.height}: the leader of view {exc.view} did "
                        f"not sign the header and the view was given up; the run "
                        f"stops ({stop}), its ledger valid up to block "
                        f"{exc.height - 1}"
                    ) from exc
                self._restore(before)

    def _signed(
        self, server_round: int, updates: list[tuple[Message, ParsedUpdate]]
    ) -> list[_Taken]:
        """The round's valid updates as candidates, held to FedBuff's
        intake rules: each reply's trainer signature checked
        (:class:`~flchain_flwr.strategies.trainercheck.TrainerCheck`), a
        signed update the run included refused; the others are rejected
        with their reason. The sent model is hashed for a signed reply
        only. Each candidate's claim is observed and weighed
        (:meth:`_weighed`)."""
        assert self._sent is not None
        taken: list[_Taken] = []
        sent_hash: str | None = None  # hashed for the first signed reply only
        for reply, u in updates:
            node = reply.metadata.src_node_id
            digest = sender_update_digest(node, reply.content)
            signed = TRAINER_RECORD in reply.content
            if signed and sent_hash is None:
                sent_hash = model_hash(self._sent)
            try:
                trainer = self.trainers.check(
                    node, reply.content, sent_hash if signed else None, taken
                )
                problem = self._included.problem(digest) if trainer else None
                if problem is not None:
                    raise UpdateRejected(problem)
            except UpdateRejected as exc:
                self._reject(reply, server_round - 1, exc.reason, digest=digest)
                continue
            self.claims.observe(node, u.num_examples)
            candidate = Candidate(
                digest, node, u.delta, 1.0, float(u.num_examples), reply.content
            )
            taken.append(_Taken(reply, candidate, u, trainer))
        return self._weighed(server_round, taken)

    def _weighed(self, server_round: int, taken: list[_Taken]) -> list[_Taken]:
        """``taken`` at their effective example counts, as FedBuff weighs a
        buffer (:func:`~flchain_flwr.strategies.weighting.effective_examples`);
        the bounded claims logged, every one rejected with the reason if the
        counts cannot weigh a step."""
        if not taken:
            return taken
        claims = [t.update.num_examples for t in taken]
        try:
            counts = effective_examples(self.example_weighting, claims, self.claims)
        except WeightingError as exc:
            for t in taken:
                self._reject(
                    t.reply, server_round - 1, str(exc), digest=t.candidate.digest
                )
            return []
        bounded = [
            f"node {t.node_id} claims {claim:.12g}, counted as {count:.12g}"
            for t, claim, count in zip(taken, claims, counts, strict=True)
            if count < claim
        ]
        if bounded:
            log(
                WARNING,
                "Round %d, example weighting %s: %s",
                server_round,
                self.example_weighting.spec,
                "; ".join(bounded),
            )
        return [
            replace(t, candidate=replace(t.candidate, examples=count))
            for t, count in zip(taken, counts, strict=True)
        ]

    # pylint: disable=too-many-locals
    def _decide(
        self,
        server_round: int,
        errors: list[Message],
        candidates: list[_Taken],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """One decision on the round's ``candidates`` and what follows it:
        the wrapped strategy's aggregation and, with a new model, the block."""
        assert self._sent is not None
        sent, version = self._sent, server_round - 1
        context = self.committee.position(self.ledger, sent, server_round, self._view)
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
        self._votes = carried_votes(self._votes, self._view, decision)
        self._view = decision.view
        self._view_changes += decision.view_changes
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
            server_round,
            errors + [self._counted(t) for t in accepted],
        )
        if arrays is not None and accepted:  # a block: settle its votes, once
            extra, signer = self.committee.seal(
                decision.committee,
                self._votes,
                self._view,
                self._view_changes,
                ledger=self.ledger,
            )
            if self.ledger is not None:
                self.ledger.append(
                    **self._block(server_round, accepted, to_ndarrays(arrays)),
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
            self._votes, self._view, self._round_rejected = [], 0, []
            self._view_changes = []
        else:  # no block: the next one carries the rejections and their votes
            carried = {str(r["digest"]) for r in self._round_rejected}
            self._votes = [v for v in self._votes if v["candidate"] in carried]
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
        if not answered:  # nothing to weigh: the wrapped strategy's answer
            return self.strategy.aggregate_evaluate(server_round, valid)
        contents = [r.content for r in answered]
        try:
            counts = evaluation_counts(
                self.example_weighting, contents, self.weighted_by_key
            )
        except WeightingError as exc:
            log(WARNING, "Federated evaluation not aggregated: %s", exc)
            return None
        weighed = with_counts(contents, counts, self.weighted_by_key)
        for reply, content in zip(answered, weighed, strict=True):
            reply.content = content
        return self.strategy.aggregate_evaluate(server_round, valid)

    def _counted(self, taken: _Taken) -> Message:
        """An approved reply as the wrapped strategy takes it: full weights,
        ``weighted_by_key`` its effective count (in a copy of the record: the
        content as received, which was digested and voted on, is kept)."""
        reply = self._as_weights(taken.reply, taken.update, taken.candidate.content)
        holders = counted_metrics(reply.content, self.weighted_by_key)
        ((name, metrics),) = holders.items()
        counted = MetricRecord(dict(metrics))
        counted[self.weighted_by_key] = taken.candidate.examples
        reply.content = RecordDict(
            {k: counted if k == name else v for k, v in reply.content.items()}
        )
        return reply

    def _saved(self) -> _Before:
        """What a decision and its block change, as it is now (not the claim
        history: the round's claims were observed and weighed before)."""
        return _Before(
            list(self._votes),
            self._view,
            list(self._view_changes),
            list(self._round_rejected),
            len(self.rejected),
            Snapshot.of(self.strategy),
        )

    def _restore(self, before: _Before) -> None:
        """Undo a decision whose block was not written: its rejections (the
        round is voted on again), its votes and view (the next decision
        reads the view changes recorded since), and the wrapped strategy's
        aggregation. The decision stays in :attr:`decisions`."""
        self._votes, self._view = list(before.votes), before.view
        self._view_changes = list(before.view_changes)
        self._round_rejected = list(before.round_rejected)
        del self.rejected[before.rejected :]
        before.strategy.restore(self.strategy)

    def _block(
        self,
        server_round: int,
        accepted: list[_Taken],
        new: NDArrays,
    ) -> dict[str, Any]:
        assert self._sent is not None
        return {
            "model": new,
            "model_version": server_round,
            "base_version": server_round - 1,
            "config_digest": self._config_digest,
            "included": [_entry(t, server_round - 1) for t in accepted],
            "rejected": self._round_rejected,
            "votes": self._votes,
            "contributions": contributions(
                [t.node_id for t in accepted],
                [t.update.delta for t in accepted],
                [t.candidate.examples for t in accepted],
                model_step(new, self._sent),
            ),
            "payloads": [t.candidate.content for t in accepted],
            "server_state": ServerState(self.claims.entries()),
        }

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
        self._round_rejected.append(
            {
                "node_id": reply.metadata.src_node_id,
                "digest": digest
                or sender_update_digest(reply.metadata.src_node_id, reply.content),
                "trained_on": version,
                "reason": reason,
            }
        )


@dataclass(frozen=True)
class _Taken:
    """A reply put before the committee, with the trainer key that signed
    it (``None``: unsigned)."""

    reply: Message
    candidate: Candidate
    update: ParsedUpdate
    trainer: str | None

    @property
    def node_id(self) -> int:
        """The node that sent it."""
        return self.candidate.node_id


def _entry(taken: _Taken, trained_on: int) -> dict[str, Any]:
    """An included update's ledger entry (``trainer`` only for a signed
    reply, so that unsigned ones are recorded as they always were)."""
    entry: dict[str, Any] = {
        "node_id": taken.node_id,
        "digest": taken.candidate.digest,
        "trained_on": trained_on,
        "staleness": 0,
        "weight": 1.0,
        "num_examples": taken.candidate.examples,
    }
    if taken.trainer is not None:
        entry[TRAINER_FIELD] = taken.trainer
    return entry


@dataclass(frozen=True)
class _Before:
    """A :class:`PoVStrategy` before a round's decision (see ``_restore``)."""

    votes: list[dict[str, Any]]
    view: int
    view_changes: list[dict[str, Any]]
    round_rejected: list[dict[str, Any]]
    rejected: int
    """How many rejections :attr:`PoVStrategy.rejected` held."""
    strategy: Snapshot
