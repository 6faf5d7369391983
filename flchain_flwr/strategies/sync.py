"""FedBuff inside Flower's synchronous loop: one batch of replies, staleness 0.

The same validation as :meth:`FedBuff.start`'s path: every reply is parsed
against the model sent (or, when ``aggregate_train`` is called on its own as
Flower's strategy tests call FedAvg's, against the replies' common layout), its
claimed training version is checked, its example count goes through the
weighting policy, and a malformed reply is logged and left out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from logging import WARNING
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore import log

from ..arrays import NDArrays, apply_step, to_arrayrecord, to_ndarrays
from ..protocol import UPDATE_KIND_DELTA
from .claims import ClaimHistory
from .evaluation import aggregate_or_none, valid_evaluate_content
from .updates import (
    ParsedUpdate,
    UpdateRejected,
    parse_update,
    weighted_delta,
)
from .weighting import WeightingError, effective_examples

if TYPE_CHECKING:
    from .fedbuff import FedBuff


class SyncAggregation:
    """The synchronous ``aggregate_train`` / ``aggregate_evaluate`` of FedBuff."""

    def __init__(self, strategy: FedBuff) -> None:
        self.strategy = strategy
        self.claims = ClaimHistory()
        self._sent: tuple[int, NDArrays] | None = None

    def sent(self, server_round: int, arrays: ArrayRecord) -> None:
        """Remember the model sent for ``server_round``."""
        self._sent = (server_round, to_ndarrays(arrays))

    def aggregate(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate and aggregate one round's train replies."""
        s = self.strategy
        replies = [r for r in replies if not r.has_error()]
        if self._sent is not None and self._sent[0] == server_round:
            reference, absolute = self._sent[1], False
        else:  # no model sent: full weights averaged as FedAvg does
            reference, absolute = _common_layout(replies, s.arrayrecord_key), True
        accepted: list[tuple[ParsedUpdate, RecordDict]] = []
        for reply in replies:
            try:
                update = parse_update(
                    reply.content,
                    reference,
                    arrayrecord_key=s.arrayrecord_key,
                    weighted_by_key=s.weighted_by_key,
                    trained_on=server_round - 1,
                )
                if absolute and update.kind == UPDATE_KIND_DELTA:
                    raise UpdateRejected("a delta needs the model it was trained on")
            except UpdateRejected as exc:
                log(
                    WARNING,
                    "Rejected reply from node %d: %s",
                    reply.metadata.src_node_id,
                    exc.reason,
                )
                continue
            self.claims.observe(reply.metadata.src_node_id, update.num_examples)
            accepted.append((update, reply.content))
        if not accepted:
            return None, None
        updates = [u for u, _ in accepted]
        try:
            examples = effective_examples(
                s.example_weighting, [u.num_examples for u in updates], self.claims
            )
        except WeightingError as exc:
            log(WARNING, "Round %d not aggregated: %s", server_round, exc)
            return None, None
        step = weighted_delta(
            [u.delta for u in updates], examples, [s.staleness_fn(0)] * len(updates)
        )
        new = apply_step(reference, step, 1.0 if absolute else s.server_lr)
        metrics = aggregate_or_none(
            s.train_metrics_aggr_fn, [c for _, c in accepted], s.weighted_by_key
        )
        return to_arrayrecord(new), metrics

    def aggregate_evaluate(self, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted average of the valid evaluate replies."""
        s = self.strategy
        valid = []
        for reply in replies:
            if reply.has_error():
                continue
            try:
                valid.append(valid_evaluate_content(reply.content, s.weighted_by_key))
            except UpdateRejected as exc:
                log(
                    WARNING,
                    "Rejected evaluate reply from node %d: %s",
                    reply.metadata.src_node_id,
                    exc.reason,
                )
        return aggregate_or_none(s.evaluate_metrics_aggr_fn, valid, s.weighted_by_key)


def _common_layout(replies: list[Message], arrayrecord_key: str) -> NDArrays:
    """Zeros in the names, shapes and dtypes most replies share."""
    layouts: Counter[tuple[tuple[str, tuple[int, ...], str], ...]] = Counter()
    for reply in replies:
        record = reply.content.array_records.get(arrayrecord_key)
        if record is None and len(reply.content.array_records) == 1:
            record = next(iter(reply.content.array_records.values()))
        if record is None:
            continue
        try:
            layouts[
                tuple((k, tuple(a.shape), str(a.dtype)) for k, a in record.items())
            ] += 1
        except Exception:  # a forged Array: its reply is rejected when parsed
            continue
    if not layouts:
        return {}
    layout = layouts.most_common(1)[0][0]
    return {name: np.zeros(shape, dtype=dtype) for name, shape, dtype in layout}
