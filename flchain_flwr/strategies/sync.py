"""FedBuff inside Flower's synchronous loop: one batch of replies, staleness 0.

The same validation as :meth:`FedBuff.start`'s path: every reply is parsed
against the model sent (or, when ``aggregate_train`` is called on its own as
Flower's strategy tests call FedAvg's, against the common layout of the replies
whose arrays decode), its claimed training version is checked, its example count
goes through the weighting policy, and a malformed reply is logged and left out.
The step is the async path's :func:`~.serverstep.server_step`, with the same
non-trainable state (:func:`~.state.state_names` of the model sent, under
``state_rule``), so a batch whose step would overflow the model is refused the
same way (``OVERFLOW_REASON``, logged) and Flower's loop keeps its model.
A reply's metrics are capped (:func:`~.metrics.train_reply_metrics`) and weighed
(:mod:`.metricweights`) as there too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from logging import WARNING
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.supercore import log

from ..arrays import NDArrays, to_arrayrecord, to_ndarrays
from ..protocol import UPDATE_KIND_DELTA
from .block import BufferedUpdate
from .claims import ClaimHistory
from .evaluation import valid_evaluate_content
from .metrics import train_reply_metrics
from .metricweights import weighed_evaluation_metrics, weighed_train_metrics
from .serverstep import OVERFLOW_REASON, server_step
from .state import state_names
from .updates import UpdateRejected, parse_update
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
            layout = _common_layout(replies, s.arrayrecord_key)
            if layout is None:
                log(
                    WARNING,
                    "Round %d not aggregated: no reply carries arrays that decode",
                    server_round,
                )
                return None, None
            reference, absolute = layout, True
        # no model sent: no server state to average against, keep or step
        names = frozenset() if absolute else state_names(reference, s.state_patterns)
        state_base = {name: reference[name] for name in names}
        accepted: list[BufferedUpdate] = []
        for reply in replies:
            node_id = reply.metadata.src_node_id
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
                log(WARNING, "Rejected reply from node %d: %s", node_id, exc.reason)
                continue
            self.claims.observe(node_id, update.num_examples)
            kept = train_reply_metrics(reply.content, s.weighted_by_key)
            for reason in kept.dropped:
                log(WARNING, "Metrics of node %d capped: %s", node_id, reason)
            accepted.append(
                BufferedUpdate(
                    node_id=node_id,
                    trained_on=server_round - 1,
                    staleness=0,
                    weight=s.staleness_fn(0),
                    update=update,
                    examples=update.num_examples,  # the claim, until weighed
                    metrics=kept.records,  # capped as FedBuff.start caps them
                    state_base=state_base,
                )
            )
        if not accepted:
            return None, None
        try:
            examples = effective_examples(
                s.example_weighting,
                [u.update.num_examples for u in accepted],
                self.claims,
            )
        except WeightingError as exc:
            log(WARNING, "Round %d not aggregated: %s", server_round, exc)
            return None, None
        for u, n in zip(accepted, examples, strict=True):
            u.examples = n
        stepped = server_step(
            reference,
            accepted,
            lr=1.0 if absolute else s.server_lr,
            momentum=0.0,
            velocity=None,
            state_names=names,
            state_rule=s.state_rule,
        )
        if stepped is None:  # as FedBuff.start refuses the buffer
            log(WARNING, "Round %d not aggregated: %s", server_round, OVERFLOW_REASON)
            return None, None
        metrics = weighed_train_metrics(
            s.train_metrics_aggr_fn,
            [u.metrics for u in accepted],
            [u.average_weight for u in accepted],
            s.weighted_by_key,
        )
        return to_arrayrecord(stepped.model), metrics

    def aggregate_evaluate(self, replies: Iterable[Message]) -> MetricRecord | None:
        """Weighted average of the valid evaluate replies, each claimed count
        through the weighting policy (:func:`.weighed_evaluation_metrics`)."""
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
        return weighed_evaluation_metrics(
            s.evaluate_metrics_aggr_fn, s.example_weighting, valid, s.weighted_by_key
        )


def _common_layout(replies: list[Message], arrayrecord_key: str) -> NDArrays | None:
    """Zeros in the names, shapes and dtypes most replies share.

    Only a record whose arrays decode counts, with the shapes and dtypes its
    data has: an Array's own ``shape`` and ``dtype`` fields are the sender's
    word and are never allocated from. ``None`` if no record decodes.
    """
    layouts: Counter[tuple[tuple[str, tuple[int, ...], str], ...]] = Counter()
    for reply in replies:
        record = reply.content.array_records.get(arrayrecord_key)
        if record is None and len(reply.content.array_records) == 1:
            record = next(iter(reply.content.array_records.values()))
        if record is None:
            continue
        try:
            decoded = to_ndarrays(record)
        except Exception:  # a forged Array: its reply is rejected when parsed
            continue
        layouts[tuple((k, v.shape, v.dtype.str) for k, v in decoded.items())] += 1
    if not layouts:
        return None
    layout = layouts.most_common(1)[0][0]
    return {name: np.zeros(shape, dtype=dtype) for name, shape, dtype in layout}
