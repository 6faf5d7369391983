"""Semi-asynchronous buffered aggregation (FedBuff family) for Flower.

Implementation after FedBuff (Nguyen et al., AISTATS 2022,
https://arxiv.org/abs/2106.06639) and the asynchronous FLchain design (a "block"
is aggregated when it holds K updates or a time limit tau has passed).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Literal

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info
from flwr.supercore import log

from ..arrays import NDArrays
from ..ledger import Ledger
from ..ledger.canonical import LATEST_FORMAT, encode, sha256_hex
from ..ledger.consensus import TRUST_WEIGHTING
from ..pov.committee import Committee
from ..protocol import (
    DOWNLINK_KEY,
    MODEL_VERSION_KEY,
    SERVER_ROUND_KEY,
    SPARSE_REPLIES_KEY,
)
from ..runtime import clock_of, publish_result
from .anchor import BlockAnchorer
from .fairness import InverseParticipation
from .loop import QueuedDispatch
from .memory import UpdateMemory, memory_conflict
from .metrics import aggregate_metrics
from .result import AsyncResult
from .run import FedBuffRun
from .scheduling import RandomSample, SchedulingPolicy
from .staleness import FedBuffStaleness, StalenessFn
from .state import DEFAULT_STATE_RULE, StateRule
from .state import state_rule as state_rule_named
from .sync import SyncAggregation
from .tuning import StalenessTarget
from .updates import ParsedUpdate, parse_update
from .weighting import DEFAULT_WEIGHTING, ExampleWeighting

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]
ShouldStopFn = Callable[[int, Result], bool]
MaxStaleness = int | Literal["auto"] | None


# pylint: disable=too-many-instance-attributes
class FedBuff(Strategy):
    """Semi-asynchronous buffered aggregation with staleness weighting.

    The server keeps nodes training, one message in flight per node, and
    re-dispatches a node as soon as its reply is taken and a newer global model
    exists. Accepted updates are buffered; the buffer is aggregated when it holds
    ``buffer_size`` updates, when ``max_wait`` seconds have passed since its first
    update arrived, or when nothing else can arrive::

        new = old + server_lr * sum_i w(s_i) n_i delta_i / sum_i n_i

    where ``s_i`` is the update's staleness (versions between the model it was
    trained on and the current one), ``w`` the staleness function and ``n_i``
    its example count after the ``example_weighting`` policy. With
    ``buffer_size`` = number of nodes, constant staleness and ``server_lr=1``
    this is FedAvg.

    ``num_rounds`` in :meth:`start` counts global model **versions**; each holds
    ``buffer_size`` updates, so one FedAvg round's worth of updates (one per
    training node) takes about ``nodes / buffer_size`` versions. The start-up and
    closing logs say what that means for the run at hand.

    Every argument of Flower's ``FedAvg`` is accepted with the nearest meaning:
    ``fraction_train`` and ``min_train_nodes`` set how many nodes train at once
    (``max(min_train_nodes, ceil(fraction_train * online))``, unless
    ``concurrency`` is given); ``fraction_evaluate`` and ``min_evaluate_nodes``
    size each federated evaluation as in FedAvg; ``min_available_nodes``,
    ``weighted_by_key``, ``arrayrecord_key``, ``configrecord_key`` and the
    metric aggregation functions mean what they mean there.

    Parameters
    ----------
    fraction_train : float (default: 1.0)
        Fraction of online nodes training at once (ignored with ``concurrency``).
    fraction_evaluate : float (default: 1.0)
        Fraction of online nodes asked to evaluate a version; 0 turns it off.
    min_train_nodes, min_evaluate_nodes, min_available_nodes : int (default: 2)
        As in FedAvg; ``min_available_nodes`` must be online before the first
        dispatch.
    weighted_by_key, arrayrecord_key, configrecord_key : str
        As in Flower's FedAvg.
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn : callable, optional
        As in Flower's FedAvg; default: the weighted average of
        :func:`~flchain_flwr.strategies.metrics.aggregate_metrics` (Flower's
        numbers when every reply has every key; a key some replies lack is
        averaged over those that have it instead of failing the version).
    buffer_size : int (default: 10)
        K, the number of accepted updates that triggers an aggregation.
    max_wait : float | None (default: None)
        tau: seconds (grid clock) after the first buffered update at which the
        buffer is aggregated even if not full. ``None`` waits for K.
    staleness_fn : Callable[[int], float] (default: FedBuff's 1/sqrt(1+s))
        Weight of an update as a function of its staleness.
    max_staleness : int | "auto" | None (default: "auto")
        Updates staler than this are dropped and recorded. ``"auto"`` is
        ``max(20, 4 * ceil(training nodes / buffer_size))``: four times the
        staleness a node of average speed sees (``concurrency / K`` versions
        pass while it trains; 400 at FedBuff's concurrency 1000 and K = 10, whose
        staleness weight 1/sqrt(401) = 0.05 leaves little to lose). It also
        bounds full model copies kept for replies in flight at
        ``max_staleness + 1``. ``None``: no limit.
    server_lr, server_momentum : float (default: 1.0, 0.0)
        Server learning rate and momentum (FedBuff's server optimizer).
    concurrency : int | None (default: None)
        Nodes training at once; ``None`` derives it from ``fraction_train``.
    example_weighting : ExampleWeighting (default: capped at a multiple of the
        recent median claim)
        How self-reported example counts become weights (see
        :mod:`flchain_flwr.strategies.weighting`); ``Claimed()`` trusts them.
    scheduling : SchedulingPolicy (default: RandomSample())
        Which free node trains next and with what train config
        (:class:`~.adaptive.AdaptiveScheduling` adds FedSA learning rates and
        BAFL local work for stragglers).
    fairness : InverseParticipation | None (default: None)
        Multiply each update's staleness weight by its node's inverse
        participation factor (:mod:`~flchain_flwr.strategies.fairness`).
    update_memory : UpdateMemory | None (default: None)
        Step on each node's latest update, not only the buffer's (MIFA, see
        :mod:`~flchain_flwr.strategies.memory`): a slow node's update keeps
        steering the model until it sends a newer one. Not with a ledger or a
        PoV committee (a block could not be replayed from its own updates),
        nor with ``fairness`` (both make up for rare nodes).
    buffer_tuning : StalenessTarget | None (default: None)
        Choose K (and tau) after every version to hold a target mean staleness
        (:mod:`~flchain_flwr.strategies.tuning`); ``buffer_size`` and
        ``max_wait`` are then the starting values. Each version records its K
        and tau (and its ledger block, under ``buffer``).
    state_rule : "average" | "delta" | "keep" (default: "average")
        How non-trainable arrays (BatchNorm running statistics, integer
        counters) are aggregated: the weighted average of the values nodes
        reported; as weights (stale deltas, the old behaviour, which can drive
        a running variance negative); or kept at the server's values (local
        statistics, as in FedBN). See :mod:`flchain_flwr.strategies.state`.
    state_patterns : Iterable[str] (default: ())
        More array names (shell patterns) to treat as non-trainable, beyond
        integer arrays and names ending in ``running_mean``, ``running_var``
        or ``num_batches_tracked``.
    message_ttl : float | None (default: None)
        TTL of each message in seconds; ``None`` uses ``start``'s ``timeout``.
    membership_refresh, retry_backoff : float (default: 5.0, 10.0)
        Seconds between membership reads; seconds (> 0) a node rests after a
        failure.
    evaluate_every : int | None (default: None)
        Federated evaluation period in versions; ``None``: once per FedAvg
        round's worth of aggregated updates (one per training node), and the
        last version.
    ledger : Ledger | str | Path | None (default: None)
        Record every version as a signed block (a path opens or creates one;
        missing folders are created). A ledger holding blocks is resumed: the
        model, version, server momentum and example-weighting history continue
        from its last block.
    resume_with_changed_config : bool (default: False)
        Resume a ledger whose last block was written with other settings
        (another :meth:`config_digest`), with a WARNING naming the settings
        that differ; without it such a resume raises ``ValueError``. The next
        block records the new settings.
    time_budget : float | None (default: None)
        Stop after this many seconds on the grid's clock.
    committee : Committee | None (default: None)
        A PoV committee: only updates approved by more than 2/3 of each block's
        committee are aggregated.
    seed : int | None (default: None)
        Seeds node selection, for reproducible runs.
    poll_interval : float (default: 0.1)
        Seconds between polls on a wall clock.
    downlink : bool (default: False)
        Lossless sparse downlink: a node whose last train reply said (through
        :func:`~flchain_flwr.mods.downlink_mod`) which version it holds is sent
        the entries that changed since, with their final values, when that is
        smaller than the full model (see :mod:`.downlink`). Pays off when the
        updates are sparse (the DGC mod) and ``server_momentum`` is 0.
    downlink_from_initial : bool (default: False)
        With ``downlink``: a node not heard from yet is sent the delta from the
        run's initial model instead of the full model, for its
        ``downlink_mod(initial_model=...)`` to rebuild on the initial model it
        builds itself (the app's seeded initialisation). Only on a run that
        starts at version 0; a node that cannot rebuild it replies an error and
        gets full models from then on (see :mod:`.downlink`).
    anchor : BlockAnchorer | None (default: None)
        Anchor the ledger in a main chain (an ``Anchorer``), or spool its
        cosigned checkpoints for the main chain's operator (a
        ``SpoolAnchorer``), every N blocks or T seconds, and at the end (see
        :mod:`flchain_flwr.strategies.anchor`); needs ``ledger``.
    queued_dispatch : bool | "auto" (default: False)
        Keep one more train message queued behind a training node's current
        one, on the current version, once no free node is left for it: a
        deployed SuperNode that replies then pulls its next message at once
        instead of sleeping in its 3 s idle poll. The queued update is one
        version staler than one dispatched on the reply. A node is queued
        behind only once its last round trip (from dispatch, queue wait
        included) took at most half the message TTL, so that a queued message
        does not expire while it waits, and only when its queued update is
        forecast to land within ``max_staleness`` (a pushed message cannot be
        withdrawn; see :mod:`~.queue_forecast`). Not with ``downlink``
        (a delta's base must be the node's last model, which a queue skips).
        ``"auto"``: on over Flower's deployment grid only, and not with
        ``downlink`` (see :func:`~.loop.queued_on`).
    """

    # pylint: disable=too-many-arguments,too-many-locals
    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        *,
        buffer_size: int = 10,
        max_wait: float | None = None,
        staleness_fn: StalenessFn | None = None,
        max_staleness: MaxStaleness = "auto",
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        concurrency: int | None = None,
        example_weighting: ExampleWeighting | None = None,
        scheduling: SchedulingPolicy | None = None,
        fairness: InverseParticipation | None = None,
        update_memory: UpdateMemory | None = None,
        buffer_tuning: StalenessTarget | None = None,
        state_rule: StateRule = DEFAULT_STATE_RULE,
        state_patterns: Iterable[str] = (),
        message_ttl: float | None = None,
        membership_refresh: float = 5.0,
        retry_backoff: float = 10.0,
        evaluate_every: int | None = None,
        ledger: Ledger | str | Path | None = None,
        resume_with_changed_config: bool = False,
        time_budget: float | None = None,
        committee: Committee | None = None,
        seed: int | None = None,
        poll_interval: float = 0.1,
        downlink: bool = False,
        downlink_from_initial: bool = False,
        anchor: BlockAnchorer | None = None,
        queued_dispatch: QueuedDispatch = False,
    ) -> None:
        for name, value in (
            ("buffer_size", buffer_size),
            ("min_train_nodes", min_train_nodes),
            ("min_evaluate_nodes", min_evaluate_nodes),
            ("min_available_nodes", min_available_nodes),
            ("concurrency", concurrency),
            ("evaluate_every", evaluate_every),
        ):
            _require(
                value is None
                or (isinstance(value, int) and not isinstance(value, bool)),
                f"{name} must be an int, got {value!r}",
            )
        _require(buffer_size >= 1, f"buffer_size must be >= 1, got {buffer_size}")
        _require(max_wait is None or max_wait > 0, "max_wait must be > 0 or None")
        _require(
            max_staleness in (None, "auto")
            or (isinstance(max_staleness, int) and max_staleness >= 0),
            "max_staleness must be an int >= 0, 'auto' or None",
        )
        _require(server_lr > 0, f"server_lr must be > 0, got {server_lr}")
        _require(0.0 <= server_momentum < 1.0, "server_momentum must be in [0, 1)")
        _require(concurrency is None or concurrency >= 1, "concurrency must be >= 1")
        _require(0.0 < fraction_train <= 1.0, "fraction_train must be in (0, 1]")
        _require(0.0 <= fraction_evaluate <= 1.0, "fraction_evaluate must be in [0, 1]")
        _require(min_train_nodes >= 0, "min_train_nodes must be >= 0")
        _require(min_evaluate_nodes >= 0, "min_evaluate_nodes must be >= 0")
        _require(min_available_nodes >= 1, "min_available_nodes must be >= 1")
        _require(message_ttl is None or message_ttl > 0, "message_ttl must be > 0")
        _require(membership_refresh > 0, "membership_refresh must be > 0")
        _require(retry_backoff > 0, "retry_backoff must be > 0")
        _require(
            evaluate_every is None or evaluate_every >= 1, "evaluate_every must be >= 1"
        )
        _require(poll_interval > 0, "poll_interval must be > 0")
        _require(
            queued_dispatch in (True, False, "auto"),
            f"queued_dispatch must be a bool or 'auto', got {queued_dispatch!r}",
        )
        _require(
            not (queued_dispatch is True and downlink),
            "queued_dispatch and downlink cannot be combined",
        )
        _require(
            downlink or not downlink_from_initial,
            "downlink_from_initial needs downlink",
        )
        _require(time_budget is None or time_budget > 0, "time_budget must be > 0")
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.min_available_nodes = min_available_nodes
        self.weighted_by_key = weighted_by_key
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.train_metrics_aggr_fn = train_metrics_aggr_fn or aggregate_metrics
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn or aggregate_metrics
        self.buffer_size = buffer_size
        self.max_wait = max_wait
        self.staleness_fn: StalenessFn = staleness_fn or FedBuffStaleness()
        self.max_staleness: MaxStaleness = max_staleness
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.concurrency = concurrency
        self.example_weighting = example_weighting or DEFAULT_WEIGHTING
        self.scheduling = scheduling or RandomSample()
        self.fairness = fairness
        self.update_memory = update_memory
        self.buffer_tuning = buffer_tuning
        self.state_rule: StateRule = state_rule_named(state_rule)
        self.state_patterns = tuple(state_patterns)
        self.message_ttl = message_ttl
        self.membership_refresh = membership_refresh
        self.retry_backoff = retry_backoff
        self.evaluate_every = evaluate_every
        self.ledger = ledger
        self.resume_with_changed_config = resume_with_changed_config
        self.time_budget = time_budget
        self.committee = committee
        self.seed = seed
        self.poll_interval = poll_interval
        self.downlink = bool(downlink)
        self.downlink_from_initial = bool(downlink_from_initial)
        _require(anchor is None or ledger is not None, "anchor needs a ledger")
        self.anchor = anchor
        self.queued_dispatch: QueuedDispatch = queued_dispatch
        conflict = self.policy_conflict()
        _require(conflict is None, conflict or "")
        self._sync = SyncAggregation(self)
        self._sample_rng = random.Random(seed)
        if fraction_evaluate == 0.0:
            log(WARNING, "fraction_evaluate is 0.0: no federated evaluation.")

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
            "\t├──> Server: lr=%s, momentum=%s, example weighting=%s",
            self.server_lr,
            self.server_momentum,
            self.example_weighting.spec,
        )
        log(INFO, "\t├──> PoV: %s, ledger: %s", self.committee, self.ledger)
        stragglers = (self.fairness, self.update_memory, self.buffer_tuning)
        if any(option is not None for option in stragglers):
            log(
                INFO,
                "\t├──> Stragglers: fairness=%s, update memory=%s, buffer tuning=%s",
                *(option and option.spec for option in stragglers),
            )
        log(
            INFO,
            "\t├──> Evaluation: fraction_evaluate=%s, min_evaluate_nodes=%d, every=%s",
            self.fraction_evaluate,
            self.min_evaluate_nodes,
            self.evaluate_every or "one FedAvg round's worth of updates",
        )
        log(
            INFO,
            "\t└──> Dispatch: %s, scheduling=%s, ttl=%s, min_available_nodes=%d",
            f"concurrency={self.concurrency}"
            if self.concurrency is not None
            else f"fraction_train={self.fraction_train}, "
            f"min_train_nodes={self.min_train_nodes}",
            self.scheduling,
            self.message_ttl if self.message_ttl is not None else "timeout",
            self.min_available_nodes,
        )
        if self.downlink:
            log(
                INFO,
                "\t└──> Downlink: sparse deltas to nodes that keep their base%s",
                ", first models from the initial one"
                if self.downlink_from_initial
                else "",
            )
        if self.queued_dispatch:
            log(INFO, "\t└──> Queued dispatch: %s", self.queued_dispatch)

    def policy_conflict(self) -> str | None:
        """Why the update memory cannot run beside the ledger, committee or
        fairness set now, or ``None`` (checked here and again at start, as
        they are attributes)."""
        return memory_conflict(
            self.update_memory,
            ledger=self.ledger is not None,
            committee=self.committee is not None,
            fairness=self.fairness is not None,
        )

    def config_dict(self) -> dict[str, object]:
        """The settings that shape the global model (recorded in ledger blocks)."""
        config: dict[str, object] = {
            "strategy": type(self).__name__,
            "buffer_size": self.buffer_size,
            "max_wait": self.max_wait,
            "staleness_fn": repr(self.staleness_fn),
            "max_staleness": self.max_staleness,
            "server_lr": self.server_lr,
            "server_momentum": self.server_momentum,
            "concurrency": self.concurrency,
            "fraction_train": self.fraction_train,
            "min_train_nodes": self.min_train_nodes,
            "example_weighting": self.example_weighting.spec,
            "state_rule": self.state_rule,
            "state_patterns": list(self.state_patterns),
            "weighted_by_key": self.weighted_by_key,
            "arrayrecord_key": self.arrayrecord_key,
            "committee": repr(self.committee),
        } | {  # only when on: the default's digest, and its ledgers, are unchanged
            key: option.spec
            for key, option in (
                ("fairness", self.fairness),
                ("update_memory", self.update_memory),
                ("buffer_tuning", self.buffer_tuning),
            )
            if option is not None
        }
        if self.queued_dispatch:  # only when on, like the options above
            config["queued_dispatch"] = self.queued_dispatch
        if self.committee is not None and self.committee.trust_weighting:
            config["trust_weighting"] = TRUST_WEIGHTING
        return config

    def config_digest(self) -> str:
        """SHA-256 of :meth:`config_dict` in canonical JSON, in the encoding new
        ledgers use (what their blocks hold as ``config_digest``)."""
        return sha256_hex(encode(LATEST_FORMAT, self.config_dict()))

    # ------------------------------------------------- message building blocks
    def train_content(
        self, arrays: ArrayRecord, config: ConfigRecord, version: int
    ) -> RecordDict:
        """Content of a train message asking a node to train on ``version``."""
        cfg = ConfigRecord(dict(config))
        cfg[SERVER_ROUND_KEY] = version + 1
        cfg[MODEL_VERSION_KEY] = version
        cfg[SPARSE_REPLIES_KEY] = True  # the DGC mod may compress its reply
        if self.downlink:  # downlink_mod may keep its base and say so
            cfg[DOWNLINK_KEY] = True
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})

    def evaluate_content(
        self, arrays: ArrayRecord, config: ConfigRecord, version: int
    ) -> RecordDict:
        """Content of an evaluate message for ``version``."""
        cfg = ConfigRecord(dict(config))
        cfg[SERVER_ROUND_KEY] = version
        cfg[MODEL_VERSION_KEY] = version
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})

    # ------------------------------------------ Flower's synchronous interface
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """One train message per online node: the synchronous special case.

        :meth:`start` does not use this; it is here so the strategy also works
        inside Flower's synchronous loop.
        """
        self._sync.sent(server_round, arrays)
        content = self.train_content(arrays, config, server_round - 1)
        return [
            Message(content, node_id, MessageType.TRAIN)
            for node_id in grid.get_node_ids()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate one synchronous batch of replies (all with staleness 0).

        Replies pass the same validation as in :meth:`start`. Without a
        preceding :meth:`configure_train` (as Flower's own strategy tests call
        FedAvg's), full-weight replies are averaged as FedAvg does.
        """
        return self._sync.aggregate(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Evaluate messages for a ``fraction_evaluate`` sample of online nodes."""
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = sorted(grid.get_node_ids())
        wanted = math.ceil(self.fraction_evaluate * len(node_ids))
        count = min(len(node_ids), max(self.min_evaluate_nodes, wanted))
        chosen = self._sample_rng.sample(node_ids, count)
        content = self.evaluate_content(arrays, config, server_round)
        return [Message(content, node_id, MessageType.EVALUATE) for node_id in chosen]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted average of the valid evaluate replies' metrics."""
        return self._sync.aggregate_evaluate(replies)

    def _parse(
        self, content: RecordDict, reference: NDArrays, trained_on: int | None = None
    ) -> ParsedUpdate:
        """Validate a train reply against the model it was trained on."""
        return parse_update(
            content,
            reference,
            arrayrecord_key=self.arrayrecord_key,
            weighted_by_key=self.weighted_by_key,
            trained_on=trained_on,
        )

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
        should_stop: ShouldStopFn | None = None,
    ) -> AsyncResult:
        """Run until ``num_rounds`` global versions have been produced.

        Same signature as Flower's :meth:`Strategy.start` (with flwr 1.43's
        ``should_stop``), so swapping ``FedAvg`` for ``FedBuff`` in a ServerApp
        is the whole change. ``timeout`` is the default message TTL and the
        longest the run waits without any usable reply. ``should_stop(version,
        result)`` is asked after every version; ``True`` ends the run there
        (``num_rounds`` is then a maximum).

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
        run = FedBuffRun(
            strategy=self,
            grid=grid,
            clock=clock_of(grid, self.poll_interval),
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


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
