"""Semi-asynchronous buffered aggregation (FedBuff family) for Flower.

Implementation after FedBuff (Nguyen et al., AISTATS 2022,
https://arxiv.org/abs/2106.06639) and the asynchronous FLchain design (a "block"
is aggregated when it holds K updates or a time limit tau has passed).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_metricrecords,
    log_strategy_start_info,
)
from flwr.supercore import log

from ..arrays import NDArrays, apply_step, to_arrayrecord, to_ndarrays
from ..ledger import Ledger, contributions, update_digest
from ..ledger.canonical import canonical_json, sha256_hex
from ..pov.committee import Candidate, Committee, CommitteeDecision
from ..protocol import MODEL_VERSION_KEY, SERVER_ROUND_KEY
from ..runtime import Clock, clock_of, publish_result
from .result import AsyncResult, NodeFailure, RejectedUpdate, VersionRecord
from .staleness import FedBuffStaleness, StalenessFn
from .updates import (
    ParsedUpdate,
    UpdateRejected,
    parse_update,
    weighted_delta,
)

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]

TRIGGER_BUFFER_FULL = "buffer_full"
TRIGGER_MAX_WAIT = "max_wait"
TRIGGER_DRAINED = "drained"


# pylint: disable=too-many-instance-attributes
class FedBuff(Strategy):
    """Semi-asynchronous buffered aggregation with staleness weighting.

    The server keeps up to ``concurrency`` nodes training, one message in flight
    per node, and re-dispatches a node as soon as its reply is taken and a newer
    global model exists. Accepted updates are buffered; the buffer is aggregated
    when it holds ``buffer_size`` updates, when ``max_wait`` seconds have passed
    since its first update arrived, or when nothing else can arrive (no node in
    flight and none can be dispatched)::

        new = old + server_lr * sum_i w(s_i) n_i delta_i / sum_i n_i

    where ``s_i`` is the update's staleness (versions between the model it was
    trained on and the current one), ``w`` the staleness function and ``n_i``
    its number of examples. With ``buffer_size`` = number of nodes,
    ``max_wait=None``, constant staleness and ``server_lr=1`` this is FedAvg.

    ``num_rounds`` in :meth:`start` counts global model versions (aggregations).

    Parameters
    ----------
    buffer_size : int (default: 10)
        K, the number of accepted updates that triggers an aggregation.
    max_wait : float | None (default: None)
        tau, seconds (on the grid's clock) after the first buffered update at which
        the buffer is aggregated even if not full. ``None`` waits forever.
    staleness_fn : Callable[[int], float] (default: FedBuff's 1/sqrt(1+s))
        Weight of an update as a function of its staleness; see
        :mod:`flchain_flwr.strategies.staleness`.
    max_staleness : int | None (default: None)
        Updates staler than this are dropped (recorded in ``AsyncResult.rejected``).
        It also bounds how many old global versions the server keeps.
    server_lr : float (default: 1.0)
        Server learning rate applied to the aggregated delta.
    server_momentum : float (default: 0.0)
        Momentum on the aggregated delta (FedBuff's server optimizer), in [0, 1).
    concurrency : int | None (default: None)
        Maximum number of nodes training at once; ``None`` = every online node.
    message_ttl : float | None (default: None)
        TTL of each message in seconds; ``None`` uses ``start``'s ``timeout``.
        A message unanswered after its TTL is recorded as failed and its node freed.
    membership_refresh : float (default: 5.0)
        Seconds between calls to ``grid.get_node_ids()``.
    retry_backoff : float (default: 10.0)
        Seconds a node is left alone after a failed message.
    min_available_nodes : int (default: 2)
        Nodes that must be online before the first dispatch.
    fraction_evaluate : float (default: 0.0)
        Fraction of online nodes asked to evaluate a version (federated
        evaluation); 0 turns it off. Runs every ``evaluate_every`` versions.
    evaluate_every : int (default: 1)
        Federated evaluation period, in versions.
    weighted_by_key, arrayrecord_key, configrecord_key : str
        As in Flower's :class:`FedAvg`.
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn : callable, optional
        As in Flower's :class:`FedAvg`; default: weighted average.
    ledger : Ledger | str | Path | None (default: None)
        Record every aggregation as a signed block in this ledger (a path opens
        or creates one). A ledger that already holds blocks is resumed: the run
        continues from its last global model and version, and ``num_rounds`` is
        the total number of versions to reach. ``None`` records nothing and costs
        nothing.
    time_budget : float | None (default: None)
        Stop after this many seconds on the grid's clock (simulated seconds in the
        simulator, wall seconds otherwise), even before ``num_rounds`` versions.
    committee : Committee | None (default: None)
        A PoV committee (:mod:`flchain_flwr.pov`). When the buffer triggers, the
        committee votes on its candidates; only those approved by more than 2/3
        of the block's committee are aggregated, the others are rejected with
        their votes. If none is approved no version is made. Blocks are then
        signed by the rotating leader and carry committee, votes and deposits.
    seed : int | None (default: None)
        Seeds the choice among idle nodes, for reproducible runs.
    poll_interval : float (default: 0.1)
        Seconds between polls when the grid has no clock of its own (wall time).
    """

    # pylint: disable=too-many-arguments,too-many-locals
    def __init__(
        self,
        *,
        buffer_size: int = 10,
        max_wait: float | None = None,
        staleness_fn: StalenessFn | None = None,
        max_staleness: int | None = None,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        concurrency: int | None = None,
        message_ttl: float | None = None,
        membership_refresh: float = 5.0,
        retry_backoff: float = 10.0,
        min_available_nodes: int = 2,
        fraction_evaluate: float = 0.0,
        evaluate_every: int = 1,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        ledger: Ledger | str | Path | None = None,
        time_budget: float | None = None,
        committee: Committee | None = None,
        seed: int | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        _require(buffer_size >= 1, f"buffer_size must be >= 1, got {buffer_size}")
        _require(max_wait is None or max_wait > 0, "max_wait must be > 0 or None")
        _require(
            max_staleness is None or max_staleness >= 0, "max_staleness must be >= 0"
        )
        _require(server_lr > 0, f"server_lr must be > 0, got {server_lr}")
        _require(0.0 <= server_momentum < 1.0, "server_momentum must be in [0, 1)")
        _require(concurrency is None or concurrency >= 1, "concurrency must be >= 1")
        _require(message_ttl is None or message_ttl > 0, "message_ttl must be > 0")
        _require(membership_refresh > 0, "membership_refresh must be > 0")
        _require(retry_backoff >= 0, "retry_backoff must be >= 0")
        _require(min_available_nodes >= 1, "min_available_nodes must be >= 1")
        _require(0.0 <= fraction_evaluate <= 1.0, "fraction_evaluate must be in [0, 1]")
        _require(evaluate_every >= 1, "evaluate_every must be >= 1")
        _require(poll_interval > 0, "poll_interval must be > 0")
        _require(time_budget is None or time_budget > 0, "time_budget must be > 0")
        self.buffer_size = buffer_size
        self.max_wait = max_wait
        self.staleness_fn: StalenessFn = staleness_fn or FedBuffStaleness()
        self.max_staleness = max_staleness
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.concurrency = concurrency
        self.message_ttl = message_ttl
        self.membership_refresh = membership_refresh
        self.retry_backoff = retry_backoff
        self.min_available_nodes = min_available_nodes
        self.fraction_evaluate = fraction_evaluate
        self.evaluate_every = evaluate_every
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.train_metrics_aggr_fn = train_metrics_aggr_fn or aggregate_metricrecords
        self.evaluate_metrics_aggr_fn = (
            evaluate_metrics_aggr_fn or aggregate_metricrecords
        )
        self.ledger = ledger
        self.time_budget = time_budget
        self.committee = committee
        self.seed = seed
        self.poll_interval = poll_interval
        self._sync_reference: NDArrays | None = None
        self._sample_rng = random.Random(seed)

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> Buffer: K=%d, max_wait=%s", self.buffer_size, self.max_wait)
        log(
            INFO,
            "\t├──> Staleness: %s, max_staleness=%s",
            self.staleness_fn,
            self.max_staleness,
        )
        log(
            INFO,
            "\t├──> Server: lr=%s, momentum=%s",
            self.server_lr,
            self.server_momentum,
        )
        log(INFO, "\t├──> PoV: %s", self.committee)
        log(
            INFO,
            "\t└──> Dispatch: concurrency=%s, ttl=%s, min_available_nodes=%d",
            self.concurrency if self.concurrency is not None else "all",
            self.message_ttl if self.message_ttl is not None else "timeout",
            self.min_available_nodes,
        )

    def config_dict(self) -> dict[str, object]:
        """The settings that shape the global model (recorded in ledger blocks)."""
        return {
            "strategy": type(self).__name__,
            "buffer_size": self.buffer_size,
            "max_wait": self.max_wait,
            "staleness_fn": repr(self.staleness_fn),
            "max_staleness": self.max_staleness,
            "server_lr": self.server_lr,
            "server_momentum": self.server_momentum,
            "concurrency": self.concurrency,
            "weighted_by_key": self.weighted_by_key,
            "arrayrecord_key": self.arrayrecord_key,
            "committee": repr(self.committee),
        }

    def config_digest(self) -> str:
        """SHA-256 of :meth:`config_dict` in canonical JSON."""
        return sha256_hex(canonical_json(self.config_dict()))

    # ------------------------------------------------- message building blocks
    def train_content(
        self, arrays: ArrayRecord, config: ConfigRecord, version: int
    ) -> RecordDict:
        """Content of a train message asking a node to train on ``version``."""
        cfg = ConfigRecord(dict(config))
        cfg[SERVER_ROUND_KEY] = version + 1
        cfg[MODEL_VERSION_KEY] = version
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})

    def evaluate_content(
        self, arrays: ArrayRecord, config: ConfigRecord, version: int
    ) -> RecordDict:
        """Content of an evaluate message for ``version``."""
        cfg = ConfigRecord(dict(config))
        cfg[SERVER_ROUND_KEY] = version
        cfg[MODEL_VERSION_KEY] = version
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per online node: the synchronous special case.

        :meth:`start` does not use this (it dispatches node by node); it is here so
        the strategy also works inside Flower's synchronous loop.
        """
        self._sync_reference = to_ndarrays(arrays)
        content = self.train_content(arrays, config, server_round - 1)
        return [
            Message(content, node_id, MessageType.TRAIN)
            for node_id in grid.get_node_ids()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate one synchronous batch of replies (all with staleness 0).

        Server momentum and the ledger belong to :meth:`start`'s loop and are not
        applied here.
        """
        if self._sync_reference is None:
            raise RuntimeError("aggregate_train called before configure_train")
        reference = self._sync_reference
        accepted: list[tuple[ParsedUpdate, RecordDict]] = []
        for reply in replies:
            if reply.has_error():
                continue
            try:
                accepted.append((self._parse(reply.content, reference), reply.content))
            except UpdateRejected as exc:
                log(
                    WARNING,
                    "Rejected reply from node %d: %s",
                    reply.metadata.src_node_id,
                    exc.reason,
                )
        if not accepted:
            return None, None
        updates = [u for u, _ in accepted]
        step = weighted_delta(
            [u.delta for u in updates],
            [u.num_examples for u in updates],
            [self.staleness_fn(0)] * len(updates),
        )
        new = apply_step(reference, step, self.server_lr)
        return to_arrayrecord(new), self._aggregate_metrics(
            self.train_metrics_aggr_fn, [c for _, c in accepted]
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate messages for a ``fraction_evaluate`` sample of online nodes."""
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = sorted(grid.get_node_ids())
        count = math.ceil(self.fraction_evaluate * len(node_ids))
        chosen = self._sample_rng.sample(node_ids, count)
        content = self.evaluate_content(arrays, config, server_round)
        return [Message(content, node_id, MessageType.EVALUATE) for node_id in chosen]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted average of the evaluate replies' metrics."""
        contents = [r.content for r in replies if not r.has_error()]
        return self._aggregate_metrics(self.evaluate_metrics_aggr_fn, contents)

    def _parse(
        self, content: RecordDict, reference: NDArrays, trained_on: int | None = None
    ) -> ParsedUpdate:
        return parse_update(
            content,
            reference,
            arrayrecord_key=self.arrayrecord_key,
            weighted_by_key=self.weighted_by_key,
            trained_on=trained_on,
        )

    def _aggregate_metrics(
        self, fn: MetricsAggrFn, contents: list[RecordDict]
    ) -> MetricRecord | None:
        usable = [c for c in contents if c.metric_records]
        if not usable:
            return None
        try:
            return fn(usable, self.weighted_by_key)
        except Exception as exc:  # metrics are informative; never fail the run
            log(WARNING, "Could not aggregate metrics: %s", exc)
            return None

    # ------------------------------------------------------------------- start
    # pylint: disable=too-many-arguments
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> AsyncResult:
        """Run until ``num_rounds`` global versions have been produced.

        Same signature as Flower's :meth:`Strategy.start`, so swapping ``FedAvg``
        for ``FedBuff`` in a ServerApp is the whole change. ``timeout`` is the
        default message TTL and the longest the run waits without any usable
        reply before it stops.

        Returns
        -------
        AsyncResult
            Flower's :class:`Result` plus per-version history, rejected updates,
            failures and per-node participation.
        """
        log(INFO, "Starting %s strategy:", self.__class__.__name__)
        log_strategy_start_info(
            num_rounds, initial_arrays, train_config, evaluate_config
        )
        self.summary()
        _require(num_rounds >= 0, f"num_rounds must be >= 0, got {num_rounds}")
        _require(timeout > 0, f"timeout must be > 0, got {timeout}")
        run = _AsyncRun(
            strategy=self,
            grid=grid,
            clock=clock_of(grid, self.poll_interval),
            initial_arrays=initial_arrays,
            num_versions=num_rounds,
            timeout=timeout,
            train_config=train_config or ConfigRecord(),
            evaluate_config=evaluate_config or ConfigRecord(),
            evaluate_fn=evaluate_fn,
        )
        result = run.execute()
        publish_result(result)
        return result


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class _InFlight:
    node_id: int
    message_type: str
    version: int
    deadline: float


@dataclass
class _Buffered:
    node_id: int
    trained_on: int
    staleness: int
    weight: float
    update: ParsedUpdate
    metrics: RecordDict  # the reply's MetricRecords only, not a 2nd copy of arrays
    digest: str = ""


@dataclass
class _EvalRound:
    arrays: ArrayRecord
    waiting: set[int]
    replies: list[RecordDict]


# pylint: disable=too-many-instance-attributes
class _AsyncRun:
    """The state of one :meth:`FedBuff.start` call and its event loop."""

    # pylint: disable=too-many-arguments
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
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    ) -> None:
        self.s = strategy
        self.grid = grid
        self.clock = clock
        self.num_versions = num_versions
        self.timeout = timeout
        self.ttl = strategy.message_ttl or timeout
        self.train_config = train_config
        self.evaluate_config = evaluate_config
        self.evaluate_fn = evaluate_fn
        self.rng = random.Random(strategy.seed)

        self.version = 0
        self.model: NDArrays = to_ndarrays(initial_arrays)
        self.model_record = initial_arrays
        self.kept: dict[int, NDArrays] = {0: self.model}
        self.momentum: NDArrays | None = None

        self.nodes: set[int] = set()
        self.in_flight: dict[str, _InFlight] = {}
        self.busy: set[int] = set()
        self.last_trained: dict[int, int] = {}
        self.backoff_until: dict[int, float] = {}
        self.buffer: list[_Buffered] = []
        self.buffer_deadline = math.inf  # tau after the buffer's first update
        self.eval_rounds: dict[int, _EvalRound] = {}
        self.eval_pending: dict[int, int] = {}  # node -> version to evaluate

        self.t0 = clock.now()
        self.wall0 = time.time()
        self.next_refresh = self.t0
        self.idle_deadline = self.t0 + timeout  # pushed back by every usable reply
        self.budget_deadline = self.t0 + (
            strategy.time_budget if strategy.time_budget is not None else math.inf
        )
        self.result = AsyncResult(arrays=initial_arrays)

        self.ledger: Ledger | None = None
        self.owns_ledger = False
        self.committee = strategy.committee
        self.pending_rejected: list[dict[str, object]] = []
        self.pending_votes: list[dict[str, object]] = []
        self.pending_committee: list[str] = []
        self.config_digest = ""  # the strategy's settings do not change mid-run
        if strategy.ledger is not None:
            self.config_digest = strategy.config_digest()
            self._open_ledger(strategy.ledger)

    # ------------------------------------------------------------------ ledger
    def _open_ledger(self, ledger: Ledger | str | Path) -> None:
        if isinstance(ledger, Ledger):
            self.ledger = ledger
        else:
            self.ledger, self.owns_ledger = Ledger(ledger), True
        head = self.ledger.head()
        if head is None:
            self.ledger.append(
                model=self.model,
                model_version=0,
                base_version=0,
                config_digest=self.config_digest,
                extra=self.committee.genesis_fields() if self.committee else None,
            )
            return
        if self.committee is not None:
            self.committee.resume(self.ledger)
        model = self.ledger.load_model(head)
        expected = {k: (v.shape, v.dtype) for k, v in self.model.items()}
        if {k: (v.shape, v.dtype) for k, v in model.items()} != expected:
            raise ValueError(
                f"ledger {self.ledger.path} holds a model with other arrays than "
                "initial_arrays; resume it with the same model architecture"
            )
        self.version = int(head.header["model_version"])
        self.model = model
        self.model_record = to_arrayrecord(model)
        self.kept = {self.version: model}
        self.result.arrays = self.model_record
        log(
            INFO,
            "Resuming from ledger %s: block %d, version %d",
            self.ledger.path,
            head.height,
            self.version,
        )

    def _record_block(self, buffered: list[_Buffered], step: NDArrays) -> None:
        extra, signer = None, None
        if self.committee is not None:  # settle deposits once per block
            extra, signer = self.committee.seal(
                self.pending_committee, self.pending_votes
            )
        votes, self.pending_votes = self.pending_votes, []
        if self.ledger is None:
            return
        included = [
            {
                "node_id": b.node_id,
                "digest": b.digest,
                "trained_on": b.trained_on,
                "staleness": b.staleness,
                "weight": b.weight,
                "num_examples": b.update.num_examples,
            }
            for b in buffered
        ]
        self.ledger.append(
            model=self.model,
            model_version=self.version,
            base_version=self.version - 1,
            config_digest=self.config_digest,
            included=included,
            rejected=self.pending_rejected,
            votes=votes,
            contributions=contributions(
                [b.node_id for b in buffered],
                [b.update.delta for b in buffered],
                [b.update.num_examples for b in buffered],
                step,
            ),
            sim_time=self.now(),
            extra=extra,
            signer=signer,
        )
        self.pending_rejected = []

    # ----------------------------------------------------------------- helpers
    def now(self) -> float:
        return self.clock.now() - self.t0

    def _refresh_nodes(self) -> None:
        if self.clock.now() < self.next_refresh:
            return
        reserved = self.committee.reserved_nodes if self.committee else frozenset()
        try:
            self.nodes = set(self.grid.get_node_ids()) - reserved
        except Exception as exc:  # transport trouble: keep the last known nodes
            log(WARNING, "get_node_ids failed: %s", exc)
        self.next_refresh = self.clock.now() + self.s.membership_refresh

    def _dispatchable(self, node_id: int) -> bool:
        return (
            node_id not in self.busy
            and self.backoff_until.get(node_id, -math.inf) <= self.clock.now()
        )

    def _train_eligible(self) -> list[int]:
        if self.version >= self.num_versions:
            return []
        return [
            n
            for n in sorted(self.nodes)
            if self._dispatchable(n) and self.last_trained.get(n, -1) < self.version
        ]

    def _record_failure(self, flight: _InFlight, code: int, reason: str) -> None:
        log(WARNING, "Node %d failed (%s): %s", flight.node_id, code, reason)
        self.result.failures.append(
            NodeFailure(flight.node_id, flight.version, self.now(), code, reason)
        )
        self.backoff_until[flight.node_id] = self.clock.now() + self.s.retry_backoff
        if flight.message_type == MessageType.TRAIN:
            self.last_trained.pop(flight.node_id, None)  # may retrain this version
        else:
            self._eval_done(flight.node_id, flight.version, None)

    def _digest(self, content: RecordDict) -> str:
        """The reply's digest (ledger, votes); nothing to compute without them."""
        needed = self.ledger is not None or self.committee is not None
        return update_digest(content) if needed else ""

    # pylint: disable=too-many-arguments
    def _reject(
        self,
        node_id: int,
        trained_on: int,
        reason: str,
        digest: str,
        votes: list[dict[str, object]] | None = None,
    ) -> None:
        log(WARNING, "Rejected update from node %d: %s", node_id, reason)
        self.result.rejected.append(
            RejectedUpdate(
                node_id, self.version, trained_on, self.now(), reason, votes or []
            )
        )
        if self.ledger is not None:
            self.pending_rejected.append(
                {
                    "node_id": node_id,
                    "digest": digest,
                    "trained_on": trained_on,
                    "reason": reason,
                }
            )

    def _prune_versions(self) -> None:
        needed = {self.version}
        for flight in self.in_flight.values():
            if flight.message_type != MessageType.TRAIN:
                continue
            too_old = (
                self.s.max_staleness is not None
                and self.version - flight.version > self.s.max_staleness
            )
            if not too_old:
                needed.add(flight.version)
        for v in [v for v in self.kept if v not in needed]:
            del self.kept[v]

    # ---------------------------------------------------------------- dispatch
    def _push(self, messages: list[tuple[Message, _InFlight]]) -> None:
        if not messages:
            return
        try:
            accepted = {
                str(i) for i in self.grid.push_messages([m for m, _ in messages]) if i
            }
        except Exception as exc:  # transport trouble: count as failures, go on
            for _, flight in messages:
                self._record_failure(flight, ErrorCode.UNKNOWN, f"push failed: {exc}")
            return
        for message, flight in messages:
            msg_id = message.metadata.message_id
            if not msg_id or msg_id not in accepted:
                self._record_failure(flight, ErrorCode.UNKNOWN, "push was refused")
                continue
            self.in_flight[msg_id] = flight
            self.busy.add(flight.node_id)

    def _dispatch(self) -> None:
        outgoing: list[tuple[Message, _InFlight]] = []
        deadline = self.clock.now() + self.ttl
        for node_id, version in sorted(self.eval_pending.items()):
            if node_id in self.nodes and self._dispatchable(node_id):
                content = self.s.evaluate_content(
                    self.eval_rounds[version].arrays, self.evaluate_config, version
                )
                message = Message(
                    content,
                    node_id,
                    MessageType.EVALUATE,
                    ttl=self.ttl,
                    group_id=str(version),
                )
                outgoing.append(
                    (
                        message,
                        _InFlight(node_id, MessageType.EVALUATE, version, deadline),
                    )
                )
                del self.eval_pending[node_id]
        self._push(outgoing)

        training = {
            f.node_id
            for f in self.in_flight.values()
            if f.message_type == MessageType.TRAIN and f.node_id in self.nodes
        }
        capacity = (
            len(self.nodes) if self.s.concurrency is None else self.s.concurrency
        ) - len(training)
        eligible = self._train_eligible()
        if capacity <= 0 or not eligible:
            return
        self.rng.shuffle(eligible)
        content = self.s.train_content(
            self.model_record, self.train_config, self.version
        )
        outgoing = []
        for node_id in eligible[:capacity]:
            message = Message(
                content,
                node_id,
                MessageType.TRAIN,
                ttl=self.ttl,
                group_id=str(self.version + 1),
            )
            outgoing.append(
                (message, _InFlight(node_id, MessageType.TRAIN, self.version, deadline))
            )
            self.last_trained[node_id] = self.version
        self._push(outgoing)

    # ----------------------------------------------------------------- replies
    def _collect(self) -> int:
        """Take every reply that is in, one at a time; return how many.

        The buffer is checked after each update, so an aggregation never holds
        more than K updates and later replies in the same batch are weighed
        against the new version.
        """
        replies: list[Message] = []
        if self.in_flight:
            try:
                replies = list(self.grid.pull_messages(list(self.in_flight)))
            except Exception as exc:  # transport trouble: try again next poll
                log(WARNING, "pull_messages failed: %s", exc)
                replies = []
            for reply in replies:
                self._take_reply(reply)
                if (
                    len(self.buffer) >= self.s.buffer_size
                    and self.version < self.num_versions
                ):
                    self._aggregate(TRIGGER_BUFFER_FULL)
        expired = self._expire()
        self._prune_versions()
        return len(replies) + expired

    def _take_reply(self, reply: Message) -> None:
        flight = self.in_flight.pop(reply.metadata.reply_to_message_id, None)
        if flight is None:
            return  # expired or unknown: already accounted for
        self.busy.discard(flight.node_id)
        if reply.has_error():
            self._record_failure(flight, reply.error.code, reply.error.reason or "")
        elif flight.message_type == MessageType.TRAIN:
            self._take_update(flight, reply.content)
        else:
            self._eval_done(flight.node_id, flight.version, reply.content)

    def _expire(self) -> int:
        now = self.clock.now()
        expired = [m for m, f in self.in_flight.items() if now >= f.deadline]
        for msg_id in expired:
            flight = self.in_flight.pop(msg_id)
            self.busy.discard(flight.node_id)
            self._record_failure(
                flight,
                ErrorCode.MESSAGE_UNAVAILABLE,
                f"no reply within the message TTL ({self.ttl:g}s)",
            )
        return len(expired)

    def _take_update(self, flight: _InFlight, content: RecordDict) -> None:
        if self.version >= self.num_versions:
            return  # the run is complete; a late update has nowhere to go
        staleness = self.version - flight.version
        if self.s.max_staleness is not None and staleness > self.s.max_staleness:
            self._reject(
                flight.node_id,
                flight.version,
                f"stale: staleness {staleness} > max_staleness {self.s.max_staleness}",
                self._digest(content),
            )
            return
        try:
            update = self.s._parse(content, self.kept[flight.version], flight.version)
        except UpdateRejected as exc:
            self._reject(
                flight.node_id, flight.version, exc.reason, self._digest(content)
            )
            return
        except Exception as exc:  # whatever a forged reply triggers, it is rejected
            reason = f"reply could not be parsed: {exc!r}"
            self._reject(flight.node_id, flight.version, reason, self._digest(content))
            return
        self.idle_deadline = self.clock.now() + self.timeout
        if not self.buffer and self.s.max_wait is not None:
            self.buffer_deadline = self.clock.now() + self.s.max_wait
        self.buffer.append(
            _Buffered(
                flight.node_id,
                flight.version,
                staleness,
                self.s.staleness_fn(staleness),
                update,
                RecordDict(dict(content.metric_records)),
                self._digest(content),
            )
        )

    # ------------------------------------------------------------- aggregation
    def _trigger(self) -> str | None:
        if not self.buffer or self.version >= self.num_versions:
            return None
        if self.clock.now() >= self.buffer_deadline:
            return TRIGGER_MAX_WAIT
        if not self.in_flight and not self._train_eligible():
            return TRIGGER_DRAINED
        return None

    def _verify(self, buffered: list[_Buffered]) -> list[_Buffered]:
        """Let the PoV committee vote; return the approved updates."""
        assert self.committee is not None
        chain_id, height, prev_hash = self.committee.block_position(
            self.ledger, self.model, self.version + 1
        )
        total = sum(b.update.num_examples for b in buffered)
        share = self.s.server_lr / total if total > 0 else 0.0
        decision = self.committee.decide(
            chain_id=chain_id,
            height=height,
            prev_hash=prev_hash,
            global_model=self.model,
            candidates=[
                Candidate(
                    b.digest,
                    b.node_id,
                    b.update.delta,
                    share * b.weight * b.update.num_examples,
                )
                for b in buffered
            ],
            round_=self.version,
        )
        self._charge_consensus_delay()
        for reason in decision.dropped_votes:
            log(WARNING, "PoV: %s", reason)
        self.pending_committee = decision.committee
        self.pending_votes.extend(decision.votes)
        self.result.committee_decisions.append(_decision_summary(decision, self.now()))
        accepted = []
        for b, outcome in zip(buffered, decision.outcomes, strict=True):
            if outcome.accepted:
                accepted.append(b)
            else:
                self._reject(
                    b.node_id,
                    b.trained_on,
                    outcome.reason,
                    b.digest,
                    decision.votes_on(b.digest),
                )
        return accepted

    def _charge_consensus_delay(self) -> None:
        assert self.committee is not None
        advance = getattr(self.clock, "advance", None)
        if self.committee.consensus_delay > 0 and callable(advance):
            advance(self.committee.consensus_delay)

    def _aggregate(self, trigger: str) -> None:
        buffered, self.buffer = self.buffer, []
        self.buffer_deadline = math.inf
        if self.committee is not None:
            buffered = self._verify(buffered)
            if not buffered:
                log(INFO, "PoV rejected every candidate; no new version")
                return
        step = weighted_delta(
            [b.update.delta for b in buffered],
            [b.update.num_examples for b in buffered],
            [b.weight for b in buffered],
        )
        if self.s.server_momentum > 0.0:
            if self.momentum is None:
                self.momentum = step
            else:
                beta = self.s.server_momentum
                self.momentum = {k: beta * self.momentum[k] + step[k] for k in step}
            step = self.momentum
        new_model = apply_step(self.model, step, self.s.server_lr)
        if not all(
            np.isfinite(v).all() for v in new_model.values() if v.dtype.kind == "f"
        ):
            for b in buffered:
                self._reject(
                    b.node_id,
                    b.trained_on,
                    "aggregate would overflow the model",
                    b.digest,
                )
            self.momentum = None
            return
        self.model = new_model
        self.model_record = to_arrayrecord(self.model)
        self.version += 1
        self.kept[self.version] = self.model
        self._prune_versions()
        self._record_block(buffered, step)

        for b in buffered:
            self.result.participation[b.node_id] = (
                self.result.participation.get(b.node_id, 0) + 1
            )
        record = VersionRecord(
            version=self.version,
            time=self.now(),
            wall_time=time.time() - self.wall0,
            trigger=trigger,
            num_updates=len(buffered),
            num_examples=float(sum(b.update.num_examples for b in buffered)),
            staleness_histogram=dict(
                sorted(Counter(b.staleness for b in buffered).items())
            ),
            node_ids=[b.node_id for b in buffered],
            kept_versions=len(self.kept),
        )
        self.result.versions.append(record)
        self.result.arrays = self.model_record
        metrics = self.s._aggregate_metrics(
            self.s.train_metrics_aggr_fn, [b.metrics for b in buffered]
        )
        if metrics is not None:
            self.result.train_metrics_clientapp[self.version] = metrics
        log(
            INFO,
            "[VERSION %d/%d] t=%.2fs trigger=%s updates=%d staleness=%s",
            self.version,
            self.num_versions,
            record.time,
            trigger,
            record.num_updates,
            record.staleness_histogram,
        )
        self._centralized_evaluation()
        self._schedule_federated_evaluation()

    def _centralized_evaluation(self) -> None:
        if self.evaluate_fn is None:
            return
        res = self.evaluate_fn(self.version, self.model_record)
        if res is not None:
            log(INFO, "\t└──> Global evaluation: %s", res)
            self.result.evaluate_metrics_serverapp[self.version] = res

    # ------------------------------------------------------ federated evaluate
    def _schedule_federated_evaluation(self) -> None:
        if self.s.fraction_evaluate == 0.0 or self.version % self.s.evaluate_every:
            return
        online = sorted(self.nodes)
        if not online:
            return
        count = max(1, math.ceil(self.s.fraction_evaluate * len(online)))
        chosen = self.rng.sample(online, count)
        self.eval_rounds[self.version] = _EvalRound(self.model_record, set(chosen), [])
        for node_id in chosen:
            previous = self.eval_pending.get(node_id)
            if previous is not None:  # superseded before it ran
                self._eval_done(node_id, previous, None)
            self.eval_pending[node_id] = self.version

    def _eval_done(
        self, node_id: int, version: int, content: RecordDict | None
    ) -> None:
        round_ = self.eval_rounds.get(version)
        if round_ is None:
            return
        round_.waiting.discard(node_id)
        if content is not None:
            round_.replies.append(content)
        if round_.waiting:
            return
        del self.eval_rounds[version]
        metrics = self.s._aggregate_metrics(
            self.s.evaluate_metrics_aggr_fn, round_.replies
        )
        if metrics is not None:
            log(INFO, "\t└──> Federated evaluation of version %d: %s", version, metrics)
            self.result.evaluate_metrics_clientapp[version] = metrics

    def _forget_unreachable_evaluations(self) -> None:
        for node_id, version in list(self.eval_pending.items()):
            if node_id not in self.nodes:
                del self.eval_pending[node_id]
                self._eval_done(node_id, version, None)

    # -------------------------------------------------------------------- loop
    def _wait(self) -> None:
        """Wait for the next reply, or the next deadline that is still ahead.

        Only future deadlines count: one that is due but cannot act (the idle
        timeout while messages are in flight) must not pin a virtual clock.
        """
        now = self.clock.now()
        candidates = [
            self.next_refresh,
            self.idle_deadline,
            self.budget_deadline,
            *(f.deadline for f in self.in_flight.values()),
            *self.backoff_until.values(),
        ]
        if self.buffer and self.version < self.num_versions:
            candidates.append(self.buffer_deadline)
        self.clock.wait(
            min((t for t in candidates if t > now), default=now + self.timeout)
        )

    def _finished(self) -> str | None:
        if self.version >= self.num_versions and not self.eval_rounds:
            return "completed"
        if self.clock.now() >= self.idle_deadline and not self.in_flight:
            return f"no usable reply for {self.timeout:g}s"
        if self.clock.now() >= self.budget_deadline:
            return "time budget reached"
        return None

    def _waiting_for_nodes(self) -> bool:
        return (
            not self.result.versions
            and not self.in_flight
            and len(self.nodes) < self.s.min_available_nodes
        )

    def execute(self) -> AsyncResult:
        try:
            return self._execute()
        finally:
            if self.owns_ledger and self.ledger is not None:
                self.ledger.close()

    def _execute(self) -> AsyncResult:
        if self.evaluate_fn is not None:
            res = self.evaluate_fn(self.version, self.model_record)
            log(INFO, "Initial global evaluation results: %s", res)
            if res is not None:
                self.result.evaluate_metrics_serverapp[self.version] = res

        while (reason := self._finished()) is None:
            self._refresh_nodes()
            self._forget_unreachable_evaluations()
            if not self._waiting_for_nodes():
                self._dispatch()
            progressed = self._collect() > 0
            if (trigger := self._trigger()) is not None:
                self._aggregate(trigger)
                progressed = True
            if not progressed:
                self._wait()  # else: dispatch to freed nodes first

        self.result.stop_reason = reason
        if reason != "completed":
            log(WARNING, "Stopping early: %s", reason)
        log(
            INFO,
            "%s finished: %d versions in %.2fs "
            "(%d rejected, %d failed, %d left in flight)",
            self.s.__class__.__name__,
            self.version,
            self.now(),
            len(self.result.rejected),
            len(self.result.failures),
            len(self.in_flight),
        )
        return self.result


def _decision_summary(decision: CommitteeDecision, time_: float) -> dict[str, object]:
    return {
        "height": decision.height,
        "time": time_,
        "committee": decision.committee,
        "needed": decision.needed,
        "accepted": sum(o.accepted for o in decision.outcomes),
        "rejected": sum(not o.accepted for o in decision.outcomes),
        "dropped_votes": decision.dropped_votes,
    }


def staleness_histogram(result: AsyncResult) -> dict[int, int]:
    """Total staleness histogram over a whole run."""
    total: Counter[int] = Counter()
    for v in result.versions:
        total.update(v.staleness_histogram)
    return dict(sorted(total.items()))


def mean_staleness(result: AsyncResult) -> float:
    """Mean staleness of all aggregated updates of a run (0 if none)."""
    hist = staleness_histogram(result)
    count = sum(hist.values())
    return (
        float(np.dot(list(hist.keys()), list(hist.values())) / count) if count else 0.0
    )
