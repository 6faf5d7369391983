"""Pure helpers: turn a train reply into a validated update, and aggregate updates.

Nothing here touches strategy state. A reply that fails validation raises
:class:`UpdateRejected` with a reason meant for logs and the ledger; the caller
records it and carries on. A reply's metrics (their caps, evaluate replies and
metric averages) are checked in :mod:`.metrics`.

An accepted reply is stored whole, as received (its digest is what votes and
ledger entries name), so :func:`parse_update` also bounds what it may carry
(:mod:`.replybounds`): one ArrayRecord, whose arrays are exactly the model's,
each declaring what its data holds and holding nothing more (a sparse one no
more bytes than its dense tensor); one MetricRecord holding the example count
(the only one aggregated); and a stored payload of
at most ``MAX_RECORDS_BYTES`` bytes beyond an honest dense reply's tensors
(:func:`~.replybounds.honest_stored_bytes`). The live
server, a replay and a remote verifier all parse with it: all three hold a
reply to the same rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from flwr.app import Array, ConfigRecord, MetricRecord, RecordDict

from ..arrays import NDArrays
from ..compression.sparse import SparseFormatError, is_sparse
from ..compression.sparse_decode import decode
from ..protocol import (
    TRAINED_ON_KEY,
    UPDATE_INFO_KEY,
    UPDATE_KIND_DELTA,
    UPDATE_KIND_KEY,
    UPDATE_KINDS,
)
from .replybounds import (
    DENSE_STYPE,
    array_records_problem,
    describe,
    describe_names,
    honest_array_bytes,
    stored_size_problem,
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


def counted_metrics(
    content: RecordDict, weighted_by_key: str
) -> dict[str, MetricRecord]:
    """The reply's one MetricRecord holding ``weighted_by_key``, by its name.

    A reply may carry other MetricRecords (ledgers store them, and replays of
    ledgers recorded before this rule must still parse), but only this one is
    aggregated: Flower's ``aggregate_metricrecords`` weighs every record's
    values by the first's count, so a second record would buy its sender more
    say. (Flower's own strategies require exactly one MetricRecord.)
    """
    holders = {
        name: rec
        for name, rec in content.metric_records.items()
        if weighted_by_key in rec
    }
    if not holders:
        raise UpdateRejected(f"reply has no MetricRecord with {weighted_by_key!r}")
    if len(holders) > 1:
        raise UpdateRejected(
            f"reply has several MetricRecords with {weighted_by_key!r}"
        )
    return holders


def finite_float(value: int | float) -> float | None:
    """``float(value)`` if it is finite, else ``None`` (no OverflowError)."""
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    return number if math.isfinite(number) else None


def example_count(metrics: MetricRecord, weighted_by_key: str) -> float:
    """``metrics[weighted_by_key]`` as a float; :class:`UpdateRejected` unless it
    is a finite number ``> 0``."""
    value = metrics[weighted_by_key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UpdateRejected(
            f"{weighted_by_key!r} must be a number, got {describe(value)}"
        )
    n = finite_float(value)
    if n is None or n <= 0:
        raise UpdateRejected(
            f"{weighted_by_key!r} must be finite and > 0, got {describe(value)}"
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
            f"unknown update kind {describe(kind)}; expected one of {UPDATE_KINDS}"
        )
    return str(kind)


def _claimed_version(content: RecordDict) -> int | None:
    info = content.get(UPDATE_INFO_KEY)
    if not isinstance(info, ConfigRecord) or TRAINED_ON_KEY not in info:
        return None
    value = info[TRAINED_ON_KEY]
    if isinstance(value, bool) or not isinstance(value, int):
        raise UpdateRejected(
            f"{TRAINED_ON_KEY!r} must be an integer, got {describe(value)}"
        )
    return value


def _dense_value(name: str, arr: Array) -> np.ndarray:
    """A dense Array's value, as ``Array.numpy`` reads it, refused unless the
    Array declares its value's dtype and shape and holds no bytes beyond it
    (the declaration is stored in the payload's header, the bytes whole)."""
    if arr.stype != DENSE_STYPE:
        raise UpdateRejected(
            f"array {name!r} has stype {describe(arr.stype)}, expected {DENSE_STYPE!r}"
        )
    stream = BytesIO(arr.data)
    try:
        value = np.load(stream, allow_pickle=False)
    except Exception as exc:  # a forged Array can fail to decode in many ways
        raise UpdateRejected(
            f"array {name!r} cannot be decoded: {describe(str(exc))}"
        ) from None
    if not isinstance(value, np.ndarray):  # e.g. an .npz archive
        raise UpdateRejected(f"array {name!r} cannot be decoded: not one array")
    trailing = len(arr.data) - stream.tell()
    if trailing:
        raise UpdateRejected(f"array {name!r} has {trailing} trailing bytes")
    if arr.dtype != str(value.dtype) or tuple(arr.shape) != value.shape:
        raise UpdateRejected(
            f"array {name!r} declares dtype {describe(arr.dtype)} and shape "
            f"{describe(tuple(arr.shape))}, its data holds {value.dtype} "
            f"{value.shape}"
        )
    return value


def _decode_checked(name: str, arr: Array, ref: np.ndarray, kind: str) -> np.ndarray:
    if is_sparse(arr):
        if kind != UPDATE_KIND_DELTA:
            raise UpdateRejected(
                f"array {name!r} is sparse but the update is not a delta"
            )
        if len(arr.data) > ref.nbytes:  # no honest client sends this: DGC sends dense
            raise UpdateRejected(
                f"sparse array {name!r} holds {len(arr.data)} bytes, more than "
                f"its dense tensor's {ref.nbytes}"
            )
        try:
            return decode(arr, shape=ref.shape, dtype=ref.dtype)
        except SparseFormatError as exc:
            raise UpdateRejected(f"sparse array {name!r}: {exc}") from None
    value = _dense_value(name, arr)
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
            f"reply says it was trained on version {describe(claimed)}, "
            f"it was sent {trained_on}"
        )
    problem = array_records_problem(content, arrayrecord_key)
    if problem is not None:
        raise UpdateRejected(problem)
    arrays = next(iter(content.array_records.values()))
    (metrics,) = counted_metrics(content, weighted_by_key).values()
    num_examples = example_count(metrics, weighted_by_key)

    missing = [name for name in reference if name not in arrays]
    if missing:
        raise UpdateRejected(f"missing arrays: {describe_names(missing)}")
    extra = [name for name in arrays if name not in reference]
    if extra:
        raise UpdateRejected(f"unexpected arrays: {describe_names(extra)}")

    delta: NDArrays = {}
    honest_bytes = 0
    for name, ref in reference.items():
        value = _decode_checked(name, arrays[name], ref, kind)
        honest_bytes += honest_array_bytes(name, value)
        if ref.dtype.kind != "f":  # ints, uints, bools: no wrap-around, no bool math
            value = value.astype(np.float64)
            ref = ref.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            delta[name] = value if kind == UPDATE_KIND_DELTA else value - ref
        if not np.isfinite(delta[name]).all():
            raise UpdateRejected(f"array {name!r} overflows when taken as an update")
    problem = stored_size_problem(content, honest_bytes)
    if problem is not None:
        raise UpdateRejected(problem)
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
