"""One :meth:`FedBuff.start` call: the loop, the buffer, the pipeline, wired.

Each part lives in a module of its own; this one only puts them together and
closes what it opened. The block pipeline (the ledger opened or resumed, the
committee and anchor stages) is built by :mod:`.runpipeline`; the run's logs,
like those of Flower's strategies, are :mod:`.runlog`'s.
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
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info
from flwr.supercore import log

from ..arrays import to_ndarrays
from ..pov.decision import CommitteeDecision
from ..runtime import Clock, clock_of, publish_result
from .anchor import witness_nodes
from .arguments import require
from .buffer import UpdateBuffer
from .carryover import resumed_tuner
from .claims import ClaimHistory
from .committeestage import decision_summary
from .downlink import DownlinkSync
from .evaluation import FederatedEvaluation, valid_evaluate_content
from .loop import EventLoop, LoopSettings, queued_on
from .memory import memory_caution
from .metricweights import weighed_evaluation_metrics, weighed_train_metrics
from .nova import normalisation_caution
from .result import AsyncResult, VersionRecord
from .runlog import log_downlink, log_finished, log_rounds, log_version
from .runpipeline import block_pipeline, carry_over, open_ledger
from .state import state_names
from .trainercheck import TrainerCheck
from .versions import VersionStore

if TYPE_CHECKING:
    from .fedbuff import FedBuff

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
ShouldStopFn = Callable[[int, Result], bool]


# pylint: disable=too-many-arguments
def start_run(
    strategy: FedBuff,
    grid: Grid,
    initial_arrays: ArrayRecord,
    *,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord | None,
    evaluate_config: ConfigRecord | None,
    evaluate_fn: EvaluateFn | None,
    should_stop: ShouldStopFn | None,
) -> AsyncResult:
    """:meth:`FedBuff.start`: log the start as Flower's strategies do, check
    the arguments, run, and publish the result."""
    log(INFO, "Starting %s strategy:", strategy.__class__.__name__)
    log_strategy_start_info(num_rounds, initial_arrays, train_config, evaluate_config)
    strategy.summary()
    require(num_rounds >= 0, f"num_rounds must be >= 0, got {num_rounds}")
    require(timeout > 0, f"timeout must be > 0, got {timeout}")
    run = FedBuffRun(
        strategy=strategy,
        grid=grid,
        clock=clock_of(grid, strategy.poll_interval),
        initial_arrays=initial_arrays,
        num_versions=num_rounds,
        timeout=timeout,
        train_config=train_config or ConfigRecord(),
        evaluate_config=evaluate_config or ConfigRecord(),
        evaluate_fn=evaluate_fn,
        should_stop=should_stop,
    )
    result = run.execute()
    publish_result(result)
    return result


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
        should_stop: ShouldStopFn | None,
    ) -> None:
        s = self.strategy = strategy
        conflict = s.policy_conflict()  # again: they may have been set since
        if conflict is not None:
            raise ValueError(conflict)
        for caution in (
            memory_caution(s.update_memory, s.scheduling),
            normalisation_caution(s.work_normalisation, s.scheduling),
        ):
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

        claims = ClaimHistory()
        ledger, resumed = open_ledger(s, model)
        if ledger is not None and resumed is not None:
            version, model = resumed.version, resumed.model
            carry_over(self.result, ledger, resumed, s.scheduling)
        names = state_names(model, s.state_patterns)
        self.pipeline = block_pipeline(
            s,
            clock=clock,
            names=names,
            ledger=ledger,
            resumed=resumed,
            claims=claims,
            on_decision=self._record_decision,
        )

        rng = random.Random(s.seed)
        head = ledger.ledger.head() if ledger is not None else None
        self.store = VersionStore(
            version,
            model,
            self.max_staleness,
            names,
            str(head.header["model_hash"]) if head is not None else None,
        )
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
            metrics_aggr=lambda c, counts: weighed_train_metrics(
                s.train_metrics_aggr_fn, c, counts, s.weighted_by_key
            ),
            now=lambda: self.loop.now(),
            weighted_by_key=s.weighted_by_key,
            work_normalisation=s.work_normalisation,
            fairness=s.fairness,
            participation=resumed.participation if resumed is not None else None,
            trainers=TrainerCheck(
                s.require_signed_replies,
                resumed.trainers if resumed is not None else None,
            ),
            included=resumed.included if resumed is not None else None,
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
            aggregate=lambda c: weighed_evaluation_metrics(
                s.evaluate_metrics_aggr_fn, s.example_weighting, c, s.weighted_by_key
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
        if not self._explained:  # say once what num_rounds means here
            self._explained = True
            log_rounds(
                self.num_versions, self.strategy.buffer_size, self.loop.train_limit()
            )
        rejected, failed = len(self.result.rejected), len(self.result.failures)
        log_version(
            record,
            self.buffer.num_versions,
            rejected - self._seen[0],
            failed - self._seen[1],
            self.result.train_metrics_clientapp.get(record.version),
        )
        self._seen = (rejected, failed)
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
            log_downlink(downlink)
        if reason not in ("completed", "stopped by should_stop"):
            log(WARNING, "Stopping early: %s", reason)
        log_finished(
            self.result,
            strategy_name=type(self.strategy).__name__,
            num_versions=self.num_versions,
            nodes=self.loop.train_limit(),
            clock_time=self.loop.now(),
            wall_time=time.time() - self.wall0,
            in_flight=len(self.loop.in_flight),
        )
        return self.result
