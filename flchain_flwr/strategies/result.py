"""What a semi-asynchronous run returns, beyond Flower's :class:`Result`."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from flwr.serverapp.strategy import Result


@dataclass(frozen=True)
class VersionRecord:
    """One global model version (one aggregation).

    ``time`` is the strategy's clock (simulated seconds under the virtual-clock
    grid, monotonic wall seconds otherwise) measured from the start of the run.
    """

    version: int
    time: float
    wall_time: float
    trigger: str
    num_updates: int
    num_examples: float
    staleness_histogram: dict[int, int]
    node_ids: list[int]
    kept_versions: int
    """Full copies of global versions held in memory after this aggregation."""
    full_copy_bound: int | None = None
    """The most full copies the run can hold at once (``max_staleness + 1``);
    ``None`` when ``max_staleness`` is ``None`` (bounded only by the versions in
    flight)."""
    buffer_size: int | None = None
    """K this version was made with, when a buffer tuner chose it (else ``None``)."""
    max_wait: float | None = None
    """tau this version was made with, when a buffer tuner is on (else ``None``)."""
    messages_down: int = 0
    """Train messages sent since the previous version."""
    bytes_down: int = 0
    """Their bytes, as Flower counts a message's content (see :mod:`.traffic`)."""
    replies_up: int = 0
    """Train replies received since the previous version (used or not)."""
    bytes_up: int = 0
    """Their bytes, counted the same way."""


@dataclass(frozen=True)
class RejectedUpdate:
    """A reply that was taken but not used, and why (stale, malformed, ...)."""

    node_id: int
    version: int
    trained_on: int
    time: float
    reason: str
    votes: list[dict[str, Any]] = field(default_factory=list)
    """The PoV committee's signed votes on it, when the committee rejected it."""


@dataclass(frozen=True)
class NodeFailure:
    """A message that produced no usable reply: an error reply, a rejected
    evaluate reply, or its TTL ran out."""

    node_id: int
    version: int
    time: float
    error_code: int
    reason: str


@dataclass(frozen=True)
class NodeEvaluation:
    """One node's validated evaluate reply (with the personalisation mod, its
    ``personal-*`` metrics beside the global model's)."""

    version: int
    metrics: dict[str, Any]


@dataclass
class AsyncResult(Result):
    """Flower's :class:`Result` plus the history of a semi-asynchronous run.

    Attributes
    ----------
    versions : list[VersionRecord]
        One record per aggregation, in order.
    rejected : list[RejectedUpdate]
        Replies that were not aggregated, with the reason.
    failures : list[NodeFailure]
        Messages that failed (error replies, expired TTLs, departed nodes).
    participation : dict[int, int]
        Number of aggregated updates per node id; a run resumed from a ledger
        counts the whole chain's.
    weight_share : dict[int, float]
        Per node id, the sum over versions of its update's share of the step
        (staleness weight times effective examples over the buffer's examples;
        with an update memory, its remembered update counts in every version
        it steps in); a resumed run's starts from the chain's
        (:mod:`.carryover`).
    """

    versions: list[VersionRecord] = field(default_factory=list)
    rejected: list[RejectedUpdate] = field(default_factory=list)
    failures: list[NodeFailure] = field(default_factory=list)
    participation: dict[int, int] = field(default_factory=dict)
    weight_share: dict[int, float] = field(default_factory=dict)
    stop_reason: str = ""
    committee_decisions: list[dict[str, Any]] = field(default_factory=list)
    """One summary per PoV committee decision (empty without a committee)."""
    node_evaluations: dict[int, NodeEvaluation] = field(default_factory=dict)
    """Per node, its evaluation of the newest version it evaluated (one per
    node, so it grows with the population, not with the run)."""
    downlink: dict[int, dict[str, int]] = field(default_factory=dict)
    """With ``downlink=True``: per distance ``s`` (versions between a node's
    base and the version sent), the deltas offered and sent, their entries and
    bytes (:class:`~.downlink.DistanceStats`); the rest went as full models."""

    def history_dict(self) -> dict[str, Any]:
        """Everything but the arrays, as plain JSON-serialisable data."""
        return {
            "versions": [asdict(v) for v in self.versions],
            "rejected": [asdict(r) for r in self.rejected],
            "failures": [asdict(f) for f in self.failures],
            "participation": {str(k): v for k, v in self.participation.items()},
            "weight_share": {str(k): v for k, v in self.weight_share.items()},
            "stop_reason": self.stop_reason,
            "committee_decisions": self.committee_decisions,
            "downlink": {str(k): v for k, v in self.downlink.items()},
            "train_metrics_clientapp": _metrics(self.train_metrics_clientapp),
            "evaluate_metrics_clientapp": _metrics(self.evaluate_metrics_clientapp),
            "evaluate_metrics_serverapp": _metrics(self.evaluate_metrics_serverapp),
            "node_evaluations": {
                str(n): asdict(e) for n, e in self.node_evaluations.items()
            },
        }


def _metrics(by_round: dict[int, Any]) -> dict[str, dict[str, Any]]:
    return {str(r): dict(m) for r, m in by_round.items()}


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
    return sum(s * n for s, n in hist.items()) / count if count else 0.0
