"""Semi-asynchronous buffered aggregation (FedBuff family) for Flower.

Implementation after FedBuff (Nguyen et al., AISTATS 2022,
https://arxiv.org/abs/2106.06639) and the asynchronous FLchain design (a "block"
is aggregated when it holds K updates or a time limit tau has passed).

:class:`FedBuff` is its settings (:class:`~.settings.FedBuffSettings`: the
constructor, the start-up summary, the config ledger blocks record, the
messages it sends and how it parses a reply) plus Flower's strategy
interface, here: the synchronous
``configure_*``/``aggregate_*`` (:mod:`.sync`), and :meth:`FedBuff.start`, one
asynchronous run (:mod:`.run`).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cached_property

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from .evaluation import evaluation_sample
from .result import AsyncResult
from .run import EvaluateFn, ShouldStopFn, start_run
from .settings import FedBuffSettings
from .sync import SyncAggregation


class FedBuff(FedBuffSettings, Strategy):
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
        Each reply's ``weighted_by_key`` is its effective count under
        ``example_weighting``, not its claim (:mod:`.metricweights`).
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
    work_normalisation : WorkNormalisation | None (default: None)
        Multiply each update's staleness weight (before ``fairness``) by its
        work factor: the inverse of the local work the server asked of it,
        renormalised within the buffer (FedNova, see
        :mod:`~flchain_flwr.strategies.nova`); for ``scheduling`` with
        adaptive local work (BAFL), without which every factor is 1.
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
    require_signed_replies : bool (default: False)
        Reject every train reply that is not signed by its trainer (the client
        mod :func:`~flchain_flwr.mods.signreply.signreply_mod`). Signed
        replies are checked either way: a malformed or invalid signature, or a
        key other than the one a node id's included updates were signed by, is
        rejected with its reason (see :mod:`~.trainercheck`); the ledger
        records each included signed update's ``trainer`` key.
    """

    @cached_property
    def _sync(self) -> SyncAggregation:
        """Flower's synchronous path: the model sent, the claims heard."""
        return SyncAggregation(self)

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
        chosen = evaluation_sample(
            sorted(grid.get_node_ids()),
            self.fraction_evaluate,
            self.min_evaluate_nodes,
            self._sample_rng,
        )
        content = self.evaluate_content(arrays, config, server_round)
        return [Message(content, node_id, MessageType.EVALUATE) for node_id in chosen]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted average of the valid evaluate replies' metrics."""
        return self._sync.aggregate_evaluate(replies)

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
        evaluate_fn: EvaluateFn | None = None,
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
        return start_run(
            self,
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
            should_stop=should_stop,
        )
