"""The update buffer: when it triggers, and how a triggered buffer becomes a version.

Accepted updates wait here; the buffer triggers when it holds K updates
(``buffer_full``), when ``max_wait`` has passed since its first update
(``max_wait``), or when nothing else can arrive (``drained``). A triggered buffer
goes through the block pipeline; a new version is recorded in the run's result.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.supercore import log

from ..arrays import NDArrays, to_arrayrecord
from ..ledger.included import IncludedDigests
from ..protocol import TRAINER_RECORD, UPDATE_KIND_DELTA
from .block import Block, BufferedUpdate, Rejection
from .candidates import candidates_record
from .claims import ClaimHistory
from .fairness import FAIRNESS_FIELD, InverseParticipation, count_participation
from .metrics import train_reply_metrics
from .nova import WORK_FIELD, WorkNormalisation
from .pipeline import Pipeline
from .result import AsyncResult, RejectedUpdate, VersionRecord
from .staleness import StalenessFn
from .traffic import Traffic
from .trainercheck import TrainerCheck
from .tuning import BUFFER_FIELD, BufferTuner
from .updates import ParsedUpdate, UpdateRejected, update_kind
from .versions import VersionStore
from .weighting import ExampleWeighting, WeightingError, effective_examples

TRIGGER_BUFFER_FULL = "buffer_full"
TRIGGER_MAX_WAIT = "max_wait"
TRIGGER_DRAINED = "drained"

ParseFn = Callable[[RecordDict, NDArrays, int], ParsedUpdate]


class UpdateBuffer:
    """Buffered updates of one run, its triggers and its global versions.

    Parameters
    ----------
    store : VersionStore
        The current version and the older ones replies may still need.
    num_versions : int
        Versions to make before the run completes.
    buffer_size, max_wait, staleness_fn, max_staleness
        As in :class:`~flchain_flwr.strategies.FedBuff`.
    weighting : ExampleWeighting
        How claimed example counts become weights; ``claims`` is the run's
        history of them.
    parse : callable
        ``(content, reference, trained_on) -> ParsedUpdate``; raises
        :class:`UpdateRejected`.
    pipeline : Pipeline
        What a triggered buffer goes through.
    result : AsyncResult
        Where versions and rejections are recorded.
    metrics_aggr : callable
        Aggregates one version's counted MetricRecords by each update's weight
        in the step (:attr:`.BufferedUpdate.average_weight`, not the claim).
    now : callable
        Seconds since the run started, on the run's clock.
    weighted_by_key : str
        The example-count metric, never dropped when metrics are capped.
    work_normalisation : WorkNormalisation | None
        Multiplies each update's staleness weight by its work factor, from the
        local work it was asked for (:mod:`.nova`), before fairness; ``None``:
        off.
    fairness : InverseParticipation | None
        Multiplies each update's weight by its node's factor
        (:mod:`.fairness`); ``None``: off.
    participation : Mapping[int, int] | None
        Aggregated updates per node before this run (a resumed run's, counted
        from its ledger), which the fairness factors count on from.
    tuner : BufferTuner | None
        Chooses K and tau after each version (:mod:`.tuning`); ``None``: fixed.
    trainers : TrainerCheck | None
        The trainer signatures replies are held to (:mod:`.trainercheck`);
        ``None``: checked when present, not required, no node pinned yet.
    included : IncludedDigests | None
        The signed updates the run's chain included (a resumed run's, from its
        ledger): a signed reply with one of those digests is rejected, since a
        chain includes a signed update once
        (:mod:`~flchain_flwr.ledger.included`); so is any reply with a
        buffered update's digest (a block includes an update once).
    """

    # pylint: disable=too-many-arguments,too-many-instance-attributes
    def __init__(
        self,
        *,
        store: VersionStore,
        num_versions: int,
        buffer_size: int,
        max_wait: float | None,
        staleness_fn: StalenessFn,
        max_staleness: Callable[[], int | None],
        weighting: ExampleWeighting,
        claims: ClaimHistory,
        parse: ParseFn,
        pipeline: Pipeline,
        result: AsyncResult,
        metrics_aggr: Callable[[list[RecordDict], list[float]], MetricRecord | None],
        now: Callable[[], float],
        weighted_by_key: str = "num-examples",
        work_normalisation: WorkNormalisation | None = None,
        fairness: InverseParticipation | None = None,
        participation: Mapping[int, int] | None = None,
        tuner: BufferTuner | None = None,
        trainers: TrainerCheck | None = None,
        included: IncludedDigests | None = None,
    ) -> None:
        self.store = store
        self.num_versions = num_versions
        self.buffer_size = buffer_size
        self.max_wait = max_wait
        self.staleness_fn = staleness_fn
        self.max_staleness = max_staleness
        self.weighting = weighting
        self.claims = claims
        self.parse = parse
        self.pipeline = pipeline
        self.result = result
        self.metrics_aggr = metrics_aggr
        self.now = now
        self.weighted_by_key = weighted_by_key
        self.work_normalisation = work_normalisation
        self.fairness = fairness
        self.participation = dict(participation or {})
        """Aggregated updates per node, over the ledger's whole chain when resumed
        (as ``result.participation``, which the run fills from the chain too)."""
        self.tuner = tuner
        self.trainers = trainers or TrainerCheck()
        store.keep_hashes = store.keep_hashes or self.trainers.require
        self.included = included or IncludedDigests()
        if tuner is not None:
            self.buffer_size, self.max_wait = tuner.buffer_size, tuner.max_wait
        self.model_record: ArrayRecord = to_arrayrecord(store.model)
        self.updates: list[BufferedUpdate] = []
        self.unused_nodes: list[int] = []  # of the last buffer that made no version
        self.deadline = math.inf  # tau after the buffer's first update
        self.wall0 = time.time()
        self.traffic = Traffic()  # train bytes since the last version

    @property
    def version(self) -> int:
        """The current global version."""
        return self.store.version

    @property
    def complete(self) -> bool:
        """Whether every version asked for has been made."""
        return self.version >= self.num_versions

    @property
    def full(self) -> bool:
        """Whether the buffer holds K updates and a version is still wanted."""
        return len(self.updates) >= self.buffer_size and not self.complete

    def reject(self, rejection: Rejection) -> None:
        """Record a rejected update in the result and tell the pipeline."""
        self.record(rejection)
        self.pipeline.reject(rejection)

    def record(self, rejection: Rejection) -> None:
        """Log a rejected update and record it in the result (at its time)."""
        log(
            WARNING,
            "Rejected update from node %d: %s",
            rejection.node_id,
            rejection.reason,
        )
        self.result.rejected.append(
            RejectedUpdate(
                rejection.node_id,
                self.version,
                rejection.trained_on,
                self.now() if rejection.time is None else rejection.time,
                rejection.reason,
                rejection.votes,
            )
        )

    # pylint: disable=too-many-arguments
    def take(
        self,
        node_id: int,
        trained_on: int,
        content: RecordDict,
        at: float,
        work: float = 1.0,
    ) -> bool:
        """Validate a train reply and buffer it; ``False`` if it was rejected.

        ``at`` is the absolute clock time, for the ``max_wait`` deadline;
        ``work`` the local work the server's message asked for.
        """
        staleness = self.version - trained_on
        digest = self.pipeline.digest(node_id, content)
        limit = self.max_staleness()
        if limit is not None and staleness > limit:
            reason = f"stale: staleness {staleness} > max_staleness {limit}"
            self.store.settled(node_id, trained_on, None)
            self.reject(Rejection(node_id, trained_on, reason, digest))
            return False
        signed = TRAINER_RECORD in content
        if signed:  # only a signature needs the model's hash: unsigned, none
            self.store.keep_hashes = True
        try:
            trainer = self.trainers.check(
                node_id,
                content,
                self.store.model_hash(trained_on) if signed else None,
                self.updates,
            )
            self._check_new(digest, trainer is not None)
            kind = update_kind(content)
            reference = self.store.get(trained_on)
            if kind == UPDATE_KIND_DELTA:
                reference = self.store.model  # only names, shapes, dtypes are read
            elif reference is None:
                why = (
                    "this node sent deltas before"
                    if self.store.sends_deltas(node_id)
                    else "it is beyond max_staleness"
                )
                raise UpdateRejected(
                    f"full weights for version {trained_on}, whose copy is no "
                    f"longer kept ({why})"
                )
            update = self.parse(content, reference, trained_on)
            state_base = self.store.state(trained_on)
        except UpdateRejected as exc:
            self.store.settled(node_id, trained_on, None)
            self.reject(Rejection(node_id, trained_on, exc.reason, digest))
            return False
        except Exception as exc:  # whatever a forged reply triggers, it is rejected
            self.store.settled(node_id, trained_on, None)
            reason = f"reply could not be parsed: {exc!r}"
            self.reject(Rejection(node_id, trained_on, reason, digest))
            return False
        self.store.settled(node_id, trained_on, kind)
        if not self.updates and self.max_wait is not None:
            self.deadline = at + self.max_wait
        self.claims.observe(node_id, update.num_examples)
        kept = train_reply_metrics(content, self.weighted_by_key)
        for reason in kept.dropped:
            log(WARNING, "Metrics of node %d capped: %s", node_id, reason)
        self.updates.append(
            BufferedUpdate(
                node_id,
                trained_on,
                staleness,
                self.staleness_fn(staleness),
                update,
                update.num_examples,  # the claim, until the buffer is weighed
                kept.records,
                digest,
                state_base,
                self.pipeline.payload(content),
                self.pipeline.base(kind, reference),
                work=work,
                trainer=trainer,
            )
        )
        return True

    def _check_new(self, digest: str, signed: bool) -> None:
        """Reject a reply already buffered, or a signed one the chain included
        (``digest`` "": no stage names updates, so nothing records them)."""
        if not digest:
            return
        problem = self.included.problem(digest) if signed else None
        if problem is None and any(u.digest == digest for u in self.updates):
            problem = f"update {digest} is already waiting in the buffer"
        if problem is not None:
            raise UpdateRejected(problem)

    def trigger(self, at: float, drained: bool) -> str | None:
        """Why the buffer should be aggregated now, or ``None``."""
        if not self.updates or self.complete:
            return None
        if at >= self.deadline:
            return TRIGGER_MAX_WAIT
        if drained:
            return TRIGGER_DRAINED
        return None

    def aggregate(self, trigger: str) -> VersionRecord | None:
        """Send the buffer through the pipeline; return the new version's record."""
        updates, self.updates = self.updates, []
        self.deadline = math.inf
        self.unused_nodes = [u.node_id for u in updates]
        try:
            weights = effective_examples(
                self.weighting, [u.update.num_examples for u in updates], self.claims
            )
        except WeightingError as exc:
            for u in updates:
                self.reject(Rejection(u.node_id, u.trained_on, str(exc), u.digest))
            return None
        for u, examples in zip(updates, weights, strict=True):
            u.examples = examples
        traffic = self.traffic
        extra: dict[str, Any] = {"traffic": traffic.as_dict()}
        node_ids = [u.node_id for u in updates]
        if self.work_normalisation is not None:
            work = [u.work for u in updates]
            factors = self.work_normalisation.factors(work, weights)
            for u, factor in zip(updates, factors, strict=True):
                u.weight *= factor
            # what a replay recomputes the factors over, even if a stage drops some
            digests = [u.digest for u in updates]
            extra[WORK_FIELD] = candidates_record(node_ids, weights, work, digests)
        if self.fairness is not None:
            factors = self.fairness.factors(node_ids, weights, self.participation)
            for u, factor in zip(updates, factors, strict=True):
                u.weight *= factor
            # what a replay recomputes the factors over, even if a stage drops some
            extra[FAIRNESS_FIELD] = candidates_record(node_ids, weights)
        tuned = self.tuner is not None
        if self.tuner is not None:  # the K and tau this block was made with, and
            extra[BUFFER_FIELD] = self.tuner.record()  # the state a resume restores
        block = Block(
            self.version + 1, self.store.model, updates, self.now(), extra=extra
        )
        if self.pipeline.run(block, self.record, self.now) is not None:
            return None
        self.traffic = Traffic()  # a buffer that made no version keeps counting
        assert block.model is not None
        updates = block.updates
        self.store.advance(block.version, block.model, block.model_hash)
        self.model_record = to_arrayrecord(block.model)
        shares = self.result.weight_share
        for u, share in zip(block.stepping, block.shares(1.0), strict=True):
            shares[u.node_id] = shares.get(u.node_id, 0.0) + share
        count_participation(self.participation, [u.node_id for u in updates])
        self.trainers.included(updates)
        self.included.add(
            block.version, (u.digest for u in updates if u.trainer and u.digest)
        )
        count_participation(self.result.participation, [u.node_id for u in updates])
        record = VersionRecord(
            version=self.version,
            time=self.now(),
            wall_time=time.time() - self.wall0,
            trigger=trigger,
            num_updates=len(updates),
            num_examples=float(sum(u.examples for u in updates)),
            staleness_histogram=dict(
                sorted(Counter(u.staleness for u in updates).items())
            ),
            node_ids=[u.node_id for u in updates],
            kept_versions=self.store.full_copies(),
            full_copy_bound=self.store.bound,
            buffer_size=self.buffer_size if tuned else None,
            max_wait=self.max_wait if tuned else None,
            messages_down=traffic.messages_down,
            bytes_down=traffic.bytes_down,
            replies_up=traffic.replies_up,
            bytes_up=traffic.bytes_up,
        )
        self.result.versions.append(record)
        if self.tuner is not None:  # at the block's time, which the ledger records
            self.buffer_size, self.max_wait = self.tuner.observe(
                block.time, [u.staleness for u in updates]
            )
        self.result.arrays = self.model_record
        metrics = self.metrics_aggr(
            [u.metrics for u in updates], [u.average_weight for u in updates]
        )
        if metrics is not None:
            self.result.train_metrics_clientapp[self.version] = metrics
        return record
