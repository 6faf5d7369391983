"""Reported metrics weighed as the step weighs: by effective, not claimed, counts.

A reply's ``num-examples`` is the client's word (:mod:`.weighting`). The step
weighs each update by the example-weighting policy's effective count times its
staleness weight (and its trust under trust weighting); a version's train
metrics are averaged by those same weights (:func:`weighed_train_metrics`), so
a node that delays its replies gains no say. The claims of a federated
evaluation's replies go through the same policy
(:func:`weighed_evaluation_metrics`), over a history of that evaluation's own
claims: an evaluation set is sized apart from a training set, so a training
median would cap it at the wrong scale. Either way, a node holding no more than
its own client's key moves a reported metric no more than it moves the step:
with the default ``MedianCapped``, nodes that are a minority of those replying
each weigh at most ``multiple`` times an honest median.

The aggregation function keeps Flower's signature, ``fn(contents,
weighted_by_key)``: it is handed the replies with each ``weighted_by_key`` set
to its effective count (a train reply's: its weight in the step), so a custom
function weighs by that count too.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import WARNING

from flwr.app import MetricRecord, RecordDict
from flwr.supercore import log

from .claims import ClaimHistory
from .evaluation import MetricsAggrFn, aggregate_or_none
from .updates import example_count
from .weighting import ExampleWeighting, WeightingError, effective_examples


def with_counts(
    contents: Sequence[RecordDict], counts: Sequence[float], weighted_by_key: str
) -> list[RecordDict]:
    """The replies with each ``weighted_by_key`` set to its effective count.

    A reply whose count is its claim is passed as it is; any other becomes a
    new RecordDict of its MetricRecords, those holding ``weighted_by_key``
    carrying the count instead (the reply as received is left unchanged).
    """
    if len(counts) != len(contents):
        raise ValueError(f"{len(counts)} counts for {len(contents)} replies")
    out = []
    for content, count in zip(contents, counts, strict=True):
        records = content.metric_records
        if all(
            record[weighted_by_key] == count
            for record in records.values()
            if weighted_by_key in record
        ):
            out.append(content)
            continue
        reweighed = RecordDict()
        for name, record in records.items():
            copy = MetricRecord(dict(record))
            if weighted_by_key in copy:
                copy[weighted_by_key] = float(count)
            reweighed[name] = copy
        out.append(reweighed)
    return out


def weighed_train_metrics(
    fn: MetricsAggrFn,
    contents: Sequence[RecordDict],
    counts: Sequence[float],
    weighted_by_key: str,
) -> MetricRecord | None:
    """A version's train metrics, weighed by the ``counts`` its step used.

    ``counts`` are the updates' weights in the step, one per reply
    (:attr:`~.block.BufferedUpdate.average_weight`: the weighting policy's
    effective examples times the staleness weight and the trust).
    """
    return aggregate_or_none(
        fn, with_counts(contents, counts, weighted_by_key), weighted_by_key
    )


def _claim(content: RecordDict, weighted_by_key: str) -> float:
    """The claimed count of a validated evaluate reply."""
    for record in content.metric_records.values():
        if weighted_by_key in record:
            return example_count(record, weighted_by_key)
    raise ValueError(f"a validated evaluate reply lacks {weighted_by_key!r}")


def evaluation_counts(
    policy: ExampleWeighting, contents: Sequence[RecordDict], weighted_by_key: str
) -> list[float]:
    """The effective example counts of one evaluation's validated replies.

    Each claim goes through ``policy`` over a history of this evaluation's
    claims, one entry per reply (a node evaluates a version once).

    Raises
    ------
    WeightingError
        As :func:`~.weighting.effective_examples`.
    """
    claims = [_claim(c, weighted_by_key) for c in contents]
    history = ClaimHistory(max_nodes=max(1, len(claims)))
    for i, claim in enumerate(claims):
        history.observe(i, claim)
    return effective_examples(policy, claims, history)


def weighed_evaluation_metrics(
    fn: MetricsAggrFn,
    policy: ExampleWeighting,
    contents: Sequence[RecordDict],
    weighted_by_key: str,
) -> MetricRecord | None:
    """One federated evaluation's metrics, each reply's claim through ``policy``.

    ``contents`` are validated evaluate replies
    (:func:`~.evaluation.valid_evaluate_content`). ``None`` if there are none,
    or if their counts cannot weigh an average (logged with the reason).
    """
    if not contents:
        return None
    try:
        counts = evaluation_counts(policy, contents, weighted_by_key)
    except WeightingError as exc:
        log(WARNING, "Federated evaluation not aggregated: %s", exc)
        return None
    return aggregate_or_none(
        fn, with_counts(contents, counts, weighted_by_key), weighted_by_key
    )
