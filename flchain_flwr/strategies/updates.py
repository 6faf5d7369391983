"""Pure helpers: turn a train reply into a validated update, and aggregate updates.

Nothing here touches strategy state. A reply that fails validation raises
:class:`UpdateRejected` with a reason meant for logs and the ledger; the caller
records it and carries on.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues

from ..arrays import NDArrays
from ..compression.sparse import SparseFormatError, decode, is_sparse
from ..protocol import (
    TRAINED_ON_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
    UPDATE_KIND_KEY,
    UPDATE_KINDS,
)


class UpdateRejected(Exception):
    """A reply cannot be used as an update; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedUpdate:
    """A validated update: ``delta`` against the model it was trained on."""

    delta: NDArrays
    num_examples: float
    metrics: MetricRecord
    kind: str


def _select_arrayrecord(content: RecordDict, arrayrecord_key: str) -> ArrayRecord:
    records = content.array_records
    if arrayrecord_key in records:
        return records[arrayrecord_key]
    if len(records) == 1:
        return next(iter(records.values()))
    if not records:
        raise UpdateRejected("reply carries no ArrayRecord")
    raise UpdateRejected(
        f"reply carries {len(records)} ArrayRecords and none named {arrayrecord_key!r}"
    )


def _select_metricrecord(content: RecordDict, weighted_by_key: str) -> MetricRecord:
    holders = [rec for rec in content.metric_records.values() if weighted_by_key in rec]
    if not holders:
        raise UpdateRejected(f"reply has no MetricRecord with {weighted_by_key!r}")
    if len(holders) > 1:
        raise UpdateRejected(
            f"reply has several MetricRecords with {weighted_by_key!r}"
        )
    return holders[0]


def _describe(value: object) -> str:
    """A short, always printable description of a client-sent value for a reason.

    ``repr`` of an integer over 4,300 digits raises, and a long string or list
    would flood the logs and the ledger.
    """
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, list):
        return f"a list of {len(value)} values"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _as_float(value: int | float) -> float | None:
    """``float(value)`` if it is finite, else ``None`` (no OverflowError)."""
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


