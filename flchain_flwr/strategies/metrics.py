"""Pure helpers: cap, validate and average the metrics of replies.

A train reply's metrics are capped (:func:`bounded_metrics`; what a version
aggregates of them: :func:`train_reply_metrics`) before they are kept; an
evaluate reply is validated whole (:func:`parse_evaluate_reply`); and the
replies' metrics are averaged key by key (:func:`aggregate_metrics`). Like
:mod:`.updates`, nothing here touches strategy state: a reply that fails
raises :class:`~.updates.UpdateRejected`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from flwr.app import MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues

from .replybounds import describe, value_bytes
from .updates import UpdateRejected, counted_metrics, example_count, finite_float

MAX_METRIC_KEYS = 64
"""Default cap on the metrics one reply may carry (all its MetricRecords)."""
MAX_METRIC_BYTES = 65_536
"""Default cap on a reply's metric size (names and 8 bytes per number)."""
MAX_METRIC_LIST = 1_024
"""Default cap on the length of one list-valued metric."""


@dataclass(frozen=True)
class BoundedMetrics:
    """What :func:`bounded_metrics` kept, and why it dropped the rest."""

    records: RecordDict
    """The MetricRecords kept (only MetricRecords), in their original order."""
    dropped: tuple[str, ...]
    """One line per cause of dropping (empty when everything was kept)."""


def bounded_metrics(
    metrics: RecordDict | Mapping[str, MetricRecord],
    *,
    max_keys: int = MAX_METRIC_KEYS,
    max_bytes: int = MAX_METRIC_BYTES,
    max_list_length: int = MAX_METRIC_LIST,
    keep: Collection[str] = (),
    truncate: bool = True,
) -> BoundedMetrics:
    """Cap what a reply's MetricRecords may carry.

    Records and keys are taken in order; a key is kept while the reply stays
    within ``max_keys`` keys and ``max_bytes`` bytes (each record and key name
    in UTF-8, plus 8 bytes per number), and if its list, if any, has at most
    ``max_list_length`` values. Keys in ``keep`` (e.g. ``"num-examples"``) are
    always kept and still count. A record left with no key is dropped.

    Parameters
    ----------
    metrics : RecordDict | Mapping[str, MetricRecord]
        A reply's content (only its MetricRecords are read) or named records.
    max_keys, max_bytes, max_list_length : int
        The caps.
    keep : Collection[str]
        Keys never dropped.
    truncate : bool (default: True)
        Drop what exceeds a cap and say so in ``dropped``; if ``False``, raise
        :class:`UpdateRejected` at the first excess instead.

    Returns
    -------
    BoundedMetrics
        The records kept, and one reason per cause of dropping.
    """
    if isinstance(metrics, RecordDict):
        named: Mapping[str, MetricRecord] = metrics.metric_records
    else:
        named = metrics
    kept = RecordDict()
    keys = size = 0
    drops: dict[str, list[str]] = {}
    for record_name, record in named.items():
        out = MetricRecord()
        size += len(record_name.encode("utf-8", "surrogatepass"))
        for key, value in record.items():
            cost = value_bytes(key) + value_bytes(value)
            cause = None
            if key in keep:
                pass
            elif isinstance(value, list) and len(value) > max_list_length:
                cause = f"lists longer than max_list_length={max_list_length}"
            elif keys + 1 > max_keys:
                cause = f"keys beyond max_keys={max_keys}"
            elif size + cost > max_bytes:
                cause = f"keys beyond max_bytes={max_bytes}"
            if cause is not None:
                if not truncate:
                    raise UpdateRejected(
                        f"metric {describe(key)} in {describe(record_name)}: "
                        f"{cause.replace('keys beyond', 'over')}"
                    )
                drops.setdefault(cause, []).append(key)
                continue
            out[key] = value
            keys += 1
            size += cost
        if len(out):
            kept[record_name] = out
    dropped = tuple(
        f"dropped {len(names)} {cause} (first: {describe(names[0])})"
        for cause, names in drops.items()
    )
    return BoundedMetrics(records=kept, dropped=dropped)


def train_reply_metrics(content: RecordDict, weighted_by_key: str) -> BoundedMetrics:
    """What a version aggregates of a parsed train reply's metrics: its one
    MetricRecord holding ``weighted_by_key``
    (:func:`~.updates.counted_metrics`), capped by :func:`bounded_metrics`
    (the count always kept)."""
    counted = counted_metrics(content, weighted_by_key)
    return bounded_metrics(counted, keep=(weighted_by_key,))


