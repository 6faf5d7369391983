"""Federated evaluation of global versions, interleaved with asynchronous training.

After a version is made, a sample of online nodes is asked to evaluate it. A node
busy training evaluates when it comes back; a node asked to evaluate a newer
version before it got to the older one evaluates only the newer one. A version's
metrics are aggregated once every node asked has answered, failed or left.

With ``once_per_training`` (FedBuff's default schedule, once per FedAvg round's
worth of updates) a node that has evaluated is not asked again before it has
trained once more: otherwise a slow node, whose evaluation outlasts the period,
would find a newer evaluation waiting each time it is free and never train.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.supercore import log

from .metrics import parse_evaluate_reply
from .result import NodeEvaluation
from .updates import UpdateRejected

MetricsAggrFn = Callable[[list[RecordDict], str], MetricRecord]
ValidateFn = Callable[[RecordDict], RecordDict]
"""Check an evaluate reply; return what to aggregate or raise UpdateRejected."""


@dataclass
class _EvalRound:
    arrays: ArrayRecord
    waiting: set[int]
    replies: list[RecordDict]


def evaluation_sample(
    nodes: list[int], fraction: float, min_nodes: int, rng: random.Random
) -> list[int]:
    """A ``fraction`` of ``nodes`` (rounded up; at least ``min_nodes``, at most
    all of them) drawn with ``rng``: FedBuff's federated evaluation sample,
    per version and in its synchronous ``configure_evaluate`` alike."""
    count = min(len(nodes), max(min_nodes, math.ceil(fraction * len(nodes))))
    return rng.sample(nodes, count)


class FederatedEvaluation:
    """Which nodes evaluate which version, and the aggregated results."""

    def __init__(
        self,
        *,
        fraction: float,
        min_nodes: int,
        aggregate: Callable[[list[RecordDict]], MetricRecord | None],
        validate: ValidateFn,
        rng: random.Random,
        results: dict[int, MetricRecord] | None = None,
        once_per_training: bool = False,
        per_node: dict[int, NodeEvaluation] | None = None,
    ) -> None:
        self.fraction = fraction
        self.min_nodes = min_nodes
        self.aggregate = aggregate
        self.validate = validate
        self.rng = rng
        self.once_per_training = once_per_training
        self._evaluated: set[int] = set()  # evaluated since their last training
        self._check: set[int] = set()  # pending nodes that may have become free
        self.rounds: dict[int, _EvalRound] = {}
        self.pending: dict[int, int] = {}  # node -> version it should evaluate
        self.results: dict[int, MetricRecord] = {} if results is None else results
        self.per_node = per_node  # node -> its newest evaluation

    def schedule(self, version: int, arrays: ArrayRecord, online: set[int]) -> None:
        """Ask a sample of ``online`` nodes to evaluate ``version``."""
        if self.fraction == 0.0 or not online:
            return
        nodes = sorted(online - self._evaluated if self.once_per_training else online)
        if not nodes:
            return
        chosen = evaluation_sample(nodes, self.fraction, self.min_nodes, self.rng)
        self.rounds[version] = _EvalRound(arrays, set(chosen), [])
        for node_id in chosen:
            previous = self.pending.get(node_id)
            if previous is not None:  # superseded before it ran
                self.done(node_id, previous, None)
            self.pending[node_id] = version
            self._check.add(node_id)

    def freed(self, node_ids: Iterable[int]) -> None:
        """These nodes may have become free (answered, back from backoff, joined)."""
        self._check.update(n for n in node_ids if n in self.pending)

    def ready(self, is_free: Callable[[int], bool]) -> list[tuple[int, int]]:
        """Pop the ``(node, version)`` pairs whose node is free now, in node order.

        Only nodes scheduled or freed since the last call are looked at: a
        pending node that is busy now is looked at again when it is freed.
        """
        check, self._check = self._check, set()
        due = sorted(
            (n, self.pending[n]) for n in check if n in self.pending and is_free(n)
        )
        for node_id, _ in due:
            del self.pending[node_id]
            if self.once_per_training:
                self._evaluated.add(node_id)
        return due

    def trained(self, node_id: int) -> None:
        """``node_id`` was sent a train message: it may be asked to evaluate again."""
        self._evaluated.discard(node_id)

    def arrays_of(self, version: int) -> ArrayRecord:
        """The model of ``version`` being evaluated."""
        return self.rounds[version].arrays

    def forget(self, left: Iterable[int]) -> None:
        """Give up on pending evaluations of nodes that left."""
        for node_id in sorted(left):
            version = self.pending.pop(node_id, None)
            if version is not None:
                self.done(node_id, version, None)

    def done(
        self, node_id: int, version: int, content: RecordDict | None
    ) -> str | None:
        """``node_id`` answered (``content``) or failed (``None``) on ``version``.

        Returns why its reply was rejected (``None`` if it was used, or there
        was none): the caller records it, as it records a failed message.
        """
        round_ = self.rounds.get(version)
        if round_ is None:
            return None
        round_.waiting.discard(node_id)
        rejected = None
        if content is not None:
            try:
                round_.replies.append(self.validate(content))
                self._keep(node_id, version, round_.replies[-1])
            except UpdateRejected as exc:
                rejected = f"evaluate reply rejected: {exc.reason}"
        if not round_.waiting:
            del self.rounds[version]
            metrics = self.aggregate(round_.replies)
            if metrics is not None:
                log(
                    INFO,
                    "\t└──> Federated evaluation of version %d: %s",
                    version,
                    metrics,
                )
                self.results[version] = metrics
        return rejected

    def _keep(self, node_id: int, version: int, reply: RecordDict) -> None:
        """Keep ``node_id``'s validated reply unless it has evaluated a newer
        version (replies of different versions may arrive out of order)."""
        if self.per_node is None:
            return
        kept = self.per_node.get(node_id)
        if kept is None or kept.version <= version:
            metrics = next(iter(reply.metric_records.values()))
            self.per_node[node_id] = NodeEvaluation(version, dict(metrics))

    @property
    def busy(self) -> bool:
        """Whether some version still waits for evaluate replies."""
        return bool(self.rounds)


def aggregate_or_none(
    fn: MetricsAggrFn, contents: list[RecordDict], weighted_by_key: str
) -> MetricRecord | None:
    """``fn(contents)`` over the replies that carry metrics; ``None`` if none do.

    Metrics are informative: an aggregation function that fails is logged and
    never stops a run.
    """
    usable = [c for c in contents if c.metric_records]
    if not usable:
        return None
    try:
        return fn(usable, weighted_by_key)
    except Exception as exc:
        log(WARNING, "Could not aggregate metrics: %s", exc)
        return None


def valid_evaluate_content(content: RecordDict, weighted_by_key: str) -> RecordDict:
    """An evaluate reply's content reduced to its validated MetricRecord.

    Raises
    ------
    UpdateRejected
        If the reply's metrics are missing, malformed, non-finite or too large.
    """
    return RecordDict({"metrics": parse_evaluate_reply(content, weighted_by_key)})