def _num_examples(metrics: MetricRecord, weighted_by_key: str) -> float:
    value = metrics[weighted_by_key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UpdateRejected(
            f"{weighted_by_key!r} must be a number, got {_describe(value)}"
        )
    n = _as_float(value)
    if n is None or n <= 0:
        raise UpdateRejected(
            f"{weighted_by_key!r} must be finite and > 0, got {_describe(value)}"
        )
    return n


def update_kind(content: RecordDict) -> str:
    """The kind of update a reply declares (``weights`` unless its update
    info says ``delta``); :class:`UpdateRejected` if that is malformed."""
    info = content.get(UPDATE_INFO_KEY)
    if info is None:
        return UPDATE_KINDS[0]
    if not isinstance(info, ConfigRecord):
        raise UpdateRejected(f"{UPDATE_INFO_KEY!r} must be a ConfigRecord")
    kind = info.get(UPDATE_KIND_KEY, UPDATE_KINDS[0])
    if kind not in UPDATE_KINDS:
        raise UpdateRejected(
            f"unknown update kind {_describe(kind)}; expected one of {UPDATE_KINDS}"
        )
    return str(kind)


def _claimed_version(content: RecordDict) -> int | None:
    info = content.get(UPDATE_INFO_KEY)
    if not isinstance(info, ConfigRecord) or TRAINED_ON_KEY not in info:
        return None
    value = info[TRAINED_ON_KEY]
    if isinstance(value, bool) or not isinstance(value, int):
        raise UpdateRejected(
            f"{TRAINED_ON_KEY!r} must be an integer, got {_describe(value)}"
        )
    return value


def _decode_checked(name: str, arr: Array, ref: np.ndarray, kind: str) -> np.ndarray:
    if is_sparse(arr):
        if kind != UPDATE_KIND_DELTA:
            raise UpdateRejected(
                f"array {name!r} is sparse but the update is not a delta"
            )
        try:
            return decode(arr, shape=ref.shape, dtype=ref.dtype)
        except SparseFormatError as exc:
            raise UpdateRejected(f"sparse array {name!r}: {exc}") from None
    try:
        value = arr.numpy()
    except Exception as exc:  # a forged Array can fail to decode in many ways
        raise UpdateRejected(f"array {name!r} cannot be decoded: {exc}") from None
    if kind == UPDATE_KIND_DELTA and ref.dtype.kind in "biu":
        # a change to an integer or bool tensor needs a sign: int64 deltas only
        ref = np.empty(ref.shape, dtype=np.int64)
    if value.dtype != ref.dtype:
        raise UpdateRejected(
            f"array {name!r} has dtype {value.dtype}, expected {ref.dtype}"
        )
    if value.shape != ref.shape:
        raise UpdateRejected(
            f"array {name!r} has shape {value.shape}, expected {ref.shape}"
        )
    if value.dtype.kind not in "biuf":
        raise UpdateRejected(f"array {name!r} has non-numeric dtype {value.dtype}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise UpdateRejected(f"array {name!r} holds NaN or Inf")
    return value


def parse_update(
    content: RecordDict,
    reference: Mapping[str, np.ndarray],
    *,
    arrayrecord_key: str = "arrays",
    weighted_by_key: str = "num-examples",
    trained_on: int | None = None,
) -> ParsedUpdate:
    """Validate a train reply and return its update as a delta.

    Arrays may be dense (any Flower ClientApp) or, in a delta, in the sparse
    encoding of :mod:`flchain_flwr.compression` (the DGC mod's replies).

    Parameters
    ----------
    content : RecordDict
        The reply's content.
    reference : Mapping[str, np.ndarray]
        The global model the node trained on. Every array must match its name,
        shape and dtype. Full weights are turned into ``weights - reference``.
    arrayrecord_key, weighted_by_key : str
        As in Flower's FedAvg.

    Raises
    ------
    UpdateRejected
        If anything is missing, malformed or non-finite.
    """
    kind = update_kind(content)
    claimed = _claimed_version(content)
    if trained_on is not None and claimed is not None and claimed != trained_on:
        raise UpdateRejected(
            f"reply says it was trained on version {_describe(claimed)}, "
            f"it was sent {trained_on}"
        )
    arrays = _select_arrayrecord(content, arrayrecord_key)
    metrics = _select_metricrecord(content, weighted_by_key)
    num_examples = _num_examples(metrics, weighted_by_key)

    missing = [name for name in reference if name not in arrays]
    if missing:
        raise UpdateRejected(f"missing arrays: {missing}")
    extra = [name for name in arrays if name not in reference]
    if extra:
        raise UpdateRejected(f"unexpected arrays: {extra}")

    delta: NDArrays = {}
    for name, ref in reference.items():
        value = _decode_checked(name, arrays[name], ref, kind)
        if ref.dtype.kind != "f":  # ints, uints, bools: no wrap-around, no bool math
            value = value.astype(np.float64)
            ref = ref.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            delta[name] = value if kind == UPDATE_KIND_DELTA else value - ref
        if not np.isfinite(delta[name]).all():
            raise UpdateRejected(f"array {name!r} overflows when taken as an update")
    return ParsedUpdate(
        delta=delta, num_examples=num_examples, metrics=metrics, kind=kind
    )


def weighted_delta(
    deltas: Sequence[Mapping[str, np.ndarray]],
    num_examples: Sequence[float],
    staleness_weights: Sequence[float],
) -> NDArrays:
    """Return ``sum_i w_i n_i delta_i / sum_i n_i`` in float64.

    Dividing by ``sum n_i`` (not ``sum w_i n_i``) lets stale updates shrink the step,
    as in FedBuff, instead of being renormalised away.
    """
    if not deltas:
        raise ValueError("cannot aggregate zero updates")
    if not len(deltas) == len(num_examples) == len(staleness_weights):
        raise ValueError("deltas, num_examples and staleness_weights differ in length")
    total = float(sum(num_examples))
    out: NDArrays = {}
    for delta, n, w in zip(deltas, num_examples, staleness_weights, strict=True):
        factor = w * n / total
        for name, value in delta.items():
            contribution = value.astype(np.float64) * factor
            if name in out:
                out[name] += contribution
            else:
                out[name] = contribution
    return out


# ------------------------------------------------------------------ metrics
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


def _metric_size(value: object) -> int:
    """Bytes a metric value accounts for: 8 per number, more for a huge int."""
    if isinstance(value, list):
        return sum(_metric_size(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return max(8, (value.bit_length() + 8) // 8)
    return 8


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
            cost = len(key.encode("utf-8", "surrogatepass")) + _metric_size(value)
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
                        f"metric {_describe(key)} in {_describe(record_name)}: "
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
        f"dropped {len(names)} {cause} (first: {_describe(names[0])})"
        for cause, names in drops.items()
    )
    return BoundedMetrics(records=kept, dropped=dropped)


def _finite_metric(value: object) -> bool:
    """A number (not a bool) or a list of them, every one finite as a float."""
    if isinstance(value, list):
        return all(_finite_metric(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return _as_float(value) is not None


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
    _num_examples(metrics, weighted_by_key)
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
                f"metric {_describe(key)} is not finite: {_describe(value)}"
            )
    return metrics


def _reply_weight(content: RecordDict, weighted_by_key: str) -> int | float | None:
    """The first MetricRecord's ``weighted_by_key``, if a finite number > 0."""
    for record in content.metric_records.values():
        if weighted_by_key in record:
            value = record[weighted_by_key]
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            number = _as_float(value)
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