def _finite_metric(value: object) -> bool:
    """A number (not a bool) or a list of them, every one finite as a float."""
    if isinstance(value, list):
        return all(_finite_metric(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return finite_float(value) is not None


def parse_evaluate_reply(
    content: RecordDict,
    weighted_by_key: str = "num-examples",
    *,
    max_keys: int = MAX_METRIC_KEYS,
    max_bytes: int = MAX_METRIC_BYTES,
    max_list_length: int = MAX_METRIC_LIST,
) -> MetricRecord:
    """Validate an evaluate reply and return its MetricRecord.

    The reply must carry exactly one MetricRecord (as Flower's own strategies
    require), holding ``weighted_by_key`` as a finite number ``> 0``; every
    metric must be a finite number or a list of them (no NaN, no Inf, no
    integer beyond float range), within the caps of :func:`bounded_metrics`.

    Raises
    ------
    UpdateRejected
        With the reason, if any of that does not hold.
    """
    records = content.metric_records
    if len(records) != 1:
        raise UpdateRejected(
            f"evaluate reply carries {len(records)} MetricRecords; expected one"
        )
    metrics = next(iter(records.values()))
    if weighted_by_key not in metrics:
        raise UpdateRejected(f"evaluate reply has no {weighted_by_key!r}")
    example_count(metrics, weighted_by_key)
    bounded_metrics(
        records,
        max_keys=max_keys,
        max_bytes=max_bytes,
        max_list_length=max_list_length,
        truncate=False,
    )
    for key, value in metrics.items():
        if not _finite_metric(value):
            raise UpdateRejected(
                f"metric {describe(key)} is not finite: {describe(value)}"
            )
    return metrics


def _reply_weight(content: RecordDict, weighted_by_key: str) -> int | float | None:
    """The first MetricRecord's ``weighted_by_key``, if a finite number > 0."""
    for record in content.metric_records.values():
        if weighted_by_key in record:
            value = record[weighted_by_key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            number = finite_float(value)
            return value if number is not None and number > 0 else None
    return None


def _reply_metrics(
    content: RecordDict, weighted_by_key: str
) -> dict[str, MetricRecordValues]:
    """Every metric but the weight; the first record holding a key wins."""
    values: dict[str, MetricRecordValues] = {}
    for record in content.metric_records.values():
        for key, value in record.items():
            if key != weighted_by_key and key not in values:
                values[key] = value
    return values


def _form(value: object) -> int:
    """-1 for a scalar, else the list's length: values of one form average."""
    return len(value) if isinstance(value, list) else -1


def aggregate_metrics(
    records: Sequence[RecordDict],
    weighted_by_key: str,
    *,
    weights: Sequence[float] | None = None,
) -> MetricRecord:
    """Weighted average of the replies' metrics, key by key.

    Each key present in at least one reply is averaged over the replies that
    carry it, weights renormalised over those replies, so one reply missing a
    key neither drops the others' metrics nor biases that key towards zero.
    When every reply carries every key, the numbers are exactly those of
    Flower's ``aggregate_metricrecords`` (same operations, same order).

    Parameters
    ----------
    records : Sequence[RecordDict]
        Reply contents; only their MetricRecords are read.
    weighted_by_key : str
        The metric holding each reply's weight (left out of the result).
    weights : Sequence[float] | None (default: None)
        Weights to use instead of the replies' own ``weighted_by_key`` (e.g.
        effective example counts), one per reply.

    Returns
    -------
    MetricRecord
        Each averaged key, floats or lists of floats, in first-seen order.
        Left out: replies without a finite weight ``> 0``; for a key, values
        that are not finite numbers (or lists of them); and a key whose replies
        disagree on its form (a number in one, a list in another, lists of
        different lengths). Empty if nothing is left.
    """
    if weights is not None and len(weights) != len(records):
        raise ValueError(f"{len(weights)} weights for {len(records)} replies")
    replies: list[tuple[int | float, dict[str, MetricRecordValues]]] = []
    for i, content in enumerate(records):
        weight = (
            _reply_weight(content, weighted_by_key) if weights is None else weights[i]
        )
        if weight is None or not math.isfinite(weight) or weight <= 0:
            continue
        replies.append((weight, _reply_metrics(content, weighted_by_key)))

    keys = list(dict.fromkeys(key for _, values in replies for key in values))
    out = MetricRecord()
    for key in keys:
        carriers = [
            (weight, values[key])
            for weight, values in replies
            if key in values and _finite_metric(values[key])
        ]
        if not carriers or len({_form(v) for _, v in carriers}) != 1:
            continue
        total = sum(weight for weight, _ in carriers)
        average = _weighted_average(
            [v for _, v in carriers], [weight / total for weight, _ in carriers]
        )
        if _finite_metric(average):
            out[key] = average
    return out


def _weighted_average(
    values: list[MetricRecordValues], factors: list[float]
) -> MetricRecordValues:
    """``sum_i values_i * factors_i``, left to right, element-wise for lists."""
    acc: MetricRecordValues | None = None
    for value, factor in zip(values, factors, strict=True):
        if isinstance(value, list):
            scaled = [v * factor for v in value]
            if acc is None:
                acc = scaled
            else:
                previous = cast(list[float], acc)
                acc = [a + b for a, b in zip(previous, scaled, strict=True)]
        else:
            acc = value * factor if acc is None else cast(float, acc) + value * factor
    assert acc is not None, "no values to average"
    return acc
