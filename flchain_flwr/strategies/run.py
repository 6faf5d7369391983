"""One :meth:`FedBuff.start` call: the loop, the buffer, the pipeline, wired.

Each part lives in a module of its own; this one only puts them together,
logs the run like Flower's strategies do, and closes what it opened.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from logging import INFO, WARNING
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from flwr.supercore import log

from ..arrays import to_arrayrecord, to_ndarrays
from ..pov.decision import CommitteeDecision
from ..pov.pending import repropose_pending
from ..runtime import Clock
from .adaptive import AdaptiveScheduling
from .anchor import AnchorStage, witness_nodes
from .buffer import UpdateBuffer
from .carryover import ledger_weight_share, resumed_tuner
from .downlink import DownlinkSync
from .evaluation import (
    FederatedEvaluation,
    aggregate_or_none,
    valid_evaluate_content,
)
from .history import NodeHistory
from .loop import EventLoop, LoopSettings, queued_on
from .memory import memory_caution
from .personalised import log_personal
from .pipeline import BlockStage, Pipeline, ServerStep
from .result import AsyncResult, VersionRecord, mean_staleness
from .stages import CommitteeStage, LedgerStage, Resumed, decision_summary
from .state import state_names
from .traffic import human_bytes
from .versions import VersionStore
from .weighting import ClaimHistory

if TYPE_CHECKING:
    from .fedbuff import FedBuff

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


# pylint: disable=too-many-instance-attributes
class FedBuffRun:
    """The state of one run; :meth:`execute` runs it."""

    # pylint: disable=too-many-arguments,too-many-locals
    def __init__(
        self,
        *,
        strategy: FedBuff,
        grid: Grid,
        clock: Clock,
        initial_arrays: ArrayRecord,
        num_versions: int,
        timeout: float,
        train_config: ConfigRecord,
        evaluate_config: ConfigRecord,
        evaluate_fn: EvaluateFn | None,
        should_stop: Callable[[int, Result], bool] | None,
    ) -> None:
        s = self.strategy = strategy
        conflict = s.policy_conflict()  # again: they may have been set since
        if conflict is not None:
            raise ValueError(conflict)
        caution = memory_caution(s.update_memory, s.scheduling)
        if caution is not None:
            log(WARNING, "%s", caution)
        self.clock = clock
        self.evaluate_fn = evaluate_fn
        self.should_stop = should_stop
        self.num_versions = num_versions
        self.result = AsyncResult(arrays=initial_arrays)
        self.wall0 = time.time()
        self._auto_staleness = 0
        version, model = 0, to_ndarrays(initial_arrays)

        stages: list[BlockStage] = []
        ledger = None
        resumed: Resumed | None = None
        claims = ClaimHistory()
        if s.ledger is not None:
            ledger = LedgerStage(
                s.ledger,
                config=s.config_dict(),
                genesis_extra=(
                    s.committee.genesis_fields(s.server_lr) if s.committee else None
                ),
                resume_with_changed_config=s.resume_with_changed_config,
            )
            try:
                resumed = ledger.start(model, momentum=s.server_momentum)
                if resumed is not None and s.committee is not None:
                    s.committee.resume(ledger.ledger, s.server_lr)
                    if repropose_pending(ledger.ledger, s.committee) is not None:
                        resumed = ledger.start(model, momentum=s.server_momentum)
                        s.committee.resume(ledger.ledger, s.server_lr)
                elif resumed is not None and "pov" in ledger.ledger.block(0).body:
                    raise ValueError(
                        f"ledger {ledger.ledger.path} is a PoV chain: resume it "
                        "with its verifier committee (committee=...); blocks "
                        "written without one would fail verify"
                    )
            except BaseException:  # a refused resume must not leave it open
                ledger.close()
                raise
            if resumed is not None:
                version, model = resumed.version, resumed.model
                self.result.arrays = to_arrayrecord(model)
                self._carry_over(ledger, resumed)
        if s.committee is not None:
            s.committee.parse_keys = (s.arrayrecord_key, s.weighted_by_key)
            stages.append(
                CommitteeStage(
                    s.committee,
                    clock=clock,
                    server_lr=s.server_lr,
                    ledger=ledger,
                    on_decision=self._record_decision,
                )
            )
        if ledger is not None:
            stages.append(ledger)
            if s.anchor is not None:  # after the ledger: anchors what it wrote
                stages.append(AnchorStage(ledger.ledger, s.anchor))
        names = state_names(model, s.state_patterns)
        self.pipeline = Pipeline(
            stages,
            ServerStep(
                s.server_lr,
                s.server_momentum,
                names,
                s.state_rule,
                s.update_memory.start() if s.update_memory is not None else None,
            ),
        )
        if ledger is not None:  # every block records what a resume restores
            ledger.record_state(self.pipeline.server_step, claims)
            if resumed is not None:
                resumed.restore(self.pipeline.server_step, claims)

        rng = random.Random(s.seed)
        self.store = VersionStore(version, model, self.max_staleness, names)
        self.buffer = UpdateBuffer(
            store=self.store,
            num_versions=num_versions,
            buffer_size=s.buffer_size,
            max_wait=s.max_wait,
            staleness_fn=s.staleness_fn,
            max_staleness=self.max_staleness,
            weighting=s.example_weighting,
            claims=claims,
            parse=lambda c, ref, v: s._parse(c, ref, v),
            pipeline=self.pipeline,
            result=self.result,
            metrics_aggr=lambda c: aggregate_or_none(
                s.train_metrics_aggr_fn, c, s.weighted_by_key
            ),
            now=lambda: self.loop.now(),
            weighted_by_key=s.weighted_by_key,
            fairness=s.fairness,
            participation=resumed.participation if resumed is not None else None,
            tuner=resumed_tuner(
                s.buffer_tuning,
                ledger.ledger.head() if resumed is not None and ledger else None,
                s.buffer_size,
                s.max_wait,
            ),
        )
        self.evaluation = FederatedEvaluation(
            fraction=s.fraction_evaluate,
            min_nodes=s.min_evaluate_nodes,
            aggregate=lambda c: aggregate_or_none(
                s.evaluate_metrics_aggr_fn, c, s.weighted_by_key
            ),
            validate=lambda c: valid_evaluate_content(c, s.weighted_by_key),
            rng=rng,
            results=self.result.evaluate_metrics_clientapp,
            once_per_training=s.evaluate_every is None,
            per_node=self.result.node_evaluations,
        )
        self.loop = EventLoop(
            grid=grid,
            clock=clock,
            settings=LoopSettings(
                concurrency=s.concurrency,
                fraction_train=s.fraction_train,
                min_train_nodes=s.min_train_nodes,
                min_available_nodes=s.min_available_nodes,
                ttl=s.message_ttl or timeout,
                timeout=timeout,
                membership_refresh=s.membership_refresh,
                retry_backoff=s.retry_backoff,
                time_budget=s.time_budget,
                reserved_nodes=(
                    s.committee.reserved_nodes if s.committee else frozenset()
                )
                | witness_nodes(s.anchor),
                queued_dispatch=not s.downlink and queued_on(s.queued_dispatch, grid),
            ),
            buffer=self.buffer,
            evaluation=self.evaluation,
            policy=s.scheduling,
            rng=rng,
            train_content=s.train_content,
            evaluate_content=s.evaluate_content,
            train_config=train_config,
            evaluate_config=evaluate_config,
            result=self.result,
            on_version=self._on_version,
            downlink=DownlinkSync(
                version,
                model,
                lambda: self.store.bound,
                arrayrecord_key=s.arrayrecord_key,
                from_initial=s.downlink_from_initial and version == 0,
            )
            if s.downlink
            else None,
        )
        self._updates_since_eval = 0
        self._seen = (0, 0)  # rejected, failed at the last version
        self._explained = False

    def _carry_over(self, ledger: LedgerStage, resumed: Resumed) -> None:
        """Count the chain's earlier updates in the result (and FedSA's history)."""
        self.result.participation = dict(resumed.participation)
        self.result.weight_share = ledger_weight_share(ledger.ledger.blocks())
        policy = self.strategy.scheduling
        if isinstance(policy, AdaptiveScheduling):  # FedSA counts on from the chain
            policy.history = NodeHistory(policy.history.smoothing)
            policy.history.count_earlier(resumed.participation)

    # ------------------------------------------------------------ decisions
    def max_staleness(self) -> int | None:
        """The staleness limit in force.

        "auto" follows the number of training nodes but never decreases in a
        run: a dip in membership must not drop copies that replies still need.
        """
        limit = self.strategy.max_staleness
        if limit == "auto":
            per_version = math.ceil(self.loop.train_limit() / self.strategy.buffer_size)
            self._auto_staleness = max(self._auto_staleness, 20, 4 * per_version)
            return self._auto_staleness
        return limit

    def _record_decision(self, decision: CommitteeDecision) -> None:
        self.result.committee_decisions.append(
            decision_summary(decision, self.loop.now())
        )

    def _on_version(self, record: VersionRecord) -> None:
        self._explain_rounds()
        rejected, failed = len(self.result.rejected), len(self.result.failures)
        log(
            INFO,
            "[VERSION %d/%d] t=%.2fs trigger=%s updates=%d staleness=%s "
            "rejected=%d failed=%d down=%s/node up=%s/node",
            record.version,
            self.buffer.num_versions,
            record.time,
            record.trigger,
            record.num_updates,
            record.staleness_histogram,
            rejected - self._seen[0],
            failed - self._seen[1],
            human_bytes(record.bytes_down / max(record.messages_down, 1)),
            human_bytes(record.bytes_up / max(record.replies_up, 1)),
        )
        self._seen = (rejected, failed)
        metrics = self.result.train_metrics_clientapp.get(record.version)
        if metrics is not None:
            log(INFO, "\t├──> Aggregated MetricRecord: %s", metrics)
        self._centralized_evaluation()
        if self.should_stop is not None and self.should_stop(
            record.version, self.result
        ):
            log(INFO, "should_stop: stopping after version %d", record.version)
            self.buffer.num_versions = record.version
            self.loop.stop_requested = True
        self._schedule_federated_evaluation(record)

    def _centralized_evaluation(self) -> None:
        if self.evaluate_fn is None:
            return
        res = self.evaluate_fn(self.buffer.version, self.buffer.model_record)
        if res is not None:
            log(INFO, "\t└──> Global evaluation: %s", res)
            self.result.evaluate_metrics_serverapp[self.buffer.version] = res

    def _schedule_federated_evaluation(self, record: VersionRecord) -> None:
        every = self.strategy.evaluate_every
        self._updates_since_eval += record.num_updates
        if every is None:  # a FedAvg round's worth, and the last version
            due = (
                self._updates_since_eval >= self.loop.train_limit()
                or record.version >= self.buffer.num_versions
            )
        else:
            due = record.version % every == 0
        if due:
            self._updates_since_eval = 0
            self.evaluation.schedule(
                record.version, self.buffer.model_record, self.loop.nodes.online
            )

    def _explain_rounds(self) -> None:
        """Say once what ``num_rounds`` means for this K and node count."""
        if self._explained:
            return
        self._explained = True
        k, nodes = self.strategy.buffer_size, self.loop.train_limit()
        log(
            INFO,
            "num_rounds=%d counts global versions of K=%d updates each; with %d "
            "nodes training at once, one FedAvg round's worth of updates takes "
            "%.1f versions, so the run makes about %.1f FedAvg rounds' worth.",
            self.num_versions,
            k,
            nodes,
            nodes / k,
            self.num_versions * k / max(nodes, 1),
        )

    # -------------------------------------------------------------- execute
    def execute(self) -> AsyncResult:
        """Run the loop to its end; close the pipeline whatever happens."""
        try:
            if self.evaluate_fn is not None:
                res = self.evaluate_fn(self.buffer.version, self.buffer.model_record)
                log(INFO, "Initial global evaluation results: %s", res)
                if res is not None:
                    self.result.evaluate_metrics_serverapp[self.buffer.version] = res
            reason = self.loop.run()
        finally:
            self.pipeline.close()
        self.result.stop_reason = reason
        downlink = self.loop.downlink
        if downlink is not None:
            self.result.downlink = {
                s: asdict(stats) for s, stats in sorted(downlink.by_distance.items())
            }
            sent = sum(stats.sent for stats in downlink.by_distance.values())
            log(
                INFO,
                "Downlink: %d train messages as deltas, %d as full models%s",
                sent,
                downlink.full_sent,
                f"; {downlink.initial_refused} deltas on the initial model failed"
                if downlink.initial_refused
                else "",
            )
        if reason not in ("completed", "stopped by should_stop"):
            log(WARNING, "Stopping early: %s", reason)
        self._log_summary()
        return self.result

    def _log_summary(self) -> None:
        log_personal(self.result)
        result = self.result
        updates = sum(v.num_updates for v in result.versions)
        nodes = self.loop.train_limit()
        log(
            INFO,
            "%s finished: %d versions, %d updates aggregated (mean staleness %.2f) "
            "in %.2fs on the grid's clock, %.2fs wall; %d rejected, %d failed, "
            "%d left in flight",
            type(self.strategy).__name__,
            len(result.versions),
            updates,
            mean_staleness(result),
            self.loop.now(),
            time.time() - self.wall0,
            len(result.rejected),
            len(result.failures),
            len(self.loop.in_flight),
        )
        log(
            INFO,
            "\t└──> %d FedAvg rounds on %d nodes would have aggregated %d updates; "
            "this run aggregated %d (%.2f rounds' worth)",
            self.num_versions,
            nodes,
            self.num_versions * nodes,
            updates,
            updates / max(nodes, 1),
        )
